"""``--port-file``: the one line ``GRPC_PORT METRICS_PORT`` a server (or the supervisor of its workers) writes once
it serves, and removes when it stops. Shared by both, and light: the supervisor imports no gRPC."""

from __future__ import annotations

import contextlib
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
