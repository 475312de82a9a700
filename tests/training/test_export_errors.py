"""``dispatch export`` checks --out, --metrics, --conflict-rule and the run folder first; nothing is left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dispatch.candidates import CandidateConfig
from dispatch_cli.main import main as dispatch
from simulator.logs.generate import generate


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained dispatch run."""
    root = tmp_path_factory.mktemp("xerr")
    generate(root / "logs", "mixed", ["0o50t75s1p100"], days=1, seed=0, jobs=1, progress=False)
    out = root / "run"
    argv = ["train", "--algo", "bc", "--data", str(root / "logs"), "--steps", "2", "--batch-size", "4",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert dispatch(argv) == 0
    return out


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    capsys.readouterr()
    assert dispatch(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_an_out_that_cannot_take_the_model_is_refused_and_nothing_is_written(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "p.json").mkdir()
    cases = {
        "m": "m is a folder; give the model file to write",
        "p.onnx": "p.json is a folder",
        "afile/x.onnx": "afile is a file, not a folder",
        "x.json": "must not end in .json",
    }
    before = _files(tmp_path)
    for out, message in cases.items():
        _refused(capsys, ["export", str(run), "--out", str(tmp_path / out)], f"--out {tmp_path / out}: ")
        _refused(capsys, ["export", str(run), "--out", str(tmp_path / out)], message)
    assert _files(tmp_path) == before


def test_export_replaces_an_earlier_export_and_never_another_file(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(run / "config.json", tmp_path / "config.json")
    (tmp_path / "manifest.json").write_text('{"format": "dispatch-logs"}')
    (tmp_path / "data.parquet").write_bytes(b"PAR1 not ours")
    (tmp_path / "torn.json").write_text('{"format": "dispatch-model", "name": ')  # not one a runtime reads
    cases = {
        "config.onnx": "config.json exists and is not part of an exported model",
        "manifest.onnx": "manifest.json exists and is not part of an exported model",
        "data.parquet": "data.parquet exists and is not part of an exported model",
        "torn.onnx": "torn.json exists and is not part of an exported model",
    }
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for out, message in cases.items():
        _refused(capsys, ["export", str(run), "--out", str(tmp_path / out)], message)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # An earlier export is replaced (the usual re-export), model and manifest together.
    model = tmp_path / "m.onnx"
    assert dispatch(["export", str(run), "--out", str(model), "--version", "1"]) == 0
    assert dispatch(["export", str(run), "--out", str(model), "--version", "2"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["version"] == "2"


def test_a_failed_write_leaves_no_temporary_file_nor_a_lone_manifest(tmp_path: Path) -> None:
    from training.dispatch.export import export
    from training.dispatch.nets import Scorer

    (tmp_path / "m.onnx").mkdir()  # the model's own name is taken by a folder: its rename fails
    with pytest.raises(ValueError, match=r"m\.onnx: cannot write"):
        export(Scorer(8), tmp_path / "m.onnx", "m", "1", CandidateConfig(k=4))
    assert _files(tmp_path) == {"m.onnx"}


def test_metrics_is_a_json_file_of_numbers(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        dispatch(["export", "--help"])
    assert "--metrics FILE" in capsys.readouterr().out
    bodies = {
        "bad.json": ("{bad", "not valid JSON"),
        "list.json": ("[1, 2]", "expected a JSON object of metric name → number, got list"),
        "str.json": ('{"ctd": "low"}', "metric 'ctd' is 'low', not a finite number"),
        "nan.json": ('{"ctd": NaN}', "metric 'ctd' is nan, not a finite number"),
    }
    out = tmp_path / "out" / "m.onnx"
    for name, (body, message) in bodies.items():
        (tmp_path / name).write_text(body)
        _refused(capsys, ["export", str(run), "--out", str(out), "--metrics", str(tmp_path / name)], message)
    _refused(capsys, ["export", str(run), "--out", str(out), "--metrics", str(tmp_path / "no.json")], "no such file")
    assert not out.parent.exists()
    (tmp_path / "ok.json").write_text('{"ctd": 21.5, "undelivered_pct": 0}')
    assert dispatch(["export", str(run), "--out", str(out), "--metrics", str(tmp_path / "ok.json")]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["metrics"] == {"ctd": 21.5, "undelivered_pct": 0.0}


def test_an_unknown_conflict_rule_is_refused(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    _refused(capsys, ["export", str(run), "--out", str(out), "--conflict-rule", "bogus"], "--conflict-rule 'bogus'")
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize("minutes", ["-1", "121"])
def test_a_lookahead_out_of_range_is_refused(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], minutes: str
) -> None:
    out = tmp_path / "m.onnx"
    _refused(capsys, ["export", str(run), "--out", str(out), "--lookahead", minutes], "--lookahead must be 0 to 120")
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_the_lookahead_reaches_the_manifest(run: Path, tmp_path: Path) -> None:
    """Under a per-courier rule: 15 for logs of idle couriers only; an explicit value, 0 included, wins."""
    rule = ["--conflict-rule", "mass-bundle"]
    for flags, want in (([], 15), (["--lookahead", "0"], 0), (["--lookahead", "7"], 7)):
        out = tmp_path / f"m{want}.onnx"
        assert dispatch(["export", str(run), "--out", str(out), *rule, *flags]) == 0
        assert json.loads(out.with_suffix(".json").read_text())["candidates"].get("lookahead", 0) == want


def test_the_default_plan_rule_takes_no_lookahead_or_defer(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plan chooses its own agents and when to commit: neither knob is recorded, and setting one is refused."""
    out = tmp_path / "m.onnx"
    assert dispatch(["export", str(run), "--out", str(out)]) == 0
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["conflict_rule"] == "plan"
    assert "lookahead" not in manifest["candidates"] and "defer" not in manifest["candidates"]
    for flag in ("--lookahead", "--defer"):
        other = tmp_path / "n.onnx"
        _refused(capsys, ["export", str(run), "--out", str(other), flag, "5"], f"{flag} does not apply to")
        assert not other.exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{broken", "config.json: not valid JSON"),
        ("[]", "config.json: not a training run config"),
        ('{"train": {}, "algo": {}}', "config.json: field 'train.data' is missing"),
    ],
)
def test_a_broken_run_config_is_named(
    config: str, message: str, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    (broken / "config.json").write_text(config)
    _refused(capsys, ["export", str(broken), "--out", str(tmp_path / "m.onnx")], f"{broken / message}")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x80\x02}q\x00."])
def test_a_garbage_checkpoint_is_one_line_naming_it(
    content: bytes, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    (broken / "checkpoint.pt").write_bytes(content)
    message = f"{broken / 'checkpoint.pt'}: not a checkpoint this code can read ("
    _refused(capsys, ["export", str(broken), "--out", str(tmp_path / "m.onnx")], message)
    assert not (tmp_path / "m.onnx").exists()


def test_lookahead_and_defer_out_of_range_are_refused_and_defaults_recorded(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    for flag in ("--lookahead", "--defer"):
        _refused(capsys, ["export", str(run), "--out", str(out), flag, "-1"], f"{flag} must be 0 to 120 minutes")
    assert not out.exists()
    rule = ["--conflict-rule", "mass-bundle"]
    assert dispatch(["export", str(run), "--out", str(out), *rule]) == 0
    candidates = json.loads(out.with_suffix(".json").read_text())["candidates"]
    assert (candidates["lookahead"], candidates["defer"]) == (15, 4)
    assert dispatch(["export", str(run), "--out", str(tmp_path / "n.onnx"), *rule, "--defer", "0"]) == 0
    assert "defer" not in json.loads((tmp_path / "n.json").read_text())["candidates"]
    assert dispatch(["export", str(run), "--out", str(tmp_path / "s.onnx"), *rule, "--defer", "7"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["candidates"]["defer"] == 7
