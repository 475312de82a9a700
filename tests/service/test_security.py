"""TLS, mutual TLS and bearer-token auth over a real server."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest

from dispatch.snapshot import Snapshot
from service.client import DispatchClient
from service.server import ServerConfig, ThreadedServer

x509 = pytest.importorskip("cryptography.x509", reason="cryptography (dev extra) generates the test certificates")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key, issuer_name: str, issuer_key, *, ca: bool = False, san: bool = False):  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert=None, key=None) -> Path:  # type: ignore[no-untyped-def]
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, srv_key, cli_key, rogue_key = _key(), _key(), _key(), _key()
    ca = _cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    return {
        "ca": _write(d / "ca.pem", cert=ca),
        "server_cert": _write(d / "server.pem", cert=_cert("localhost", srv_key, "test-ca", ca_key, san=True)),
        "server_key": _write(d / "server.key", key=srv_key),
        "client_cert": _write(d / "client.pem", cert=_cert("client", cli_key, "test-ca", ca_key)),
        "client_key": _write(d / "client.key", key=cli_key),
        "rogue_cert": _write(d / "rogue.pem", cert=_cert("rogue", rogue_key, "rogue", rogue_key)),
        "rogue_key": _write(d / "rogue.key", key=rogue_key),
    }


def _fails(client: DispatchClient, snap: Snapshot) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        client.decide(snap, timeout=5.0)
    return err.value.code()


def test_tls(model_dir: Path, pki: dict[str, Path], snapshots: list[Snapshot]):
    cfg = ServerConfig(
        models=[("lin", model_dir / "lin.onnx")],
        port=0,
        metrics_port=None,
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
    )
    with ThreadedServer(cfg) as srv:
        with DispatchClient(srv.target, root_certificates=pki["ca"]) as client:
            assert client.decide(snapshots[0]).actions
        with DispatchClient(srv.target) as plain:
            assert _fails(plain, snapshots[0]) == grpc.StatusCode.UNAVAILABLE
        with DispatchClient(srv.target, root_certificates=pki["rogue_cert"]) as wrong_ca:
            assert _fails(wrong_ca, snapshots[0]) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(model_dir: Path, pki: dict[str, Path], snapshots: list[Snapshot]):
    cfg = ServerConfig(
        models=[("lin", model_dir / "lin.onnx")],
        port=0,
        metrics_port=None,
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_client_ca=pki["ca"],
    )
    with ThreadedServer(cfg) as srv:
        ok = DispatchClient(
            srv.target, root_certificates=pki["ca"], client_cert=pki["client_cert"], client_key=pki["client_key"]
        )
        with ok:
            assert ok.decide(snapshots[0]).actions
        with DispatchClient(srv.target, root_certificates=pki["ca"]) as no_cert:
            assert _fails(no_cert, snapshots[0]) == grpc.StatusCode.UNAVAILABLE
        rogue = DispatchClient(
            srv.target, root_certificates=pki["ca"], client_cert=pki["rogue_cert"], client_key=pki["rogue_key"]
        )
        with rogue:
            assert _fails(rogue, snapshots[0]) == grpc.StatusCode.UNAVAILABLE


def test_bearer_token(model_dir: Path, snapshots: list[Snapshot]):
    cfg = ServerConfig(models=[("lin", model_dir / "lin.onnx")], port=0, metrics_port=None, token="s3cret")
    with ThreadedServer(cfg) as srv:
        with DispatchClient(srv.target, token="s3cret") as good:
            assert good.decide(snapshots[0]).actions
            assert good.model_info().name == "linear"
            assert good.decide_stream([]) == []
        for token in (None, "wrong", "s3cret "):
            with DispatchClient(srv.target, token=token) as bad:
                assert _fails(bad, snapshots[0]) == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError) as err:
                    bad.list_models()
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError) as err:
                    bad.decide_stream([])
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert bad.health() == "SERVING"  # probes need no token


def test_call_cli_with_mutual_tls_and_token_file(
    model_dir: Path, pki: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dispatch_cli.main import main

    cfg = ServerConfig(
        models=[("lin", model_dir / "lin.onnx")],
        port=0,
        metrics_port=None,
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_client_ca=pki["ca"],
        token="s3cret",
    )
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    tls = ["--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client_cert"]), "--tls-key", str(pki["client_key"])]
    with ThreadedServer(cfg) as srv:
        call = ["call", "--target", srv.target, "--instance", "0o50t75s1p100", "--time", "60", *tls]
        assert main([*call, "--token-file", str(token)]) == 0, capsys.readouterr().err
        assert '"assignments"' in capsys.readouterr().out
        token.write_text("wrong\n")
        assert main([*call, "--token-file", str(token)]) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["key is a certificate", "key of another certificate"])
def test_call_refuses_a_client_key_that_does_not_match_naming_the_flags(
    pki: dict[str, Path], capsys: pytest.CaptureFixture[str], case: str
) -> None:
    from dispatch_cli.main import main

    key = pki["client_cert"] if case == "key is a certificate" else pki["rogue_key"]
    args = ["call", "--target", "127.0.0.1:1", "--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client_cert"])]
    assert main([*args, "--tls-key", str(key)]) == 2
    err = capsys.readouterr().err
    assert f"--tls-cert {pki['client_cert']} / --tls-key {key}: not a PEM certificate and its key" in err
