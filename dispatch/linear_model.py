"""A linear dispatch scorer written straight as an ONNX graph (needs the ``onnx`` package, not torch).

It scores each candidate ``cand · w + b`` and ``wait`` as ``agent · v + c``. It is a transparent
baseline and the fixture the service and runtime tests load before any network is trained; the
default weights prefer early pickups and short routes, like ``nearest``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from dispatch.candidates import CandidateConfig
from dispatch.features import AGENT_FEATURES, CANDIDATE_FEATURES
from dispatch.model import INPUTS, OUTPUT, ModelManifest, manifest_path, sha256_bytes


def default_weights() -> tuple[np.ndarray, float, np.ndarray, float]:
    """Weights that rank candidates by pickup delay and route length; waiting scores low."""
    w = np.zeros(len(CANDIDATE_FEATURES), dtype=np.float32)
    w[CANDIDATE_FEATURES.index("pickup_from_now/10")] = -1.0
    w[CANDIDATE_FEATURES.index("route_minutes/10")] = -0.3
    w[CANDIDATE_FEATURES.index("max_overage/10")] = 0.5
    v = np.zeros(len(AGENT_FEATURES), dtype=np.float32)
    return w, 0.0, v, -20.0


def build_onnx(w: np.ndarray, b: float, v: np.ndarray, c: float) -> bytes:
    """The serialized ONNX graph of the linear scorer (opset 17, dynamic batch/courier/candidate axes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    fa, fc = len(AGENT_FEATURES), len(CANDIDATE_FEATURES)
    inputs = [
        helper.make_tensor_value_info(INPUTS[0], TensorProto.FLOAT, ["batch", "couriers", fa]),
        helper.make_tensor_value_info(INPUTS[1], TensorProto.FLOAT, ["batch", "couriers", "candidates", fc]),
        helper.make_tensor_value_info(INPUTS[2], TensorProto.BOOL, ["batch", "couriers", "candidates"]),
    ]
    output = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", "couriers", "candidates_plus_wait"])
    inits = [
        numpy_helper.from_array(np.asarray(w, dtype=np.float32).reshape(fc, 1), "w"),
        numpy_helper.from_array(np.array([b], dtype=np.float32), "b"),
        numpy_helper.from_array(np.asarray(v, dtype=np.float32).reshape(fa, 1), "v"),
        numpy_helper.from_array(np.array([c], dtype=np.float32), "c"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
        numpy_helper.from_array(np.array([-1e9], dtype=np.float32), "masked"),
    ]
    nodes = [
        helper.make_node("MatMul", ["cand", "w"], ["cw"]),
        helper.make_node("Squeeze", ["cw", "last_axis"], ["cw2"]),
        helper.make_node("Add", ["cw2", "b"], ["cs"]),
        helper.make_node("Where", ["cand_mask", "cs", "masked"], ["cs_masked"]),
        helper.make_node("MatMul", ["agent", "v"], ["av"]),
        helper.make_node("Add", ["av", "c"], ["ws"]),
        helper.make_node("Concat", ["cs_masked", "ws"], [OUTPUT], axis=-1),
    ]
    graph = helper.make_graph(nodes, "linear_dispatch_scorer", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="dispatch")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def write_linear_model(
    path: str | Path,
    name: str = "linear",
    version: str = "1",
    weights: tuple[np.ndarray, float, np.ndarray, float] | None = None,
    candidates: CandidateConfig | None = None,
    conflict_rule: str = "greedy",
) -> Path:
    """Write ``path`` (.onnx) and its manifest; returns the ONNX path."""
    data = build_onnx(*(weights or default_weights()))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    manifest = ModelManifest(
        name=name,
        version=version,
        candidates=candidates or CandidateConfig(),
        conflict_rule=conflict_rule,
        onnx_sha256=sha256_bytes(data),
        training={"kind": "linear-baseline"},
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    manifest_path(out).write_text(manifest.to_json())
    return out
