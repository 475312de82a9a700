"""A/B and replay through the real gRPC service give what the same model gives in process."""

from __future__ import annotations

from pathlib import Path

from dispatch.linear_model import write_linear_model
from service.server import ServerConfig, ThreadedServer
from simulator.ab.run import ABConfig, run_ab
from simulator.policies import resolve
from simulator.run import run_episode
from simulator.sources import load_spec

INSTANCES = ("0o50t75s2p100", "3o50t100s1p100")


def test_ab_over_grpc_equals_in_process(tmp_path: Path) -> None:
    model = write_linear_model(tmp_path / "lin.onnx", name="lin")
    cfg = ServerConfig(models=[("lin", model)], port=0, metrics_port=0)
    with ThreadedServer(cfg) as srv:
        remote = f"grpc://{srv.target}/lin"
        run = run_ab(ABConfig(str(model), remote, INSTANCES), tmp_path / "ab", jobs=1, progress=False)
        assert run.complete
        assert run.identical  # every paired difference exactly zero: same decisions over the wire
        # And a whole day through the endpoint equals the in-process day, metric for metric.
        inst = load_spec(INSTANCES[0])
        over_wire = run_episode(inst, resolve(remote)).metrics
    in_process = run_episode(inst, resolve(str(model))).metrics
    assert over_wire == in_process
