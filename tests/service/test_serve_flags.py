"""``dispatch serve`` refuses bad flags and unbindable addresses in one line naming the flag, never a traceback.

Flag values are refused by the parser (exit status 2, before any model is read); addresses that cannot
be bound and an unwritable --port-file make the command exit 2 with a ``cannot start`` line.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatch_cli.main import build_parser
from tests.service.helpers import ROOT, env

SERVE = [sys.executable, "-m", "dispatch_cli.main", "serve"]


def _serve(*flags: str, command: list[str] = SERVE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command, *flags], env=env(), cwd=ROOT, capture_output=True, text=True, timeout=90)


def _refused(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--port", "70000", "must be 0-65535"),
        ("--port", "-5", "must be 0-65535"),
        ("--metrics-port", "70000", "must be -1 to 65535"),
        ("--max-couriers", "-1", "must be >= 1"),
        ("--max-batch", "0", "must be >= 1"),
        ("--cpu-threads", "-1", "must be >= 0"),
        ("--max-message-mb", "4096", "must be > 0 and <= 2047"),
        ("--grace", "nan", "finite number >= 0"),
        ("--watch", "-1", "must be 0-86400 (0: off; else at least 0.1)"),
        # A poll every nanosecond keeps a core busy while idle; one past a day never reloads.
        ("--watch", "1e-9", "must be 0 (off) or 0.1-86400"),
        ("--watch", "1e6", "must be 0-86400"),
        # Every request would wait this long for a batch, hence hang until its deadline.
        ("--max-queue-delay-ms", "1e12", "must be 0-1000"),
        ("--max-queue-delay-ms", "inf", "finite number 0-1000"),
        ("--max-order-pairs", "0", "must be >= 1"),
        ("--log-level", "bogus", "invalid choice"),
    ],
)
def test_bad_flag_values_are_refused_naming_the_flag(flag: str, value: str, needle: str):
    # The model does not exist: the parser refuses the flag before anything reads it.
    out = _serve("--model", "missing.onnx", flag, value)
    _refused(out, f"argument {flag}: ", needle)
    assert value in out.stderr or value.upper() in out.stderr


def test_boundary_values_are_accepted():
    args = build_parser().parse_args(
        ["serve", "--model", "m.onnx", "--port", "65535", "--metrics-port", "-1", "--threads", "0",
         "--cpu-threads", "0", "--inline-max-cells", "0", "--max-batch", "1", "--max-queue", "1", "--grace", "0",
         "--watch", "0", "--fallback-margin-ms", "0", "--max-message-mb", "2047", "--log-level", "debug"]
    )  # fmt: skip
    assert (args.port, args.metrics_port, args.max_batch, args.grace, args.log_level) == (65535, -1, 1, 0.0, "DEBUG")
    upper = build_parser().parse_args(
        ["serve", "--model", "m.onnx", "--watch", "86400", "--max-queue-delay-ms", "1000", "--max-order-pairs", "1"]
    )
    assert (upper.watch, upper.max_queue_delay_ms, upper.max_order_pairs) == (86400.0, 1000.0, 1)
    assert build_parser().parse_args(["serve", "--model", "m.onnx", "--watch", "0.1"]).watch == 0.1
    for alias in ("warn", "fatal"):  # names the logging module accepts, as it did before the flag had choices
        assert (
            build_parser().parse_args(["serve", "--model", "m.onnx", "--log-level", alias]).log_level == alias.upper()
        )


@pytest.mark.parametrize("where", ["missing-folder/ports", "."])
def test_port_file_that_cannot_be_written_is_refused_before_loading(tmp_path: Path, where: str):
    out = _serve("--model", "missing.onnx", "--port", "0", "--port-file", str(tmp_path / where))
    _refused(out, "cannot start: --port-file")
    assert "missing.onnx" not in out.stderr  # refused before the model was looked at


@pytest.mark.parametrize("case", ["port", "metrics-port", "host", "metrics-host"])
def test_unbindable_addresses_are_refused_naming_the_flag(model_dir: Path, busy_port: int, case: str):
    flags, needle = {
        "port": (["--port", str(busy_port)], f"--port {busy_port} on 127.0.0.1: cannot bind"),
        "metrics-port": (["--metrics-port", str(busy_port)], f"--metrics-port {busy_port} on 127.0.0.1: cannot bind"),
        "host": (["--host", "999.1.1.1"], "--host 999.1.1.1: not a host name or address"),
        "metrics-host": (["--metrics-host", "999.1.1.1"], "--metrics-host 999.1.1.1: not a host name or address"),
    }[case]
    out = _serve("--model", str(model_dir / "lin.onnx"), "--port", "0", "--metrics-port", "0", *flags)
    _refused(out, f"cannot start: {needle}")


# The supervisor reserves the port first (a port held by another program is refused there: test_workers.py),
# so a worker that cannot bind is staged: the reservation is a plain listening socket the workers cannot share.
HELD_RESERVATION = """
import socket, sys
import service.supervisor
from dispatch_cli.main import main

def reserve(host, port):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock

if __name__ == "__main__":
    service.supervisor.reserve_port = reserve
    sys.exit(main(sys.argv[1:]))
