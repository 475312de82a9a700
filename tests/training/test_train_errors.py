"""``dispatch train`` refuses bad input with one line naming the flag, file or field, exit 2, before any write."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatch_cli.main import main as dispatch
from simulator.logs.dataset import LogDataset, LogError
from simulator.logs.generate import generate


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("terr") / "logs"
    generate(out, "mixed", ["0o50t75s1p100"], days=1, seed=0, jobs=1, progress=False)
    return out


def _train(data: Path | str, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--steps", "2", "--batch-size", "4", "--out", str(out), "--no-progress",
            "--no-tensorboard", *extra]  # fmt: skip


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> str:
    """Run argv; it must exit 2 with exactly one stderr line holding ``message``."""
    capsys.readouterr()
    assert dispatch(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("alpha=abc", "--set alpha: 'abc' is not a number"),
        ("alpha=nan", "--set alpha: 'nan' is not a finite number"),
        ("lr=inf", "--set lr: 'inf' is not a finite number"),
        ("hidden=abc", "--set hidden: 'abc' is not an integer"),
        ("hidden=1.5", "--set hidden: '1.5' is not an integer"),
        ("hidden=0", "--set hidden: must be at least 1, got 0"),
        ("lr=0", "--set lr: must be above 0"),
        ("shared=maybe", "--set shared: 'maybe' is not true or false"),
        ("foo=1", "--set foo: unknown setting for inspo (known: alpha, beta"),
        ("alpha", "--set expects KEY=VALUE, got 'alpha'"),
    ],
)
@pytest.mark.parametrize("source", ["logs", "game"])
def test_set_is_typed_and_checked_before_training(
    item: str, message: str, source: str, logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = logs if source == "logs" else "xor:ab_ba"
    _refused(capsys, _train(data, tmp_path / "run", "--set", item), message)
    assert not (tmp_path / "run").exists()


def test_set_values_reach_the_config_as_their_fields_types(logs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = _train(logs, out, "--set", "alpha=1", "--set", "hidden=8", "--set", "critic_target=mc")
    assert dispatch([*argv, "--set", "conditional_behaviour=false"]) == 0
    algo = json.loads((out / "config.json").read_text())["algo"]
    assert algo["alpha"] == 1.0 and isinstance(algo["alpha"], float)
    assert algo["hidden"] == 8 and algo["critic_target"] == "mc" and algo["conditional_behaviour"] is False


@pytest.mark.parametrize(
    ("algo", "params", "message"),
    [
        ("inspo", {"hidden": 0}, "hidden: must be at least 1"),
        ("inspo", {"alpha": 0.0, "beta_start": 0.0}, "alpha, beta_start: must not both be 0"),
        ("inspo", {"alpha": 0.0, "beta": 0.0}, "alpha, beta: must not both be 0"),
        ("inspo", {"expectile": 1.0}, "expectile: must be between 0 and 1"),
        ("inspo", {"alpha": "abc"}, "alpha: 'abc' is not a number"),
        ("bc", {"lr": -1.0}, "lr: must be above 0"),
        ("icq", {"polyak": 0.0}, "polyak: must be above 0 and at most 1"),
        ("omiga", {"alpha": 0.0}, "alpha: must be above 0"),
        ("omiga", {"critic_hidden": -3}, "critic_hidden: must be at least 1"),
    ],
)
def test_algorithm_configs_refuse_values_they_cannot_train_with(
    algo: str, params: dict[str, Any], message: str
) -> None:
    from training.algos import config_class

    config_class(algo)()  # the defaults pass
    with pytest.raises(ValueError, match=message):
        config_class(algo)(**params)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--steps", "0"),
        ("--steps", "-5"),
        ("--batch-size", "0"),
        ("--batch-size", "-1"),
        ("--ckpt-every", "0"),
        ("--eval-every", "0"),
        ("--stop-after", "-1"),
    ],
)
def test_numeric_flags_are_checked_up_front(
    flag: str, value: str, logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _refused(capsys, [*_train(logs, tmp_path / "run"), flag, value], f"{flag} must be at least")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("nosuchdir", "--data nosuchdir: no such folder (and not a GAME:DATASET spec"),
        ("nogame:ab", "--data nogame:ab: no such folder (and not a GAME:DATASET spec"),
        ("xor:nosuch", "--data xor:nosuch: xor has no dataset 'nosuch'"),
        ("", "--data is empty"),  # it used to mean the current folder
        ("  ", "--data is empty"),
    ],
)
def test_unknown_data_is_named_and_no_out_folder_is_made(
    data: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _refused(capsys, _train(data, tmp_path / "run"), message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--gamma", "0.9"), "--gamma applies to dispatch log datasets"),
        (("--device", "cuda"), "--device applies to dispatch log datasets"),
    ],
)
def test_dispatch_only_flags_on_a_game_are_usage_errors(
    extra: tuple[str, ...], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _refused(capsys, _train("xor:ab", tmp_path / "run", *extra), message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("source", ["logs", "game"])
def test_a_run_is_never_overwritten_nor_resumed_with_other_settings(
    source: str, logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = logs if source == "logs" else "xor:ab_ba"
    out = tmp_path / "run6"
    argv = _train(data, out, "--set", "hidden=8")
    assert dispatch(argv) == 0
    before = {p.name: p.read_bytes() for p in (out / "checkpoint.pt", out / "config.json")}
    _refused(capsys, argv, f"--out {out} already holds a training run; pass --resume to continue it")
    _refused(capsys, [*argv, "--resume", "--algo", "bc"], f"{out} was made with --algo inspo, not bc")
    _refused(capsys, [*_train(data, out, "--set", "hidden=16"), "--resume"], "--set hidden=8, not 16")
    _refused(capsys, [*argv, "--resume", "--steps", "1"], "--steps 1 is below the 2 steps")
    _refused(capsys, [*argv, "--resume", "--batch-size", "8"], f"{out} was made with --batch-size 4, not 8")
    assert {p.name: p.read_bytes() for p in (out / "checkpoint.pt", out / "config.json")} == before
    assert dispatch([*argv, "--resume", "--steps", "3"]) == 0  # the same settings continue it


def test_a_run_from_before_a_setting_existed_resumes_only_as_it_was_trained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose config predates the entropy annealing trained with a constant β: resuming must not switch it on."""
    out = tmp_path / "old"
    argv = _train("xor:ab_ba", out, "--set", "hidden=8", "--set", "beta_anneal_steps=0")
    assert dispatch(argv) == 0
    config = json.loads((out / "config.json").read_text())
    for key in ("beta_start", "beta_anneal_steps"):  # as the code before them wrote it
        del config["algo"][key]
    (out / "config.json").write_text(json.dumps(config))
    plain = _train("xor:ab_ba", out, "--set", "hidden=8")
    _refused(capsys, [*plain, "--resume", "--steps", "3"], "was made with --set beta_anneal_steps=0, not 600")
    assert dispatch([*argv, "--resume", "--steps", "3"]) == 0


