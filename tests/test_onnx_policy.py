"""Exported models: the manifest contract, ONNX Runtime policy, torch parity, torch-free runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dispatch.candidates import CandidateConfig, generate
from dispatch.features import encode
from dispatch.linear_model import write_linear_model
from dispatch.model import ModelError, load_manifest, manifest_path
from dispatch.onnx_policy import OnnxPolicy, pad_batch
from dispatch.snapshot import JointAction, Snapshot
from simulator.engine import Engine
from simulator.instance import load
from simulator.run import run_episode

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def linear(tmp_path: Path) -> Path:
    return write_linear_model(tmp_path / "linear.onnx")


def _mid_day_snapshots(name: str = "3o50t100s1p100", count: int = 3) -> list[Snapshot]:
    engine = Engine(load(name))
    out: list[Snapshot] = []
    while len(out) < count and not engine.done:
        snap = engine.snapshot()
        if snap.available().sum() >= 3 and snap.n_orders >= 3:
            out.append(snap)
        engine.step(JointAction())
    return out


def test_linear_model_dispatches_a_day_without_conflicts(linear: Path) -> None:
    result = run_episode(load("0o50t75s2p100"), OnnxPolicy(linear))
    assert result.metrics["undelivered_pct"] < 5.0
    assert result.metrics["delivered"] > 0


def test_corrupt_model_is_refused(linear: Path) -> None:
    data = bytearray(linear.read_bytes())
    data[len(data) // 2] ^= 0xFF
    linear.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="onnx_sha256"):
        OnnxPolicy(linear)


def test_manifest_fields_are_checked(linear: Path) -> None:
    path = manifest_path(linear)
    body = json.loads(path.read_text())
    for field, value, message in (
        ("feature_schema_version", 99, "feature_schema_version"),
        ("candidate_features", ["x"], "candidate_features"),
        ("conflict_rule", "coin-flip", "conflict_rule"),
        ("manifest_version", 99, "manifest_version"),
        ("format", "other", "format"),
        ("candidates", {**body["candidates"], "cover": body["candidates"]["k"]}, "candidates"),
        ("candidates", {**body["candidates"], "colour": 1}, "candidates"),
        ("candidates", {**body["candidates"], "k": 0}, "k must be at least 1"),
        ("candidates", [16], "candidates"),
        ("manifest_version", "one", "manifest_version"),
        ("metrics", [1, 2], "metrics"),
        ("training", "x", "training"),
    ):
        path.write_text(json.dumps({**body, field: value}))
        with pytest.raises(ModelError, match=message):
            load_manifest(linear)
    path.unlink()
    with pytest.raises(ModelError, match="manifest missing"):
        load_manifest(linear)


def test_manifest_names_cover_only_when_set(tmp_path: Path) -> None:
    """Runtimes from before ``cover`` refuse unknown candidate fields: a model without it must not carry one."""
    plain = json.loads(manifest_path(write_linear_model(tmp_path / "plain.onnx")).read_text())
    assert plain["candidates"] == {"k": 16, "max_bundle_size": 2, "max_ready_gap": 15}
    covered = write_linear_model(tmp_path / "covered.onnx", candidates=CandidateConfig(cover=4))
    assert json.loads(manifest_path(covered).read_text())["candidates"]["cover"] == 4
    assert load_manifest(covered).candidates == CandidateConfig(cover=4)


def test_cuda_is_refused_without_a_cuda_provider(linear: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        policy = OnnxPolicy(linear, device="cuda")  # a GPU machine: it must really be on CUDA
        assert "CUDAExecutionProvider" in policy.info.providers
    else:
        with pytest.raises(ModelError, match="cuda"):
            OnnxPolicy(linear, device="cuda")
        assert OnnxPolicy(linear, device="auto").info.device == "cpu"


def test_torch_export_matches_onnx_on_random_and_real_inputs(tmp_path: Path) -> None:
    import torch

    from dispatch.candidates import CandidateConfig
    from training.dispatch.export import export, parity
    from training.dispatch.nets import Scorer

    torch.manual_seed(0)
    scorer = Scorer(32)
    path = export(scorer, tmp_path / "m.onnx", "t", "1", CandidateConfig())
    rng = np.random.default_rng(0)
    for n, k in ((1, 1), (7, 16), (40, 9)):
        batch = {
            "agent": rng.normal(size=(2, n, 8)).astype(np.float32),
            "cand": rng.normal(size=(2, n, k, 16)).astype(np.float32),
            "cand_mask": rng.random((2, n, k)) > 0.3,
        }
        assert parity(scorer, path, batch) <= 1e-5
    snaps = _mid_day_snapshots()
    encoded = [encode(s, generate(s)) for s in snaps]
    assert parity(scorer, path, pad_batch(encoded, 16)) <= 1e-5
    other = Scorer(32)  # other weights: what a wrong export would look like
    assert parity(other, path, pad_batch(encoded, 16)) > 1e-2


def test_parity_is_relative_beyond_a_logit_of_one(tmp_path: Path) -> None:
    """A model with large logits is held to float32's relative precision, a small one to 1e-5 absolute."""
    import torch

    from dispatch.candidates import CandidateConfig
    from training.dispatch.export import export, parity
    from training.dispatch.nets import Scorer

    torch.manual_seed(0)
    scorer = Scorer(32)
    path = export(scorer, tmp_path / "m.onnx", "t", "1", CandidateConfig())
    rng = np.random.default_rng(1)
    batch = {
        "agent": rng.normal(size=(2, 7, 8)).astype(np.float32),
        "cand": rng.normal(size=(2, 7, 16, 16)).astype(np.float32),
        "cand_mask": np.ones((2, 7, 16), dtype=bool),
    }
    with torch.no_grad():
        want = scorer.eval()(*(torch.from_numpy(batch[n]) for n in ("agent", "cand", "cand_mask"))).numpy()
    for p in scorer.parameters():  # the ONNX file keeps the old weights: every logit off by 0.1%
        p.data.mul_(1.001)
    with torch.no_grad():
        moved = scorer(*(torch.from_numpy(batch[n]) for n in ("agent", "cand", "cand_mask"))).numpy()
    scaled = np.abs(moved - want) / np.maximum(1.0, np.abs(moved))
    assert parity(scorer, path, batch) == pytest.approx(float(scaled.max()), rel=1e-3)


