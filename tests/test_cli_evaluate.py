"""``dispatch evaluate`` refuses bad input up front with one line naming the flag, and a broken model
(non-finite or wrongly shaped output) with one line naming the model, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from dispatch.features import AGENT_FEATURES, CANDIDATE_FEATURES
from dispatch.linear_model import write_linear_model
from dispatch.model import OUTPUT, ModelError, manifest_path, sha256_bytes
from dispatch.onnx_policy import OnnxPolicy
from dispatch.snapshot import JointAction
from dispatch_cli.main import main
from simulator.engine import Engine
from simulator.instance import load

DAY = "0o50t75s1p100"


def nan_model(folder: Path) -> Path:
    """The linear scorer with a NaN weight: every candidate score is NaN."""
    w = np.zeros(len(CANDIDATE_FEATURES), dtype=np.float32)
    w[0] = np.nan
    return write_linear_model(folder / "nan.onnx", weights=(w, 0.0, np.zeros(len(AGENT_FEATURES), np.float32), -1.0))


def short_output_model(folder: Path) -> Path:
    """The linear scorer without its wait column: output [batch, couriers, K] instead of K + 1."""
    path = write_linear_model(folder / "short.onnx")
    model = onnx.load_from_string(path.read_bytes())
    nodes = list(model.graph.node)
    concat = nodes.pop()
    assert concat.op_type == "Concat"
    where = next(n for n in nodes if n.op_type == "Where")
    where.output[0] = OUTPUT
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    data = model.SerializeToString()
    path.write_bytes(data)
    body = json.loads(manifest_path(path).read_text())
    manifest_path(path).write_text(json.dumps({**body, "onnx_sha256": sha256_bytes(data)}))
    return path


def mid_day_snapshot():  # type: ignore[no-untyped-def]
    engine = Engine(load(DAY))
    while True:
        snap = engine.snapshot()
        if snap.available().sum() >= 2 and snap.n_orders >= 2:
            return snap
        engine.step(JointAction())


@pytest.mark.parametrize(("make", "message"), [(nan_model, "NaN or infinite"), (short_output_model, "shape")])
def test_a_broken_model_is_a_model_error(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match=message):
        OnnxPolicy(make(tmp_path)).decide(mid_day_snapshot())


@pytest.mark.parametrize("jobs", ["1", "2"])  # in process, and from a worker process
def test_evaluate_names_a_broken_model(tmp_path: Path, capsys: pytest.CaptureFixture[str], jobs: str) -> None:
    model = nan_model(tmp_path)
    code = main(
        ["evaluate", "--model", str(model), "--instances", DAY, "--heuristics=", "--jobs", jobs, "--no-progress"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert str(model) in err and "NaN or infinite" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--heuristics", "nearest,bogus"], "--heuristics 'bogus'"),
        (["--jobs", "-2"], "--jobs"),
        (["--interval", "0"], "--interval must be at least 1, got 0"),
        (["--json", "{tmp}"], "is a folder"),
        (["--json", "/proc/runs.json"], "cannot write in /proc"),
        (["--instances", "nosuch"], "'nosuch'"),
        (["--instances", "seed99/*"], "'seed99/*'"),
    ],
)
def test_evaluate_refuses_bad_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    args = ["evaluate", "--instances", DAY, "--heuristics", "nearest", "--jobs", "1", "--no-progress"]
    code = main(args + [x.format(tmp=tmp_path) for x in extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_evaluate_decides_at_the_interval_it_is_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def ctd(*command: str) -> float:
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.json"
        assert main([*command, "--jobs", "1", "--no-progress", "--json", str(out)]) == 0
        (record,) = json.loads(out.read_text())
        return float(record["metrics"]["ctd_mean"])

    every_minute = ctd("evaluate", "--instances", DAY, "--heuristics", "reyes")
    every_three = ctd("evaluate", "--instances", DAY, "--heuristics", "reyes", "--interval", "3")
    assert every_three != every_minute  # the flag reaches the engine
    assert every_three == ctd("simulate", "--instance", DAY, "--policy", "reyes", "--interval", "3")
    capsys.readouterr()
