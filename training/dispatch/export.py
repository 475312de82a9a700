"""Export a trained dispatch scorer to ONNX with its manifest, and check parity with torch."""

from __future__ import annotations

import datetime as dt
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dispatch.assemble import PLAN_RULE
from dispatch.candidates import CandidateConfig
from dispatch.model import INPUTS, OUTPUT, ModelManifest, manifest_path, sha256_bytes
from training.dispatch.nets import FA, FC, Scorer

OPSET = 17

# Couriers free within this many minutes reserve orders at decision time (docs/dispatch-experiments.md §6:
# chosen on training-seed instances, it took lost orders from 7.2% to 4.4% for InSPO and 3.5% to 2.0% for
# BC on logs of idle couriers only, models unchanged).
DEFAULT_LOOKAHEAD = 15
# Minutes: a pick the courier would reach this early before the food is ready waits an epoch (reyes'
# commitment rule). Chosen on training-seed instances (docs/dispatch-experiments.md §10).
DEFAULT_DEFER = 4
# The rule models are exported with: reyes' rolling-horizon plan with the model's preference blended into its
# values (docs/dispatch-experiments.md §14: on training-seed instances it lost as few orders as reyes and was
# faster, where ``mass-bundle`` lost about 1 point more). ``lookahead`` and ``defer`` do not apply to it.
DEFAULT_RULE = PLAN_RULE


def onnx_bytes(scorer: Scorer, k: int = 16) -> bytes:
    """The scorer as an ONNX graph with dynamic batch, courier and candidate axes."""
    scorer = scorer.eval()
    example = (torch.zeros(1, 3, FA), torch.zeros(1, 3, k, FC), torch.ones(1, 3, k, dtype=torch.bool))
    buf = io.BytesIO()
    torch.onnx.export(
        scorer,
        example,
        buf,  # type: ignore[arg-type]  # a file-like object is accepted at run time
        input_names=list(INPUTS),
        output_names=[OUTPUT],
        dynamic_axes={
            "agent": {0: "batch", 1: "couriers"},
            "cand": {0: "batch", 1: "couriers", 2: "candidates"},
            "cand_mask": {0: "batch", 1: "couriers", 2: "candidates"},
            OUTPUT: {0: "batch", 1: "couriers", 2: "candidates_plus_wait"},
        },
        opset_version=OPSET,
        dynamo=False,
    )
    return buf.getvalue()


