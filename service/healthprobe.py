"""Container health probe: exit 0 when the local server reports SERVING (``python -m service.healthprobe``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Check grpc.health.v1 once; 0 when SERVING, 1 otherwise (with the reason on stderr)."""
    ap = argparse.ArgumentParser(prog="python -m service.healthprobe", description=__doc__)
    ap.add_argument("--target", default="127.0.0.1:50051", help="host:port (default 127.0.0.1:50051)")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    ap.add_argument("--tls-ca", help="CA certificate when the server uses TLS")
    args = ap.parse_args(argv)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            channel = grpc.secure_channel(args.target, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(args.target)
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}", file=sys.stderr)
            return 1
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
