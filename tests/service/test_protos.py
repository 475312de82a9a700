"""The generated gRPC code is what `make protos` produces from protos/ today."""

from __future__ import annotations

from pathlib import Path

from service.protogen import GEN, generate


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in generate(tmp_path)}
    committed = {
        p.relative_to(GEN): p.read_bytes() for p in GEN.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    assert sorted(fresh) == sorted(committed), "service/gen has other files than `make protos` writes"
    stale = [str(p) for p in fresh if fresh[p] != committed[p]]
    assert not stale, f"service/gen is stale, run `make protos`: {stale}"


def test_generated_modules_import_under_service_gen() -> None:
    from service.gen.dispatch.v1 import dispatch_pb2, dispatch_pb2_grpc

    assert dispatch_pb2.DESCRIPTOR.package == "dispatch.v1"
    assert hasattr(dispatch_pb2_grpc, "DispatchServiceStub")
    assert hasattr(dispatch_pb2_grpc, "ModelAdminServiceStub")
