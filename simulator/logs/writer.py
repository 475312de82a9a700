"""Record one simulated day under a behaviour policy and write its part files atomically."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dispatch.policy import Decision
from dispatch.snapshot import Snapshot
from simulator.engine import StepOutcome
from simulator.instance import Instance, content_hash
from simulator.logs.schema import EPISODE_METRICS, REWARD_COMPONENTS, TABLES, with_metadata
from simulator.run import EpisodeResult


@dataclass
class EpisodeRecorder:
    """Collects the rows of every table while a day is simulated (pass ``record`` as the hook)."""

    episode: int
    cols: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    epoch: int = 0

    def __post_init__(self) -> None:
        self.cols = {t: {f.name: [] for f in s} for t, s in TABLES.items()}

    def _add(self, table: str, **row: Any) -> None:
        cols = self.cols[table]
        for k, v in row.items():
            cols[k].append(v)

    def record(self, snap: Snapshot, decision: Decision, step: StepOutcome) -> None:
        """The decision hook: one epoch's snapshot, candidates, actions and reward."""
        ep, e = self.episode, self.epoch
        cands = decision.candidates
        n_agents = cands.n_agents if cands is not None else 0
        self._add(
            "epochs",
            episode=ep,
            epoch=e,
            time=snap.time,
            n_couriers=snap.n_couriers,
            n_orders=snap.n_orders,
            n_agents=n_agents,
            reward=step.reward,
            done=step.done,
            **{c: step.components[c] for c in REWARD_COMPONENTS},
        )
        agent_of = np.full(snap.n_couriers, -1, dtype=np.int64)
        slots: list[list[int]] = []
        rank = np.full(n_agents, -1, dtype=np.int64)
        if cands is not None and n_agents:
            agent_of[cands.agents] = np.arange(n_agents)
            used = np.unique(cands.bundle[cands.mask])
            new_row = np.full(cands.bundles.n, -1, dtype=np.int64)
            new_row[used] = np.arange(used.size)
            slots = np.where(cands.mask, new_row[np.where(cands.mask, cands.bundle, 0)], -1).tolist()
            for j, b in enumerate(used):
                self._add("bundles", episode=ep, epoch=e, bundle=j, orders=list(cands.bundles.members(int(b))))
            if decision.order is not None:
                rank[decision.order] = np.arange(n_agents)
        choice = decision.choice if decision.choice is not None else np.full(n_agents, -1)
        logp = decision.logp if decision.logp is not None else np.zeros(n_agents)
        for j in range(snap.n_couriers):
            i = int(agent_of[j])
            self._add(
                "couriers",
                episode=ep,
                epoch=e,
                courier_id=snap.courier_ids[j],
                x=float(snap.courier_xy[j, 0]),
                y=float(snap.courier_xy[j, 1]),
                free_at=int(snap.courier_free_at[j]),
                on_time=int(snap.courier_on_time[j]),
                off_time=int(snap.courier_off_time[j]),
                agent=i,
                rank=int(rank[i]) if i >= 0 else -1,
                candidates=slots[i] if i >= 0 else None,
                action=int(choice[i]) if i >= 0 else -1,
                behaviour_logp=float(logp[i]) if i >= 0 else 0.0,
            )
        for o in range(snap.n_orders):
            self._add(
                "orders",
                episode=ep,
                epoch=e,
                order_id=snap.order_ids[o],
                restaurant=int(snap.order_restaurant[o]),
                x=float(snap.order_xy[o, 0]),
                y=float(snap.order_xy[o, 1]),
                placement=int(snap.order_placement[o]),
                ready=int(snap.order_ready[o]),
            )
        self.epoch += 1

    def finish(self, inst: Instance, recipe: str, seed: int, result: EpisodeResult) -> None:
        """Add the per-day tables once the day is over."""
        ep, p, rec = self.episode, inst.params, result.records
        self._add(
            "episodes",
            episode=ep,
            instance=inst.name,
            instance_hash=content_hash(inst),
            recipe=recipe,
            seed=seed,
            meters_per_minute=p.meters_per_minute,
            pickup_service=p.pickup_service,
            dropoff_service=p.dropoff_service,
            target_ctd=p.target_ctd,
            max_ctd=p.max_ctd,
            pay_per_order=p.pay_per_order,
            guaranteed_pay_per_hour=p.guaranteed_pay_per_hour,
            total_reward=result.total_reward,
            epochs=result.epochs,
            **{m: result.metrics[m] for m in EPISODE_METRICS},
        )
        for r, rid in enumerate(inst.restaurant_ids):
            self._add(
                "restaurants",
                episode=ep,
                restaurant_id=rid,
                x=float(inst.restaurant_xy[r, 0]),
                y=float(inst.restaurant_xy[r, 1]),
            )
        for o, oid in enumerate(inst.order_ids):
            c = int(rec.order_courier[o])
            ctd = int(rec.order_dropoff[o] - inst.order_placement[o])
            self._add(
                "outcomes",
                episode=ep,
                order_id=oid,
                restaurant=int(inst.order_restaurant[o]),
                x=float(inst.order_xy[o, 0]),
                y=float(inst.order_xy[o, 1]),
                placement=int(inst.order_placement[o]),
                ready=int(inst.order_ready[o]),
                courier_id=inst.courier_ids[c] if c >= 0 else None,
                assigned_at=int(rec.order_assigned[o]),
                pickup=int(rec.order_pickup[o]),
                dropoff=int(rec.order_dropoff[o]),
                delivered=bool(c >= 0 and ctd <= p.max_ctd),
            )

        for c, cid in enumerate(inst.courier_ids):
            self._add(
                "shifts",
                episode=ep,
                courier_id=cid,
                x=float(inst.courier_xy[c, 0]),
                y=float(inst.courier_xy[c, 1]),
                on_time=int(inst.courier_on[c]),
                off_time=int(inst.courier_off[c]),
            )

    def write(self, folder: Path) -> dict[str, dict[str, Any]]:
        """Write every table's part file atomically; returns {table: {path, sha256, rows}}."""
        files = {}
        for table, cols in self.cols.items():
            arrow = pa.Table.from_pydict(cols, schema=with_metadata(table))
            rel = Path(table) / f"part-{self.episode:06d}.parquet"
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            pq.write_table(arrow, tmp, compression="zstd")
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            files[table] = {"path": str(rel), "sha256": sha256_file(path), "rows": arrow.num_rows}
        return files


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
