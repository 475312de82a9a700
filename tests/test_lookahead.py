"""``CandidateConfig.lookahead``: couriers about to be free are agents that can reserve, never be committed.

Parameters as in tests.helpers.EASY: 100 m/min, service halves of 2 minutes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dispatch import assemble
from dispatch.candidates import CandidateConfig, generate
from dispatch.linear_model import write_linear_model
from dispatch.model import ModelError, load_manifest, manifest_path
from dispatch.onnx_policy import OnnxPolicy
from dispatch.snapshot import Snapshot
from simulator.engine import Engine, SimConfig
from simulator.instance import load
from simulator.run import run_episode
from tests.helpers import act, make_instance


def near_busy_far_idle() -> Snapshot:
    """t=2: ``near`` is busy until 9, one minute from R1; ``far`` is idle 15 minutes away; o2 is open."""
    inst = make_instance(
        [("R1", 0.0, 0.0)],
        [("o1", 0.0, -100.0, 0, "R1", 0), ("o2", 0.0, 100.0, 0, "R1", 20)],
        [("near", 0.0, 0.0, 0, 200), ("far", 1500.0, 0.0, 0, 200)],
    )
    eng = Engine(inst, SimConfig(dispatch_interval=2))
    # t=0: near at R1 takes o1 (ready at 0): pickup 2, leave 4, 1 min to o1 (arrive 5, drop 7), free at 9
    # at (0,-100).
    act(eng, {"near": ["o1"]})
    snap = eng.snapshot()
    assert snap.time == 2 and snap.courier_free_at.tolist() == [9, 0]
    return snap


def test_agents_within_the_lookahead_and_who_may_be_committed() -> None:
    snap = near_busy_far_idle()
    plain = generate(snap, CandidateConfig())
    assert plain.agents.tolist() == [1] and plain.committable is None
    short = generate(snap, CandidateConfig(lookahead=5))  # near is free at 9 > 2 + 5
    assert short.agents.tolist() == [1] and short.committable is not None and short.committable.tolist() == [True]
    ahead = generate(snap, CandidateConfig(lookahead=10))
    assert ahead.agents.tolist() == [0, 1]
    assert ahead.committable is not None and ahead.committable.tolist() == [False, True]
    # The busy agent's candidates start where and when it will be free: (0,-100) at 9, 1 min to R1.
    assert ahead.times.start_at.tolist() == [9, 2]
    assert ahead.times.travel_to_restaurant[0].tolist() == [1]


def test_a_reservation_blocks_the_order_and_is_not_executed() -> None:
    cands = generate(near_busy_far_idle(), CandidateConfig(lookahead=10))
    k = cands.k
    assert k == 1 and cands.mask.all()  # one bundle (o2) listed by both agents
    scores = np.array([[5.0, 0.0], [4.0, 0.0]])  # both want o2, the busy one more
    out = assemble.assemble(cands, scores, "greedy")
    assert out.choice.tolist() == [0, assemble.WAIT]  # near reserves o2, so far waits
    assert out.action.assignments == ()  # and nothing is executed this epoch
    scores[0, 0] = -1.0  # near prefers to wait: far takes o2
    out = assemble.assemble(cands, scores, "greedy")
    # o2 is the snapshot's only open order (index 0).
    assert [(a.courier, a.orders) for a in out.action.assignments] == [(1, (0,))]


def test_lookahead_is_validated_and_named_in_manifests_only_when_set(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lookahead"):
        CandidateConfig(lookahead=-1)
    with pytest.raises(ValueError, match="lookahead"):
        CandidateConfig(lookahead=10_000)
    assert "lookahead" not in CandidateConfig().to_dict()
    model = write_linear_model(tmp_path / "ahead.onnx", candidates=CandidateConfig(lookahead=15))
    body = json.loads(manifest_path(model).read_text())
    assert body["candidates"]["lookahead"] == 15
    assert load_manifest(model).candidates.lookahead == 15
    for bad, message in [(-3, "between 0 and"), (15.5, "15.5 is not an integer"), (True, "True is not an integer")]:
        manifest_path(model).write_text(json.dumps({**body, "candidates": {**body["candidates"], "lookahead": bad}}))
        with pytest.raises(ModelError, match=f"candidates.*lookahead: .*{message}"):
            load_manifest(model)
    for field, bad in [("k", -1), ("max_bundle_size", 2.0), ("max_ready_gap", -1)]:
        manifest_path(model).write_text(json.dumps({**body, "candidates": {**body["candidates"], field: bad}}))
        with pytest.raises(ModelError, match=f"candidates.*{field}"):
            load_manifest(model)


def test_numpy_integers_are_stored_as_plain_ints_for_the_manifest() -> None:
    cfg = CandidateConfig(k=np.int64(8), lookahead=np.int32(15))
    assert json.loads(json.dumps(cfg.to_dict())) == {"k": 8, "max_bundle_size": 2, "max_ready_gap": 15, "lookahead": 15}
    assert type(cfg.k) is int and type(cfg.lookahead) is int


def test_a_day_with_reservations_commits_only_idle_couriers(tmp_path: Path) -> None:
    """The engine refuses any assignment of a busy courier, so a whole day run is the check."""
    model = write_linear_model(tmp_path / "ahead.onnx", candidates=CandidateConfig(lookahead=15))
    policy = OnnxPolicy(model)
    seen_reservation = False
    result = run_episode(load("0o50t75s2p100"), policy)
    engine = Engine(load("0o50t75s2p100"))
    while not engine.done and not seen_reservation:
        decision = policy.decide(engine.snapshot())
        assert decision.candidates is not None and decision.choice is not None
        busy = ~decision.candidates.committable if decision.candidates.committable is not None else None
        seen_reservation = bool(busy is not None and (decision.choice[busy] >= 0).any())
        engine.step(decision.action)
    assert seen_reservation  # the day does exercise reservations
    assert result.metrics["delivered"] > 0


def test_reyes_soft_logs_reservations_of_couriers_not_yet_free(tmp_path: Path) -> None:
    """Logs made with a lookahead: busy agents' logged actions are reyes' reservations, never executed."""
    from simulator.logs.dataset import LogDataset
    from simulator.logs.generate import generate as generate_logs

    day = "4o50t75s1p100"
    manifest = generate_logs(
        tmp_path / "logs", "reyes-soft", [day], 1, cands=CandidateConfig(lookahead=15), progress=False
    )
    assert manifest["args"]["candidates"]["lookahead"] == 15
    ds = LogDataset(tmp_path / "logs")
    reserved = executed = 0
    for d in ds.day(ds.episodes[0]).decisions():
        committable = d.candidates.committable
        assert committable is not None
        assert committable.tolist() == d.snapshot.available()[d.candidates.agents].tolist()
        reserved += int((d.choice[~committable] >= 0).sum())
        # The logged (executed) action holds only couriers free at the epoch.
        assert all(d.snapshot.available()[a.courier] for a in d.action.assignments)
        executed += len(d.action.assignments)
    assert reserved > 0 and executed > 0
    # Without a lookahead the same recipe logs idle couriers only.
    generate_logs(tmp_path / "plain", "reyes-soft", [day], 1, progress=False)
    plain = LogDataset(tmp_path / "plain")
    for d in plain.day(plain.episodes[0]).decisions():
        assert d.snapshot.available()[d.candidates.agents].all()


def test_greedy_behaviour_follows_reyes_reservations() -> None:
    from simulator.behaviour import BehaviourPolicy
    from simulator.heuristics.reyes import ReyesPolicy

    behaviour = BehaviourPolicy("reyes-soft", CandidateConfig(lookahead=15), greedy=True)
    reyes = ReyesPolicy()
    engine = Engine(load("4o50t75s1p100"))
    followed = 0
    for _ in range(120):
        snap = engine.snapshot()
        held = reyes.decide(snap).reservations
        decision = behaviour.decide(snap)
        cands, choice = decision.candidates, decision.choice
        assert cands is not None and choice is not None
        row = {int(c): i for i, c in enumerate(cands.agents)}
        for a in held:
            i = row.get(a.courier)
            if i is not None and choice[i] >= 0:
                assert cands.bundles.members(int(cands.bundle[i, choice[i]])) == a.orders
                followed += 1
        engine.step(decision.action)
    assert followed > 0


def test_a_courier_not_yet_on_duty_starts_at_its_on_time() -> None:
    """A client may send free_at before on_time; candidate times must not start before the shift."""
    import dataclasses

    snap = near_busy_far_idle()  # t = 2
    early = dataclasses.replace(
        snap, courier_on_time=np.array([0, 10]), courier_free_at=np.array([9, 0]), courier_off_time=np.array([200, 200])
    )
    cands = generate(early, CandidateConfig(lookahead=10))
    assert cands.agents.tolist() == [0, 1]
    assert cands.times.start_at.tolist() == [9, 10]
    assert cands.committable is not None and not cands.committable.any()


def test_tools_without_reservation_support_refuse_a_lookahead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dispatch_cli.main import main
    from simulator.pettingzoo_env import DispatchParallelEnv

    with pytest.raises(ValueError, match="lookahead"):
        DispatchParallelEnv("0o50t75s2p100", candidate_config=CandidateConfig(lookahead=15))
    with pytest.raises(ValueError, match="defer"):
        DispatchParallelEnv("0o50t75s2p100", candidate_config=CandidateConfig(defer=4))
    logs = tmp_path / "logs"
    args = ["logs", "generate", "--recipe", "reyes-soft", "--instances", "0o50t75s2p100", "--lookahead", "15"]
    assert main([*args, "--out", str(logs), "--jobs", "1", "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "ope"
    code = main(["replay", str(logs), "--policy", "reyes-soft", "--mode", "ope", "--out", str(out), "--no-progress"])
    assert code == 2
    assert "lookahead" in capsys.readouterr().err


def early_and_ready_orders() -> Snapshot:
    # c1 at the restaurant at minute 0: o_late (ready at 30) would be reached 30 minutes early, o_now is ready.
    inst = make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[("o_late", 0, -200, 0, "R1", 30), ("o_now", 0, 300, 0, "R1", 0)],
        couriers=[("c1", 0, 0, 0, 120), ("c2", 0, 2000, 0, 120)],
    )
    return Engine(inst).snapshot()


def test_defer_turns_picks_reached_too_early_into_waits_and_holds_their_orders() -> None:
    snap = early_and_ready_orders()
    late, now = snap.order_ids.index("o_late"), snap.order_ids.index("o_now")
    singles = CandidateConfig(k=0, max_bundle_size=1)

    def slot(cands: assemble.CandidateSet, row: int, order: int) -> int:
        return int(np.flatnonzero(cands.bundle[row] == order)[0])  # singles: bundle index = order index

    for defer, c1_gets_late in ((0, True), (4, False), (40, True)):
        cands = generate(snap, replace(singles, defer=defer) if defer else singles)
        scores = np.full((2, cands.k + 1), -5.0)
        scores[:, cands.k] = 0.0
        scores[0, slot(cands, 0, late)] = 5.0  # c1 wants o_late; c2 wants it less, and o_now
        scores[1, slot(cands, 1, late)] = 4.0
        scores[1, slot(cands, 1, now)] = 3.0
        out = assemble.assemble(cands, scores, "greedy")
        got = {a.courier: a.orders for a in out.action.assignments}
        # Deferral is arrival + defer <= ready: 40 minutes never fit before minute 30, 4 do.
        assert (got.get(0) == (late,)) is c1_gets_late
        assert out.choice[0] == (slot(cands, 0, late) if c1_gets_late else assemble.WAIT)
        # A deferred order is held this epoch: c2 does not take it, and takes o_now (ready) as it would anyway.
        assert got.get(1) == (now,)


def test_defer_is_validated_and_named_in_manifests_only_when_set(tmp_path: Path) -> None:
    for bad in (-1, 10_000):
        with pytest.raises(ValueError, match="defer"):
            CandidateConfig(defer=bad)
    assert "defer" not in CandidateConfig().to_dict()
    model = write_linear_model(tmp_path / "d.onnx", candidates=CandidateConfig(defer=4))
    assert load_manifest(model).candidates.defer == 4
    assert OnnxPolicy(model).candidates(early_and_ready_orders()).defer == 4


@pytest.mark.parametrize("rule", assemble.ASSEMBLED)
def test_defer_waits_exactly_the_early_free_picks_under_every_rule(rule: str) -> None:
    """Against the definition: a free courier's pick reached ``defer`` or more minutes before the bundle is
    ready becomes a wait; every other pick, reservations included, and the rest of the action stay."""
    from bench.serve import synthetic_snapshot

    early = kept = 0
    for seed in range(6):
        snap = synthetic_snapshot(30, 60, seed)
        for cfg in (CandidateConfig(k=8, lookahead=15), CandidateConfig(k=6, max_bundle_size=3)):
            plain = generate(snap, cfg)
            deferring = replace(plain, defer=1 + seed % 5)
            scores = np.random.default_rng(seed).normal(size=(plain.n_agents, plain.k + 1)) * 3
            before = assemble.assemble(plain, scores, rule)
            after = assemble.assemble(deferring, scores, rule)
            after.action.check(snap)
            t = plain.times
            for i, c in enumerate(before.choice.tolist()):
                free = plain.committable is None or bool(plain.committable[i])
                if c == assemble.WAIT or not free:
                    assert after.choice[i] == c
                    continue
                b = int(plain.bundle[i, c])
                arrive = int(t.start_at[i]) + int(t.travel_to_restaurant[i, b]) + t.half_pickup
                too_early = arrive + deferring.defer <= int(plain.bundles.ready[b])
                assert after.choice[i] == (assemble.WAIT if too_early else c)
                early += too_early
                kept += not too_early
            waiting = {int(plain.agents[i]) for i in np.flatnonzero(after.choice != before.choice)}
            expected = tuple(a for a in before.action.assignments if a.courier not in waiting)
            assert after.action.assignments == expected
    assert early and kept  # both branches are exercised


def test_defer_boundary_and_sampling(tmp_path: Path) -> None:
    snap = early_and_ready_orders()
    late = snap.order_ids.index("o_late")
    cands = generate(snap, CandidateConfig(k=0, max_bundle_size=1))
    row = int(np.flatnonzero(cands.agents == snap.courier_ids.index("c1"))[0])
    slot = int(np.flatnonzero(cands.bundle[row] == late)[0])
    t = cands.times
    slack = int(cands.bundles.ready[late]) - (
        int(t.start_at[row]) + int(t.travel_to_restaurant[row, late]) + t.half_pickup
    )
    choice = np.full(cands.n_agents, assemble.WAIT, dtype=np.int64)
    choice[row] = slot
    assert assemble.defer_early(replace(cands, defer=slack), choice)[row] == assemble.WAIT
    assert assemble.defer_early(replace(cands, defer=slack + 1), choice)[row] == slot
    # OnnxPolicy(sample=True) samples instead of running a rule; it defers all the same: c1 (at the
    # restaurant) never leaves for o_late, though c2, far enough away not to be early, may take it.
    model = write_linear_model(tmp_path / "d.onnx", candidates=CandidateConfig(defer=slack))
    policy, c1 = OnnxPolicy(model, sample=True), snap.courier_ids.index("c1")
    sampled = set()
    for seed in range(20):
        policy.reset(seed)
        decision = policy.decide(snap)
        assert decision.choice is not None
        sampled.add(int(decision.choice[row]))
        assert (c1, (late,)) not in [(a.courier, a.orders) for a in decision.action.assignments]
    assert len(sampled) > 1  # the draws differ
