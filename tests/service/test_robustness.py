"""Deadlines, the heuristic fallback, and load shedding over a real server."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from dispatch.candidates import CandidateConfig
from dispatch.features import AGENT_FEATURES
from dispatch.model import INPUTS, OUTPUT, ModelManifest, manifest_path, sha256_bytes
from dispatch.snapshot import Snapshot
from service.client import DispatchClient, response_to_action
from service.server import ServerConfig, ThreadedServer


def write_failing_model(path: Path) -> Path:
    """A model that loads, passes its manifest check and scores one courier, but fails on any larger snapshot."""
    from onnx import TensorProto, helper, numpy_helper

    from dispatch.features import CANDIDATE_FEATURES

    fa, fc = len(AGENT_FEATURES), len(CANDIDATE_FEATURES)
    inputs = [
        helper.make_tensor_value_info(INPUTS[0], TensorProto.FLOAT, ["b", "n", fa]),
        helper.make_tensor_value_info(INPUTS[1], TensorProto.FLOAT, ["b", "n", "k", fc]),
        helper.make_tensor_value_info(INPUTS[2], TensorProto.BOOL, ["b", "n", "k"]),
    ]
    out = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, None)
    # Scores (b, n, k + 1) from the candidate features, then reshaped to the fixed shape (1, 1, k + 1): right
    # for the one courier the loader's probe scores, an ONNX Runtime error at run time for any more couriers.
    k = CandidateConfig().k
    consts = [
        numpy_helper.from_array(np.array([3], dtype=np.int64), "feat_axis"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "pair_axes"),
        numpy_helper.from_array(np.array([1, 1, k + 1], dtype=np.int64), "fixed"),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["cand", "feat_axis"], ["pair"], keepdims=0),
        helper.make_node("ReduceSum", ["cand", "pair_axes"], ["wait"], keepdims=1),
        helper.make_node("Reshape", ["wait", "fixed_wait"], ["wait3"]),
        helper.make_node("Concat", ["pair", "wait3"], ["scores"], axis=2),
        helper.make_node("Reshape", ["scores", "fixed"], [OUTPUT]),
    ]
    consts.append(numpy_helper.from_array(np.array([0, 0, 1], dtype=np.int64), "fixed_wait"))
    graph = helper.make_graph(nodes, "failing", inputs, [out], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    path.write_bytes(data)
    manifest_path(path).write_text(ModelManifest(name="failing", version="1", onnx_sha256=sha256_bytes(data)).to_json())
    return path


@pytest.fixture(scope="module")
def slow_server(model_dir: Path) -> Iterator[ThreadedServer]:
    """Batches held open 400 ms (a short deadline cannot wait for the model), queue of 3, fallback margin 100 ms."""
    cfg = ServerConfig(
        models=[("lin", model_dir / "lin.onnx"), ("failing", write_failing_model(model_dir / "failing.onnx"))],
        port=0,
        metrics_port=None,
        max_batch=64,
        max_queue_delay_ms=400,
        max_queue=3,
        fallback_margin_ms=100,  # generous: the machine running the tests may be heavily loaded
    )
    with ThreadedServer(cfg) as srv:
        yield srv


def test_near_deadline_answers_with_flagged_fallback(slow_server: ThreadedServer, snapshots: list[Snapshot]):
    snap = snapshots[0]
    with DispatchClient(slow_server.target) as client:
        waited = client.decide(snap, timeout=5.0)
        assert not waited.fallback and waited.timings.queue_us >= 300_000  # it did wait for the batch
        hinted = client.decide(snap, timeout=5.0, deadline_hint_ms=250)
        r = client.decide(snap, timeout=0.3)  # the gRPC deadline alone
    for resp in (hinted, r):
        assert resp.fallback and resp.fallback_reason == "deadline"
        response_to_action(resp, snap).check(snap)
        assert any(not a.wait for a in resp.actions)


def test_expired_deadline_is_reported_and_server_keeps_serving(slow_server: ThreadedServer):
    from bench.serve import synthetic_snapshot

    big = synthetic_snapshot(512, 2048)  # its candidate generation alone takes well over 5 ms
    with DispatchClient(slow_server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.decide(big, timeout=0.005)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert client.model_info().name == "linear"


def test_model_failure_answers_with_flagged_fallback(slow_server: ThreadedServer, snapshots: list[Snapshot]):
    with DispatchClient(slow_server.target) as client:
        for snap in snapshots[:2]:
            r = client.decide(snap, model_name="failing", include_scores=True)
            assert r.fallback and r.fallback_reason == "model_error" and r.model_name == "failing"
            response_to_action(r, snap).check(snap)
            assert any(not a.wait for a in r.actions)
        assert not client.decide(snapshots[0], model_name="lin").fallback
    registry = slow_server.server.metrics.registry
    assert registry.get_sample_value(
        "dispatch_fallbacks_total", {"model": "failing", "version": "1", "reason": "model_error"}
    ) == pytest.approx(2)


def test_full_queue_sheds_with_resource_exhausted(slow_server: ThreadedServer, snapshots: list[Snapshot]):
    snap = snapshots[0]
    with DispatchClient(slow_server.target) as client, cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.decide, snap, timeout=10.0) for _ in range(8)]
        codes = []
        for f in futures:
            try:
                f.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                assert "--max-queue" in (exc.details() or "")
        assert codes.count(grpc.StatusCode.OK) >= 3
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert not client.decide(snap, timeout=10.0).fallback  # and it serves again once the queue drained
    shed = slow_server.server.metrics.registry.get_sample_value(
        "dispatch_shed_total", {"model": "linear", "version": "1"}
    )
    assert shed == codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_preparation_backlog_is_bounded(model_dir: Path):
    from bench.serve import synthetic_snapshot

    # Preparation on one thread (never inline), where a backlog can build up.
    cfg = ServerConfig(
        models=[("lin", model_dir / "lin.onnx")],
        port=0,
        metrics_port=None,
        cpu_threads=1,
        max_queue=1,
        inline_max_cells=0,
    )
    snap = synthetic_snapshot(64, 256)  # milliseconds of candidate generation each
    with ThreadedServer(cfg) as srv, DispatchClient(srv.target) as client, cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.decide, snap, timeout=30.0) for _ in range(8)]
        answered = shed = 0
        for f in futures:
            try:
                assert not f.result().fallback
                answered += 1
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "waiting for preparation (--max-queue)" in (exc.details() or "")
                shed += 1
        assert answered >= 1 and shed >= 1 and answered + shed == 8


@pytest.mark.parametrize("rule", ["greedy", "mass", "mass-bundle"])
def test_nan_scores_answer_with_flagged_fallback(model_dir: Path, snapshots: list[Snapshot], rule: str):
    """A model whose scores are NaN is a model error: the rules alone would quietly make everyone wait."""
    from dispatch.linear_model import default_weights, write_linear_model

    w, _, v, c = default_weights()
    path = write_linear_model(
        model_dir / f"nan-{rule}.onnx", name="nan", weights=(w, float("nan"), v, c), conflict_rule=rule
    )
    cfg = ServerConfig(models=[("nan", path)], port=0, metrics_port=None)
    with ThreadedServer(cfg) as srv, DispatchClient(srv.target) as client:
        for snap in snapshots[:2]:
            r = client.decide(snap)
            assert r.fallback and r.fallback_reason == "model_error"
            response_to_action(r, snap).check(snap)
            assert any(not a.wait for a in r.actions)
