"""The contract between a trained dispatch model and everything that runs it.

An exported model is two files: ``NAME.onnx`` and ``NAME.json`` (the manifest). The ONNX graph maps

- ``agent``     float32 [batch, couriers, len(AGENT_FEATURES)]
- ``cand``      float32 [batch, couriers, candidates, len(CANDIDATE_FEATURES)]
- ``cand_mask`` bool    [batch, couriers, candidates]

to ``logits`` float32 [batch, couriers, candidates + 1] (the last column is ``wait``). Every axis but
the feature axes is dynamic. Masked candidates may get any logit: the runtime masks them again.
The manifest says which features, candidate rule and conflict rule the model was trained with; a
runtime refuses a model whose feature schema or lists differ from its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dispatch import SCHEMA_VERSION
from dispatch.assemble import PLAN_RULE, RULES
from dispatch.candidates import CandidateConfig
from dispatch.features import AGENT_FEATURES, CANDIDATE_FEATURES

MODEL_FORMAT = "dispatch-model"
MANIFEST_VERSION = 1
INPUTS = ("agent", "cand", "cand_mask")
OUTPUT = "logits"

# Bounds on what a manifest may ask of a runtime, so that a wrong or hostile manifest is refused at load
# time instead of failing (or taking minutes) at every decision.
# Candidate slots per courier: every slot is a row of every model input (1e8 asked for 23.8 GiB).
MAX_K = 1024
# Orders per bundle: bundles are enumerated per restaurant, combinatorially in the size (5 took 49 s for
# one decision); 3 is the largest size the candidate and kernel code is tested with.
MAX_BUNDLE_SIZE = 3
# Minutes between the ready times of orders bundled together: four hours, far beyond any useful bundle.
MAX_READY_GAP = 240
# An ONNX dispatch model is well under 100 MB; the cap only stops a device file or a wrong path from
# being read into memory. Manifests are a few kilobytes.
MAX_MODEL_BYTES = 1 << 30
MAX_MANIFEST_BYTES = 16 << 20
# Characters in a manifest string (name and version also label metrics and logs).
MAX_TEXT = 4096


class ModelError(ValueError):
    """A model or manifest that must not be served; the message names the file and the field."""


@dataclass(frozen=True)
class ModelManifest:
    """What a runtime must know about an exported model."""

    name: str
    version: str
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    conflict_rule: str = "greedy"
    onnx_sha256: str = ""
    feature_schema_version: int = SCHEMA_VERSION
    agent_features: tuple[str, ...] = AGENT_FEATURES
    candidate_features: tuple[str, ...] = CANDIDATE_FEATURES
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    code_version: str = ""
    created: str = ""

    def to_json(self) -> str:
        """The manifest file's text."""
        body = asdict(self)
        body["candidates"] = self.candidates.to_dict()
        body.update(format=MODEL_FORMAT, manifest_version=MANIFEST_VERSION, inputs=list(INPUTS), output=OUTPUT)
        return json.dumps(body, indent=1, sort_keys=True)


