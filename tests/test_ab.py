"""A/B in the simulator: common random numbers, paired statistics, failures and resumption."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from dispatch.policy import Decision, Policy
from dispatch.snapshot import Snapshot
from simulator.ab import stats as ab_stats
from simulator.ab.crn import NoiseConfig, perturb, policy_seed
from simulator.ab.run import STATUS, ABConfig, ABError, run_ab
from simulator.ab.stats import COMMON, METRICS, bootstrap_ci, common_ctd, holm, paired, verdict
from simulator.instance import load
from simulator.policies import resolve

SMALL = ("0o50t75s2p100", "1o50t75s2p100")
# Ten base days × two variants (o50 days: 250-1600 orders). Measured with `dispatch simulate`: reyes
# has the lower mean click-to-door on 19 of the 20 (mean 32.3 vs 36.0 min) and fewer undelivered
# orders overall (0.78% vs 2.47%), the direction of the published all-instance comparison.
TWENTY = tuple(f"{s}{v}" for s in range(10) for v in ("o50t75s2p100", "o50t100s1p100"))


def test_perturbation_is_keyed_by_seed_and_entity() -> None:
    inst = load(SMALL[0])
    noise = NoiseConfig()
    assert perturb(inst, 0, noise) is inst  # replicate 0 is the published day
    assert perturb(inst, 3, NoiseConfig(0, 0)) is inst
    one, again = perturb(inst, 3, noise), perturb(inst, 3, noise)
    np.testing.assert_array_equal(one.order_ready, again.order_ready)
    assert one.params.meters_per_minute == again.params.meters_per_minute != inst.params.meters_per_minute
    assert not np.array_equal(one.order_ready, inst.order_ready)
    assert not np.array_equal(one.order_ready, perturb(inst, 4, noise).order_ready)
    # Dropping an order leaves every other order's noise where it was (streams keyed by order id).
    keep = np.arange(1, inst.n_orders)
    fewer = dataclasses.replace(
        inst,
        order_ids=inst.order_ids[1:],
        order_xy=inst.order_xy[keep],
        order_placement=inst.order_placement[keep],
        order_restaurant=inst.order_restaurant[keep],
        order_ready=inst.order_ready[keep],
    )
    np.testing.assert_array_equal(perturb(fewer, 3, noise).order_ready, one.order_ready[1:])
    assert policy_seed("x", 1) == policy_seed("x", 1) != policy_seed("x", 2)


def test_paired_statistics_match_scipy_and_holm() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(30, 2, 15)
    b = a - 0.5 + rng.normal(0, 0.3, 15)
    r = paired("ctd_mean", a, b)
    ref = sps.ttest_rel(b, a)
    assert r.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert r.diff == pytest.approx(float(np.mean(b - a)))
    assert r.t_low < r.diff < r.t_high and r.boot_low < r.diff < r.boot_high
    assert r.dz == pytest.approx(np.mean(b - a) / np.std(b - a, ddof=1))
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    holes = a.copy()
    holes[3] = np.nan  # a day where the metric is undefined (nothing delivered) drops out of that metric only
    assert paired("ctd_mean", holes, b).n == 14
    zero = paired("ctd_mean", a, a)
    assert zero.diff == 0 and zero.p == 1 and zero.t_low == zero.t_high == 0


def test_bootstrap_in_blocks_draws_the_same_interval_as_in_one(monkeypatch: pytest.MonkeyPatch) -> None:
    d = np.random.default_rng(3).normal(size=37)
    whole = bootstrap_ci(d, 0.95, 501, seed=5)
    monkeypatch.setattr(ab_stats, "BOOT_BLOCK", 37 * 8)  # 8 resamples per block, and a ragged last block
    assert bootstrap_ci(d, 0.95, 501, seed=5) == whole
    monkeypatch.setattr(ab_stats, "BOOT_BLOCK", 1)  # fewer indices than one resample: a resample per block
    assert bootstrap_ci(d, 0.95, 501, seed=5) == whole


def test_one_paired_day_gets_a_verdict_without_nan() -> None:
    line = verdict(paired("ctd_mean", np.array([33.0]), np.array([31.5])))
    assert "nan" not in line.lower() and "B lower by 1.50 min on the one paired day" in line, line
    assert "at least 2" in line, line


def test_common_orders_click_to_door_ignores_orders_either_arm_dropped() -> None:
    # A drops order 1 and B order 2: only orders 0 and 3 count, for both arms.
    assert common_ctd([10, -1, 30, 40], [12, 20, -1, 44]) == (25.0, 28.0)
    assert all(math.isnan(v) for v in common_ctd([10, -1], [-1, 20]))  # nothing delivered by both
    with pytest.raises(ValueError, match="order_ctd: arm A lists 2 orders, arm B 3"):
        common_ctd([10, 20], [10, 20, 30])


def test_a_metric_undefined_on_a_day_is_nan_not_an_error() -> None:
    """Cells store NaN (an arm delivered nothing) as JSON null; the report drops that day for those metrics."""
    from simulator.ab.report import _values

    a = {"metrics": {m: None for m in METRICS if m != COMMON}, "order_ctd": [-1, -1]}
    b = {"metrics": {m: 1.0 for m in METRICS if m != COMMON}, "order_ctd": [30, 40]}
    va, vb = _values(a, b)
    assert all(math.isnan(v) for v in va.values()) and math.isnan(vb[COMMON]) and vb["ctd_mean"] == 1.0


@pytest.mark.parametrize("policy", ["reyes-soft", "nearest"])
def test_policy_against_itself_is_identical_and_not_significant(policy: str, tmp_path: Path) -> None:
    config = ABConfig(policy, policy, SMALL, seeds=2)
    run = run_ab(config, tmp_path / "ab", jobs=2, progress=False)
    assert run.complete and run.identical
    rep = run.report
    assert rep is not None
    for m in rep["metrics"]:
        assert m["diff"] == 0 and not m["significant"]
    for day in rep["per_day"]:
        assert day["a"] == day["b"]  # common random numbers: exactly zero paired differences
    assert (tmp_path / "ab" / "report.md").is_file()
    for png in ("diffs.png", "ctd.png", "hourly.png"):
        assert (tmp_path / "ab" / png).stat().st_size > 0


def test_noise_changes_the_day_but_both_arms_see_the_same_one(tmp_path: Path) -> None:
    run = run_ab(ABConfig("reyes-soft", "reyes-soft", SMALL[:1], seeds=3), tmp_path / "ab", jobs=1, progress=False)
    assert run.report is not None and run.identical
    ctd = [d["a"]["ctd_mean"] for d in run.report["per_day"]]
    assert len(set(ctd)) == 3  # replicates differ from each other


def test_nearest_vs_reyes_detects_the_difference(tmp_path: Path) -> None:
    run = run_ab(ABConfig("nearest", "reyes", TWENTY), tmp_path / "ab", jobs=2, progress=False)
    assert run.report is not None
    rows = {m["metric"]: m for m in run.report["metrics"]}
    assert rows["ctd_mean"]["diff"] < 0 and rows["ctd_mean"]["significant"]
    assert rows["ctd_mean"]["t_high"] < 0
    assert rows["undelivered_pct"]["diff"] < 0
    assert "B lower" in run.report["verdicts"]["ctd_mean"] and "B is better" in run.report["verdicts"]["ctd_mean"]
    assert set(rows) == set(METRICS)
    # Every day has orders both deliver; each arm's mean over them comes from its own cells.
    assert rows[COMMON]["n"] == len(TWENTY)
    cells = sorted((tmp_path / "ab" / "cells").rglob("*.json"))
    assert cells and all(isinstance(json.loads(c.read_text())["order_ctd"], list) for c in cells)


def test_onnx_model_in_process(tmp_path: Path) -> None:
    from dispatch.linear_model import write_linear_model

    model = str(write_linear_model(tmp_path / "linear.onnx"))
    run = run_ab(ABConfig(model, model, SMALL[:1]), tmp_path / "same", jobs=2, progress=False)
    assert run.complete and run.identical
    # The same model served elsewhere (grpc://...) must give this very report: ABConfig(model, "grpc://...").
    run = run_ab(ABConfig(model, "nearest", SMALL[:1]), tmp_path / "vs", jobs=1, progress=False)
    assert run.complete and run.report is not None and run.report["days"] == 1


class _Flaky:
    """``nearest`` that raises ConnectionError once the shared counter passes its limit (an endpoint going down)."""

    def __init__(self, counter: list[int], after: int) -> None:
        self.inner = resolve("nearest")
        self.name = "flaky"
        self.counter, self.after = counter, after

    def reset(self, seed: int) -> None:
        self.inner.reset(seed)

    def decide(self, snapshot: Snapshot) -> Decision:
        self.counter[0] += 1
        if self.counter[0] > self.after:
            raise ConnectionError("endpoint unavailable")
        return self.inner.decide(snapshot)


def test_failure_mid_run_stops_without_report_then_resumes(tmp_path: Path) -> None:
    counter = [0]
    out = tmp_path / "ab"
    config = ABConfig("nearest", "flaky", SMALL, seeds=2)

    def down(spec: str) -> Policy:
        return _Flaky(counter, after=900) if spec == "flaky" else resolve(spec)

    first = run_ab(config, out, jobs=1, progress=False, resolver=down)
    assert not first.complete and 0 < first.done < first.total
    assert first.error is not None and "endpoint unavailable" in first.error and "arm B (flaky)" in first.error
    assert not (out / "report.md").exists() and not (out / "report.json").exists()
    status = (out / STATUS).read_text()
    assert "INCOMPLETE" in status and f"{first.done} of {first.total}" in status

    def up(spec: str) -> Policy:
        return resolve("nearest" if spec == "flaky" else spec)

    second = run_ab(config, out, jobs=1, progress=False, resolver=up)
    assert second.complete and second.ran == second.total - first.done  # finished cells were not rerun
    assert (out / "report.md").is_file() and not (out / STATUS).exists()
    assert second.identical  # flaky was nearest all along


def test_rerun_with_other_arguments_is_refused(tmp_path: Path) -> None:
    run_ab(ABConfig("nearest", "nearest", SMALL[:1]), tmp_path / "ab", jobs=1, progress=False)
    with pytest.raises(ABError, match=r"other arguments \(b: 'nearest' then, 'reyes' now\)"):
        run_ab(ABConfig("nearest", "reyes", SMALL[:1]), tmp_path / "ab", jobs=1, progress=False)


def test_cli_stops_cleanly_when_the_endpoint_is_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dispatch_cli.main import main

    out = tmp_path / "ab"
    args = ["ab", "--a", "nearest", "--b", "grpc://127.0.0.1:1/model", "--instances", SMALL[0]]
    rc = main([*args, "--out", str(out), "--jobs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "STOPPED" in err and "rerun the same command" in err.lower()
    assert not (out / "report.md").exists() and (out / STATUS).is_file()


class _Interrupted(_Flaky):
    """Ctrl-C arriving in the middle of a day."""

    def decide(self, snapshot: Snapshot) -> Decision:
        self.counter[0] += 1
        if self.counter[0] > self.after:
            raise KeyboardInterrupt
        return self.inner.decide(snapshot)


def test_interrupt_leaves_a_status_and_no_report(tmp_path: Path) -> None:
    counter, out = [0], tmp_path / "ab"
    config = ABConfig("nearest", "nearest", SMALL[:1], seeds=2)
    with pytest.raises(KeyboardInterrupt):
        run_ab(config, out, jobs=1, progress=False, resolver=lambda spec: _Interrupted(counter, after=600))
    assert "interrupted" in (out / STATUS).read_text() and not (out / "report.md").exists()
    assert run_ab(config, out, jobs=1, progress=False).complete


def test_a_folder_of_the_previous_format_is_resumed_in_this_one(tmp_path: Path) -> None:
    """Version 1 cells (delivered click-to-door only, no per-order list) are rerun, and ab.json says version 2
    afterwards, so an older checkout refuses the folder instead of misreading the new cells."""
    out = tmp_path / "ab"
    config = ABConfig("nearest", "reyes", SMALL[:1])
    run_ab(config, out, jobs=1, progress=False)
    manifest = out / "ab.json"
    old = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**old, "version": 1}))
    for cell in (out / "cells").rglob("*.json"):
        payload = json.loads(cell.read_text())
        order_ctd = payload.pop("order_ctd")
        cell.write_text(json.dumps({**payload, "ctd": [c for c in order_ctd if c >= 0]}))
    (out / "report.md").unlink()
    run = run_ab(config, out, jobs=1, progress=False)
    assert run.complete and run.report is not None and run.report["version"] == 2
    assert json.loads(manifest.read_text())["version"] == 2
    assert all("order_ctd" in json.loads(c.read_text()) for c in (out / "cells").rglob("*.json"))
    manifest.write_text(json.dumps({**old, "version": "2"}))
    with pytest.raises(ABError, match=r"ab\.json: field 'version' is '2', not an integer"):
        run_ab(config, out, jobs=1, progress=False)
