"""``--port-file``: the one line ``GRPC_PORT METRICS_PORT`` a server (or the supervisor of its workers) writes once
it serves, and removes when it stops. Shared by both, and light: the supervisor imports no gRPC."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path


def port_line(port: int, metrics_port: int) -> str:
    """What the port file holds."""
    return f"{port} {metrics_port}\n"


def is_port_file(data: bytes) -> bool:
    """Whether ``data`` is an empty file or a port file, which a new server may replace (nothing else is)."""
    parts = data.split()
    return not parts or (len(parts) == 2 and all(p.isdigit() for p in parts))


def write(path: Path, line: str) -> None:
    """Write ``line`` to ``path`` through a temporary file beside it, so a reader never sees half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(line)
    tmp.replace(path)


def remove(path: Path | None, line: str) -> None:
    """Remove ``path`` if it still holds ``line``: a script waiting for the next server's file must not read the
    ports of one that is gone, and a file another server has written since is not this one's to remove."""
    if path is not None:
        with contextlib.suppress(OSError):
            if path.read_text() == line:
                path.unlink()


def names_live_server(path: Path, host: str) -> bool:
    """Whether the gRPC port that the port file ``path`` names accepts a connection on ``host``: a server that
    still runs there (one that was killed left the file behind, and nothing listens on its port)."""
    try:
        port = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    target = "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host.strip("[]")
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except (OSError, OverflowError, ValueError):
        return False