def test_an_out_that_is_a_file_is_refused(logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    _refused(
        capsys, _train(logs, tmp_path / "notes.txt"), f"--out {tmp_path / 'notes.txt'}: exists and is not a folder"
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04 not a zip"])
@pytest.mark.parametrize("source", ["logs", "game"])
def test_a_garbage_checkpoint_is_one_line_naming_it(
    content: bytes, source: str, logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = _train(logs if source == "logs" else "xor:ab_ba", out)
    assert dispatch(argv) == 0
    (out / "checkpoint.pt").write_bytes(content)
    err = _refused(capsys, [*argv, "--resume"], "checkpoint.pt: not a checkpoint this code can read (")
    assert "weights_only" not in err


def _edit_manifest(logs: Path, dest: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    shutil.copytree(logs, dest, ignore=shutil.ignore_patterns(".cache"))
    man = json.loads((dest / "manifest.json").read_text())
    edit(man)
    (dest / "manifest.json").write_text(json.dumps(man))
    return dest


def _del_files(m: dict[str, Any]) -> None:
    del m["episodes"]["0"]["files"]


def _null_files(m: dict[str, Any]) -> None:
    m["episodes"]["0"]["files"] = None


def _del_sha(m: dict[str, Any]) -> None:
    del m["episodes"]["0"]["files"]["couriers"]["sha256"]


def _del_table(m: dict[str, Any]) -> None:
    del m["episodes"]["0"]["files"]["orders"]


def _list_episodes(m: dict[str, Any]) -> None:
    m["episodes"] = []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_del_files, "episode 0: field 'files' is missing or not an object"),
        (_null_files, "episode 0: field 'files' is missing or not an object"),
        (_del_sha, "episode 0: field 'files.couriers.sha256' is missing or not a string"),
        (_del_table, "episode 0: field 'files.orders' is missing or not an object"),
        (_list_episodes, "field 'episodes' is missing or not an object"),
    ],
)
def test_a_malformed_manifest_is_a_log_error_naming_the_field(
    edit: Callable[[dict[str, Any]], None],
    message: str,
    logs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = _edit_manifest(logs, tmp_path / "bad", edit)
    with pytest.raises(LogError, match=re.escape(f"manifest.json: {message}")):
        LogDataset(data)
    _refused(capsys, _train(data, tmp_path / "run"), f"{data / 'manifest.json'}: {message}")
    assert not (tmp_path / "run").exists()


def test_a_dataset_without_a_logged_day_is_refused(
    logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What an interrupted first generation leaves: a manifest with no episode."""
    data = _edit_manifest(logs, tmp_path / "empty", lambda m: m.update(episodes={}, complete=False))
    _refused(capsys, _train(data, tmp_path / "run"), f"{data / 'manifest.json'}: no logged day")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_of_other_shapes_is_one_line_naming_the_likely_cause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An older run whose config did not record what shaped its networks gets past the settings check."""
    out = tmp_path / "shapes"
    assert dispatch(_train("xor:ab_ba", out, "--set", "hidden=8")) == 0
    config = json.loads((out / "config.json").read_text())
    del config["algo"]["hidden"]
    (out / "config.json").write_text(json.dumps(config))
    err = _refused(capsys, [*_train("xor:ab_ba", out), "--resume", "--steps", "3"], "does not fit the networks")
    assert "observation size may have changed" in err


def test_a_resume_refuses_a_checkpoint_that_changed_while_it_started(tmp_path: Path) -> None:
    from training.harness import check_still_free, file_stamp

    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"step 250")
    (tmp_path / "config.json").write_text("{}")
    seen = file_stamp(checkpoint)  # what this run read before it waited for the folder's lock
    check_still_free(tmp_path, True, checkpoint, seen)  # unchanged: it resumes
    other = tmp_path / "other.pt"
    other.write_bytes(b"step 3000, written by a run that finished meanwhile")
    other.replace(checkpoint)  # as save_checkpoint writes: a new file renamed over the old one
    with pytest.raises(ValueError, match="another run wrote its checkpoint while this one started"):
        check_still_free(tmp_path, True, checkpoint, seen)
    with pytest.raises(ValueError, match="already holds a training run"):  # a fresh start finds the run
        check_still_free(tmp_path, False, checkpoint, None)
