"""Read a log dataset: validate its manifest and part files, rebuild days and decisions from it."""

from __future__ import annotations

import json
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dispatch.candidates import CandidateSet
from dispatch.routes import route_times, sequence_bundles
from dispatch.snapshot import Assignment, JointAction, ServiceParams, Snapshot
from simulator.instance import Instance
from simulator.logs.schema import EPISODE_METRICS, FORMAT, META_TABLE, META_VERSION, SCHEMA_VERSION, TABLES
from simulator.logs.writer import sha256_file

MANIFEST = "manifest.json"
# A courier that is not an agent has no candidate list; an order never carried has no courier.
NULLABLE = frozenset({("couriers", "candidates"), ("outcomes", "courier_id")})
# A day's headline metric is NaN where it is undefined (no order delivered); every other float is finite.
NAN_ALLOWED = frozenset(("episodes", m) for m in EPISODE_METRICS)
# Tables of per-epoch rows: sorted by epoch, which the rebuild of each decision relies on.
BY_EPOCH = ("epochs", "couriers", "orders", "bundles")
# A behaviour log-probability may round a little above log(1) = 0, never more.
LOGP_SLACK = 1e-6
# Minutes of the day: never negative, as the instance reader and the service read them (off_time, after on_time,
# follows; the outcome times, where -1 means never, are checked with the rest of an outcome).
MINUTES = {
    "epochs": ("time",),
    "couriers": ("free_at", "on_time"),
    "orders": ("placement", "ready"),
    "outcomes": ("placement", "ready"),
    "shifts": ("on_time",),
}
# An outcome's minutes of assignment, pickup and drop-off: -1 for an order never carried.
OUTCOME_TIMES = ("assigned_at", "pickup", "dropoff")
# Ids that name one entity: never empty, and unique over the day, or within each epoch's snapshot, as the
# instance reader and the service require (None: an id that refers to another table's, any number of times).
IDS: dict[tuple[str, str], str | None] = {
    ("restaurants", "restaurant_id"): "day",
    ("shifts", "courier_id"): "day",
    ("outcomes", "order_id"): "day",
    ("outcomes", "courier_id"): None,
    ("couriers", "courier_id"): "epoch",
    ("orders", "order_id"): "epoch",
}


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
    _check_args(path, man)
    return man


