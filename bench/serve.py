"""Serving benchmark: end-to-end gRPC latency and throughput next to raw ONNX Runtime on the same inputs.

The server runs as ``dispatch serve`` in its own process (so client and server do not share a GIL);
the client is one asyncio process keeping C calls in flight, over ``--channels`` connections (a
``--workers N`` server balances connections, not calls, so it needs several). Server CPU and memory
are summed over the server process and its descendants (the workers of ``--workers N``, the
``--prep-processes`` pools). Snapshots are synthetic (seeded): N
couriers (70% idle) and M open orders over M/4 restaurants in a 10 km square. In the same run it
times, in-process: ONNX Runtime ``run`` on the encoded snapshot (batch 1), the shared decision path
without the network (candidates + features + run + assembly = ``OnnxPolicy.decide``), and its
candidate generation alone. Prints Markdown tables. Usage: ``python -m bench.serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dispatch.onnx_policy import OnnxPolicy, pad_batch
from dispatch.snapshot import ServiceParams, Snapshot
from service.decision import prepare

ROOT = Path(__file__).resolve().parent.parent


def synthetic_snapshot(n_couriers: int, n_orders: int, seed: int = 0) -> Snapshot:
    """A busy city at minute 600: couriers mostly idle, orders placed in the last 20 minutes."""
    rng = np.random.default_rng(seed)
    n_rest = max(4, n_orders // 4)
    t, side = 600, 10_000.0
    placement = t - rng.integers(0, 20, n_orders)
    busy = rng.random(n_couriers) >= 0.7
    return Snapshot(
        time=t,
        params=ServiceParams(),
        restaurant_ids=tuple(f"r{i}" for i in range(n_rest)),
        restaurant_xy=rng.uniform(0, side, (n_rest, 2)),
        courier_ids=tuple(f"c{i}" for i in range(n_couriers)),
        courier_xy=rng.uniform(0, side, (n_couriers, 2)),
        courier_free_at=np.where(busy, t + rng.integers(1, 30, n_couriers), t - rng.integers(0, 10, n_couriers)),
        courier_on_time=np.full(n_couriers, t - 120, dtype=np.int64),
        courier_off_time=np.full(n_couriers, t + 240, dtype=np.int64),
        order_ids=tuple(f"o{i}" for i in range(n_orders)),
        order_restaurant=rng.integers(0, n_rest, n_orders).astype(np.int64),
        order_xy=rng.uniform(0, side, (n_orders, 2)),
        order_placement=placement.astype(np.int64),
        order_ready=(placement + rng.integers(5, 30, n_orders)).astype(np.int64),
    )


def _timed(fn, seconds: float, min_n: int = 5) -> np.ndarray:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(out) < min_n:
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.array(out)


def _ms(x: np.ndarray, q: float) -> str:
    return f"{np.quantile(x, q) * 1000:.2f}"


async def _load(target: str, request, concurrency: int, seconds: float, min_n: int, channels: int = 1):  # type: ignore[no-untyped-def]
    from service.client import AsyncDispatchClient

    # Several channels only spread the load when each has a connection of its own.
    clients = [AsyncDispatchClient(target, timeout=600.0, own_connection=channels > 1) for _ in range(channels)]
    try:
        for client in clients:
            await client.decide(request)  # warm-up (and connect)
        lat: list[float] = []
        server: list[tuple[int, int, int, int]] = []
        start = time.perf_counter()
        end = start + seconds
        failures = 0

        async def worker(client: AsyncDispatchClient) -> None:
            nonlocal failures
            while time.perf_counter() < end or len(lat) < min_n:
                t = time.perf_counter()
                try:
                    r = await client.decide(request)
                except Exception:  # counted: a benchmark reports failures instead of dying on one
                    failures += 1
                    continue
                lat.append(time.perf_counter() - t)
                tm = r.timings
                server.append((tm.queue_us, tm.inference_us, tm.assembly_us, tm.total_us))

        await asyncio.gather(*(worker(clients[i % channels]) for i in range(concurrency)))
        wall = time.perf_counter() - start
    finally:
        for client in clients:
            await client.close()
    return np.array(lat), np.array(server), wall, failures


async def _load_stream(target: str, request, window: int, seconds: float, min_n: int):  # type: ignore[no-untyped-def]
    """:func:`_load` over one DecideStream with up to ``window`` messages in flight (the high-rate API)."""
    import grpc

    from service.gen.dispatch.v1 import dispatch_pb2 as pb
    from service.gen.dispatch.v1 import dispatch_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        stub = pb_grpc.DispatchServiceStub(ch)
        await stub.Decide(request)  # warm-up
        call = stub.DecideStream()
        slots = asyncio.Semaphore(window)
        sent: dict[str, float] = {}
        lat: list[float] = []
        server: list[tuple[int, int, int, int]] = []
        failures = 0
        start = time.perf_counter()
        end = start + seconds

        async def writer() -> None:
            i = 0
            while time.perf_counter() < end or i < min_n:
                await slots.acquire()
                msg = pb.DecideRequest()
                msg.CopyFrom(request)
                msg.request_id = str(i)
                sent[msg.request_id] = time.perf_counter()
                await call.write(msg)
                i += 1
            await call.done_writing()

        async def reader() -> None:
            nonlocal failures
            async for out in call:
                if out.HasField("error"):
                    failures += 1
                    sent.pop(out.error.request_id, None)
                else:
                    r = out.response
                    lat.append(time.perf_counter() - sent.pop(r.request_id))
                    tm = r.timings
                    server.append((tm.queue_us, tm.inference_us, tm.assembly_us, tm.total_us))
                slots.release()

        await asyncio.gather(writer(), reader())
        wall = time.perf_counter() - start
    return np.array(lat), np.array(server), wall, failures


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process and its live descendants have used (Linux /proc)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # exited since it was listed
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def floor_server(port_file: Path) -> None:
    """Serve the empty-handler DispatchService on a free loopback port; write the port to ``port_file``."""
    import grpc

    from service.gen.dispatch.v1 import dispatch_pb2 as pb
    from service.gen.dispatch.v1 import dispatch_pb2_grpc as pb_grpc

    class Floor(pb_grpc.DispatchServiceServicer):  # type: ignore[misc]
        """Every Decide answered at once with an empty response: the transport's own cost."""

        async def Decide(self, request, context):  # type: ignore[no-untyped-def]
            return pb.DecideResponse(request_id=request.request_id)

    async def run() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
        pb_grpc.add_DispatchServiceServicer_to_server(Floor(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_file.write_text(f"{port} 0\n")
        await server.wait_for_termination()

    asyncio.run(run())


def _start(cmd: list[str], port_file: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    while not port_file.exists():
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[2:4]} exited with {proc.returncode}")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text().split()[0]}"


def _measure(pid: int, target: str, request, concurrency: int, seconds: float, stream: bool = False, channels: int = 1):  # type: ignore[no-untyped-def]
    """:func:`_load` (or :func:`_load_stream`) plus the CPU ms per request of the server ``pid`` and of this client."""
    cpu0, mine0 = _cpu_s(pid), time.process_time()
    if stream:
        run = _load_stream(target, request, concurrency, seconds, 2 * concurrency)
    else:
        run = _load(target, request, concurrency, seconds, 2 * concurrency, channels)
    lat, server, wall, failed = asyncio.run(run)
    n = len(lat) + failed + 1  # + the warm-up call
    cpu = ((_cpu_s(pid) - cpu0) / n * 1000, (time.process_time() - mine0) / n * 1000)
    return lat, server, wall, failed, cpu


def _rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident MiB of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    values = {ln.split(":")[0]: int(ln.split()[1]) / 1024 for ln in status.splitlines() if ln.startswith("Vm")}
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def _children(pid: int) -> list[int]:
    """Descendant processes (--workers processes, --prep-processes workers, their spawn helpers)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            text = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in map(int, text):
            out.extend([child, *_children(child)])
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    ap = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__)
    ap.add_argument("--shapes", default="64x256,512x2048", help="COURIERSxORDERS list")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=5.0, help="per cell (at least 2 x concurrency requests)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", type=Path, help="ONNX model (default: the linear baseline, written to a temp dir)")
    ap.add_argument("--server-args", default="", help="extra `dispatch serve` flags")
    ap.add_argument("--columnar", action="store_true", help="send the columnar (table) request form")
    ap.add_argument("--stream", action="store_true", help="one DecideStream per cell, concurrency = messages in flight")
    ap.add_argument(
        "--channels",
        type=int,
        default=1,
        help="client channels, each on its own connection, sharing the concurrency round-robin (default 1); "
        "a --workers N server needs several (--server-args='--workers 2' --channels 4)",
    )
    ap.add_argument("--floor", action="store_true", help="also measure an empty-handler server (the transport floor)")
    ap.add_argument("--floor-server", type=Path, help=argparse.SUPPRESS)  # internal: run the floor server
    args = ap.parse_args(argv)
    if args.floor_server:
        floor_server(args.floor_server)
        return 0
    if args.channels < 1:
        ap.error(f"--channels must be at least 1, got {args.channels}")
    if args.channels > 1 and args.stream:
        ap.error("--channels > 1 with --stream is not supported: one DecideStream is one connection")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    tmp = tempfile.TemporaryDirectory()
    model = args.model
    if model is None:
        from dispatch.linear_model import write_linear_model

        model = write_linear_model(Path(tmp.name) / "linear.onnx")
    cores = len(os.sched_getaffinity(0))
    print(
        f"python {platform.python_version()}, {cores} usable cores, device {args.device}, "
        f"load average before {os.getloadavg()[0]:.2f}"
    )
    policy = OnnxPolicy(model, device=args.device)

    print("\nIn-process, same snapshots (no network):\n")
    print("| shape | agents | ORT run p50 / p99 ms | candidates+features p50 ms | OnnxPolicy.decide p50 / p99 ms |")
    print("|---|---|---|---|---|")
    raw_p50: dict[tuple[int, int], float] = {}
    for nc, no in shapes:
        snap = synthetic_snapshot(nc, no)
        prep = prepare(snap, policy.manifest.candidates, policy.manifest.conflict_rule)
        assert prep.encoded is not None
        batch = pad_batch([prep.encoded], policy.manifest.candidates.k)
        secs = args.seconds / 2
        run = _timed(lambda b=batch: policy.session.run(None, b), secs, 50)
        path = _timed(lambda s=snap: prepare(s, policy.manifest.candidates, policy.manifest.conflict_rule), secs)
        decide = _timed(lambda s=snap: policy.decide(s), secs)
        raw_p50[(nc, no)] = float(np.median(run))
        print(
            f"| {nc} × {no} | {prep.cands.n_agents} | {_ms(run, 0.5)} / {_ms(run, 0.99)} | {_ms(path, 0.5)} "
            f"| {_ms(decide, 0.5)} / {_ms(decide, 0.99)} |"
        )

    port_file = Path(tmp.name) / "ports"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "dispatch_cli.main", "serve", "--model", str(model), "--port", "0",
           "--metrics-port", "-1", "--port-file", str(port_file), "--device", args.device,
           "--log-level", "WARNING", *args.server_args.split()]  # fmt: skip
    from service.client import snapshot_to_request

    proc, target = _start(cmd, port_file, env)
    try:
        form = "columnar tables" if args.columnar else "per-entity messages"
        form += ", over one DecideStream (concurrency = messages in flight)" if args.stream else ", unary Decide"
        if args.channels > 1:
            form += f", over {args.channels} connections"
        flags = f"--device {args.device} {args.server_args}".strip()
        print(f"\nEnd to end over gRPC (`dispatch serve {flags}`, asyncio client, requests as {form}):\n")
        print(
            "| shape | concurrency | requests | failed | throughput req/s | p50 ms | p99 ms | p50 / raw ORT p50 "
            "| server p50 ms: queue / inference / rest | CPU ms per request: server / client |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for nc, no in shapes:
            request = snapshot_to_request(synthetic_snapshot(nc, no), columnar=args.columnar)
            for c in concurrency:
                lat, server, wall, failed, cpu = _measure(
                    proc.pid, target, request, c, args.seconds, args.stream, args.channels
                )
                q, inf, rest = (np.median(server[:, i]) / 1000 for i in range(3))
                ratio = np.median(lat) / raw_p50[(nc, no)]
                print(
                    f"| {nc} × {no} | {c} | {len(lat)} | {failed} | {len(lat) / wall:.1f} | {_ms(lat, 0.5)} "
                    f"| {_ms(lat, 0.99)} | {ratio:.0f}× | {q:.2f} / {inf:.2f} / {rest:.2f} "
                    f"| {cpu[0]:.2f} / {cpu[1]:.2f} |"
                )
        rss, peak = _rss_mib(proc.pid)
        kids = [_rss_mib(c)[0] for c in _children(proc.pid)]
        extra = f" + {len(kids)} descendant processes {sum(kids):.0f} MiB" if kids else ""
        print(f"\nserver RSS {rss:.0f} MiB (peak {peak:.0f} MiB){extra}; load average after {os.getloadavg()[0]:.2f}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    if args.floor:
        # The same client against a server that answers at once: what gRPC and protobuf cost on this machine.
        port_file.unlink()
        floor, target = _start([sys.executable, "-m", "bench.serve", "--floor-server", str(port_file)], port_file, env)
        try:
            print("\ngRPC floor: the same client and requests, a server whose Decide returns an empty response:\n")
            print("| shape | concurrency | requests | req/s | p50 ms | p99 ms | CPU ms per request: server / client |")
            print("|---|---|---|---|---|---|---|")
            for nc, no in shapes:
                request = snapshot_to_request(synthetic_snapshot(nc, no), columnar=args.columnar)
                for c in concurrency:
                    lat, _, wall, _, cpu = _measure(floor.pid, target, request, c, args.seconds)
                    print(
                        f"| {nc} × {no} | {c} | {len(lat)} | {len(lat) / wall:.1f} | {_ms(lat, 0.5)} "
                        f"| {_ms(lat, 0.99)} | {cpu[0]:.2f} / {cpu[1]:.2f} |"
                    )
        finally:
            floor.send_signal(signal.SIGTERM)
            floor.wait(60)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
