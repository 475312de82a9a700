"""Bad seeds, unwritable outputs and unreadable inputs: each command refuses them up front with one line naming
the flag or file, and a late write failure keeps the results instead of losing them."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pytest

from simulator import cli as sim_cli
from simulator.seeds import MAX_SEED
from simulator.solution import ASSIGNMENTS, COURIERS, ORDERS, SolutionError, read
from simulator.writable import file_problem, folder_problem
from tests.helpers import dispatch, no_traceback

SMALL = "0o50t75s1p100"
# A folder nobody can create files in, root included (tests may run as root, which chmod does not stop).
UNWRITABLE = Path("/proc")


def test_writable_checks(tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert folder_problem(tmp_path / "new" / "deeper") is None
    assert file_problem(tmp_path / "new" / "out.json") is None
    assert folder_problem(a_file) == "exists and is not a folder"
    assert "is a file" in (folder_problem(a_file / "below") or "")
    assert "is a folder" in (file_problem(tmp_path) or "")
    assert "cannot write in /proc" in (file_problem(UNWRITABLE / "x.json") or "")
    assert "cannot write in /proc" in (folder_problem(UNWRITABLE / "runs") or "")
    assert file_problem(a_file / "m.json") == f"{a_file} is a file, not a folder"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert folder_problem(dangling) == f"{dangling} is a broken symbolic link"
    assert folder_problem(dangling / "sub") == f"{dangling} is a broken symbolic link"
    dangling.unlink()
    assert list(tmp_path.iterdir()) == [a_file]  # the probe leaves nothing behind, and creates no folder


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "--instance", SMALL, "--policy", "random", "--seed", "-1", "--out", "{out}"],
        ["evaluate", "--instances", SMALL, "--heuristics", "nearest", "--seed", str(MAX_SEED + 1)],
        ["logs", "generate", "--instances", SMALL, "--seed", "-2", "--out", "{out}"],
        ["train", "--data", "xor:ab_ba", "--seed", "99999999999999999999", "--out", "{out}"],
        ["train", "--data", "xor:ab_ba", "--data-seed", "-1", "--out", "{out}"],
    ],
)
def test_seeds_out_of_range_are_refused(args: list[str], tmp_path: Path) -> None:
    proc = dispatch(*[a.replace("{out}", str(tmp_path / "out")) for a in args], "--no-progress")
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc)
    assert "seed" in proc.stderr and f"0 to {MAX_SEED}" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["simulate", "--instance", SMALL, "--policy", "nearest", "--json", "/proc/m.json"], "--json"),
        (["simulate", "--instance", SMALL, "--policy", "nearest", "--out", "{file}"], "--out"),
        (["evaluate", "--instances", SMALL, "--heuristics", "nearest", "--json", "/proc/m.json"], "--json"),
        (["logs", "generate", "--instances", SMALL, "--out", "{file}"], "--out"),
        (["logs", "generate", "--instances", SMALL, "--out", "/proc/logs"], "--out"),
        (["train", "--data", "xor:ab_ba", "--steps", "5", "--out", "{file}/run"], "--out"),
    ],
)
def test_unwritable_outputs_are_refused_before_any_work(args: list[str], flag: str, tmp_path: Path) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    proc = dispatch(*[a.replace("{file}", str(a_file)) for a in args], "--no-progress")
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc)
    assert proc.stderr.count("\n") == 1 and flag in proc.stderr
    assert a_file.read_text() == "not a folder"


def test_logs_generate_refuses_a_number_of_days_that_is_a_typo(tmp_path: Path) -> None:
    proc = dispatch("logs", "generate", "--instances", SMALL, "--days", "100000000", "--out", tmp_path / "logs")
    assert proc.returncode == 2 and "--days must be at most 10000, got 100000000" in proc.stderr
    assert not (tmp_path / "logs").exists()


def test_logs_generate_names_the_flag_below_one() -> None:
    proc = dispatch("logs", "generate", "--instances", SMALL, "--k", "0", "--out", "/tmp/never-made")
    assert proc.returncode == 2
    assert "--k must be at least 1, got 0" in proc.stderr


def test_logs_generate_refuses_a_k_no_model_could_have(tmp_path: Path) -> None:
    # k = 100000 used to log fine, then need ~91 GB to train; no runtime loads a model past MAX_K.
    out = tmp_path / "logs"
    proc = dispatch("logs", "generate", "--instances", SMALL, "--k", "100000", "--out", str(out))
    assert proc.returncode == 2 and "--k must be at most 1024, got 100000" in proc.stderr
    no_traceback(proc)
    assert not out.exists()


def test_metrics_survive_a_json_write_that_fails_late(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    payload = [{"instance": SMALL, "metrics": {"ctd_mean": 31.5}}]
    assert sim_cli._write_json(UNWRITABLE / "late.json", payload, "evaluate") == 1
    err = capsys.readouterr().err
    assert "--json /proc/late.json: cannot write" in err
    kept = Path(err.rsplit("kept in ", 1)[1].strip())
    assert kept.parent == tmp_path and json.loads(kept.read_text()) == payload
    good = tmp_path / "sub" / "ok.json"
    assert sim_cli._write_json(good, payload, "evaluate") == 0
    assert json.loads(good.read_text()) == payload
    assert sorted(p.name for p in good.parent.iterdir()) == ["ok.json"]  # no temporary left beside it
    (tmp_path / "taken").mkdir()  # the final rename fails: the temporary copy must not stay behind
    assert sim_cli._write_json(tmp_path / "taken", payload, "evaluate") == 1
    assert not (tmp_path / ".taken.tmp").exists()


def test_binary_solution_file_is_a_solution_error(tmp_path: Path) -> None:
    for name in (ASSIGNMENTS, ORDERS, COURIERS):
        (tmp_path / name).write_text("header\n")
    (tmp_path / COURIERS).write_bytes(b"header\n\xff\xfe\x00garbage\n")
    with pytest.raises(SolutionError, match=f"{COURIERS}: not UTF-8"):
        read(tmp_path)


def test_absurd_layer_width_is_refused() -> None:
    proc = dispatch("train", "--data", "xor:ab_ba", "--steps", "5", "--set", "hidden=100000000000", "--out", "/tmp/x")
    assert proc.returncode == 2
    no_traceback(proc)
    assert "hidden: must be at most" in proc.stderr


def test_card_of_a_read_only_dataset_is_printed_not_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from simulator.logs import card

    folder = tmp_path / "logs"
    assert dispatch("logs", "generate", "--instances", SMALL, "--out", folder, "--no-progress").returncode == 0

    replace = card.os.replace

    def refuse(src: Path, dst: Path) -> None:
        if Path(dst).name != "CARD.md":
            return replace(src, dst)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(card.os, "replace", refuse)  # the card's final rename, as on a read-only folder
    args = argparse.Namespace(folder=str(folder))
    assert sim_cli.logs_card(args) == 1
    out, err = capsys.readouterr()
    assert out.startswith("# ") and "wait share" in out
    assert f"{folder}: cannot write CARD.md (Permission denied)" in err
    assert not (folder / "CARD.md.tmp").exists()


def test_reward_weights_that_would_overflow_a_day_are_refused() -> None:
    from simulator.engine import reward_config

    assert reward_config(["on_time=1e6"]).on_time == 1e6
    with pytest.raises(ValueError, match="on_time: '1e308' is beyond"):
        reward_config(["on_time=1e308"])


def test_synthetic_writer_takes_the_same_seeds(tmp_path: Path) -> None:
    from simulator import synthetic

    with pytest.raises(SystemExit) as stop:
        synthetic.main(["--write", str(tmp_path), "--seed", str(MAX_SEED + 1)])
    assert stop.value.code == 2 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", [["simulate", "--instance", SMALL], ["logs", "generate", "--instances", SMALL]])
def test_negative_jobs_are_refused(command: list[str], tmp_path: Path) -> None:
    proc = dispatch(*command, "--jobs", "-1", "--out", tmp_path / "out", "--no-progress")
    assert proc.returncode == 2
    no_traceback(proc)
    assert "--jobs must be >= 0 (0: usable cores), got -1" in proc.stderr
    assert not (tmp_path / "out").exists()


COMMANDS_WITH_OUT = {
    # command line before --out, and the marker file the command itself keeps in its folder (None: none)
    "simulate": (["simulate", "--instance", SMALL, "--policy", "nearest", "--jobs", "1"], None),
    "logs": (["logs", "generate", "--instances", SMALL, "--jobs", "1"], "manifest.json"),
    "train": (["train", "--algo", "bc", "--data", "xor:ab_ba", "--steps", "1"], "config.json"),
    "ab": (["ab", "--a", "nearest", "--b", "nearest", "--instances", SMALL, "--jobs", "1"], "ab.json"),
    "replay": (["replay", "--instance", SMALL, "--policy", "nearest", "--mode", "resim"], "replay.json"),
}


@pytest.mark.parametrize(
    ("command", "marker"),
    [
        (command, marker)
        for command, (_, own) in sorted(COMMANDS_WITH_OUT.items())
        for marker in ("ab.json", "replay.json", "manifest.json", "config.json")
        if marker != own  # resuming in its own folder is each command's own feature, tested with it
    ],
)
def test_no_command_writes_into_another_commands_output(command: str, marker: str, tmp_path: Path) -> None:
    # A replay used to replace an A/B's report.md in a shared --out; ab, replay and simulate wrote into datasets.
    argv, _ = COMMANDS_WITH_OUT[command]
    out = tmp_path / "out"
    out.mkdir()
    (out / marker).write_text('{"theirs": true}')
    proc = dispatch(*argv, "--out", str(out), "--no-progress")
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc)
    assert f"--out {out}: holds " in proc.stderr and f"({marker})" in proc.stderr, proc.stderr
    assert [p.name for p in out.iterdir()] == [marker] and (out / marker).read_text() == '{"theirs": true}'


def test_card_names_the_file_it_could_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "logs"
    assert dispatch("logs", "generate", "--instances", SMALL, "--out", folder, "--no-progress").returncode == 0
    (folder / "returns.png").mkdir()  # where the histogram goes: a folder cannot be replaced by a file
    assert sim_cli.logs_card(argparse.Namespace(folder=str(folder))) == 1
    out, err = capsys.readouterr()
    assert out.startswith("# ") and "wait share" in out
    assert f"{folder}: cannot write returns.png (" in err
    assert not (folder / "CARD.md").exists()
    assert sorted(p.name for p in folder.iterdir() if "tmp" in p.name) == []  # no temporary file left behind
