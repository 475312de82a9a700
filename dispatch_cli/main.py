"""``dispatch`` entry point. Each package registers its subcommands through a ``register`` function.

Registration modules must not import heavy dependencies (torch, grpc) at import time, so that
``dispatch --help`` and the torch-free serving image stay fast; the command's handler imports them.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

# Modules exposing ``register(subparsers) -> None``; missing optional ones are skipped.
COMMAND_MODULES = (
    "simulator.cli",
    "simulator.ops_cli",
    "training.cli",
    "training.dispatch.cli",
    "service.cli",
)


# A full, capped or read-only disk can fail any write of a long run; it is reported in one line, not a traceback.
# Libraries that wrap the error (pyarrow) keep only the words, so those are matched as well.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
STORAGE_WORDS = ("No space left on device", "Disk quota exceeded", "File too large", "Read-only file system")


def storage_problem(exc: OSError, args: argparse.Namespace) -> str | None:
    """The one-line report of a storage failure (naming the file, else the command's --out), or None."""
    if exc.errno not in STORAGE_ERRNOS and not any(word in str(exc) for word in STORAGE_WORDS):
        return None
    where = exc.filename or getattr(args, "out", None)
    return f"cannot write{f' {where}' if where else ''}: {exc.strerror or exc}"


def build_parser() -> argparse.ArgumentParser:
    """The full ``dispatch`` parser with every installed package's subcommands."""
    parser = argparse.ArgumentParser(
        prog="dispatch",
        description="Courier-dispatch decision service: simulate, log, train, export, serve, replay, A/B.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the chosen subcommand; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if (problem := storage_problem(exc, args)) is None:
            raise
        command = " ".join(filter(None, (args.command, getattr(args, "logs_command", None))))
        print(f"dispatch {command}: {problem}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
