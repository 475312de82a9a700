"""``dispatch call`` and the client library on bad input: one-line errors and exit 2, never an abort or traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dispatch_cli.main import main
from tests.service.helpers import env

PEM = b"-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n"
INSTANCE = "0o50t75s1p100"
CALL = [sys.executable, "-m", "dispatch_cli.main", "call", "--instance", INSTANCE]


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A file that looks like PEM (the errors under test come before gRPC parses it)."""
    path = tmp_path / "c.pem"
    path.write_bytes(PEM)
    return path


def _call(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    rc = main(["call", "--instance", INSTANCE, *flags])
    return rc, capsys.readouterr().err


def _subprocess(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run in a child: without the checks gRPC's C core aborts the whole process (SIGABRT)."""
    return subprocess.run(args, capture_output=True, text=True, env=env(), timeout=120)


@pytest.mark.parametrize("given", ["--tls-cert", "--tls-key"])
def test_call_client_cert_and_key_go_together(pem: Path, given: str) -> None:
    run = _subprocess([*CALL, "--tls-ca", str(pem), given, str(pem)])
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == "dispatch call: --tls-cert and --tls-key must be given together"


def test_library_client_refuses_a_cert_without_its_key_and_an_empty_target() -> None:
    code = (
        "from service.client import AsyncDispatchClient, DispatchClient\n"
        "for cls in (DispatchClient, AsyncDispatchClient):\n"
        "    for kw in ({'client_cert': b'c'}, {'client_key': b'k'}):\n"
        "        try:\n"
        "            cls('127.0.0.1:1', root_certificates=b'ca', **kw)\n"
        "        except ValueError as exc:\n"
        "            print('ValueError', exc)\n"
        "    try:\n"
        "        cls(' ')\n"
        "    except ValueError as exc:\n"
        "        print('ValueError', exc)\n"
    )
    run = _subprocess([sys.executable, "-c", code])
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 6 and all(line.startswith("ValueError") for line in lines)
    assert sum("together" in line for line in lines) == 4 and sum("target" in line for line in lines) == 2


def test_call_client_cert_needs_the_ca(pem: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _call(capsys, "--tls-cert", str(pem), "--tls-key", str(pem))
    assert rc == 2 and err.startswith("dispatch call: --tls-cert/--tls-key need --tls-ca") and err.count("\n") == 1


@pytest.mark.parametrize("flag", ["--tls-ca", "--tls-cert", "--tls-key", "--token-file"])
def test_call_missing_file_names_the_flag(
    flag: str, pem: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = {"--tls-ca": str(pem), "--tls-cert": str(pem), "--tls-key": str(pem)} if flag.startswith("--tls") else {}
    missing = tmp_path / "missing"
    flags[flag] = str(missing)
    rc, err = _call(capsys, *(x for kv in flags.items() for x in kv))
    assert rc == 2
    assert err == f"dispatch call: {flag} {missing}: no such file\n"


def test_call_unreadable_or_non_pem_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _call(capsys, "--tls-ca", str(tmp_path))
    assert rc == 2 and err == f"dispatch call: --tls-ca {tmp_path}: is a folder, not a file\n"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    rc, err = _call(capsys, "--tls-ca", str(garbage))
    assert rc == 2 and "--tls-ca" in err and "not a PEM file" in err
    empty = tmp_path / "token"
    empty.write_text("\n")
    rc, err = _call(capsys, "--token-file", str(empty))  # would otherwise send no credentials at all
    assert rc == 2 and err.startswith(f"dispatch call: --token-file {empty}:")


def test_call_unknown_instance(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["call", "--instance", "nosuch"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("dispatch call: instance 'nosuch'") and err.count("\n") == 1


@pytest.mark.parametrize("minute", ["-5", "99999999"])
def test_call_time_outside_the_day(minute: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["call", "--instance", "0o50t75s1p100", "--time", minute])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"dispatch call: --time {minute}: 0o50t75s1p100 has couriers from minute 0 to ")


def test_call_builds_synthetic_days(capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens on port 1: the snapshot was built (the synthetic day was accepted) and sending it failed.
    rc = main(["call", "--instance", "synthetic:3", "--target", "127.0.0.1:1", "--timeout", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("dispatch call: UNAVAILABLE")


@pytest.mark.parametrize("target", ["", "   "])
def test_call_blank_target(target: str) -> None:
    # A child process: gRPC's C core prints its "Source Location Trace" on the real stderr, not sys.stderr.
    run = _subprocess([*CALL, "--target", target])
    assert run.returncode == 2
    assert run.stderr == "dispatch call: --target must be host:port, got an empty string\n"


@pytest.mark.parametrize("timeout", ["nan", "inf", "-1", "0"])
def test_call_timeout_must_be_positive_and_finite(timeout: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _call(capsys, "--timeout", timeout)
    assert rc == 2 and err.startswith("dispatch call: --timeout must be")


@pytest.mark.parametrize(
    ("flag", "content", "message"),
    [
        ("--token-file", None, "no such file"),
        ("--token-file", "\n", "expected one line of text"),
        ("--tls-cert", "not a certificate", "not a PEM file (no -----BEGIN line)"),
        ("--tls-client-ca", None, "no such file"),
    ],
)
def test_serve_checks_credential_files_before_starting(
    flag: str, content: str | None, message: str, pem: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dispatch.linear_model import write_linear_model

    model = write_linear_model(tmp_path / "linear.onnx")
    path = tmp_path / "credential"
    if content is not None:
        path.write_text(content)
    tls = ["--tls-cert", str(pem), "--tls-key", str(pem)] if flag != "--token-file" else []
    args = ["serve", "--model", str(model), "--port", "0", "--metrics-port", "-1", *tls, flag, str(path)]
    for workers in ("1", "2"):
        assert main([*args, "--workers", workers]) == 2
        assert capsys.readouterr().err == f"dispatch serve: {flag} {path}: {message}\n"


@pytest.mark.parametrize("target", ["127.0.0.1:99999", "localhost:0"])
def test_call_refuses_a_port_that_is_not_one(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    from dispatch_cli.main import main

    assert main(["call", "--target", target]) == 2
    assert f"--target {target}: port {target.rsplit(':', 1)[1]} is not 1 to 65535" in capsys.readouterr().err
