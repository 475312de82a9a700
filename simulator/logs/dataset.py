"""Read a log dataset: validate its manifest and part files, rebuild days and decisions from it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dispatch.candidates import CandidateSet
from dispatch.routes import route_times, sequence_bundles
from dispatch.snapshot import Assignment, JointAction, ServiceParams, Snapshot
from simulator.instance import Instance
from simulator.logs.schema import FORMAT, META_TABLE, META_VERSION, SCHEMA_VERSION, TABLES
from simulator.logs.writer import sha256_file

MANIFEST = "manifest.json"


class LogError(ValueError):
    """A log dataset or part file that cannot be trusted; the message names the file."""


def read_manifest(folder: Path) -> dict[str, Any]:
    """The validated manifest of a dataset folder."""
    path = folder / MANIFEST
    if not path.is_file():
        raise LogError(f"{folder}: no {MANIFEST}; not a log dataset (or generation never finished one day)")
    try:
        man = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LogError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise LogError(
            f"{path}: not a {FORMAT} manifest (format={man.get('format') if isinstance(man, dict) else None!r})"
        )
    version = man.get("schema_version")
    if not isinstance(version, int):
        raise LogError(f"{path}: schema_version missing or not an integer")
    if version > SCHEMA_VERSION:
        raise LogError(
            f"{path}: written with log schema version {version}; this reader understands up to "
            f"{SCHEMA_VERSION}. Upgrade the software to read it."
        )
    _check_episodes(path, man)
    return man


def _check_episodes(path: Path, man: dict[str, Any]) -> None:
    """Every episode entry lists a part file (path and sha256) for every table; LogError names the field."""
    episodes = man.get("episodes")
    if not isinstance(episodes, dict):
        raise LogError(f"{path}: field 'episodes' is missing or not an object")
    for key, entry in episodes.items():
        if not key.isdigit():
            raise LogError(f"{path}: episode key {key!r} is not an episode number")
        files = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(files, dict):
            raise LogError(f"{path}: episode {key}: field 'files' is missing or not an object")
        for table in TABLES:
            info = files.get(table)
            if not isinstance(info, dict):
                raise LogError(f"{path}: episode {key}: field 'files.{table}' is missing or not an object")
            for field in ("path", "sha256"):
                if not isinstance(info.get(field), str) or not info[field]:
                    raise LogError(f"{path}: episode {key}: field 'files.{table}.{field}' is missing or not a string")


def read_part(path: Path, table: str) -> pa.Table:
    """One part file, checked to be ours, of the right table and a schema version we read."""
    try:
        meta = pq.read_schema(path).metadata or {}
        data = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise LogError(f"{path}: unreadable Parquet file, corrupt or truncated ({exc})") from None
    if META_VERSION not in meta or META_TABLE not in meta:
        raise LogError(f"{path}: foreign Parquet file (no dispatch_logs metadata)")
    if meta[META_TABLE].decode() != table:
        raise LogError(f"{path}: holds table {meta[META_TABLE].decode()!r}, expected {table!r}")
    version = int(meta[META_VERSION])
    if version > SCHEMA_VERSION:
        raise LogError(f"{path}: log schema version {version} is newer than this reader's {SCHEMA_VERSION}")
    missing = [f.name for f in TABLES[table] if f.name not in data.column_names]
    if missing:
        raise LogError(f"{path}: missing column(s) {missing}")
    return data


@dataclass(frozen=True)
class LoggedDecision:
    """One epoch rebuilt from the log: the snapshot, the candidates, and what each agent did."""

    epoch: int
    snapshot: Snapshot
    candidates: CandidateSet
    action: JointAction
    choice: np.ndarray
    logp: np.ndarray
    rank: np.ndarray
    reward: float
    components: dict[str, float]
    done: bool


class LogDataset:
    """A validated log dataset folder."""

    def __init__(self, folder: str | Path, verify: bool = True) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.episodes: list[int] = sorted(int(e) for e in self.manifest.get("episodes", {}))
        for e in self.episodes:
            for table, info in self.manifest["episodes"][str(e)]["files"].items():
                path = self.folder / info["path"]
                if not path.is_file():
                    raise LogError(f"{path}: listed in the manifest but missing")
                if verify and sha256_file(path) != info["sha256"]:
                    raise LogError(f"{path}: content does not match the manifest hash (truncated or modified)")
                del table

    def part(self, table: str, episode: int) -> pa.Table:
        """One table's part for one day."""
        info = self.manifest["episodes"][str(episode)]["files"][table]
        return read_part(self.folder / info["path"], table)

    def table(self, table: str) -> pa.Table:
        """A whole table across every day."""
        if table not in TABLES:
            raise LogError(f"unknown table {table!r}; tables are {', '.join(TABLES)}")
        parts = [self.part(table, e) for e in self.episodes]
        return pa.concat_tables(parts) if parts else TABLES[table].empty_table()

    def day(self, episode: int) -> LoggedDay:
        """One logged day."""
        if episode not in self.episodes:
            raise LogError(f"{self.folder}: no episode {episode}")
        return LoggedDay(self, episode)


