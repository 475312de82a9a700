"""Decide over a real server: the joint action is feasible and identical to the in-process policy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from dispatch.onnx_policy import OnnxPolicy
from dispatch.snapshot import Snapshot
from service.client import AsyncDispatchClient, DispatchClient, response_to_action, response_to_ids, snapshot_to_request
from service.gen.dispatch.v1 import dispatch_pb2 as pb
from service.server import ServerConfig, ThreadedServer


def test_same_joint_action_as_in_process_policy(server: ThreadedServer, snapshots: list[Snapshot], model_dir: Path):
    for slot, path in (("lin", "lin.onnx"), ("lin2", "lin2.onnx")):
        policy = OnnxPolicy(model_dir / path)
        with DispatchClient(server.target) as client:
            for i, snap in enumerate(snapshots):
                r = client.decide(snap, request_id=f"r{i}", model_name=slot)
                expected = policy.decide(snap).action.to_ids(snap)
                assert response_to_ids(r) == expected
                assert r.request_id == f"r{i}"
                assert (r.model_name, r.model_version) == (policy.manifest.name, policy.manifest.version)
                assert not r.fallback and r.conflict_rule == "greedy"


def test_table_and_list_forms_are_sized_alike_for_inline_preparation(snapshots: list[Snapshot]) -> None:
    """The inline/thread choice sizes a request by its orders and couriers, whichever form carries them
    (a table request once counted as empty and was always prepared on the event loop)."""
    from dispatch.candidates import CandidateConfig
    from service.server import preparation_cells

    for snap in snapshots:
        rows, tables = snapshot_to_request(snap), snapshot_to_request(snap, columnar=True)
        cells = preparation_cells(rows, CandidateConfig())
        assert cells == snap.n_orders * (snap.n_couriers + 32) > 0
        assert preparation_cells(tables, CandidateConfig()) == cells


def test_table_form_gives_the_same_answer(server: ThreadedServer, snapshots: list[Snapshot], model_dir: Path):
    """Couriers, orders and restaurants sent as columnar tables: the same snapshot, the same joint action."""
    policy = OnnxPolicy(model_dir / "lin.onnx")
    with DispatchClient(server.target) as client:
        for snap in snapshots:
            req = snapshot_to_request(snap, columnar=True, include_scores=True)
            assert not req.orders and req.order_table.id, "the table form sends no per-entity messages"
            tables, rows = client.decide(req), client.decide(snap, include_scores=True)
            assert response_to_ids(tables) == response_to_ids(rows) == policy.decide(snap).action.to_ids(snap)
            assert [(a.score, a.wait_score) for a in tables.actions] == [(a.score, a.wait_score) for a in rows.actions]


@pytest.mark.parametrize("where", ["threads", "processes"])
def test_every_preparation_path_gives_the_same_answer(model_dir: Path, snapshots: list[Snapshot], where: str):
    """Small snapshots are prepared and scored inline by default; force the thread pools, or a worker process."""
    policy = OnnxPolicy(model_dir / "lin.onnx")
    cfg = ServerConfig(
        models=[("lin", model_dir / "lin.onnx")],
        port=0,
        metrics_port=None,
        inline_max_cells=0,
        inline_max_agents=0,
        prep_processes=1 if where == "processes" else 0,
    )
    with ThreadedServer(cfg) as srv, DispatchClient(srv.target) as client:
        for snap in snapshots:
            assert response_to_ids(client.decide(snap)) == policy.decide(snap).action.to_ids(snap)
        with pytest.raises(grpc.RpcError) as err:
            client.decide(pb.DecideRequest(time=-1.0))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_joint_action_is_feasible_and_busy_couriers_wait(server: ThreadedServer, snapshots: list[Snapshot]):
    with DispatchClient(server.target) as client:
        for snap in snapshots:
            r = client.decide(snap)
            response_to_action(r, snap).check(snap)  # raises on any broken rule
            assert [a.courier_id for a in r.actions] == list(snap.courier_ids)
            given = [o for a in r.actions for o in a.order_ids]
            assert len(given) == len(set(given)), "an order was given twice"
            available = snap.available()
            for i, action in enumerate(r.actions):
                if not available[i]:
                    assert action.wait and not action.order_ids, f"busy courier {action.courier_id} was assigned"
            assert any(not a.wait for a in r.actions), "the policy should assign something on these snapshots"
            t = r.timings
            assert t.total_us >= t.queue_us + t.inference_us and t.total_us > 0


def test_scores_for_couriers_that_act(server: ThreadedServer, snapshots: list[Snapshot]):
    snap = snapshots[0]
    with DispatchClient(server.target) as client:
        r = client.decide(snap, include_scores=True)
        plain = client.decide(snap)
    available = snap.available()
    for i, a in enumerate(r.actions):
        assert a.HasField("score") == bool(available[i])
        if not a.wait:
            assert a.score > a.wait_score  # greedy only assigns above the wait score
    assert not any(a.HasField("score") for a in plain.actions)


def test_empty_snapshot_everyone_waits(server: ThreadedServer, snapshots: list[Snapshot]):
    req = snapshot_to_request(snapshots[0])
    del req.orders[:]
    with DispatchClient(server.target) as client:
        r = client.decide(req)
    assert all(a.wait for a in r.actions) and not r.fallback


def test_stream_answers_every_request_and_survives_a_bad_one(server: ThreadedServer, snapshots: list[Snapshot]):
    reqs = [snapshot_to_request(s, request_id=f"s{i}") for i, s in enumerate(snapshots)]
    bad = pb.DecideRequest(request_id="bad", time=float("nan"))
    with DispatchClient(server.target) as client:
        answers = client.decide_stream([*reqs[:2], bad, *reqs[2:]])
    errors = [a.error for a in answers if a.HasField("error")]
    ok = {a.response.request_id: a.response for a in answers if a.HasField("response")}
    assert len(errors) == 1 and errors[0].request_id == "bad"
    assert errors[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "time" in errors[0].message
    assert sorted(ok) == sorted(r.request_id for r in reqs)
    with DispatchClient(server.target) as client:
        for req in reqs:
            assert response_to_ids(ok[req.request_id]) == response_to_ids(client.decide(req))


def test_model_info_and_list(server: ThreadedServer):
    with DispatchClient(server.target) as client:
        info = client.model_info()
        assert (info.slot, info.name, info.version, info.is_default) == ("lin", "linear", "1", True)
        assert info.device == "cpu" and "CPUExecutionProvider" in info.providers
        assert len(info.candidate_features) == 16 and len(info.onnx_sha256) == 64
        assert client.model_info("lin2").version == "2"
        assert sorted(m.slot for m in client.list_models()) == ["lin", "lin2"]
        with pytest.raises(grpc.RpcError) as err:
            client.model_info("nope")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_selector_errors(server: ThreadedServer, snapshots: list[Snapshot]):
    with DispatchClient(server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.decide(snapshots[0], model_name="nope")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "model_name" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:
            client.decide(snapshots[0], model_name="lin", model_version="7")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "model_version" in (
            err.value.details() or ""
        )
        assert client.decide(snapshots[0], model_name="lin", model_version="1").model_version == "1"


def test_async_client_concurrent_calls(server: ThreadedServer, snapshots: list[Snapshot], model_dir: Path):
    policy = OnnxPolicy(model_dir / "lin.onnx")

    async def run() -> list[pb.DecideResponse]:
        async with AsyncDispatchClient(server.target) as client:
            return await asyncio.gather(*(client.decide(s) for s in snapshots * 4))

    responses = asyncio.run(run())
    for snap, r in zip(snapshots * 4, responses, strict=True):
        assert response_to_ids(r) == policy.decide(snap).action.to_ids(snap)


def test_reflection_lists_the_services(server: ThreadedServer):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"dispatch.v1.DispatchService", "dispatch.v1.ModelAdminService", "grpc.health.v1.Health"} <= services
        proto = db.FindFileContainingSymbol("dispatch.v1.DecideRequest")
        assert proto.package == "dispatch.v1"


def test_readme_client_example_runs(
    server: ThreadedServer, snapshots: list[Snapshot], capsys: pytest.CaptureFixture[str]
):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    serving = readme.split("## Serving", 1)[1]
    code = serving.split("```python\n", 1)[1].split("```", 1)[0]
    exec(code.replace("127.0.0.1:50051", server.target), {"snapshot": snapshots[0]})
    out = capsys.readouterr().out
    assert out.startswith("linear 1 False") and snapshots[0].courier_ids[0] in out


def test_a_lookahead_model_serves_as_in_process_and_busy_couriers_still_wait(
    model_dir: Path, snapshots: list[Snapshot], tmp_path: Path
) -> None:
    """Couriers about to be free are scored and may reserve orders; the answer commits idle couriers only."""
    from dispatch.candidates import CandidateConfig
    from dispatch.linear_model import write_linear_model

    model = write_linear_model(tmp_path / "ahead.onnx", name="ahead", candidates=CandidateConfig(lookahead=30))
    policy = OnnxPolicy(model)
    cfg = ServerConfig(models=[("ahead", model)], port=0, metrics_port=None)
    reserving = 0
    with ThreadedServer(cfg) as srv, DispatchClient(srv.target) as client:
        for snap in snapshots:
            decision = policy.decide(snap)
            assert decision.candidates is not None and decision.choice is not None
            committable = decision.candidates.committable
            assert committable is not None and not committable.all(), "the snapshots hold soon-free couriers"
            reserving += int((decision.choice[~committable] >= 0).sum())
            r = client.decide(snap, include_scores=True)
            assert response_to_ids(r) == decision.action.to_ids(snap)
            response_to_action(r, snap).check(snap)  # raises if a busy courier were committed
            # Scores only for couriers that could act now (the proto's promise), not for reservations.
            can_act = set(decision.candidates.agents[committable].tolist())
            assert {i for i, a in enumerate(r.actions) if a.HasField("score")} == can_act
    assert reserving > 0, "some soon-free courier reserved an order"


def test_a_mass_bundle_model_serves_as_in_process_with_bundles(tmp_path: Path) -> None:
    """The mass-bundle rule (and defer) over the wire: the same joint actions as in process, bundles among them."""
    from dispatch.candidates import CandidateConfig
    from dispatch.linear_model import write_linear_model
    from simulator.engine import Engine
    from simulator.instance import load

    model = write_linear_model(
        tmp_path / "mb.onnx", name="mb", candidates=CandidateConfig(lookahead=15, defer=4), conflict_rule="mass-bundle"
    )
    policy = OnnxPolicy(model)
    engine = Engine(load("5o50t100s1p125"))  # a loaded day: open orders outnumber the couriers deciding
    picked: list[Snapshot] = []
    while not engine.done and len(picked) < 3:
        snap = engine.snapshot()
        action = policy.decide(snap).action
        if any(len(a.orders) > 1 for a in action.assignments):
            picked.append(snap)
        engine.step(action)
    assert picked, "the loaded day should make the rule bundle"
    cfg = ServerConfig(models=[("mb", model)], port=0, metrics_port=None)
    with ThreadedServer(cfg) as srv, DispatchClient(srv.target) as client:
        for snap in picked:
            r = client.decide(snap, include_scores=True)
            assert r.conflict_rule == "mass-bundle" and not r.fallback
            assert response_to_ids(r) == policy.decide(snap).action.to_ids(snap)
            assert any(len(a.order_ids) > 1 for a in r.actions)
            response_to_action(r, snap).check(snap)


def test_a_plan_model_serves_as_in_process(tmp_path: Path) -> None:
    """The plan rule over the wire: the same joint actions as in process; soon-free couriers only reserve."""
    from dispatch.linear_model import write_linear_model
    from simulator.engine import Engine
    from simulator.instance import load
    from tests.helpers import make_instance

    model = write_linear_model(tmp_path / "plan.onnx", name="plan", conflict_rule="plan")
    policy = OnnxPolicy(model)
    engine = Engine(load("5o50t100s1p125"))
    picked: list[Snapshot] = []
    while not engine.done and len(picked) < 4:
        snap = engine.snapshot()
        decision = policy.decide(snap)
        committable = decision.candidates.committable if decision.candidates is not None else None
        if decision.action.assignments and committable is not None and not committable.all():
            picked.append(snap)
        engine.step(decision.action)
    assert picked, "a loaded day has epochs that send couriers while others are still busy"
    cfg = ServerConfig(models=[("plan", model)], port=0, metrics_port=None)
    with ThreadedServer(cfg) as srv, DispatchClient(srv.target) as client:
        for snap in picked:
            decision = policy.decide(snap)
            r = client.decide(snap, include_scores=True)
            assert r.conflict_rule == "plan" and not r.fallback
            assert response_to_ids(r) == decision.action.to_ids(snap)
            response_to_action(r, snap).check(snap)  # raises if a busy courier were committed
            assert decision.candidates is not None and decision.candidates.committable is not None
            can_act = set(decision.candidates.agents[decision.candidates.committable].tolist())
            assert {i for i, a in enumerate(r.actions) if a.HasField("score")} == can_act
        # An epoch with nothing to plan (no open order yet) is an answer, every courier waiting, not a fallback.
        quiet = Engine(make_instance([("R1", 0, 0)], [("later", 500, 0, 30, "R1", 40)], [("c1", 0, 0, 0, 300)]))
        r = client.decide(quiet.snapshot())
        assert not r.fallback and r.conflict_rule == "plan" and [a.wait for a in r.actions] == [True]