def test_a_lone_snapshot_batch_equals_its_row_of_a_padded_batch() -> None:
    from bench.serve import synthetic_snapshot

    snaps = [synthetic_snapshot(64, 256), synthetic_snapshot(7, 5, 2), *_mid_day_snapshots()]
    encoded = [encode(s, generate(s)) for s in snaps]
    assert any(e.cand.shape[1] == 16 for e in encoded)  # full width: the view path (narrower ones are padded)
    both = pad_batch(encoded, 16)
    for i, e in enumerate(encoded):
        alone = pad_batch([e], 16)
        n = e.agent.shape[0]
        # Full width goes to ONNX Runtime as views of the encoded arrays; narrower lists are padded copies.
        assert np.shares_memory(alone["cand"], e.cand) == (e.cand.shape[1] == 16)
        for name in ("agent", "cand", "cand_mask"):
            assert alone[name].shape == (1, n, *both[name].shape[2:])
            assert alone[name].dtype == both[name].dtype
            assert np.array_equal(alone[name][0], both[name][i, :n])


def test_onnx_model_runs_where_torch_cannot_be_imported(linear: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any 'import torch' now raises ImportError
        "from dispatch.onnx_policy import OnnxPolicy\n"
        "from simulator.instance import load\n"
        "from simulator.run import run_episode\n"
        f"r = run_episode(load('0o50t75s2p100'), OnnxPolicy({str(linear)!r}))\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(int(r.metrics['delivered']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) > 0


def test_sampled_policy_is_reproducible(linear: Path) -> None:
    inst = load("0o50t75s2p100")
    a = run_episode(inst, OnnxPolicy(linear, sample=True), seed=3).metrics
    b = run_episode(inst, OnnxPolicy(linear, sample=True), seed=3).metrics
    c = run_episode(inst, OnnxPolicy(linear, sample=True), seed=4).metrics
    assert a == b
    assert a != c


def _with(body: dict, field: str, value: object) -> dict:  # type: ignore[type-arg]
    """``body`` with one field (``candidates.x`` for a candidate field) set to ``value``."""
    out = json.loads(json.dumps(body))
    if field.startswith("candidates."):
        out["candidates"][field.split(".", 1)[1]] = value
    else:
        out[field] = value
    return out


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("candidates.k", 2**70, "'candidates.k' is 1180591620717411303424, more than the limit of 1024"),
        ("candidates.k", 10**8, "'candidates.k' is 100000000, more than the limit"),
        ("candidates.max_bundle_size", 5, "'candidates.max_bundle_size' is 5, more than the limit of 3"),
        ("candidates.max_ready_gap", 100000, "'candidates.max_ready_gap' is 100000, more than the limit of 240"),
        ("candidates.lookahead", 30, "lookahead 30 and defer 0 must be 0 under the 'plan' conflict rule"),
        ("candidates.defer", 4, "lookahead 0 and defer 4 must be 0 under the 'plan' conflict rule"),
        ("name", {"a": 1}, "field 'name' must be a string, got dict"),
        ("name", "", "field 'name' must not be empty"),
        ("name", "  ", "field 'name' must not be empty"),
        ("version", "", "field 'version' must not be empty"),
        ("version", 1, "field 'version' must be a string, got int"),
        ("agent_features", 5, "field 'agent_features' must be a list of strings, got int"),
        ("candidate_features", [1, 2], "field 'candidate_features' must be a list of strings"),
        ("agent_features", None, "field 'agent_features' must be a list of strings"),
        ("feature_schema_version", "1", "field 'feature_schema_version' must be an integer, got str '1'"),
        ("feature_schema_version", 1.0, "field 'feature_schema_version' must be an integer"),
        ("feature_schema_version", True, "field 'feature_schema_version' must be an integer"),
        ("conflict_rule", ["plan"], "field 'conflict_rule' must be a string, got list"),
        ("onnx_sha256", 5, "field 'onnx_sha256' must be a string, got int"),
        ("candidates", None, "field 'candidates' must be an object, got NoneType"),
        ("metrics", {"a": "x"}, "field 'metrics.a' must be a number, got str"),
        ("code_version", 3, "field 'code_version' must be a string"),
        ("created", [], "field 'created' must be a string"),
        ("manifest_version", -5, "field 'manifest_version' is -5, it must be at least 1"),
        ("inputs", ["x"], "field 'inputs'"),
        ("output", 7, "field 'output'"),
    ],
)
def test_manifest_values_are_typed_and_bounded(linear: Path, field: str, value: object, message: str) -> None:
    """Every field of a wrong type or out of bounds is a ModelError naming it, never a raw exception."""
    path = manifest_path(linear)
    body = json.loads(path.read_text())
    body["conflict_rule"] = "plan" if field in ("candidates.lookahead", "candidates.defer") else "greedy"
    path.write_text(json.dumps(_with(body, field, value)))
    with pytest.raises(ModelError) as err:
        OnnxPolicy(linear)
    assert message in str(err.value) and str(path) in str(err.value)


