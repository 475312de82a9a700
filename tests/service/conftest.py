"""Fixtures of the service tests: real models on disk, real snapshots, real servers on loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dispatch.linear_model import default_weights, write_linear_model
from dispatch.onnx_policy import OnnxPolicy
from dispatch.snapshot import Snapshot
from service.server import ServerConfig, ThreadedServer
from simulator.engine import Engine
from simulator.instance import load

INSTANCE = "0o100t100s1p100"
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the service tests after every other test of the session.

    Once gRPC has run in a process, a child forked from it can hang (gRPC's threads and locks do not
    survive fork). Every pool of the project spawns (``dispatch.workers.spawn_pool``); the order is a
    safeguard should a test or a library fork after all.
    """
    mine = [i for i in items if HERE in i.path.resolve().parents]
    if mine:
        items[:] = [i for i in items if HERE not in i.path.resolve().parents] + mine


def other_weights() -> tuple[np.ndarray, float, np.ndarray, float]:
    """Weights that rank candidates differently from the default (prefer bundles, ignore route length)."""
    w, b, v, c = default_weights()
    w = w.copy()
    w[:] = 0.0
    w[3] = 2.0  # bundle_size
    w[2] = -0.2  # pickup_from_now/10
    return w, b, v, c


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding lin (v1), lin2 (v2, other weights), and the A/B models a and b."""
    d = tmp_path_factory.mktemp("models")
    write_linear_model(d / "lin.onnx", name="linear", version="1")
    write_linear_model(d / "lin2.onnx", name="linear", version="2", weights=other_weights())
    write_linear_model(d / "a.onnx", name="arm_a", version="1")
    write_linear_model(d / "b.onnx", name="arm_b", version="1")
    return d


@pytest.fixture(scope="session")
def snapshots(model_dir: Path) -> list[Snapshot]:
    """Snapshots of a public MDRP day under the linear model, each with busy and available couriers."""
    policy = OnnxPolicy(model_dir / "lin.onnx")
    engine = Engine(load(INSTANCE))
    out = []
    while not engine.done and len(out) < 6:
        snap = engine.snapshot()
        avail = int(snap.available().sum())
        if 2 <= avail < snap.n_couriers and snap.n_orders >= 3:
            out.append(snap)
        engine.step(policy.decide(snap).action)
    assert len(out) >= 3, "the instance should yield snapshots with busy and available couriers"
    return out


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[ThreadedServer]:
    """A server with two slots (lin v1 default, lin2 v2) on a free loopback port."""
    cfg = ServerConfig(
        models=[("lin", model_dir / "lin.onnx"), ("lin2", model_dir / "lin2.onnx")], port=0, metrics_port=0
    )
    with ThreadedServer(cfg) as srv:
        yield srv