def export(
    scorer: Scorer,
    path: str | Path,
    name: str,
    version: str,
    candidates: CandidateConfig,
    conflict_rule: str = "greedy",
    training: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    code_version: str = "",
) -> Path:
    """Write ``path`` (.onnx) and its manifest, both atomically; returns the ONNX path.

    Raises ValueError naming the file when either cannot be written; no temporary file is left behind,
    nor a new manifest without its model.
    """
    data = onnx_bytes(scorer, candidates.k)
    out = Path(path)
    manifest = ModelManifest(
        name=name,
        version=version,
        candidates=candidates,
        conflict_rule=conflict_rule,
        onnx_sha256=sha256_bytes(data),
        training=training or {},
        metrics=metrics or {},
        code_version=code_version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    # Manifest first, model last: a crash in between leaves a manifest whose checksum the old model file
    # fails, so runtimes refuse the pair instead of serving a model under the wrong manifest.
    had_manifest = manifest_path(out).exists()
    target = out.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for target, payload in ((manifest_path(out), manifest.to_json().encode()), (out, data)):
            tmp = target.with_name(target.name + ".tmp")
            try:
                tmp.write_bytes(payload)
                os.replace(tmp, target)
            finally:
                if tmp.is_file():
                    tmp.unlink()
    except OSError as exc:
        if target == out and not had_manifest:
            manifest_path(out).unlink(missing_ok=True)  # a manifest of ours with no model: nothing to keep
        raise ValueError(f"{target}: cannot write ({exc.strerror or exc})") from None
    return out


# The largest parity an export may show: max over legal logits of |torch - ONNX| / max(1, |logit|).
PARITY_TOLERANCE = 1e-5
PARITY_MEASURE = "max |diff| / max(1, |logit|)"


def parity(scorer: Scorer, onnx_path: str | Path, batch: dict[str, np.ndarray]) -> float:
    """Max over the logits of legal actions of |torch − ONNX Runtime| / max(1, |torch|), for one input batch.

    The absolute difference for logits within ±1, the relative one beyond. float32 holds about 7
    significant digits, and the two runtimes sum in different orders: a trained model's logit of 60 on
    random features (seen here) differs by 3 units in the last place, 1.1e-5, which no correct export
    can avoid. An export bug (a wrong weight, layout or op) is off by far more at any scale.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(Path(onnx_path).read_bytes(), providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT], batch)[0]
    with torch.no_grad():
        want = scorer.eval()(*(torch.from_numpy(batch[n]) for n in INPUTS)).numpy()
    legal = np.concatenate([batch["cand_mask"], np.ones((*batch["cand_mask"].shape[:2], 1), bool)], -1)
    scaled = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    return float(np.where(legal, scaled, 0.0).max()) if got.size else 0.0


def export_run(
    run: Path,
    out: Path,
    name: str = "",
    version: str = "1",
    conflict_rule: str = DEFAULT_RULE,
    metrics: dict[str, float] | None = None,
    lookahead: int | None = None,
    defer: int | None = None,
) -> tuple[Path, float]:
    """Export a training run folder's policy; returns the ONNX path and the torch/ONNX parity on random inputs.

    ``lookahead`` and ``defer`` (minutes, see :class:`dispatch.candidates.CandidateConfig`) override the
    candidate config the logs were made with; None keeps the logs' value, or where the logs have none
    (idle couriers only, every pick committed) uses ``DEFAULT_LOOKAHEAD`` / ``DEFAULT_DEFER``. Under the
    ``plan`` rule both are 0 (the plan picks its own agents and commits by its own test), and setting either
    is a ValueError.

    Raises ValueError when ``run`` is not a finished dispatch training run.
    """
    import dataclasses
    import hashlib
    import json

    from simulator.logs.dataset import MANIFEST, LogError, read_manifest
    from training.algos.base import DataInfo
    from training.dispatch.algo import DISPATCH_ALGOS, make, scorer_of
    from training.dispatch.train import CHECKPOINT, _load
    from training.harness import CONFIG_NAME, read_run_config, restore

    cfg_path = run / CONFIG_NAME
    if not cfg_path.is_file() or not (run / CHECKPOINT).is_file():
        raise ValueError(f"{run} is not a dispatch training run (config.json, {CHECKPOINT})")
    resolved = read_run_config(cfg_path)
    train_cfg = resolved["train"]
    kinds = {"data": str, "algo": str, "params": dict, "gamma": float}
    for key, kind in kinds.items():
        value = train_cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float if kind is float else kind):
            raise ValueError(f"{cfg_path}: field 'train.{key}' is missing or not a {kind.__name__}")
    if train_cfg["algo"] not in DISPATCH_ALGOS:
        raise ValueError(f"{cfg_path}: field 'train.algo' is {train_cfg['algo']!r}, not a dispatch algorithm")
    data_dir = Path(train_cfg["data"])
    manifest = read_manifest(data_dir)
    try:
        candidates = CandidateConfig(**manifest["args"]["candidates"])
    except (KeyError, TypeError, ValueError) as exc:  # absent, an unknown field, or a value it refuses
        raise LogError(f"{data_dir / MANIFEST}: field 'args.candidates' is missing or invalid ({exc})") from None
    k = candidates.k
    info = DataInfo(n_agents=0, n_actions=k + 1, obs_dim=0, state_dim=4, gamma=train_cfg["gamma"])
    try:
        algo = make(train_cfg["algo"], dict(train_cfg["params"]), info, torch.Generator())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{cfg_path}: field 'train.params': {exc}") from None
    restore(run / CHECKPOINT, _load(run / CHECKPOINT), algo)
    scorer = scorer_of(algo)
    data_hash = hashlib.sha256(json.dumps(manifest["episodes"], sort_keys=True).encode()).hexdigest()
    if conflict_rule == PLAN_RULE:
        if lookahead or defer:
            raise ValueError(f"lookahead {lookahead}, defer {defer}: neither applies to the {PLAN_RULE!r} rule")
        lookahead = defer = 0
    if lookahead is None:
        lookahead = candidates.lookahead or DEFAULT_LOOKAHEAD
    if defer is None:
        defer = candidates.defer or DEFAULT_DEFER
    candidates = dataclasses.replace(candidates, lookahead=lookahead, defer=defer)
    path = export(
        scorer,
        out,
        name or run.name,
        version,
        candidates,
        conflict_rule=conflict_rule,
        metrics=metrics or {},
        code_version=resolved.get("code_version", ""),
        training={
            "run": str(run),
            "algo": train_cfg["algo"],
            "config": resolved,
            "data": str(data_dir),
            "data_sha256": data_hash,
        },
    )
    rng = np.random.default_rng(0)
    batch = {
        "agent": rng.normal(size=(2, 9, FA)).astype(np.float32),
        "cand": rng.normal(size=(2, 9, k, FC)).astype(np.float32),
        "cand_mask": rng.random((2, 9, k)) > 0.3,
    }
    return path, parity(scorer, path, batch)