def test_manifest_bounds_are_inclusive(linear: Path) -> None:
    """The bounds themselves load and decide (k 1024, bundles of 3, a ready gap of 240 minutes); one more is refused."""
    path = manifest_path(linear)
    body = json.loads(path.read_text())
    limits = {"k": 1024, "max_bundle_size": 3, "max_ready_gap": 240}
    path.write_text(json.dumps({**body, "candidates": limits}))
    policy = OnnxPolicy(linear)
    assert policy.manifest.candidates == CandidateConfig(**limits)
    decision = policy.decide(_mid_day_snapshots(count=1)[0])
    assert decision.candidates is not None and decision.candidates.n_agents > 0
    for key, value in limits.items():
        path.write_text(json.dumps({**body, "candidates": {**limits, key: value + 1}}))
        with pytest.raises(ModelError, match=f"'candidates.{key}' is {value + 1}, more than the limit of {value}"):
            load_manifest(linear)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON (RecursionError"),
        (b'{"format": "dispatch-model", "k": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_unparsable_manifest_is_a_model_error(linear: Path, text: bytes, message: str) -> None:
    manifest_path(linear).write_bytes(text)
    with pytest.raises(ModelError, match=message.replace("(", r"\(")):
        load_manifest(linear)


def test_model_path_must_be_a_regular_file_under_the_cap(
    linear: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device, a FIFO or a folder is refused at once (not read until memory runs out), naming the path."""
    import os

    import dispatch.model

    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    for path in (Path("/dev/zero"), fifo, folder):
        with pytest.raises(ModelError, match="not a regular file") as err:
            OnnxPolicy(path)
        assert str(path) in str(err.value)
    with pytest.raises(ModelError, match="cannot read model"):
        OnnxPolicy(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match=r"cannot read model \(embedded null byte\)"):
        OnnxPolicy(tmp_path / "nul\0.onnx")
    monkeypatch.setattr(dispatch.model, "MAX_MODEL_BYTES", linear.stat().st_size - 1)
    with pytest.raises(ModelError, match=f"{linear}: model is {linear.stat().st_size} bytes, over the limit"):
        OnnxPolicy(linear)


def test_a_model_that_cannot_run_is_refused_at_load(tmp_path: Path) -> None:
    """The manifest is fine but the graph's output is the wrong shape: refused when loaded, not at every decision."""
    from tests.test_cli_evaluate import short_output_model

    with pytest.raises(ModelError, match="shape"):
        OnnxPolicy(short_output_model(tmp_path))
