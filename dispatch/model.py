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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dispatch import SCHEMA_VERSION
from dispatch.assemble import RULES
from dispatch.candidates import CandidateConfig
from dispatch.features import AGENT_FEATURES, CANDIDATE_FEATURES

MODEL_FORMAT = "dispatch-model"
MANIFEST_VERSION = 1
INPUTS = ("agent", "cand", "cand_mask")
OUTPUT = "logits"


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


def load_manifest(onnx_path: str | Path, onnx_bytes: bytes | None = None) -> ModelManifest:
    """Read and check the manifest of a model; ModelError names the problem."""
    path = manifest_path(onnx_path)
    if not path.is_file():
        raise ModelError(f"{path}: manifest missing (every model ships NAME.onnx with NAME.json)")
    try:
        body = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path}: field 'format' is not {MODEL_FORMAT!r}")
    version = body.get("manifest_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ModelError(f"{path}: field 'manifest_version' {version!r} is not an integer")
    if version > MANIFEST_VERSION:
        raise ModelError(
            f"{path}: field 'manifest_version' {body.get('manifest_version')} is newer than "
            f"{MANIFEST_VERSION}; upgrade the runtime"
        )
    for key in ("name", "version", "candidates", "conflict_rule", "onnx_sha256", "feature_schema_version"):
        if key not in body:
            raise ModelError(f"{path}: field {key!r} is missing")
    if body["feature_schema_version"] != SCHEMA_VERSION:
        raise ModelError(
            f"{path}: field 'feature_schema_version' is {body['feature_schema_version']}, "
            f"this runtime encodes version {SCHEMA_VERSION}"
        )
    if tuple(body.get("agent_features", ())) != AGENT_FEATURES:
        raise ModelError(f"{path}: field 'agent_features' differs from this runtime's feature list")
    if tuple(body.get("candidate_features", ())) != CANDIDATE_FEATURES:
        raise ModelError(f"{path}: field 'candidate_features' differs from this runtime's feature list")
    if body["conflict_rule"] not in RULES:
        raise ModelError(f"{path}: field 'conflict_rule' {body['conflict_rule']!r} is not one of {RULES}")
    try:
        cands = CandidateConfig(**body["candidates"])
    except (TypeError, ValueError) as exc:  # an unknown field, or a value CandidateConfig refuses
        raise ModelError(f"{path}: field 'candidates': {exc}") from None
    if cands.k < 1:
        # A model scores a fixed number of slots per courier; k = 0 ("every candidate") is for heuristics.
        raise ModelError(f"{path}: field 'candidates': k must be at least 1 for a model, got {cands.k}")
    for key in ("training", "metrics"):
        if not isinstance(body.get(key, {}), dict):
            raise ModelError(f"{path}: field {key!r} is not an object")
    if onnx_bytes is not None and sha256_bytes(onnx_bytes) != body["onnx_sha256"]:
        raise ModelError(f"{path}: field 'onnx_sha256' does not match {Path(onnx_path).name} (corrupt or replaced)")
    return ModelManifest(
        name=str(body["name"]),
        version=str(body["version"]),
        candidates=cands,
        conflict_rule=body["conflict_rule"],
        onnx_sha256=body["onnx_sha256"],
        feature_schema_version=body["feature_schema_version"],
        training=body.get("training", {}),
        metrics=body.get("metrics", {}),
        code_version=body.get("code_version", ""),
        created=body.get("created", ""),
    )
