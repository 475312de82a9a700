"""``dispatch`` entry point. Each package registers its subcommands through a ``register`` function.

Registration modules must not import heavy dependencies (torch, grpc) at import time, so that
``dispatch --help`` and the torch-free serving image stay fast; the command's handler imports them.
"""

from __future__ import annotations

import argparse
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
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
