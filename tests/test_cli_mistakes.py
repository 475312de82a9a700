"""Mistakes an operator makes at the command line: a renamed model, two models of one name, an output path
that names someone else's file, an empty path from an unset variable, a blank model version, --resume in the
wrong folder. Each either works as meant or is refused with one line naming the flag, and nothing is lost."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest

from dispatch.linear_model import write_linear_model
from dispatch.model import manifest_path
from dispatch_cli.main import main
from tests.helpers import dispatch, no_traceback

DAY = "0o50t75s1p100"
EVAL = ["evaluate", "--instances", DAY, "--heuristics=", "--jobs", "1", "--no-progress"]


def _copy_model(model: Path, to: Path) -> Path:
    """``model`` and its manifest under another name (the manifest goes to the name's .json)."""
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, to)
    shutil.copyfile(manifest_path(model), manifest_path(to))
    return to


def test_evaluate_runs_a_model_whatever_its_file_is_called(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_linear_model(tmp_path / "lin.onnx")
    renamed = _copy_model(model, tmp_path / "renamed")  # `dispatch export --out renamed` writes this pair
    shouting = _copy_model(model, tmp_path / "LOUD.ONNX")
    assert main([*EVAL, "--model", str(renamed), "--model", str(shouting), "--model", str(model)]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:] if line.strip()]
    assert rows[-3:] == ["renamed", "LOUD", "lin"]


def test_evaluate_labels_two_models_of_one_name_by_their_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_linear_model(tmp_path / "a" / "good.onnx")
    b = _copy_model(a, tmp_path / "b" / "good.onnx")
    assert main([*EVAL, "--model", str(a), "--model", str(b)]) == 0
    out = capsys.readouterr().out
    assert str(a) in out and str(b) in out


@pytest.mark.parametrize(("twice", "message"), [(True, "given twice"), (False, "is a heuristic's name")])
def test_evaluate_refuses_an_ambiguous_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, twice: bool, message: str
) -> None:
    model = write_linear_model(tmp_path / "m.onnx")
    if twice:
        args = ["--model", str(model), "--model", str(model)]
    else:
        monkeypatch.chdir(tmp_path)
        _copy_model(model, tmp_path / "reyes")  # a model file that would run as the heuristic
        args = ["--model", "reyes"]
    assert main([*EVAL, *args]) == 2
    assert message in capsys.readouterr().err


def test_json_replaces_its_own_earlier_output_and_nothing_else(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"format": "dispatch-model", "name": "keep"}\n')
    base = ["simulate", "--instance", DAY, "--policy", "nearest", "--no-progress", "--json"]
    proc = dispatch(*base, manifest)
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc)
    assert f"--json {manifest}: exists and is not a metrics file; remove it or give another name" in proc.stderr
    assert manifest.read_text() == '{"format": "dispatch-model", "name": "keep"}\n'
    metrics = tmp_path / "metrics.json"
    for _ in range(2):  # written, then replaced by the rerun
        assert dispatch(*base, metrics).returncode == 0
        assert [r["policy"] for r in json.loads(metrics.read_text())] == ["nearest"]


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", "xor:ab_ba", "--steps", "5", "--out", ""],
        ["export", "runs/none", "--out", ""],
        ["ab", "--a", "nearest", "--b", "reyes", "--instances", DAY, "--out", " "],
        ["simulate", "--instance", DAY, "--json", ""],
        ["logs", "generate", "--instances", DAY, "--out", ""],
        ["serve", "--model", ""],
    ],
)
def test_an_empty_path_is_refused_naming_the_flag(args: list[str]) -> None:
    proc = dispatch(*args)
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc)
    flag = next(a for a, v in itertools.pairwise(args) if not v.strip())
    assert f"argument {flag}: an empty path" in proc.stderr


@pytest.mark.parametrize(
    ("flag", "value"), [("--version", ""), ("--version", "  "), ("--name", " "), ("--name", "x" * 5000)]
)
def test_export_refuses_a_name_or_version_no_server_would_load(tmp_path: Path, flag: str, value: str) -> None:
    out = tmp_path / "m.onnx"
    proc = dispatch("export", tmp_path / "run", "--out", out, flag, value)
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc)
    assert f"dispatch export: {flag} " in proc.stderr and "must be 1 to 4096 characters, not blank" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_resume_in_a_folder_without_a_run_says_so(tmp_path: Path) -> None:
    proc = dispatch("train", "--data", "xor:ab_ba", "--steps", "5", "--resume", "--out", tmp_path / "typo")
    assert proc.returncode == 0, proc.stderr
    assert f"--resume: {tmp_path / 'typo'} holds no run yet; starting a new one" in proc.stderr
    again = dispatch("train", "--data", "xor:ab_ba", "--steps", "10", "--resume", "--out", tmp_path / "typo")
    assert again.returncode == 0, again.stderr
    assert "holds no run yet" not in again.stderr


def test_a_batch_that_does_not_fit_in_memory_is_named_and_blocks_no_rerun(tmp_path: Path) -> None:
    out = tmp_path / "run"
    huge = dispatch("train", "--data", "xor:ab_ba", "--steps", "2", "--batch-size", str(10**12), "--out", out)
    assert huge.returncode == 1, huge.stderr
    no_traceback(huge)
    assert f"out of memory at --batch-size {10**12}" in huge.stderr and "smaller --batch-size" in huge.stderr
    assert not (out / "config.json").exists()  # nothing trained, nothing to resume: the folder takes a new run
    again = dispatch("train", "--data", "xor:ab_ba", "--steps", "5", "--no-tensorboard", "--out", out)
    assert again.returncode == 0, again.stderr
