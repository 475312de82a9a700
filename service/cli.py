"""``dispatch serve`` and ``dispatch call``: run the decision service, or ask one for a joint action.

Nothing heavy is imported here at import time (grpc, onnxruntime, the simulator): ``dispatch --help``
builds every parser, and the serving image must start fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulator.cli_paths import path_arg

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.server import ServerConfig

TOKEN_ENV = "DISPATCH_TOKEN"
# More worker processes than this is a typo, not a deployment: each one loads every model.
MAX_WORKERS = 64
MAX_MESSAGE_MB = 2047
# Every request waits up to this long for company in a batch: a longer hold is a typo (seconds for ms).
MAX_QUEUE_DELAY_MS = 1000
# --watch polls (stats every model file) this often: faster only burns a core, slower than a day never reloads.
MIN_WATCH_S = 0.1
MAX_WATCH_S = 86400


def _model_spec(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (slot named after the file stem)."""
    name, sep, path = text.partition("=")
    if not sep:
        whole = path_arg(text)
        return whole.stem, whole
    if not name:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH or PATH, got {text!r}")
    return name, path_arg(path)


def _weight(text: str) -> tuple[str, float]:
    name, sep, weight = text.partition("=")
    try:
        value = float(weight)
    except ValueError:
        value = -1.0
    if not sep or not name or not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT with a finite WEIGHT > 0, got {text!r}")
    return name, value


def _bounded(
    kind: type[int] | type[float], low: float, high: float | None = None, *, above: bool = False, note: str = ""
) -> Callable[[str], Any]:
    """An argparse ``type=`` for a finite number in [low, high] (in (low, high] when ``above``).

    ArgumentTypeError (argparse: exit status 2, ``argument --FLAG: ...``) names the allowed range,
    plus ``note`` (what the special values mean), for a non-number, NaN, infinity or a value outside it.
    """
    if above:
        allowed = f"> {low}" + (f" and <= {high}" if high is not None else "")
    elif high is not None:
        allowed = f"{low}-{high}" if low >= 0 else f"{low} to {high}"
    else:
        allowed = f">= {low}"
    allowed += f" {note}" if note else ""
    number = "a whole number" if kind is int else "a finite number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {number} {allowed}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {number} {allowed}, got {text}")
        if value < low or (above and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    return parse


def _watch_interval(text: str) -> float:
    """``--watch``: 0 (off) or a polling interval of MIN_WATCH_S to MAX_WATCH_S seconds."""
    note = f"(0: off; else at least {MIN_WATCH_S:g})"
    value = float(_bounded(float, 0, MAX_WATCH_S, note=note)(text))
    if 0 < value < MIN_WATCH_S:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or {MIN_WATCH_S:g}-{MAX_WATCH_S}, got {text}")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL")  # the names logging accepts


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of processes, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1 (one process, the default), got {value}")
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_WORKERS}, got {value} (more processes than cores only add memory: one per core is the "
            f"useful maximum)"
        )
    return value


