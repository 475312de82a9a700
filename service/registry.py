"""Model registry: named slots of loaded models, atomic hot reload, A/B split and shadow model."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dispatch.model import ModelError, manifest_path
from dispatch.onnx_policy import OnnxPolicy
from service.batcher import MicroBatcher
from service.gen.dispatch.v1 import dispatch_pb2 as pb
from service.metrics import Metrics, multiprocess

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int] | None, tuple[int, int] | None]


class UnknownModel(LookupError):
    """No slot of that name (NOT_FOUND)."""


class VersionMismatch(LookupError):
    """The slot serves another version than the one asked for (FAILED_PRECONDITION)."""


@dataclass(frozen=True)
class RegistryConfig:
    """How every model is run and batched."""

    device: str = "cpu"
    threads: int = 0
    max_batch: int = 32
    max_delay_s: float = 0.0
    max_queue: int = 256
    inline_max_rows: int = 128


def _stamp(path: Path) -> Stamp:
    """(mtime_ns, size) of the ONNX file and its manifest; None for a missing file."""

    def one(p: Path) -> tuple[int, int] | None:
        try:
            st = p.stat()
        except (OSError, ValueError):  # ValueError: a NUL byte in the path
            return None
        return (st.st_mtime_ns, st.st_size)

    return one(path), one(manifest_path(path))


def sticky_fraction(key: str) -> float:
    """A stable number in [0, 1) for a sticky key (the same on every server and every run)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class LoadedModel:
    """One model serving in a slot: its ONNX Runtime policy, inference thread and batcher."""

    def __init__(self, slot: str, path: Path, policy: OnnxPolicy, executor: ThreadPoolExecutor, stamp: Stamp) -> None:
        self.slot = slot
        self.path = path
        self.policy = policy
        self.manifest = policy.manifest
        self.name = policy.manifest.name
        self.version = policy.manifest.version
        self.k = policy.manifest.candidates.k
        self.rule = policy.manifest.conflict_rule
        self.executor = executor
        self.stamp = stamp
        self.loaded_at = time.time()
        self.batcher: MicroBatcher | None = None

    def info(self) -> pb.ModelInfo:
        """The model's metadata as the proto ModelInfo (role fields filled by the registry)."""
        m = self.manifest
        return pb.ModelInfo(
            slot=self.slot,
            name=self.name,
            version=self.version,
            conflict_rule=self.rule,
            candidates_k=m.candidates.k,
            max_bundle_size=m.candidates.max_bundle_size,
            max_ready_gap=m.candidates.max_ready_gap,
            feature_schema_version=m.feature_schema_version,
            agent_features=list(m.agent_features),
            candidate_features=list(m.candidate_features),
            onnx_sha256=m.onnx_sha256,
            path=str(self.path),
            loaded_at=self.loaded_at,
            device=self.policy.info.device,
            providers=list(self.policy.info.providers),
        )

    async def retire(self) -> None:
        """Finish what is queued, then free the inference thread."""
        if self.batcher is not None:
            self.batcher.close()
            await self.batcher.wait_closed()
        self.executor.shutdown(wait=False)


