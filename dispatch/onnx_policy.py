"""Run an exported dispatch model with ONNX Runtime through the shared decision path (no torch)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dispatch import assemble
from dispatch.candidates import CandidateSet
from dispatch.features import AGENT_FEATURES, CANDIDATE_FEATURES, Encoded, encode
from dispatch.model import INPUTS, OUTPUT, ModelError, ModelManifest, load_manifest, read_model_bytes
from dispatch.plan import candidates_for, joint_action
from dispatch.policy import Decision
from dispatch.snapshot import Snapshot

DEVICES = ("cpu", "cuda", "auto")
MASKED = -1e9


@dataclass(frozen=True)
class SessionInfo:
    """Which execution providers the ONNX Runtime session really got."""

    providers: tuple[str, ...]
    device: str


def make_session(model_bytes: bytes, device: str = "cpu", threads: int = 0):  # type: ignore[no-untyped-def]
    """An ONNX Runtime session on ``device``; ``cuda`` fails unless CUDA is really used."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise ModelError(f"device {device!r} is not one of {DEVICES}")
    opts = ort.SessionOptions()
    threads = threads or max(1, len(os.sched_getaffinity(0)))
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Idle intra-op workers otherwise spin for a while after every run: with small graphs run hundreds of
    # times a second that is a whole core busy-waiting (measured: 5.1 ms of server CPU per 64 x 256
    # request instead of 2.5), taken from gRPC, the event loop and the other requests.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    wanted = ["CPUExecutionProvider"]
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in ort.get_available_providers():
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(model_bytes, sess_options=opts, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise ModelError(f"ONNX Runtime cannot load the model: {exc}") from None
    got = tuple(session.get_providers())
    if device == "cuda" and "CUDAExecutionProvider" not in got:
        raise ModelError(f"device 'cuda' requested but the session got only {got}")
    names = [i.name for i in session.get_inputs()]
    if sorted(names) != sorted(INPUTS) or session.get_outputs()[0].name != OUTPUT:
        raise ModelError(
            f"model inputs {names} / output {session.get_outputs()[0].name!r} do not match the "
            f"contract {list(INPUTS)} -> {OUTPUT!r}"
        )
    return session, SessionInfo(got, "cuda" if "CUDAExecutionProvider" in got else "cpu")


def pad_batch(encoded: list[Encoded], k: int) -> dict[str, np.ndarray]:
    """Stack encoded snapshots into one padded batch (couriers padded with all-masked rows)."""
    if len(encoded) == 1 and encoded[0].agent.shape[0] and encoded[0].cand.shape[1] == k:
        # A lone snapshot already at full width (the common served case): views, no copy.
        e = encoded[0]
        return {"agent": e.agent[None], "cand": e.cand[None], "cand_mask": e.cand_mask[None]}
    n = max((e.agent.shape[0] for e in encoded), default=0)
    n = max(n, 1)
    b = len(encoded)
    fa = encoded[0].agent.shape[1]
    fc = encoded[0].cand.shape[2]
    agent = np.zeros((b, n, fa), dtype=np.float32)
    cand = np.zeros((b, n, k, fc), dtype=np.float32)
    mask = np.zeros((b, n, k), dtype=bool)
    for i, e in enumerate(encoded):
        m, w = e.agent.shape[0], min(k, e.cand.shape[1])
        agent[i, :m] = e.agent
        cand[i, :m, :w] = e.cand[:, :w]
        mask[i, :m, :w] = e.cand_mask[:, :w]
    return {"agent": agent, "cand": cand, "cand_mask": mask}


class OnnxPolicy:
    """A dispatch policy backed by an exported model (ONNX file + manifest)."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int = 0, sample: bool = False) -> None:
        self.path = Path(path)
        # sample=True draws each courier's action from the model's distribution, couriers one after
        # another in a random order (the ``sequential`` rule); reset(seed) makes it reproducible.
        self.sample = sample
        self.rng = np.random.default_rng(0)
        data = read_model_bytes(self.path)
        self.manifest: ModelManifest = load_manifest(self.path, data)
        self.session, self.info = make_session(data, device, threads)
        self.name = f"{self.manifest.name}:{self.manifest.version}"
        self._probe()

    def _probe(self) -> None:
        """Score one courier at the manifest's width: a model that cannot run is refused here, not at every decision."""
        k = self.manifest.candidates.k
        mask = np.zeros((1, 1, k), dtype=bool)
        mask[..., 0] = True
        batch = {
            "agent": np.zeros((1, 1, len(AGENT_FEATURES)), dtype=np.float32),
            "cand": np.zeros((1, 1, k, len(CANDIDATE_FEATURES)), dtype=np.float32),
            "cand_mask": mask,
        }
        try:
            self.logits(batch)
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for a graph that cannot run
            raise ModelError(f"{self.path}: the model cannot score {k} candidates per courier: {exc}") from None

    def reset(self, seed: int) -> None:
        """Seed the sampling stream (unused by the deterministic conflict rules)."""
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x0E1]))

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Raw model logits for a padded batch, masked slots set to a large negative value."""
        out = self.session.run([OUTPUT], batch)[0]
        b, n, k = batch["cand_mask"].shape
        if out.shape != (b, n, k + 1):
            raise ModelError(f"{self.path}: output {OUTPUT!r} has shape {list(out.shape)}, expected {[b, n, k + 1]}")
        out = np.asarray(out, dtype=np.float64)
        out[..., :k] = np.where(batch["cand_mask"], out[..., :k], MASKED)
        return out

    def candidates(self, snapshot: Snapshot) -> CandidateSet:
        """The candidate set this model decides over (its manifest's candidate config and conflict rule)."""
        return candidates_for(snapshot, self.manifest.candidates, self.manifest.conflict_rule)[0]

    def decide(self, snapshot: Snapshot) -> Decision:
        """Encode, score with ONNX Runtime, assemble with the model's conflict rule."""
        cands, plan = candidates_for(snapshot, self.manifest.candidates, self.manifest.conflict_rule)
        if cands.n_agents == 0:
            return Decision(assemble.JointAction(), cands, np.zeros(0, dtype=np.int64), np.zeros(0))
        enc = encode(snapshot, cands)
        k = self.manifest.candidates.k
        logits = self.logits(pad_batch([enc], k))[0, : cands.n_agents]
        scores = np.concatenate([logits[:, : cands.k], logits[:, k : k + 1]], axis=1)
        if not np.isfinite(scores).all():
            # Every rule would quietly treat such couriers as waiting; a broken model must not pass as a policy.
            raise ModelError(f"{self.path}: the model returned NaN or infinite scores at minute {snapshot.time}")
        if self.sample:
            order = self.rng.permutation(cands.n_agents)
            out = assemble.with_defer(cands, assemble.sequential(cands, scores, order=order, rng=self.rng))
            return Decision(out.action, cands, out.choice, out.logp, order)
        out = joint_action(cands, plan, scores, self.manifest.conflict_rule)
        return Decision(out.action, cands, out.choice, out.logp)