def register(sub: Any) -> None:
    """Add ``serve`` and ``call`` to the ``dispatch`` parser."""
    s = sub.add_parser(
        "serve",
        help="serve ONNX dispatch models over gRPC (health, reflection, Prometheus metrics)",
        description="Run the gRPC decision service. The first --model is the default; --ab splits traffic, "
        "--shadow scores every request with a second model (logged and counted only). SIGTERM drains in-flight calls.",
    )
    s.add_argument(
        "--model",
        action="append",
        type=_model_spec,
        required=True,
        metavar="[NAME=]PATH",
        help="model slot (repeatable)",
    )
    s.add_argument("--host", default="127.0.0.1", help="gRPC bind address (default 127.0.0.1; 0.0.0.0 in containers)")
    s.add_argument(
        "--port",
        type=_bounded(int, 0, 65535, note="(0: a free one)"),
        default=50051,
        help="gRPC port (default 50051; 0 picks a free one)",
    )
    s.add_argument(
        "--metrics-port",
        type=_bounded(int, -1, 65535, note="(-1: off, 0: a free one)"),
        default=9464,
        help="Prometheus /metrics port (default 9464; -1: off)",
    )
    s.add_argument("--metrics-host", default="127.0.0.1", help="metrics bind address (default 127.0.0.1)")
    s.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="ONNX Runtime device (default cpu)")
    s.add_argument(
        "--threads",
        type=_bounded(int, 0, note="(0: the default)"),
        default=0,
        help="ONNX Runtime intra-op threads (default: usable cores, split among --workers)",
    )
    s.add_argument(
        "--cpu-threads",
        type=_bounded(int, 0, note="(0: the default)"),
        default=0,
        help="threads for validation/encoding/assembly (default: usable cores, split among --workers)",
    )
    s.add_argument(
        "--prep-processes",
        type=_bounded(int, 0, note="(0: threads)"),
        default=0,
        help="processes for candidate generation and encoding (default 0: threads; >0 uses several cores)",
    )
    s.add_argument(
        "--inline-max-cells",
        type=_bounded(int, 0, note="(0: never inline)"),
        default=32768,
        help="preparation size, orders x (couriers + 32) x (max bundle size - 1), up to which a request is "
        "prepared on the event loop, not a thread (default 32768: 64 couriers x 256 orders with pairs is 24576)",
    )
    s.add_argument(
        "--inline-max-agents",
        type=_bounded(int, 0, note="(0: never inline)"),
        default=128,
        help="couriers in a batch up to which the model runs on the event loop, not a thread (default 128)",
    )
    s.add_argument("--max-batch", type=_bounded(int, 1), default=32, help="snapshots per ONNX Runtime run (default 32)")
    s.add_argument(
        "--max-queue-delay-ms",
        type=_bounded(float, 0, MAX_QUEUE_DELAY_MS),
        default=0.0,
        help="hold a batch open this long for more snapshots (default 0: batch what waits while the model runs; "
        f"at most {MAX_QUEUE_DELAY_MS})",
    )
    s.add_argument(
        "--max-queue",
        type=_bounded(int, 1),
        default=256,
        help="requests waiting for preparation, and snapshots waiting for inference, before RESOURCE_EXHAUSTED "
        "(default 256)",
    )
    s.add_argument("--max-couriers", type=_bounded(int, 1), default=2000, help="couriers per request (default 2000)")
    s.add_argument("--max-orders", type=_bounded(int, 1), default=10000, help="orders per request (default 10000)")
    s.add_argument(
        "--max-restaurants", type=_bounded(int, 1), default=10000, help="restaurants per request (default 10000)"
    )
    s.add_argument(
        "--max-order-pairs",
        type=_bounded(int, 1),
        default=200_000,
        help="same-restaurant order pairs per request, the sum over restaurants of n*(n-1)/2 for n orders "
        "(default 200000: about a second of decision on one core in the worst case; see service/validation.py); "
        "for a model that bundles three orders (max_bundle_size 3, not the plan rule), the triples "
        "n*(n-1)*(n-2)/6 too",
    )
    s.add_argument(
        "--max-message-mb",
        # gRPC takes the byte count as a C int: 2048 MiB overflows it.
        type=_bounded(float, 0, MAX_MESSAGE_MB, above=True),
        default=16.0,
        help=f"largest request in MiB (default 16, at most {MAX_MESSAGE_MB})",
    )
    s.add_argument(
        "--fallback-margin-ms",
        type=_bounded(float, 0),
        default=10.0,
        help="answer with the heuristic when less than this is left of the deadline; it must cover assembly "
        "(default 10)",
    )
    s.add_argument(
        "--ab", action="append", type=_weight, default=[], metavar="NAME=WEIGHT", help="A/B arm (repeatable)"
    )
    s.add_argument("--shadow", metavar="NAME", help="slot that shadows the served model")
    s.add_argument(
        "--watch",
        type=_watch_interval,
        default=0.0,
        metavar="SECONDS",
        help=f"reload models whose files change, polling this often (default 0: off; else {MIN_WATCH_S:g} to "
        f"{MAX_WATCH_S} seconds)",
    )
    s.add_argument("--tls-cert", type=path_arg, help="server certificate (PEM); enables TLS")
    s.add_argument("--tls-key", type=path_arg, help="server private key (PEM)")
    s.add_argument("--tls-client-ca", type=path_arg, help="CA of client certificates; enables mutual TLS")
    s.add_argument("--token-file", type=path_arg, help=f"require this bearer token (default: ${TOKEN_ENV} when set)")
    s.add_argument(
        "--grace", type=_bounded(float, 0), default=10.0, help="seconds in-flight calls get at shutdown (default 10)"
    )
    s.add_argument("--port-file", type=path_arg, help="write 'GRPC_PORT METRICS_PORT' here once serving")
    s.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="server processes sharing the gRPC port (SO_REUSEPORT: the kernel spreads connections, so clients "
        "need several connections to use them all); a supervisor restarts crashed workers, drains them on "
        "SIGTERM, serves their summed metrics on --metrics-port and applies an admin reload received by one "
        "worker in all of them. Default 1: one process, no supervisor. See docs/serving.md",
    )
    s.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        help="logging level (default INFO; any case)",
    )
    s.set_defaults(handler=serve)

    c = sub.add_parser(
        "call",
        help="send one snapshot of an MDRP instance to a running service and print the joint action",
        description="Build the snapshot of an MDRP instance at minute --time (nobody assigned before), "
        "ask the service, print the answer as JSON.",
    )
    c.add_argument("--target", default="127.0.0.1:50051", help="host:port (default 127.0.0.1:50051)")
    c.add_argument(
        "--instance",
        default="0o100t100s1p100",
        help="MDRP instance name, folder or synthetic:SEED (default 0o100t100s1p100)",
    )
    c.add_argument("--time", type=int, help="minute of the snapshot (default: first order's placement + 20)")
    c.add_argument("--model", default="", help="model slot (default: the server's choice)")
    c.add_argument("--sticky-key", default="", help="A/B sticky key, e.g. a city id")
    c.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default 10)")
    c.add_argument("--tls-ca", type=path_arg, help="CA to verify the server (enables TLS)")
    c.add_argument("--tls-cert", type=path_arg, help="client certificate for mutual TLS")
    c.add_argument("--tls-key", type=path_arg, help="client key for mutual TLS")
    c.add_argument("--token-file", type=path_arg, help=f"bearer token file (default: ${TOKEN_ENV} when set)")
    c.set_defaults(handler=call)