class LoggedDay:
    """A day rebuilt from the log alone: its instance and its decisions."""

    def __init__(self, ds: LogDataset, episode: int) -> None:
        self.episode = episode
        self.info = ds.part("episodes", episode).to_pylist()[0]
        self.tables = {t: ds.part(t, episode).to_pydict() for t in TABLES if t != "episodes"}
        i = self.info
        self.params = ServiceParams(
            i["meters_per_minute"],
            i["pickup_service"],
            i["dropoff_service"],
            i["target_ctd"],
            i["max_ctd"],
            i["pay_per_order"],
            i["guaranteed_pay_per_hour"],
        )

    def instance(self) -> Instance:
        """The day's instance, from the restaurants, outcomes and shifts tables."""
        r, o, s = self.tables["restaurants"], self.tables["outcomes"], self.tables["shifts"]
        return Instance(
            name=self.info["instance"],
            params=self.params,
            restaurant_ids=tuple(r["restaurant_id"]),
            restaurant_xy=np.column_stack([r["x"], r["y"]]).astype(np.float64).reshape(-1, 2),
            order_ids=tuple(o["order_id"]),
            order_xy=np.column_stack([o["x"], o["y"]]).astype(np.float64).reshape(-1, 2),
            order_placement=np.asarray(o["placement"], dtype=np.int64),
            order_restaurant=np.asarray(o["restaurant"], dtype=np.int64),
            order_ready=np.asarray(o["ready"], dtype=np.int64),
            courier_ids=tuple(s["courier_id"]),
            courier_xy=np.column_stack([s["x"], s["y"]]).astype(np.float64).reshape(-1, 2),
            courier_on=np.asarray(s["on_time"], dtype=np.int64),
            courier_off=np.asarray(s["off_time"], dtype=np.int64),
        )

    def decisions(self) -> Iterator[LoggedDecision]:
        """Every epoch's decision, in order, rebuilt from the log."""
        r = self.tables["restaurants"]
        rids = tuple(r["restaurant_id"])
        rxy = np.column_stack([r["x"], r["y"]]).astype(np.float64).reshape(-1, 2)
        ep, cu, od, bu = (self.tables[t] for t in ("epochs", "couriers", "orders", "bundles"))
        spans = {name: _spans(tab["epoch"]) for name, tab in (("c", cu), ("o", od), ("b", bu))}
        from simulator.logs.schema import REWARD_COMPONENTS

        for row, epoch in enumerate(ep["epoch"]):
            c0, c1 = spans["c"].get(epoch, (0, 0))
            o0, o1 = spans["o"].get(epoch, (0, 0))
            b0, b1 = spans["b"].get(epoch, (0, 0))
            snap = Snapshot(
                time=int(ep["time"][row]),
                params=self.params,
                restaurant_ids=rids,
                restaurant_xy=rxy,
                courier_ids=tuple(cu["courier_id"][c0:c1]),
                courier_xy=np.column_stack([cu["x"][c0:c1], cu["y"][c0:c1]]).astype(np.float64).reshape(-1, 2),
                courier_free_at=np.asarray(cu["free_at"][c0:c1], dtype=np.int64),
                courier_on_time=np.asarray(cu["on_time"][c0:c1], dtype=np.int64),
                courier_off_time=np.asarray(cu["off_time"][c0:c1], dtype=np.int64),
                order_ids=tuple(od["order_id"][o0:o1]),
                order_restaurant=np.asarray(od["restaurant"][o0:o1], dtype=np.int64),
                order_xy=np.column_stack([od["x"][o0:o1], od["y"][o0:o1]]).astype(np.float64).reshape(-1, 2),
                order_placement=np.asarray(od["placement"][o0:o1], dtype=np.int64),
                order_ready=np.asarray(od["ready"][o0:o1], dtype=np.int64),
            )
            agent_idx = np.asarray(cu["agent"][c0:c1], dtype=np.int64)
            agents = np.flatnonzero(agent_idx >= 0)
            agents = agents[np.argsort(agent_idx[agents])]
            groups = [tuple(g) for g in bu["orders"][b0:b1]]
            bundles = sequence_bundles(snap, groups)
            rows = [cu["candidates"][c0 + a] for a in agents]
            slots = np.array(rows, dtype=np.int64) if rows else np.zeros((0, 0), dtype=np.int64)
            mask = slots >= 0
            # Logs made with a lookahead hold agents not free yet: their actions were reservations.
            committable = snap.available()[agents]
            cands = CandidateSet(agents, bundles, slots, mask, route_times(snap, agents, bundles), committable)
            choice = np.array([cu["action"][c0 + a] for a in agents], dtype=np.int64)
            logp = np.array([cu["behaviour_logp"][c0 + a] for a in agents], dtype=np.float64)
            rank = np.array([cu["rank"][c0 + a] for a in agents], dtype=np.int64)
            action = JointAction(
                tuple(
                    Assignment(int(agents[i]), bundles.members(int(slots[i, c])))
                    for i, c in enumerate(choice)
                    if c >= 0 and committable[i]
                )
            )
            yield LoggedDecision(
                epoch=int(epoch),
                snapshot=snap,
                candidates=cands,
                action=action,
                choice=choice,
                logp=logp,
                rank=rank,
                reward=float(ep["reward"][row]),
                components={c: float(ep[c][row]) for c in REWARD_COMPONENTS},
                done=bool(ep["done"][row]),
            )


def _spans(epochs: list[int]) -> dict[int, tuple[int, int]]:
    """Row ranges per epoch of a table sorted by epoch."""
    out: dict[int, tuple[int, int]] = {}
    arr = np.asarray(epochs, dtype=np.int64)
    if arr.size == 0:
        return out
    change = np.flatnonzero(np.diff(arr)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [arr.size]])
    for s, e in zip(starts, ends, strict=True):
        out[int(arr[s])] = (int(s), int(e))
    return out
