"""The dispatch results report: paired intervals, the held-out guard, and one small end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from simulator.epochs import DEFAULT_INTERVAL
from simulator.results import SIM_KEY
from training.dispatch import results


def test_paired_ci_matches_the_paired_t_test() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(30, 2, size=40)
    b = a + rng.normal(0.5, 1.0, size=40)
    mean, lo, hi = results.paired_ci(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert mean == pytest.approx(float(np.mean(a - b)))
    assert (lo, hi) == pytest.approx((ci.low, ci.high))
    # NaN instances (a policy that delivered nothing has no CtD mean) are dropped, not propagated.
    a[0] = np.nan
    assert np.isfinite(results.paired_ci(a, b)[1])


def test_seed_aware_interval_is_the_paired_one_without_training_noise() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(31, 3, size=64)
    heuristic = base + rng.normal(0.2, 0.3, size=64)
    assert results.seed_aware_ci(base[None, :], heuristic[None, :]) == pytest.approx(results.paired_ci(base, heuristic))


def test_seed_aware_interval_covers_the_algorithms_difference_despite_three_seeds() -> None:
    """Three training seeds whose whole-model offsets dominate: the interval must still hold the true difference
    (zero) about 95% of the time, where the paired interval over seed means covers it far less often."""
    rng = np.random.default_rng(11)
    covered = paired_covered = 0
    trials = 400
    for _ in range(trials):
        day = rng.normal(31, 3, size=64)  # what every policy shares on an instance
        inspo = day + rng.normal(0, 0.3, size=(3, 1)) + rng.normal(0, 0.05, size=(3, 64))
        bc = day + rng.normal(0, 0.3, size=(3, 1)) + rng.normal(0, 0.05, size=(3, 64))
        _, lo, hi = results.seed_aware_ci(inspo, bc)
        covered += lo <= 0 <= hi
        _, lo, hi = results.paired_ci(inspo.mean(axis=0), bc.mean(axis=0))
        paired_covered += lo <= 0 <= hi
    assert covered / trials >= 0.93
    assert paired_covered / trials < 0.5  # the case the column is for: the seed means hide the training noise


def test_seed_aware_interval_skips_missing_values_as_the_paired_columns_do() -> None:
    rng = np.random.default_rng(2)
    seeds = rng.normal(31, 1, size=(3, 20))
    other = rng.normal(31, 1, size=(1, 20))
    seeds[1, 4] = np.nan  # one seed delivered nothing there: the other two still count
    seeds[:, 7] = np.nan  # no seed did: the instance is dropped
    mean, lo, hi = results.seed_aware_ci(seeds, other)
    with pytest.warns(RuntimeWarning):
        paired = results.paired_ci(np.nanmean(seeds, axis=0), other[0])
    assert mean == pytest.approx(paired[0]) and lo < mean < hi
    assert hi - lo > paired[2] - paired[1]  # the seed spread is counted on top


def test_decision_code_digest_follows_every_byte_of_the_decision_path(tmp_path: Path) -> None:
    def digest(source: str) -> str:
        (tmp_path / "rule.py").write_text(source)
        return results.decision_code_digest(tmp_path)

    code = "def score(x):\n    return x + 1\n"
    before = digest(code)
    assert digest(code) == before  # the same files, the same digest: cached metrics are kept
    assert digest(code.replace("x + 1", "x + 2")) != before  # a change of the rule re-evaluates the models
    (tmp_path / "notes.txt").write_text("not code")
    assert digest(code) == before  # only the Python sources count


def test_training_on_held_out_instances_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        results.main(["--train-instances", "7o50*", "--work", "/nonexistent/never-made"])
    assert exc.value.code == 2
    assert "held-out" in capsys.readouterr().err


def test_one_command_logs_trains_exports_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    argv = [
        "--seeds", "2", "--steps", "6",
        "--train-instances", "0o50t75s1p100",
        "--instances", "6o50t75s1p100",
        "--work", str(tmp_path / "work"), "--out", str(out),
        "--heuristic-cache", str(tmp_path / "none.json"), "--jobs", "1", "--no-progress",
    ]  # fmt: skip
    assert results.main(argv) == 0
    text = out.read_text()
    cache = json.loads(out.with_suffix(".json").read_text())
    # Two seeds of each algorithm plus every heuristic, each on the evaluated instance.
    models = ["bc-s0", "bc-s1", "inspo-s0", "inspo-s1"]
    digests = cache.pop(results.MODEL_KEY)
    # Stamped with the engine settings of the logs and the evaluations (the default cadence).
    assert cache.pop(SIM_KEY) == {"dispatch_interval": DEFAULT_INTERVAL, "courier_lookahead": 10}
    assert (
        json.loads((tmp_path / "work" / "logs" / "manifest.json").read_text())["args"]["sim"]["dispatch_interval"]
        == DEFAULT_INTERVAL
    )
    assert sorted(cache) == sorted([*models, *results.HEURISTICS])
    assert all(list(v) == ["6o50t75s1p100"] for v in cache.values())
    assert sorted(digests) == models and all(len(d["onnx_sha256"]) == 64 for d in digests.values())
    for model in ("bc-s0", "bc-s1", "inspo-s0", "inspo-s1"):
        manifest = json.loads((tmp_path / "work" / "models" / f"{model}.json").read_text())
        assert manifest["conflict_rule"] == "plan"
    assert "## Held out: seeds 6–9, o50 and r50 (1 instances)" in text
    # One instance gives no interval: the table says so with NaN rather than inventing one.
    assert "| reyes | +nan [+nan, +nan]" in text
    # A rerun finds everything done and rewrites the same report.
    assert results.main(argv) == 0
    assert out.read_text() == text
    # Metrics measured under other decision-path code (a changed conflict rule leaves every model file
    # as it was) are measured again, not reused.
    stale = json.loads(out.with_suffix(".json").read_text())
    stale[results.MODEL_KEY]["bc-s0"]["decision_code_sha256"] = "0" * 64
    stale["bc-s0"]["6o50t75s1p100"]["ctd_mean"] = -1.0
    stale["bc-s1"]["6o50t75s1p100"]["ctd_mean"] = -2.0  # current code: kept as it is
    out.with_suffix(".json").write_text(json.dumps(stale))
    assert results.main(argv) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["bc-s0"]["6o50t75s1p100"]["ctd_mean"] == cache["bc-s0"]["6o50t75s1p100"]["ctd_mean"] > 0
    assert again["bc-s1"]["6o50t75s1p100"]["ctd_mean"] == -2.0
    assert again[results.MODEL_KEY]["bc-s0"]["decision_code_sha256"] == results.decision_code_digest()
    # Metrics of another decision cadence are not reused either: neither this report's own cache (here
    # made to look like a two-minute run) nor heuristic rows from `make results` measured that way.
    other = {**again, SIM_KEY: {"dispatch_interval": 2, "courier_lookahead": 10}}
    other["bc-s1"]["6o50t75s1p100"]["ctd_mean"] = -3.0
    out.with_suffix(".json").write_text(json.dumps(other))
    heuristic_cache = tmp_path / "none.json"
    heuristic_cache.write_text(
        json.dumps({**other, "reyes": {"6o50t75s1p100": {**other["reyes"]["6o50t75s1p100"], "ctd_mean": -4.0}}})
    )
    assert results.main(argv) == 0
    fresh = json.loads(out.with_suffix(".json").read_text())
    assert fresh[SIM_KEY]["dispatch_interval"] == DEFAULT_INTERVAL
    assert fresh["bc-s1"]["6o50t75s1p100"]["ctd_mean"] == cache["bc-s1"]["6o50t75s1p100"]["ctd_mean"] > 0
    assert fresh["reyes"]["6o50t75s1p100"]["ctd_mean"] == cache["reyes"]["6o50t75s1p100"]["ctd_mean"] > 0
    # Another protocol in the same work folder is refused rather than mixed with the old models.
    with pytest.raises(SystemExit) as exc:
        results.main([*argv, "--steps", "7"])
    assert exc.value.code == 2