def _token(path: Path | None) -> str | None:
    """The bearer token of ``--token-file`` (else ``$DISPATCH_TOKEN``); ValueError naming the flag when unusable."""
    data = _read_flag_file("--token-file", path)
    if data is None:
        return os.environ.get(TOKEN_ENV) or None
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        token = ""
    if not token or not token.isprintable():
        # An empty token would silently send (or require) no credentials at all; a binary one is no header value.
        raise ValueError(f"--token-file {path}: expected one line of text")
    return token


def _port_file_problem(path: Path) -> str | None:
    """Why the server could not write ``path`` (through a temporary file beside it), or None; an existing file
    is replaced only when it is an earlier port file (a server that did not stop cleanly leaves one)."""
    from service.portfile import is_port_file
    from simulator.writable import replace_problem

    folder = path.absolute().parent
    if not path.is_dir() and not folder.is_dir():
        return f"folder {folder} does not exist"  # the server writes the file, it makes no folders
    return replace_problem(path, is_port_file, "a port file")


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT (with ``--workers N`` > 1: a supervisor of N server processes)."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # credential files, checked before any worker starts or port opens
        _token(args.token_file)
        for flag, path in (
            ("--tls-cert", args.tls_cert),
            ("--tls-key", args.tls_key),
            ("--tls-client-ca", args.tls_client_ca),
        ):
            _read_flag_file(flag, path)
    except ValueError as exc:
        print(f"dispatch serve: {exc}", file=sys.stderr)
        return 2
    if args.port_file is not None and (problem := _port_file_problem(args.port_file)):
        # Otherwise found only once the models are loaded (with --workers: once every worker serves).
        print(f"dispatch serve: cannot start: --port-file {args.port_file}: {problem}", file=sys.stderr)
        return 2
    if args.port_file is not None:
        from service.portfile import names_live_server

        # A killed server's file would give a script waiting for this server the ports of one that is gone until
        # this one serves and writes its own. A live server's file stays: this one replaces it only once it serves.
        if not names_live_server(args.port_file, args.host):
            args.port_file.unlink(missing_ok=True)
    if args.workers > 1:
        from service.supervisor import Supervisor

        return Supervisor(args).run()

    import asyncio
    import threading

    from service.server import serve as run
    from service.worker import exit_despite_busy_threads

    before = set(threading.enumerate())
    try:
        code = asyncio.run(run(server_config(args)))
    except ValueError as exc:
        print(f"dispatch serve: {exc}", file=sys.stderr)
        return 2
    # A decision of a call cancelled at the end of the grace period would otherwise keep the process alive.
    exit_despite_busy_threads(code, before)
    return code


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig of parsed ``dispatch serve`` flags."""
    from service.server import ServerConfig
    from service.validation import Limits

    return ServerConfig(
        models=args.model,
        host=args.host,
        port=args.port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        metrics_host=args.metrics_host,
        device=args.device,
        threads=args.threads,
        cpu_threads=args.cpu_threads,
        prep_processes=args.prep_processes,
        inline_max_cells=args.inline_max_cells,
        inline_max_agents=args.inline_max_agents,
        max_batch=args.max_batch,
        max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue=args.max_queue,
        limits=Limits(args.max_couriers, args.max_orders, args.max_restaurants, args.max_order_pairs),
        max_message_bytes=max(1, int(args.max_message_mb * 1024 * 1024)),
        fallback_margin_ms=args.fallback_margin_ms,
        ab=dict(args.ab),
        shadow=args.shadow,
        watch_s=args.watch,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        token=_token(args.token_file),
        grace_s=args.grace,
        port_file=args.port_file,
    )


def instance_snapshot(instance: str, minute: int | None) -> Any:
    """The snapshot of an MDRP instance at the first epoch >= ``minute`` when nobody was assigned before."""
    from dispatch.snapshot import JointAction
    from simulator.engine import Engine
    from simulator.instance import InstanceError
    from simulator.sources import load_spec

    inst = load_spec(instance)
    # The last minute with a courier on shift: a later snapshot would have nobody to dispatch.
    last = int(inst.courier_off.max(initial=1)) - 1
    if minute is not None and not 0 <= minute <= last:
        raise InstanceError(f"--time {minute}: {inst.name} has couriers from minute 0 to {last}")
    engine = Engine(inst)
    target = engine.time + 20 if minute is None else minute
    while engine.time < target and not engine.done:
        engine.step(JointAction())
    return engine.snapshot()


def _call_problem(args: argparse.Namespace) -> str:
    """Why the flags of ``dispatch call`` cannot work ('' when they can), found before any file or socket.

    gRPC's C core aborts the whole process on a client certificate without its key (or the reverse),
    and prints a C stack trace for an empty target, so these are refused here.
    """
    from simulator.policies import port_problem

    if not args.target.strip():
        return "--target must be host:port, got an empty string"
    if problem := port_problem(args.target):
        return f"--target {args.target}: {problem}"
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        return f"--timeout must be a finite number of seconds > 0, got {args.timeout}"
    if (args.tls_cert is None) != (args.tls_key is None):
        return "--tls-cert and --tls-key must be given together"
    if args.tls_cert is not None and args.tls_ca is None:
        # --tls-ca is what turns TLS on (see its help); a certificate without it is a forgotten flag,
        # not a request to trust whatever the system's roots accept.
        return "--tls-cert/--tls-key need --tls-ca (mutual TLS verifies the server with that CA)"
    return ""


def _read_flag_file(flag: str, path: Path | None) -> bytes | None:
    """The bytes of a file given on the command line; ValueError naming the flag when it cannot be read."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{flag} {path}: is a folder, not a file") from None
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot read: {exc.strerror or exc}") from None
    if flag != "--token-file" and b"-----BEGIN" not in data:
        # gRPC would only log "Invalid cert chain file" and then fail every call as UNAVAILABLE.
        raise ValueError(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data


def call(args: argparse.Namespace) -> int:
    """Ask a running service for the joint action of one instance snapshot."""
    problem = _call_problem(args)
    if problem:
        print(f"dispatch call: {problem}", file=sys.stderr)
        return 2
    try:
        ca, cert, key = (
            _read_flag_file(flag, path)
            for flag, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key))
        )
        token = _token(args.token_file)
        if args.tls_cert is not None and args.tls_key is not None:
            from service.auth import check_pair

            check_pair(args.tls_cert, args.tls_key)
    except ValueError as exc:
        print(f"dispatch call: {exc}", file=sys.stderr)
        return 2

    import grpc

    from service.client import DispatchClient, response_to_ids
    from simulator.instance import InstanceError

    try:
        snapshot = instance_snapshot(args.instance, args.time)
    except InstanceError as exc:
        print(f"dispatch call: {exc}", file=sys.stderr)
        return 2
    client = DispatchClient(
        args.target,
        root_certificates=ca,
        client_cert=cert,
        client_key=key,
        token=token,
        timeout=args.timeout,
    )
    with client:
        try:
            r = client.decide(snapshot, request_id=f"{args.instance}@{snapshot.time}", model_name=args.model,
                              sticky_key=args.sticky_key)  # fmt: skip
        except grpc.RpcError as exc:
            print(f"dispatch call: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    out = {
        "request_id": r.request_id,
        "time": snapshot.time,
        "couriers": snapshot.n_couriers,
        "open_orders": snapshot.n_orders,
        "model": f"{r.model_name}:{r.model_version}",
        "fallback": r.fallback_reason if r.fallback else False,
        "server_us": r.timings.total_us,
        "assignments": {c: list(o) for c, o in response_to_ids(r).items()},
    }
    print(json.dumps(out, indent=1))
    return 0