"""


def test_worker_that_cannot_bind_stops_the_whole_command(model_dir: Path):
    out = _serve(
        "--model", str(model_dir / "lin.onnx"), "--workers", "2", "--port", "0", "--metrics-port", "-1",
        command=[sys.executable, "-c", HELD_RESERVATION, "serve"],
    )  # fmt: skip
    _refused(out, "cannot start: worker", "cannot bind")
    assert re.search(r"worker \d service\.server: cannot start: --port \d+ on 127\.0\.0\.1: cannot bind", out.stderr)
    pids = [int(p) for p in re.findall(r"worker \d started \(pid (\d+)\)", out.stderr)]
    assert len(pids) == 2 and not any(Path(f"/proc/{pid}").exists() for pid in pids), "orphaned workers"


def test_port_file_failing_after_the_models_loaded_is_refused(model_dir: Path, tmp_path: Path):
    (tmp_path / "ports.tmp").mkdir()  # passes the check up front; the server's write through ports.tmp fails
    out = _serve("--model", str(model_dir / "lin.onnx"), "--port", "0", "--metrics-port", "-1",
                 "--port-file", str(tmp_path / "ports"))  # fmt: skip
    _refused(out, f"cannot start: --port-file {tmp_path / 'ports'}: cannot write")


@pytest.mark.parametrize("bad", ["cert", "client-ca"])
def test_tls_files_that_are_not_pem_are_named(model_dir: Path, tmp_path: Path, bad: str):
    """gRPC reports a bad certificate only as a failed port; the server names the TLS flag instead."""
    junk = tmp_path / "junk.pem"  # PEM armour (the command line checks that much) around bytes that are no certificate
    junk.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    flags = ["--tls-cert", str(junk), "--tls-key", str(junk)]
    needle = f"--tls-cert {junk} / --tls-key {junk}: not a PEM certificate and its key"
    if bad == "client-ca":
        pytest.importorskip("cryptography", reason="cryptography (dev extra) makes a valid server certificate")
        from tests.service.test_security import _cert, _key, _write

        key = _key()
        cert = _cert("127.0.0.1", key, "127.0.0.1", key, san=True)
        flags = [
            "--tls-cert",
            str(_write(tmp_path / "c.pem", cert=cert)),
            "--tls-key",
            str(_write(tmp_path / "k.pem", key=key)),
        ]
        flags += ["--tls-client-ca", str(junk)]
        needle = f"--tls-client-ca {junk}: not a PEM CA certificate"
    out = _serve("--model", str(model_dir / "lin.onnx"), "--port", "0", "--metrics-port", "-1", *flags)
    _refused(out, f"cannot start: {needle}")
    assert "cannot bind" not in out.stderr


def test_a_second_server_on_a_busy_port_is_refused(model_dir: Path):
    """gRPC sets SO_REUSEPORT by default: a second lone server used to bind the same port and take half the calls."""
    from service.server import ServerConfig, ThreadedServer

    cfg = ServerConfig(models=[("first", model_dir / "lin.onnx")], port=0, metrics_port=None)
    with ThreadedServer(cfg) as first:
        try:
            out = subprocess.run(
                [*SERVE, "--model", str(model_dir / "lin.onnx"), "--port", str(first.port), "--metrics-port", "-1"],
                env=env(), cwd=ROOT, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail("a second server started on the first one's port")
    _refused(out, f"cannot start: --port {first.port} on 127.0.0.1: cannot bind")


def test_a_port_file_that_is_not_one_is_never_replaced(tmp_path: Path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"format": "dispatch-logs"}\n')
    out = _serve("--model", "missing.onnx", "--port", "0", "--port-file", str(manifest))
    _refused(out, f"cannot start: --port-file {manifest}: exists and is not a port file")
    assert manifest.read_text() == '{"format": "dispatch-logs"}\n'


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_stale_port_file_goes_as_the_server_starts(tmp_path: Path, workers: str):
    stale = tmp_path / "ports"
    stale.write_text("40001 40002\n")  # left by a server that was killed
    out = _serve(
        "--model", str(tmp_path / "missing.onnx"), "--port", "0", "--workers", workers, "--port-file", str(stale)
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr  # this one never served either
    assert not stale.exists()  # so a script waiting for its ports never read the dead server's


@contextlib.contextmanager
def _serving(model: Path, port_file: Path, stale: str = "") -> Iterator[str]:
    """A server of ``model`` writing ``port_file``; yields the file's line once it is the server's own (not
    ``stale``), then stops the server and checks it exited cleanly and removed the file."""
    proc = subprocess.Popen(
        [*SERVE, "--model", str(model), "--port", "0", "--metrics-port", "-1", "--port-file", str(port_file)],
        env=env(), cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if port_file.exists() and (line := port_file.read_text()) and line != stale:
                break
            time.sleep(0.1)
        yield port_file.read_text()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not port_file.exists()  # a server removes its own file as it stops


def test_a_live_servers_port_file_outlives_a_second_server_that_fails(model_dir: Path, tmp_path: Path):
    port_file = tmp_path / "ports"
    with _serving(model_dir / "lin.onnx", port_file) as ports:
        # A second server on the same file (a blue/green restart, say) that never serves: the live one's file stays.
        out = _serve("--model", str(tmp_path / "missing.onnx"), "--port", "0", "--port-file", str(port_file))
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert port_file.read_text() == ports


def test_a_stopped_server_removes_its_port_file_and_a_stale_one_is_not_read(model_dir: Path, tmp_path: Path):
    port_file = tmp_path / "ports"
    port_file.write_text("1 2\n")  # left by a server that did not stop cleanly
    with _serving(model_dir / "lin.onnx", port_file, stale="1 2\n") as line:
        port, metrics = line.split()
        assert port != "1" and metrics == "0"