def manifest_path(onnx_path: str | Path) -> Path:
    """The manifest beside an ONNX file."""
    return Path(onnx_path).with_suffix(".json")


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def _read_capped(path: Path, cap: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes; ModelError naming ``path`` otherwise."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (the fstat below refuses it anyway).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except ValueError as exc:  # a NUL byte in the path (a Reload request can hold one): quoted, to stay printable
        raise ModelError(f"{str(path)!r}: cannot read {what} ({exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            # A device (/dev/zero) or a pipe would be read until memory or patience runs out.
            raise ModelError(f"{path}: cannot read {what}: not a regular file")
        if st.st_size > cap:
            raise ModelError(f"{path}: {what} is {st.st_size} bytes, over the limit of {cap} bytes")
        chunks = []
        size = 0
        while size <= cap and (chunk := os.read(fd, min(1 << 24, cap + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > cap:  # grew after the fstat
        raise ModelError(f"{path}: {what} is over the limit of {cap} bytes")
    return data


def read_model_bytes(onnx_path: str | Path) -> bytes:
    """The ONNX file's bytes; ModelError naming the path when it is not a regular file or is over MAX_MODEL_BYTES."""
    return _read_capped(Path(onnx_path), MAX_MODEL_BYTES, "model")


def _text(path: Path, body: dict[str, Any], key: str, default: str | None = None, required: bool = False) -> str:
    """Field ``key`` as a string (``default`` when absent); ``required`` refuses an empty or blank one."""
    value = body.get(key, default)
    if not isinstance(value, str):
        raise ModelError(f"{path}: field {key!r} must be a string, got {_show(value)}")
    if required and not value.strip():
        raise ModelError(f"{path}: field {key!r} must not be empty")
    if len(value) > MAX_TEXT:
        raise ModelError(f"{path}: field {key!r} is {len(value)} characters long, more than {MAX_TEXT}")
    return value


def _integer(path: Path, body: dict[str, Any], key: str) -> int:
    """Field ``key`` as an integer (JSON true and 1.0 are not)."""
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(f"{path}: field {key!r} must be an integer, got {_show(value)}")
    return value


def _names(path: Path, body: dict[str, Any], key: str, expected: tuple[str, ...]) -> tuple[str, ...]:
    """Field ``key`` as a list of strings equal to this runtime's ``expected`` list."""
    value = body.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelError(f"{path}: field {key!r} must be a list of strings, got {_show(value)}")
    if tuple(value) != expected:
        raise ModelError(f"{path}: field {key!r} differs from this runtime's feature list")
    return expected


def _show(value: object) -> str:
    """A short description of a JSON value for an error message."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _candidates(path: Path, body: dict[str, Any], rule: str) -> CandidateConfig:
    """Field ``candidates`` as a CandidateConfig a model can decide with in bounded time and memory."""
    raw = body["candidates"]
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: field 'candidates' must be an object, got {_show(raw)}")
    try:
        cands = CandidateConfig(**raw)
    except (TypeError, ValueError) as exc:  # an unknown field, or a value CandidateConfig refuses
        raise ModelError(f"{path}: field 'candidates': {exc}") from None
    if cands.k < 1:
        # A model scores a fixed number of slots per courier; k = 0 ("every candidate") is for heuristics.
        raise ModelError(f"{path}: field 'candidates': k must be at least 1 for a model, got {cands.k}")
    for key, value, limit, unit in (
        ("k", cands.k, MAX_K, ""),
        ("max_bundle_size", cands.max_bundle_size, MAX_BUNDLE_SIZE, ""),
        ("max_ready_gap", cands.max_ready_gap, MAX_READY_GAP, " minutes"),
    ):
        if value > limit:
            raise ModelError(f"{path}: field 'candidates.{key}' is {value}, more than the limit of {limit}{unit}")
    if rule == PLAN_RULE and (cands.lookahead or cands.defer):
        # The plan picks its own agents and commits by its own test; dispatch export refuses the combination.
        raise ModelError(
            f"{path}: field 'candidates': lookahead {cands.lookahead} and defer {cands.defer} must be 0 under "
            f"the {PLAN_RULE!r} conflict rule"
        )
    return cands


def read_manifest_body(path: Path) -> dict[str, Any]:
    """The JSON object of the model manifest at ``path``, its format checked; ModelError naming the path otherwise."""
    if not path.is_file():
        raise ModelError(f"{path}: manifest missing (every model ships NAME.onnx with NAME.json)")
    data = _read_capped(path, MAX_MANIFEST_BYTES, "manifest")
    try:
        body = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # ValueError: bad JSON, bad UTF-8, or an integer of more digits than Python converts;
        # RecursionError: arrays or objects nested deeper than the parser recurses.
        raise ModelError(f"{path}: not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(body, dict) or body.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path}: field 'format' is not {MODEL_FORMAT!r}")
    return body


def load_manifest(onnx_path: str | Path, onnx_bytes: bytes | None = None) -> ModelManifest:
    """Read and check the manifest of a model; ModelError names the file and the field at fault."""
    path = manifest_path(onnx_path)
    body = read_manifest_body(path)
    version = body.get("manifest_version", 0)  # absent in manifests older than the field
    if isinstance(version, bool) or not isinstance(version, int):
        raise ModelError(f"{path}: field 'manifest_version' {version!r} is not an integer")
    if version > MANIFEST_VERSION:
        raise ModelError(
            f"{path}: field 'manifest_version' {version} is newer than {MANIFEST_VERSION}; upgrade the runtime"
        )
    if "manifest_version" in body and version < 1:
        raise ModelError(f"{path}: field 'manifest_version' is {version}, it must be at least 1")
    for key in ("name", "version", "candidates", "conflict_rule", "onnx_sha256", "feature_schema_version"):
        if key not in body:
            raise ModelError(f"{path}: field {key!r} is missing")
    schema = _integer(path, body, "feature_schema_version")
    if schema != SCHEMA_VERSION:
        raise ModelError(
            f"{path}: field 'feature_schema_version' is {schema}, this runtime encodes version {SCHEMA_VERSION}"
        )
    _names(path, body, "agent_features", AGENT_FEATURES)
    _names(path, body, "candidate_features", CANDIDATE_FEATURES)
    for key, expected in (("inputs", list(INPUTS)), ("output", OUTPUT)):
        if key in body and body[key] != expected:
            raise ModelError(f"{path}: field {key!r} is {_show(body[key])}, the contract says {expected!r}")
    name = _text(path, body, "name", required=True)
    model_version = _text(path, body, "version", required=True)
    rule = _text(path, body, "conflict_rule")
    if rule not in RULES:
        raise ModelError(f"{path}: field 'conflict_rule' {rule!r} is not one of {RULES}")
    cands = _candidates(path, body, rule)
    sha = _text(path, body, "onnx_sha256")
    for key in ("training", "metrics"):
        if not isinstance(body.get(key, {}), dict):
            raise ModelError(f"{path}: field {key!r} is not an object")
    metrics = body.get("metrics", {})
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelError(f"{path}: field 'metrics.{key}' must be a number, got {_show(value)}")
    if onnx_bytes is not None and sha256_bytes(onnx_bytes) != sha:
        raise ModelError(f"{path}: field 'onnx_sha256' does not match {Path(onnx_path).name} (corrupt or replaced)")
    return ModelManifest(
        name=name,
        version=model_version,
        candidates=cands,
        conflict_rule=rule,
        onnx_sha256=sha,
        feature_schema_version=schema,
        training=body.get("training", {}),
        metrics=metrics,
        code_version=_text(path, body, "code_version", default=""),
        created=_text(path, body, "created", default=""),
    )
