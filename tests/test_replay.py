"""Replay of logged and instance days: shadow agreement, re-simulation, off-policy estimates, failures."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from dispatch.candidates import CandidateConfig
from dispatch.policy import Decision, Policy
from dispatch.snapshot import Snapshot
from simulator.behaviour import BehaviourPolicy
from simulator.engine import RewardConfig, SimConfig
from simulator.instance import load
from simulator.logs.generate import generate
from simulator.logs.schema import FORMAT, SCHEMA_VERSION
from simulator.logs.writer import EpisodeRecorder
from simulator.policies import PolicySpecError, resolve
from simulator.replay.days import instance_days, log_days
from simulator.replay.ope import estimate, ope_day, resolve_target
from simulator.replay.run import STATUS, ReplayConfig, run_replay
from simulator.run import run_episode

INSTANCES = ["0o50t75s2p100", "1o50t75s2p100"]


@pytest.fixture(scope="module")
def noisy_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two stochastic days of nearest-noisy (ε = 0.1)."""
    out = tmp_path_factory.mktemp("logs") / "noisy"
    generate(out, "nearest-noisy", INSTANCES, days=1, seed=1, jobs=2, progress=False)
    return out


@pytest.fixture(scope="module")
def greedy_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One day logged by reyes-soft in greedy mode (the recipe without exploration)."""
    out = tmp_path_factory.mktemp("logs") / "greedy"
    inst = load(INSTANCES[0])
    rec = EpisodeRecorder(0)
    result = run_episode(inst, BehaviourPolicy("reyes-soft", greedy=True), seed=7, on_decision=rec.record)
    rec.finish(inst, "reyes-soft:greedy", 7, result)
    files = rec.write(out)
    args = {"sim": asdict(SimConfig()), "candidates": asdict(CandidateConfig()), "reward": asdict(RewardConfig())}
    manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "args": args, "episodes": {"0": {"files": files}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _replay(days, policy: str, modes: tuple[str, ...], out: Path, **kw):  # type: ignore[no-untyped-def]
    resolver = kw.pop("resolver", None)
    return run_replay(ReplayConfig(policy, modes, **kw), days, out, progress=False, resolver=resolver)


def test_shadow_of_the_greedy_policy_that_made_the_log_agrees_fully(greedy_log: Path, tmp_path: Path) -> None:
    days = log_days(greedy_log)
    for policy in ("reyes-soft:greedy", "reyes"):  # greedy behaviour is the heuristic itself
        run = _replay(days, policy, ("shadow",), tmp_path / policy)
        s = run.report["shadow"]  # type: ignore[index]
        assert s["decisions"] > 100 and s["agent_decisions"] > s["decisions"]
        assert s["per_courier_agreement"] == 1.0 and s["joint_agreement"] == 1.0
        assert s["worst"] == [] and s["errors"] == []
        assert json.loads((tmp_path / policy / "report.json").read_text())["complete"]
    other = _replay(days, "nearest", ("shadow",), tmp_path / "nearest").report["shadow"]  # type: ignore[index]
    assert other["per_courier_agreement"] < 1.0 and other["worst"]


def test_shadow_of_a_stochastic_log_with_its_recipe_and_seed_reproduces_it(noisy_log: Path, tmp_path: Path) -> None:
    days = log_days(noisy_log)
    same = _replay(days, "nearest-noisy", ("shadow",), tmp_path / "same").report["shadow"]  # type: ignore[index]
    assert same["joint_agreement"] == 1.0  # the recipe's own stream, reset with the logged seed
    greedy = _replay(days, "nearest-noisy:greedy", ("shadow",), tmp_path / "greedy").report["shadow"]  # type: ignore[index]
    assert 0.5 < greedy["per_courier_agreement"] < 1.0  # exploration is what differs


def test_resim_with_the_logging_policy_reproduces_the_logged_metrics(noisy_log: Path, tmp_path: Path) -> None:
    run = _replay(log_days(noisy_log), "nearest-noisy", ("resim",), tmp_path / "r")
    for m, v in run.report["resim"]["metrics"].items():  # type: ignore[index]
        assert v["diff"] == pytest.approx(0.0, abs=1e-9), m
    other = _replay(log_days(noisy_log), "reyes", ("resim",), tmp_path / "reyes").report["resim"]  # type: ignore[index]
    assert other["metrics"]["ctd_mean"]["diff"] != 0


def test_ope_of_the_behaviour_policy_recovers_its_logged_value(noisy_log: Path) -> None:
    days = log_days(noisy_log)
    target = resolve_target("nearest-noisy")
    res = [ope_day(d, target, 2, RewardConfig()) for d in days]
    logpi = np.concatenate([np.asarray(r["logpi"], dtype=np.float64) for r in res])
    logmu = np.concatenate([r["logmu"] for r in res])
    np.testing.assert_allclose(logpi, logmu, atol=1e-9)  # exact probabilities of the logged joint actions
    est = estimate(res)
    logged = float(np.mean(np.concatenate([r["reward"] for r in res])))
    for k in ("ips", "snips", "dr"):
        assert est[k]["low"] <= logged <= est[k]["high"], k
    assert est["ips"]["value"] == pytest.approx(logged)


@pytest.mark.parametrize("target", ["nearest@0.2", "nearest"])
def test_ope_estimators_cover_simulator_ground_truth(noisy_log: Path, target: str) -> None:
    res = [ope_day(d, resolve_target(target), 4, RewardConfig(), truth_samples=8) for d in log_days(noisy_log)]
    est = estimate(res)
    assert est["weights"]["ess"] > 50 and est["weights"]["support_ok"]  # usable weights, shared support
    for k in ("ips", "snips", "dr"):
        assert est[k]["covers_truth"], (k, est[k], est["truth"])
    # The truth differs from the behaviour's own value, so covering it is not just covering the logged mean.
    assert est["truth"] != pytest.approx(est["behaviour"]["value"], abs=1e-6)


def test_ope_flags_a_target_outside_the_logged_support(noisy_log: Path) -> None:
    # assignment proposes orders outside nearest-noisy's candidate lists: mass the log never covers.
    res = [ope_day(d, resolve_target("assignment@0.3"), 2, RewardConfig()) for d in log_days(noisy_log)]
    w = estimate(res)["weights"]
    assert not w["support_ok"] and w["mean_high"] < 1


def test_ope_needs_action_probabilities(tmp_path: Path) -> None:
    with pytest.raises(PolicySpecError, match="exposes no action probabilities"):
        resolve_target(str(tmp_path / "model.onnx"))
    assert resolve_target("reyes").epsilon == 0.0 and resolve_target("reyes-soft:greedy").epsilon == 0.0


class _Flaky:
    """``nearest-noisy`` that fails once a shared counter passes its limit (an endpoint going down)."""

    def __init__(self, counter: list[int], after: int) -> None:
        self.inner = resolve("nearest-noisy")
        self.name = "flaky"
        self.counter, self.after = counter, after

    def reset(self, seed: int) -> None:
        self.inner.reset(seed)

    def decide(self, snapshot: Snapshot) -> Decision:
        self.counter[0] += 1
        if self.counter[0] > self.after:
            raise ConnectionError("endpoint unavailable")
        return self.inner.decide(snapshot)


def test_failure_mid_replay_stops_without_report_then_resumes(noisy_log: Path, tmp_path: Path) -> None:
    days, out = log_days(noisy_log), tmp_path / "r"
    counter = [0]
    first_day = sum(1 for _ in days[0].logged.decisions())  # type: ignore[union-attr]

    def down(spec: str) -> Policy:
        return _Flaky(counter, after=first_day + 20)

    first = _replay(days, "nearest-noisy", ("shadow", "resim"), out, resolver=down)
    assert not first.complete and first.done == 1 and first.total == 4
    assert first.error is not None and "endpoint unavailable" in first.error and days[1].name in first.error
    assert not (out / "report.md").exists() and "INCOMPLETE" in (out / STATUS).read_text()

    second = _replay(days, "nearest-noisy", ("shadow", "resim"), out)
    assert second.complete and second.ran == 3 and not (out / STATUS).exists()
    assert second.report["shadow"]["joint_agreement"] == 1.0  # type: ignore[index]


def test_errors_within_tolerance_are_reported_not_fatal(noisy_log: Path, tmp_path: Path) -> None:
    from simulator.replay.shadow import ShadowConfig

    counter = [0]
    run = _replay(
        log_days(noisy_log)[:1],
        "flaky",
        ("shadow",),
        tmp_path / "r",
        shadow=ShadowConfig(max_errors=10_000),
        resolver=lambda spec: _Flaky(counter, after=50),
    )
    s = run.report["shadow"]  # type: ignore[index]
    assert run.complete and s["decisions"] == 50 and len(s["errors"]) > 100
    assert "endpoint unavailable" in s["errors"][0]["error"]


def test_instance_days_replay_against_their_baseline(tmp_path: Path) -> None:
    days = instance_days(INSTANCES[:1], baseline="reyes")
    run = _replay(days, "reyes", ("shadow", "resim"), tmp_path / "r")
    assert run.report["shadow"]["joint_agreement"] == 1.0  # type: ignore[index]
    assert all(v["diff"] == 0 for v in run.report["resim"]["metrics"].values())  # type: ignore[index]


def test_cli_replay_stops_cleanly_when_the_endpoint_is_down(
    noisy_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dispatch_cli.main import main

    out = tmp_path / "r"
    rc = main(["replay", str(noisy_log), "--policy", "grpc://127.0.0.1:1", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "STOPPED" in err and not (out / "report.md").exists()
    assert "UNAVAILABLE" in err and "skipping off-policy estimates" in err
    rc = main(["replay", "--instance", INSTANCES[0], "--policy", "nearest", "--mode", "resim", "--out", str(out / "i")])
    assert rc == 0 and (out / "i" / "report.md").is_file()


@pytest.mark.parametrize(("field", "value"), [("k", 16.0), ("lookahead", -1), ("nonsense", 1)])
def test_cli_replay_names_a_manifest_whose_candidates_the_runtime_refuses(
    greedy_log: Path, field: str, value: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from dispatch_cli.main import main

    logs = tmp_path / "logs"
    shutil.copytree(greedy_log, logs)
    body = json.loads((logs / "manifest.json").read_text())
    body["args"]["candidates"][field] = value
    (logs / "manifest.json").write_text(json.dumps(body))
    capsys.readouterr()
    assert main(["replay", str(logs), "--policy", "nearest", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "manifest field 'args'" in err and field in err and "\n" not in err, err
    assert not (tmp_path / "r").exists()


def test_recorded_pace_keeps_the_answers(greedy_log: Path, tmp_path: Path) -> None:
    from simulator.replay.shadow import ShadowConfig

    # 10^5 × the recorded pace: the day's ~13 hours of decisions are spaced over about half a second.
    run = _replay(log_days(greedy_log), "reyes", ("shadow",), tmp_path / "r", shadow=ShadowConfig("recorded", 1e5))
    assert run.report["shadow"]["joint_agreement"] == 1.0  # type: ignore[index]


def test_recipes_replay_with_the_candidates_of_their_log(tmp_path: Path) -> None:
    # With K = 2 the exploring couriers choose among fewer actions than with the default K = 16.
    logs = tmp_path / "k2"
    generate(logs, "nearest-noisy", INSTANCES[:1], days=1, seed=2, cands=CandidateConfig(k=2), progress=False)
    run = _replay(log_days(logs), "nearest-noisy", ("shadow",), tmp_path / "r", candidates=CandidateConfig(k=2))
    assert run.report["shadow"]["joint_agreement"] == 1.0  # type: ignore[index]
    other = _replay(log_days(logs), "nearest-noisy", ("shadow",), tmp_path / "k16")
    assert other.report["shadow"]["joint_agreement"] < 1.0  # type: ignore[index]


@pytest.mark.parametrize("interval", [1, 2])
def test_a_log_that_does_not_record_its_cadence_replays_at_the_one_it_was_logged_at(
    tmp_path: Path, interval: int
) -> None:
    logs = tmp_path / "logs"
    generate(
        logs, "nearest-noisy", INSTANCES[:1], days=1, seed=4, sim=SimConfig(dispatch_interval=interval), progress=False
    )
    assert [d.interval for d in log_days(logs)] == [interval]
    # The format lets a manifest leave the interval out; the epochs' times still say it.
    man = json.loads((logs / "manifest.json").read_text())
    del man["args"]["sim"]
    (logs / "manifest.json").write_text(json.dumps(man))
    days = log_days(logs)
    assert [d.interval for d in days] == [interval]
    run = _replay(days, "nearest-noisy", ("resim",), tmp_path / "r")
    assert run.report["resim"]["metrics"]["ctd_mean"]["diff"] == pytest.approx(0.0, abs=1e-9)  # type: ignore[index]
