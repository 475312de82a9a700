"""``dispatch ab`` and ``dispatch replay`` on bad flags: one-line errors, exit 2, and no --out folder left behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from dispatch_cli.main import main
from simulator.ab.run import ABConfig, ABError, run_ab
from simulator.replay.days import instance_days
from simulator.replay.run import ReplayConfig, ReplayError, run_replay

DAY = "0o50t75s2p100"
AB = ["ab", "--a", "nearest", "--b", "nearest", "--instances", DAY, "--jobs", "1", "--no-progress"]
REPLAY = ["replay", "--instance", DAY, "--policy", "nearest", "--mode", "resim", "--no-progress"]


def _run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    rc = main(args)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--noise", "nan", "--noise must be"),
        ("--noise", "inf", "--noise must be"),
        ("--noise", "-1", "--noise must be"),
        ("--noise", "1e308", "--noise must be 0 to 10, got 1e+308"),  # overflowed the perturbation
        ("--alpha", "nan", "--alpha must be"),
        ("--jobs", "-1", "--jobs must be"),
        # Work sizes past their bound used to run out of memory after simulating (a 7 TiB bootstrap) or hang.
        ("--seeds", "1001", "--seeds must be 1 to 1000, got 1001"),
        ("--seeds", "100000000000", "--seeds must be 1 to 1000"),
        ("--bootstrap", "1000000000000", "--bootstrap must be 100 to 100000"),
    ],
)
def test_ab_refuses_bad_flags_before_any_work(
    flag: str, value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ab"
    rc, err = _run(capsys, [*AB, flag, value, "--out", str(out)])
    assert rc == 2 and err.startswith(f"dispatch ab: {message}") and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--samples", "100000000"], "--samples must be 1 to 10000"),
        (["--truth", "10001"], "--truth must be 0 (off) to 10000"),
        (["--pace", "recorded", "--speedup", "1e-9"], "--speedup must be a number >= 0.001"),
    ],
)
def test_replay_refuses_work_sizes_past_their_bound(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    rc, err = _run(capsys, [*REPLAY, *flags, "--out", str(out)])
    assert rc == 2 and err.startswith(f"dispatch replay: {message}") and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("value", ["nan", "0", "-2"])
def test_replay_rejects_a_nan_or_non_positive_speedup(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    rc, err = _run(capsys, [*REPLAY, "--pace", "recorded", "--speedup", value, "--out", str(out)])
    assert rc == 2 and err.startswith("dispatch replay: --speedup must be") and err.count("\n") == 1
    assert not out.exists()


def test_replay_names_the_bad_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(capsys, [*REPLAY, "--interval", "0", "--out", str(tmp_path / "r")])
    assert rc == 2 and err.startswith("dispatch replay: --interval must be >= 1")


@pytest.mark.parametrize("command", ["ab", "replay"])
@pytest.mark.parametrize("under_a_file", [False, True])
def test_out_that_cannot_be_a_folder(
    command: str, under_a_file: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = afile / "sub" if under_a_file else afile
    rc, err = _run(capsys, [*(AB if command == "ab" else REPLAY), "--out", str(out)])
    assert rc == 2 and err.startswith(f"dispatch {command}: --out {out}: ") and err.count("\n") == 1
    assert afile.read_text() == "x"


def test_unwritable_out_is_a_clean_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)  # a read-only parent, without needing a non-root user
    with pytest.raises(ABError, match=r"--out .*: cannot create or write it: Permission denied"):
        run_ab(ABConfig("nearest", "nearest", (DAY,)), tmp_path / "ab", progress=False)
    with pytest.raises(ReplayError, match=r"--out .*: cannot create or write it: Permission denied"):
        run_replay(ReplayConfig("nearest", ("resim",)), instance_days([DAY], "nearest"), tmp_path / "r", progress=False)


@pytest.mark.parametrize(
    "args",
    [
        ["ab", "--a", "nearest", "--b", "nearest", "--instances", DAY, "--instances", "nosuch", "--no-progress"],
        ["ab", "--a", "nearest", "--b", "nearest", "--instances", "synthetic:x", "--no-progress"],
        ["replay", "--instance", "nosuch", "--policy", "nearest", "--no-progress"],
    ],
)
def test_unknown_instance_fails_before_out_is_created(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Failing mid-run would leave a manifest naming the bad day, and that folder refuses the corrected command.
    out = tmp_path / "out"
    rc, err = _run(capsys, [*args, "--out", str(out)])
    assert rc == 2 and err.startswith(f"dispatch {args[0]}: instance ") and err.count("\n") == 1
    assert "Rerun" not in err and not out.exists()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ab_with_a_dead_endpoint_names_the_status(
    jobs: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker process must pass the service's status back, not a pickling error about gRPC's error object."""
    args = [a if a != "1" else jobs for a in AB]
    args[args.index("--a") + 1] = "grpc://127.0.0.1:1"
    rc, err = _run(capsys, [*args, "--out", str(tmp_path / "ab")])
    assert rc == 1 and "STOPPED" in err
    assert "grpc://127.0.0.1:1' at minute" in err and "UNAVAILABLE" in err and "pickle" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*AB[:2], "grpc://x:abc", *AB[3:]], "policy 'grpc://x:abc': expected grpc://host:port"),
        ([*REPLAY, "--baseline", "bogus"], "policy 'bogus' is not known"),
        ([*REPLAY[:4], "grpc://host-only", *REPLAY[5:]], "policy 'grpc://host-only': expected grpc://host:port"),
    ],
)
def test_bad_policy_specs_are_refused_before_the_out_folder(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    rc, err = _run(capsys, [*args, "--out", str(out)])
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not out.exists()
