"""One writer per output folder: an advisory lock that a second run on the same folder is refused by.

Runs that write a folder over minutes or hours (``logs generate``, ``train``) hold it for their whole
run. The lock is ``flock`` on a small file in the folder: the kernel drops it when the holder exits, so
a killed run never leaves the folder locked, and the file may stay behind harmlessly.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".lock"


class FolderBusy(ValueError):
    """Another process is writing the folder; the message names it and the holder's process id."""


@contextlib.contextmanager
def exclusive(folder: Path, flag: str) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (creating the folder); FolderBusy when another process holds it.

    ``flag`` is the option that named the folder (``--out``), for the message.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise FolderBusy(
                f"{flag} {folder}: in use by another run (process {holder}); "
                f"wait for it to end or choose another {flag}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