def _check_args(path: Path, man: dict[str, Any]) -> None:
    """The generation arguments the readers use are of the right kind; LogError names the field."""
    if "args" not in man:
        return
    args = man["args"]
    if not isinstance(args, dict):
        raise LogError(f"{path}: manifest field 'args' is {type(args).__name__}, expected an object")
    for key in ("sim", "candidates", "reward"):
        if key in args and not isinstance(args[key], dict):
            raise LogError(f"{path}: manifest field 'args' ({key}): {type(args[key]).__name__}, expected an object")
    for key, name, minimum in (("candidates", "k", 0), ("sim", "dispatch_interval", 1)):
        sub = args.get(key, {})
        if name in sub:
            value = sub[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise LogError(
                    f"{path}: manifest field 'args' ({key}.{name}): {value!r} is not an integer >= {minimum}"
                )
    instances = args.get("instances", [])
    if not isinstance(instances, list) or not all(isinstance(i, str) for i in instances):
        raise LogError(f"{path}: manifest field 'args' (instances): {instances!r} is not a list of instance names")


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
    data = _conform(path, table, data)
    _check_part(path, table, data)
    return data


def _kind(t: pa.DataType) -> str:
    """The family of an Arrow type: values of one family cast to another type of it when they fit."""
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "list of " + _kind(t.value_type)
    return str(t)


def _conform(path: Path, table: str, data: pa.Table) -> pa.Table:
    """``data`` with every column of ``table``'s schema in its schema type; LogError names a column that is not."""
    for field in TABLES[table]:
        i = data.column_names.index(field.name)
        col = data.column(i)
        if col.type == field.type:
            continue
        if _kind(col.type) != _kind(field.type):
            raise LogError(f"{path}: column {field.name!r}: type {col.type}, expected {field.type}")
        try:
            col = col.cast(field.type)  # safe: a value that does not fit fails instead of wrapping
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise LogError(f"{path}: column {field.name!r}: type {col.type}, expected {field.type} ({exc})") from None
        data = data.set_column(i, field.name, col)
    return data


def _require(path: Path, column: str, ok: np.ndarray, rows: np.ndarray | None, what: Callable[..., str]) -> None:
    """LogError naming the first row where ``ok`` is False; ``rows`` maps positions to rows, ``what(j)`` the fault."""
    if ok.all():
        return
    j = int(np.argmin(ok))
    row = j if rows is None else int(rows[j])
    raise LogError(f"{path}: column {column!r} row {row}: {what(j)}")


def _require_first(path: Path, checks: list[tuple[str, np.ndarray, Callable[[int], str]]]) -> None:
    """:func:`_require` over several (column, ok, what) checks of one table's rows: LogError names the first row
    any of them fails, and the first check that fails it."""
    failed = [(int(np.argmin(ok)), i) for i, (_, ok, _) in enumerate(checks) if not ok.all()]
    if failed:
        row, i = min(failed)
        column, _, what = checks[i]
        raise LogError(f"{path}: column {column!r} row {row}: {what(row)}")


def _ints(data: pa.Table, name: str) -> np.ndarray:
    return np.asarray(data.column(name).to_numpy(), dtype=np.int64)


def _lists(data: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A list column as (flattened values, the row of each value, each row's length; 0 for a null row)."""
    arr = data.column(name).combine_chunks()
    values = np.asarray(pc.list_flatten(arr).to_numpy(zero_copy_only=False), dtype=np.int64)
    parents = np.asarray(pc.list_parent_indices(arr).to_numpy(), dtype=np.int64)
    lengths = np.asarray(pc.list_value_length(arr).fill_null(0).to_numpy(), dtype=np.int64)
    return values, parents, lengths


def _per_epoch(sorted_epochs: np.ndarray, query: np.ndarray) -> np.ndarray:
    """How many rows of an epoch-sorted table each queried epoch has."""
    return np.searchsorted(sorted_epochs, query, "right") - np.searchsorted(sorted_epochs, query, "left")


def _check_part(path: Path, table: str, data: pa.Table) -> None:
    """The values one part file can be checked on by itself: no nulls where required, finite floats, ranges."""
    for field in TABLES[table]:
        col = data.column(field.name)
        if col.null_count and (table, field.name) not in NULLABLE:
            nulls = col.is_null().to_numpy(zero_copy_only=False)
            _require(path, field.name, ~nulls, None, lambda j: "null in a required column")
        if pa.types.is_list(field.type):
            flat = pc.list_flatten(col.combine_chunks())
            if flat.null_count:
                parents = pc.list_parent_indices(col.combine_chunks()).to_numpy()
                ok = ~flat.is_null().to_numpy(zero_copy_only=False)
                _require(path, field.name, ok, parents, lambda j: "null inside the list")
        if pa.types.is_floating(field.type) and (table, field.name) not in NAN_ALLOWED:
            v = np.asarray(col.to_numpy(), dtype=np.float64)
            _require(path, field.name, np.isfinite(v), None, lambda j, v=v: f"{v[j]} is not a finite number")
    if table == "episodes":
        if data.num_rows != 1:
            raise LogError(f"{path}: holds {data.num_rows} rows, expected exactly one (one part file per day)")
        _check_params(path, data)
    for name in MINUTES.get(table, ()):
        v = _ints(data, name)
        _require(path, name, v >= 0, None, lambda j, v=v: f"{v[j]} is negative (minutes of the day)")
    for (of, name), within in IDS.items():
        if of == table:
            _check_ids(path, data, name, within)
    if table == "epochs":
        _check_epoch_rows(path, data)
    elif table in BY_EPOCH:
        e = _ints(data, "epoch")
        _require(
            path,
            "epoch",
            np.diff(e) >= 0,
            np.arange(1, e.size),
            lambda j: f"{e[j + 1]} after {e[j]}: rows not sorted by epoch",
        )
    if table in ("orders", "outcomes"):
        placed, ready = _ints(data, "placement"), _ints(data, "ready")
        # As the instance reader and the service: an order is ready no sooner than it is placed.
        _require(path, "ready", ready >= placed, None, lambda j: f"{ready[j]} is before placement {placed[j]}")
    if table == "outcomes":
        _check_outcome_times(path, data)
    if table in ("couriers", "shifts"):
        on, off = _ints(data, "on_time"), _ints(data, "off_time")
        # As the instance reader: a shift ends after it starts.
        _require(path, "off_time", off > on, None, lambda j: f"{off[j]} is not after on_time {on[j]}")
    if table == "couriers":
        _check_couriers(path, data)
    if table == "bundles":
        values, parents, lengths = _lists(data, "orders")
        _require(path, "orders", lengths > 0, None, lambda j: "an empty bundle")
        # A bundle is a set of orders in drop-off sequence: each order once (dispatch.routes).
        span = int(values.max(initial=0)) - int(values.min(initial=0)) + 1
        twice = _repeats(parents * span + (values - values.min(initial=0)))
        _require(path, "orders", ~twice, parents, lambda j: f"order index {values[j]} listed twice in one bundle")
        e, bundle = _ints(data, "epoch"), _ints(data, "bundle")
        first = np.searchsorted(e, e, "left")
        at = np.arange(e.size) - first
        _require(
            path,
            "bundle",
            bundle == at,
            None,
            lambda j: f"{bundle[j]} where {at[j]} was due (an epoch's bundles are numbered 0, 1, 2, ... in order)",
        )


def _check_params(path: Path, data: pa.Table) -> None:
    """A day's service parameters obey the rules the service decides by (ServiceParams.problem): a day the
    service would refuse to decide is no day to learn from or replay."""
    epochs = int(data.column("epochs")[0].as_py())
    if epochs < 0:
        raise LogError(f"{path}: column 'epochs' row 0: {epochs} is negative")
    params = ServiceParams(**{f: data.column(f)[0].as_py() for f in ServiceParams.__dataclass_fields__})
    if broken := params.problem():
        name, rule = broken  # the log's columns carry the ServiceParams names
        raise LogError(f"{path}: column {name!r} row 0: {getattr(params, name)!r} {rule}")


def _repeats(keys: np.ndarray) -> np.ndarray:
    """True at each position whose key an earlier position already holds."""
    order = np.argsort(keys, kind="stable")  # stable: of equal keys the first position sorts first
    ranked = keys[order]
    twice = np.zeros(keys.size, dtype=bool)
    twice[order[1:]] = ranked[1:] == ranked[:-1]
    return twice


def _check_ids(path: Path, data: pa.Table, column: str, within: str | None) -> None:
    """No id of ``column`` is empty, and each is unique ``within`` the day or each epoch (None: not unique)."""
    col = data.column(column).combine_chunks()
    empty = pc.equal(pc.binary_length(col), 0).fill_null(False).to_numpy(zero_copy_only=False)
    _require(path, column, ~empty, None, lambda j: "empty id")
    if within is None:
        return
    codes = np.asarray(pc.dictionary_encode(col).indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    keys = codes if within == "day" else _ints(data, "epoch") * (int(codes.max(initial=0)) + 1) + codes
    twice = _repeats(keys)
    _require(
        path,
        column,
        ~twice,
        None,
        lambda j: f"duplicate id {col[j].as_py()!r} (also row {int(np.argmax(keys == keys[j]))}, the same {within})",
    )


def _check_epoch_rows(path: Path, data: pa.Table) -> None:
    """The epochs of a day are numbered 0, 1, 2, ... and only the last one is ``done`` (the writer records the
    engine's steps until it is done; training ends each day at its last epoch)."""
    e = _ints(data, "epoch")
    at = np.arange(e.size)
    _require(path, "epoch", e == at, None, lambda j: f"{e[j]} at row {j} (a day's epochs are numbered 0, 1, 2, ...)")
    done = data.column("done").to_numpy(zero_copy_only=False).astype(bool)
    last = at == e.size - 1
    _require(
        path,
        "done",
        done == last,
        None,
        lambda j: "false on the day's last epoch" if last[j] else "true before the day's last epoch",
    )


def _check_outcome_times(path: Path, data: pa.Table) -> None:
    """An outcome's times follow the simulator's rules: -1 throughout for an order never carried; for one carried,
    assigned no sooner than placed, picked up no sooner than assigned or ready, dropped off no sooner than picked up.
    """
    carried = ~data.column("courier_id").is_null().to_numpy(zero_copy_only=False)
    placed, ready = _ints(data, "placement"), _ints(data, "ready")
    times = [_ints(data, c) for c in OUTCOME_TIMES]
    assigned, pickup, dropoff = times

    def never(v: np.ndarray) -> Callable[[int], str]:
        return lambda j: f"{v[j]} for an order never carried (courier_id null): expected -1"

    def before(v: np.ndarray, bound: np.ndarray, of: str) -> Callable[[int], str]:
        return lambda j: f"{v[j]} is before {of} {bound[j]}"

    checks = [(name, carried | (v == -1), never(v)) for name, v in zip(OUTCOME_TIMES, times, strict=True)]
    for name, v, bound, of in (
        ("assigned_at", assigned, placed, "placement"),
        ("pickup", pickup, assigned, "assigned_at"),
        ("pickup", pickup, ready, "ready"),
        ("dropoff", dropoff, pickup, "pickup"),
    ):
        checks.append((name, ~carried | (v >= bound), before(v, bound, of)))
    _require_first(path, checks)


def _check_couriers(path: Path, data: pa.Table) -> None:
    """An agent row has a candidate list of its epoch's width, an action within it and a rank among the agents."""
    e, agent, action, rank = (_ints(data, c) for c in ("epoch", "agent", "action", "rank"))
    _require(path, "agent", agent >= -1, None, lambda j: f"{agent[j]} is below -1 (-1: not an agent)")
    rows = np.flatnonzero(agent >= 0)
    has = ~data.column("candidates").is_null().to_numpy(zero_copy_only=False)
    _require(path, "candidates", has[rows], rows, lambda j: "null for an agent (agent >= 0)")
    values, parents, lengths = _lists(data, "candidates")
    _require(path, "candidates", values >= -1, parents, lambda j: f"slot {values[j]} is below -1 (-1: empty)")
    n, ea = lengths[rows], e[rows]
    same = ea[1:] == ea[:-1]
    _require(
        path,
        "candidates",
        ~same | (n[1:] == n[:-1]),
        rows[1:],
        lambda j: f"{n[j + 1]} slots where the epoch's other agents have {n[j]} (ragged lists)",
    )
    a = action[rows]
    _require(path, "action", (a >= -1) & (a < n), rows, lambda j: f"slot {a[j]} out of range (-1..{n[j] - 1})")
    starts = np.cumsum(lengths) - lengths
    picked = a >= 0
    chosen = values[starts[rows[picked]] + a[picked]]
    _require(path, "action", chosen >= 0, rows[picked], lambda j: "chooses an empty candidate slot")
    agents_in_epoch = _per_epoch(ea, ea)
    ag = agent[rows]
    _require(
        path,
        "agent",
        ag < agents_in_epoch,
        rows,
        lambda j: f"{ag[j]} out of range (0..{agents_in_epoch[j] - 1}: the epoch's agents)",
    )
    # In range and each once: the epoch's agents are numbered 0..n-1, the rows of its candidate matrix.
    twice = _repeats(ea * (int(ag.max(initial=0)) + 1) + ag)
    _require(path, "agent", ~twice, rows, lambda j: f"agent {ag[j]} twice in one epoch")
    r = rank[rows]
    _require(
        path,
        "rank",
        (r >= -1) & (r < agents_in_epoch),
        rows,
        lambda j: f"{r[j]} out of range (-1..{agents_in_epoch[j] - 1})",
    )
    ranked = rows[r >= 0]
    rr, er = rank[ranked], e[ranked]
    twice = _repeats(er * (int(rr.max(initial=0)) + 1) + rr)
    _require(path, "rank", ~twice, ranked, lambda j: f"rank {rr[j]} twice in one epoch (a choice order is a sequence)")
    logp = np.asarray(data.column("behaviour_logp").to_numpy(), dtype=np.float64)[rows]
    _require(path, "behaviour_logp", logp <= LOGP_SLACK, rows, lambda j: f"{logp[j]} is above 0 (a log-probability)")


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

    def warn_if_unfinished(self) -> None:
        """Say on stderr when the dataset's generation did not finish (a run that was stopped: the manifest's
        ``complete`` is false), so that training or replay on fewer days than asked for is never silent."""
        if self.manifest.get("complete") is False and self.episodes:  # none at all is refused by the readers
            print(
                f"warning: {self.folder}: its generation did not finish ({len(self.episodes)} day(s) logged); "
                "rerun `dispatch logs generate` with the same arguments to complete it",
                file=sys.stderr,
            )

    @property
    def dispatch_interval(self) -> int | None:
        """Minutes between decision epochs the logs were made with (``args.sim.dispatch_interval``; None if
        unrecorded)."""
        value = self.manifest.get("args", {}).get("sim", {}).get("dispatch_interval")
        return None if value is None else int(value)

    @property
    def k(self) -> int:
        """Candidate slots per agent the logs were made with (``args.candidates.k``; 16 if unrecorded, 0: all)."""
        return int(self.manifest.get("args", {}).get("candidates", {}).get("k", 16))

    def path(self, table: str, episode: int) -> Path:
        """The part file of one table for one day."""
        return self.folder / self.manifest["episodes"][str(episode)]["files"][table]["path"]

    def part(self, table: str, episode: int) -> pa.Table:
        """One table's part for one day."""
        return read_part(self.path(table, episode), table)

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
        return LoggedDay(episode, self._checked_parts(episode))

    def days(self) -> Iterator[LoggedDay]:
        """Every logged day in order; the values of all of them are checked before this returns.

        A bad day is refused at once, not after the work done on the days before it. Each part file is
        read and checked once: the checked tables wait in memory, about 1.3 MB of Arrow tables per MDRP day
        (144 days: 25 MB of Parquet, 189 MB of tables, about 3 s to read and check), and each day's are
        released when it is handed out.
        """
        checked = deque((e, self._checked_parts(e)) for e in self.episodes)
        return _hand_out(checked)

    def check(self) -> None:
        """Check every day's part files, each by itself and against the others (LogError on the first fault).

        What :meth:`days` checks, one day at a time and without keeping the tables: for readers that go on
        to read whole tables across days (``logs card``).
        """
        for episode in self.episodes:
            self._checked_parts(episode)
            pa.default_memory_pool().release_unused()

    def _checked_parts(self, episode: int) -> dict[str, pa.Table]:
        """One day's part files, each checked by itself and against the others."""
        parts = {t: self.part(t, episode) for t in TABLES}
        _check_day(self, episode, parts)
        return parts


def _hand_out(checked: deque[tuple[int, dict[str, pa.Table]]]) -> Iterator[LoggedDay]:
    """The days of ``checked`` in order, each popped as it is made so its tables can be freed."""
    while checked:
        episode, parts = checked.popleft()
        day = LoggedDay(episode, parts)
        del parts
        # Arrow's allocator keeps freed memory for its own reuse; without this the checked tables of every
        # day stay in the process while the days are encoded (measured: +0.28 GB on a 1.4 GB peak).
        pa.default_memory_pool().release_unused()
        yield day


class LoggedDay:
    """A day rebuilt from the log alone: its instance and its decisions."""

    def __init__(self, episode: int, parts: dict[str, pa.Table]) -> None:
        """The day ``episode`` from its part files, already checked (``LogDataset.day`` and ``.days``)."""
        self.episode = episode
        self.info = parts["episodes"].to_pylist()[0]
        self.tables = {t: parts[t].to_pydict() for t in TABLES if t != "episodes"}
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


def _check_day(ds: LogDataset, episode: int, parts: dict[str, pa.Table]) -> None:
    """One day's tables against each other: the epochs and their counts, the indices between the tables
    (restaurants of orders, orders of bundles, bundles of candidates), each bundle's orders of one restaurant,
    and the outcomes against the shifts and the service parameters."""
    _check_epochs(ds, episode, parts)  # first: the other checks count each epoch's rows of the other tables
    n = parts["restaurants"].num_rows
    for table in ("orders", "outcomes"):
        r = _ints(parts[table], "restaurant")
        path = ds.path(table, episode)
        _require(path, "restaurant", (r >= 0) & (r < n), None, lambda j, r=r: f"index {r[j]} out of range (0..{n - 1})")
    _check_bundles(ds.path("bundles", episode), parts["orders"], parts["bundles"])
    _check_outcomes(ds, episode, parts)
    bundle_epochs = _ints(parts["bundles"], "epoch")
    values, parents, lengths = _lists(parts["couriers"], "candidates")
    bundles = _per_epoch(bundle_epochs, _ints(parts["couriers"], "epoch")[parents])
    path = ds.path("couriers", episode)
    _require(
        path,
        "candidates",
        (values >= -1) & (values < bundles),
        parents,
        lambda j: f"bundle index {values[j]} out of range (-1..{bundles[j] - 1}: the epoch's bundles, -1 empty)",
    )
    k = ds.k
    if k > 0:  # 0: every feasible candidate, no bound
        rows = np.flatnonzero(_ints(parts["couriers"], "agent") >= 0)
        n_slots = lengths[rows]
        _require(
            path,
            "candidates",
            n_slots <= k,
            rows,
            lambda j: f"{n_slots[j]} slots, more than the manifest's args.candidates.k = {k}",
        )


def _check_epochs(ds: LogDataset, episode: int, parts: dict[str, pa.Table]) -> None:
    """The epochs table against the day's others: as many epochs as the day counted, each ``dispatch_interval``
    minutes after the one before, each with the couriers, agents and orders its counts say, no order shown
    before it is placed, and no row of another table in an epoch the day does not have."""
    epochs, path = parts["epochs"], ds.path("epochs", episode)
    n = epochs.num_rows
    counted = int(parts["episodes"].column("epochs")[0].as_py())
    if counted != n:
        raise LogError(
            f"{ds.path('episodes', episode)}: column 'epochs' row 0: {counted} epochs, but the epochs table "
            f"has {n} rows"
        )
    time = _ints(epochs, "time")
    step = np.diff(time)
    interval = ds.dispatch_interval
    # The engine advances by exactly the interval; replay and the training view take each row for one step.
    ok = step == interval if interval is not None else step > 0
    unit = "minute" if interval == 1 else "minutes"
    due = f"{interval} {unit} later (args.sim.dispatch_interval)" if interval is not None else "later"
    _require(path, "time", ok, np.arange(1, n), lambda j: f"{time[j + 1]} after {time[j]}: not {due}")
    for table in BY_EPOCH[1:]:
        e = _ints(parts[table], "epoch")
        _require(
            ds.path(table, episode),
            "epoch",
            (e >= 0) & (e < n),
            None,
            lambda j, e=e: f"{e[j]} is not an epoch of the day ({f'0..{n - 1}' if n else 'it has none'})",
        )
    couriers = parts["couriers"]
    agents = _ints(couriers, "epoch")[_ints(couriers, "agent") >= 0]
    for column, table, rows, what in (
        ("n_couriers", "couriers", _ints(couriers, "epoch"), "rows"),
        ("n_agents", "couriers", agents, "agent rows"),
        ("n_orders", "orders", _ints(parts["orders"], "epoch"), "rows"),
    ):
        have = np.bincount(rows, minlength=n)
        said = _ints(epochs, column)
        _require(
            path,
            column,
            said == have,
            None,
            lambda j, said=said, have=have, table=table, what=what: (
                f"{said[j]}, but the {table} table has {have[j]} {what} for epoch {j}"
            ),
        )
    orders = parts["orders"]
    placed, shown = _ints(orders, "placement"), time[_ints(orders, "epoch")]
    # As the service: a snapshot holds only orders placed by its time.
    _require(
        ds.path("orders", episode),
        "placement",
        placed <= shown,
        None,
        lambda j: f"{placed[j]} is after its epoch's time {shown[j]} (shown before it was placed)",
    )


def _check_outcomes(ds: LogDataset, episode: int, parts: dict[str, pa.Table]) -> None:
    """Each outcome against the day: carried by a courier of the shifts table, assigned before it expired, and
    ``delivered`` exactly when carried within the maximum click-to-door."""
    out, path = parts["outcomes"], ds.path("outcomes", episode)
    courier = out.column("courier_id")
    carried = ~courier.is_null().to_numpy(zero_copy_only=False)
    known = pc.is_in(courier, value_set=parts["shifts"].column("courier_id").combine_chunks())
    ok = ~carried | known.to_numpy(zero_copy_only=False)
    _require(path, "courier_id", ok, None, lambda j: f"{courier[j].as_py()!r} is not a courier of the day's shifts")
    limit = int(parts["episodes"].column("max_ctd")[0].as_py())
    placed, assigned, dropoff = (_ints(out, c) for c in ("placement", "assigned_at", "dropoff"))
    _require(
        path,
        "assigned_at",
        ~carried | (assigned <= placed + limit),
        None,
        lambda j: f"{assigned[j]} is after placement {placed[j]} + max_ctd {limit} (the order had expired)",
    )
    delivered = out.column("delivered").to_numpy(zero_copy_only=False).astype(bool)
    expected = carried & (dropoff - placed <= limit)
    _require(
        path,
        "delivered",
        delivered == expected,
        None,
        lambda j: (
            f"{bool(delivered[j])} for an order "
            + (f"dropped off {dropoff[j] - placed[j]} minutes after placement" if carried[j] else "never carried")
            + f" (delivered: carried within max_ctd {limit})"
        ),
    )


def _check_bundles(path: Path, orders: pa.Table, bundles: pa.Table) -> None:
    """Every bundle lists open orders of its epoch, all of one restaurant (``path``: the bundles part)."""
    order_epochs = _ints(orders, "epoch")
    values, parents, lengths = _lists(bundles, "orders")
    epochs = _ints(bundles, "epoch")[parents]
    open_orders = _per_epoch(order_epochs, epochs)
    _require(
        path,
        "orders",
        (values >= 0) & (values < open_orders),
        parents,
        lambda j: f"order index {values[j]} out of range (0..{open_orders[j] - 1}: the epoch's open orders)",
    )
    # An order index counts from the epoch's first row of the orders table. The range check above comes
    # first: for an epoch with no orders the row below would point into the next epoch's. The simulator only ever
    # bundles orders of one restaurant (dispatch.routes), and a bundle's timing assumes a single pickup.
    restaurant = _ints(orders, "restaurant")[np.searchsorted(order_epochs, epochs, "left") + values]
    first = restaurant[(np.cumsum(lengths) - lengths)[parents]]
    _require(
        path,
        "orders",
        restaurant == first,
        parents,
        lambda j: (
            f"order index {values[j]} is from restaurant index {restaurant[j]}, but the bundle's first order "
            f"is from restaurant index {first[j]} (a bundle's orders share one restaurant)"
        ),
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
