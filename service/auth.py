"""Transport security: server TLS / mutual TLS credentials and the bearer-token interceptor."""

from __future__ import annotations

import hmac
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

# Probes (health) and tooling (reflection) stay open so orchestrators can check a token-protected server.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def check_pair(cert: Path, key: Path, protocol: ssl._SSLMethod = ssl.PROTOCOL_TLS_CLIENT) -> ssl.SSLContext:
    """An ssl context holding ``cert`` and its ``key``; ValueError naming both flags when they are not a PEM
    certificate and the key that matches it (gRPC itself says only that a handshake failed)."""
    ctx = ssl.SSLContext(protocol)
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its key ({exc})") from None
    return ctx


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS credentials; with ``client_ca`` clients must present a certificate it signed (mutual TLS).

    The files are checked with Python's ssl module first: gRPC reports a bad certificate or a key that does
    not match it only as a failure to add the port, which reads like a bind error. ValueError names the flag.
    """
    ctx = check_pair(cert, key, ssl.PROTOCOL_TLS_SERVER)
    if client_ca is not None:
        try:
            ctx.load_verify_locations(client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"--tls-client-ca {client_ca}: not a PEM CA certificate ({exc})") from None
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def _denied(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers UNAUTHENTICATED."""
    status, message = grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token (metadata 'authorization')"

    async def unary(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(status, message)

    async def streaming(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        await context.abort(status, message)
        yield None  # unreachable: abort raises; makes this an async generator

    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)


class TokenAuth(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every call but health checks and reflection."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty bearer token would accept anyone")
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Pass authorised calls on; answer the rest UNAUTHENTICATED."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        got = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else value
        if hmac.compare_digest(got, self._expected):
            return handler
        return _denied(handler)