class Registry:
    """Named model slots; the first one is the default."""

    def __init__(
        self,
        models: list[tuple[str, Path]],
        config: RegistryConfig,
        metrics: Metrics,
        ab: dict[str, float] | None = None,
        shadow: str | None = None,
    ) -> None:
        if not models:
            raise ValueError("at least one --model is needed")
        self.paths: dict[str, Path] = {}
        for slot, path in models:
            if slot in self.paths:
                raise ValueError(f"--model: slot {slot!r} given twice")
            self.paths[slot] = Path(path)
        self.default = models[0][0]
        self.config = config
        self.metrics = metrics
        self.ab = dict(ab or {})
        for slot, weight in self.ab.items():
            if slot not in self.paths:
                raise ValueError(f"--ab: unknown model slot {slot!r} (slots: {sorted(self.paths)})")
            if not weight > 0:
                raise ValueError(f"--ab: weight of {slot!r} must be > 0, got {weight}")
        if shadow is not None and shadow not in self.paths:
            raise ValueError(f"--shadow: unknown model slot {shadow!r} (slots: {sorted(self.paths)})")
        self.shadow = shadow
        self._arms = sorted(self.ab)
        total = sum(self.ab.values())
        self._cum = [sum(self.ab[a] for a in self._arms[: i + 1]) / total for i in range(len(self._arms))]
        self._slots: dict[str, LoadedModel] = {}
        self._locks = {slot: asyncio.Lock() for slot in self.paths}
        self._refused: dict[str, Stamp] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        """True once every slot has a model."""
        return len(self._slots) == len(self.paths)

    async def load_all(self) -> None:
        """Load every slot; ModelError (naming the file) when one cannot be served."""
        for slot, path in self.paths.items():
            model = await self._load(slot, path, "load")
            self._install(model)
            self._count(model, "load", "ok")

    async def _load(self, slot: str, path: Path, event: str) -> LoadedModel:
        loop = asyncio.get_running_loop()
        try:
            try:
                model = await loop.run_in_executor(None, self._build, slot, path)
            except ModelError:
                raise
            except Exception as exc:  # an unforeseen failure refuses the model too: the old one keeps serving
                log.exception("%s of slot %r from %s failed", event, slot, path)
                raise ModelError(f"{path}: cannot be served ({type(exc).__name__}: {exc})") from None
        except ModelError as exc:
            self.metrics.model_events.labels(slot, "", "", event, "error").inc()
            log.error("%s of slot %r from %s refused: %s", event, slot, path, exc)
            raise
        c = self.config
        # The metric callbacks capture metric children, never the model or its batcher: a cycle through them
        # would outlive a reload, since the startup heap is gc.freeze()d (out of the cycle collector's reach).
        batch_size = self.metrics.batch_size.labels(model.name, model.version)
        depth = self.metrics.queue_depth.labels(model.name, model.version)
        model.batcher = MicroBatcher(
            model.policy.logits,
            model.k,
            model.executor,
            max_batch=c.max_batch,
            max_delay_s=c.max_delay_s,
            max_queue=c.max_queue,
            inline_max_rows=c.inline_max_rows,
            on_batch=lambda n, _s: batch_size.observe(n),
            on_depth=depth.set,
        )
        model.batcher.start()
        return model

    def _count(self, model: LoadedModel, event: str, result: str) -> None:
        """Count and log a load or reload of ``model`` that ended in ``result`` (ok: it now serves)."""
        self.metrics.model_events.labels(model.slot, model.name, model.version, event, result).inc()
        if result == "ok":
            device = model.policy.info.device
            log.info(
                "%s slot %r: %s version %s on %s %s", event, model.slot, model.name, model.version, device, model.path
            )

    def _build(self, slot: str, path: Path) -> LoadedModel:
        """Load a model completely, ready to be swapped in; ModelError (the slot untouched) when it cannot serve."""
        stamp = _stamp(path)
        # OnnxPolicy checks the manifest and scores one courier, so a model that cannot decide is refused here.
        policy = OnnxPolicy(path, device=self.config.device, threads=self.config.threads)
        model = LoadedModel(slot, path, policy, ThreadPoolExecutor(1, thread_name_prefix=f"onnx-{slot}"), stamp)
        try:
            # What ListModels and GetModelInfo will answer: refused now rather than failing them once swapped in.
            model.info()
        except (ValueError, TypeError) as exc:  # a manifest value the proto cannot carry
            model.executor.shutdown(wait=False)
            raise ModelError(f"{path}: its metadata cannot be reported ({exc})") from None
        if self.config.device == "auto" and policy.info.device != "cuda":
            log.warning("--device auto: CUDA execution provider unavailable, slot %r runs on CPU", slot)
            self.metrics.device_fallback.inc()
        return model

    def _install(self, model: LoadedModel) -> LoadedModel | None:
        old = self._slots.get(model.slot)
        # One reference assignment on the event loop: a request sees either the old or the new model.
        self._slots[model.slot] = model
        if old is not None:
            self.metrics.drop(self.metrics.model_info, old.slot, old.name, old.version, old.policy.info.device)
            if (old.name, old.version) != (model.name, model.version):
                self.metrics.drop(self.metrics.queue_depth, old.name, old.version)
        self.metrics.model_info.labels(model.slot, model.name, model.version, model.policy.info.device).set(1)
        return old

    async def reload(
        self, slot: str = "", path: str | Path | None = None, before_swap: Callable[[LoadedModel], None] | None = None
    ) -> tuple[LoadedModel, str]:
        """Load the slot again (optionally from a new path) and swap; the old model stays on any error.

        ``before_swap`` runs on the loaded model just before the swap (the admin log records it there); when
        it raises, the new model is discarded, the old one keeps serving, and the error propagates.
        """
        slot = slot or self.default
        if slot not in self.paths:
            raise UnknownModel(f"model_name: no model slot {slot!r} (slots: {sorted(self.paths)})")
        async with self._locks[slot]:
            new_path = Path(path) if path else self.paths[slot]
            model = await self._load(slot, new_path, "reload")
            if before_swap is not None:
                try:
                    before_swap(model)
                except BaseException:
                    self._count(model, "reload", "error")
                    serving = self._slots.get(slot)
                    if serving is None or (serving.name, serving.version) != (model.name, model.version):
                        # Series the refused model's batcher created: nothing of that version serves.
                        self.metrics.drop(self.metrics.queue_depth, model.name, model.version)
                        if not multiprocess():  # a histogram's series cannot be zeroed, and there cannot be removed
                            self.metrics.batch_size.remove(model.name, model.version)
                    await model.retire()
                    raise
            self.paths[slot] = new_path
            old = self._install(model)
            self._count(model, "reload", "ok")
            self._refused.pop(slot, None)
        if old is None:
            return model, ""
        task = asyncio.get_running_loop().create_task(old.retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return model, old.version

    def get(self, slot: str = "") -> LoadedModel:
        """The model serving in a slot (default slot when empty)."""
        slot = slot or self.default
        model = self._slots.get(slot)
        if model is None:
            if slot in self.paths:
                raise UnknownModel(f"model_name: slot {slot!r} has no model loaded yet")
            raise UnknownModel(f"model_name: no model slot {slot!r} (slots: {sorted(self.paths)})")
        return model

    def pick(self, selector: pb.PolicySelector, request_id: str) -> LoadedModel:
        """The model that answers a request: its explicit choice, else its A/B arm, else the default."""
        if selector.model_name:
            model = self.get(selector.model_name)
        elif self._arms:
            key = selector.sticky_key or request_id
            u = sticky_fraction(key) if key else random.random()
            arm = next((a for a, c in zip(self._arms, self._cum, strict=True) if u < c), self._arms[-1])
            model = self.get(arm)
        else:
            model = self.get()
        if selector.model_version and selector.model_version != model.version:
            raise VersionMismatch(
                f"policy.model_version: slot {model.slot!r} serves version {model.version!r}, "
                f"not {selector.model_version!r}"
            )
        return model

    def shadow_model(self) -> LoadedModel | None:
        """The shadow model, when one is configured and loaded."""
        return self._slots.get(self.shadow) if self.shadow else None

    def infos(self) -> list[pb.ModelInfo]:
        """Every loaded slot's metadata with its role."""
        return [self.info(m) for m in self._slots.values()]

    def info(self, model: LoadedModel) -> pb.ModelInfo:
        """One model's metadata with its A/B weight, shadow and default flags."""
        out = model.info()
        total = sum(self.ab.values())
        out.ab_weight = self.ab.get(model.slot, 0.0) / total if total else 0.0
        out.shadow = model.slot == self.shadow
        out.is_default = model.slot == self.default
        return out

    async def watch(self, interval_s: float) -> None:
        """Poll the model files and reload a slot whose ONNX file or manifest changed (runs until cancelled)."""
        while True:
            await asyncio.sleep(interval_s)
            for slot in list(self._slots):
                stamp = _stamp(self.paths[slot])
                if stamp == self._slots[slot].stamp or stamp == self._refused.get(slot) or None in stamp:
                    continue
                try:
                    await self.reload(slot)
                except ModelError:
                    # Keep serving the old model; retry only when the files change again.
                    self._refused[slot] = stamp

    async def close(self) -> None:
        """Drain and stop every model."""
        for model in list(self._slots.values()):
            await model.retire()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
