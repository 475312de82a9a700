"""Log datasets whose files are sound (hashes match) but whose values are not: refused, naming file and field."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from simulator.logs.card import make_card
from simulator.logs.dataset import MANIFEST, LogDataset, LogError
from simulator.logs.generate import generate
from simulator.logs.view import CACHE_DIR, TrainingView, build
from simulator.logs.view import load as load_view
from simulator.logs.writer import sha256_file
from simulator.replay.days import log_days

INSTANCE = "0o50t75s2p100"
Change = Callable[[pa.Table], pa.Table]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two logged days of the mixed recipe (reyes-soft, assignment-soft)."""
    out = tmp_path_factory.mktemp("logs") / "ds"
    generate(out, "mixed", [INSTANCE], days=2, seed=3, jobs=1, progress=False)
    return out


def _copy(dataset: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(dataset, out, ignore=shutil.ignore_patterns(CACHE_DIR))
    return out


def _rewrite(folder: Path, table: str, change: Change, episode: int = 0) -> Path:
    """Change one part file and record its new hash, so only the value checks stand between it and a reader."""
    path = folder / table / f"part-{episode:06d}.parquet"
    old = pq.read_table(path)
    pq.write_table(change(old).replace_schema_metadata(old.schema.metadata), path)
    man = json.loads((folder / MANIFEST).read_text())
    man["episodes"][str(episode)]["files"][table]["sha256"] = sha256_file(path)
    (folder / MANIFEST).write_text(json.dumps(man))
    return path


def _set(column: str, row: int | Callable[[pa.Table], int], value: Any, type_: pa.DataType | None = None) -> Change:
    """Set one cell (``row`` may be found from the table); ``type_`` replaces the column's type."""

    def change(t: pa.Table) -> pa.Table:
        r = row(t) if callable(row) else row
        values = t.column(column).to_pylist()
        values[r] = value(values[r]) if callable(value) else value
        i = t.column_names.index(column)
        return t.set_column(i, column, pa.array(values, type=type_ or t.schema.field(column).type))

    return change


def _agent_row(t: pa.Table, shared: bool = False) -> int:
    """The first agent row that chose a slot (``shared``: in an epoch with another agent, not the epoch's first)."""
    agent = np.asarray(t.column("agent"))
    action = np.asarray(t.column("action"))
    epoch = np.asarray(t.column("epoch"))
    for r in np.flatnonzero((agent >= 0) & (action >= 0)):
        if not shared or (r > 0 and agent[r - 1] >= 0 and epoch[r - 1] == epoch[r]):
            return int(r)
    raise AssertionError("no such agent row in the fixture")


def _end_shift(row: int, after_start: int) -> Change:
    """Set a row's off_time ``after_start`` minutes after its on_time (0: a shift of no length)."""
    return lambda t: _set("off_time", row, t.column("on_time")[row].as_py() + after_start)(t)


def _restaurant_as_text(t: pa.Table) -> pa.Table:
    i = t.column_names.index("restaurant")
    return t.set_column(i, "restaurant", pc.cast(t.column("restaurant"), pa.string()))


def _where(test: Callable[[pa.Table], np.ndarray]) -> Callable[[pa.Table], int]:
    """The first row where ``test`` holds (AssertionError if the fixture has none)."""

    def row(t: pa.Table) -> int:
        rows = np.flatnonzero(test(t))
        assert rows.size, "no such row in the fixture"
        return int(rows[0])

    return row


def _col(t: pa.Table, name: str) -> np.ndarray:
    return np.asarray(t.column(name).to_numpy(zero_copy_only=False))


def _carried(t: pa.Table) -> np.ndarray:
    return ~t.column("courier_id").is_null().to_numpy(zero_copy_only=False)


def _same_epoch_as_previous(t: pa.Table, column: str) -> np.ndarray:
    """Rows of the previous row's epoch where both rows set ``column`` (a number >= 0, or any id)."""
    e, v = _col(t, "epoch"), _col(t, column)
    set_ = v >= 0 if v.dtype.kind in "iu" else np.ones(v.size, dtype=bool)
    out = np.zeros(t.num_rows, dtype=bool)
    out[1:] = (e[1:] == e[:-1]) & set_[1:] & set_[:-1]
    return out


def _copy_previous(column: str) -> Change:
    """Give the first row that shares its epoch with the previous row, both setting ``column``, the previous row's
    value (one value twice in an epoch)."""

    def change(t: pa.Table) -> pa.Table:
        row = _where(lambda t: _same_epoch_as_previous(t, column))(t)
        return _set(column, row, t.column(column)[row - 1].as_py())(t)

    return change


def _relative(column: str, row: Callable[[pa.Table], int], to: str, delta: int) -> Change:
    """Set ``column`` of a row to ``delta`` minutes after (or before) the same row's ``to``."""
    return lambda t: _set(column, row, t.column(to)[row(t)].as_py() + delta)(t)


def _all(column: str, value: Any) -> Change:
    return lambda t: t.set_column(
        t.column_names.index(column), column, pa.array([value] * t.num_rows, type=t.schema.field(column).type)
    )


def _plus(column: str, row: int, delta: int) -> Change:
    return _set(column, row, lambda v: v + delta)


_placed_later = _where(lambda t: _col(t, "placement") > 0)
_delivered = _where(lambda t: _col(t, "delivered"))
_carried_before_ready = _where(lambda t: _carried(t) & (_col(t, "assigned_at") < _col(t, "ready")))


CASES: dict[str, tuple[str, Change, str]] = {
    # table, change, what the message says after the file's path
    "restaurant out of range": (
        "orders",
        _set("restaurant", 17, 99999),
        r"column 'restaurant' row 17: index 99999 out of range \(0\.\.\d+\)",
    ),
    "outcome restaurant negative": (
        "outcomes",
        _set("restaurant", 3, -1),
        r"column 'restaurant' row 3: index -1 out of range",
    ),
    "bundle order out of range": (
        "bundles",
        _set("orders", 5, [99999]),
        r"column 'orders' row 5: order index 99999 out of range",
    ),
    "candidate out of range": (
        "couriers",
        _set("candidates", _agent_row, lambda c: [99999, *c[1:]]),
        r"column 'candidates' row \d+: bundle index 99999 out of range",
    ),
    "action out of range": (
        "couriers",
        _set("action", _agent_row, 99),
        r"column 'action' row \d+: slot 99 out of range",
    ),
    "ragged candidates": (
        "couriers",
        _set("candidates", lambda t: _agent_row(t, shared=True), lambda c: [*c, -1]),
        r"column 'candidates' row \d+: \d+ slots where the epoch's other agents have \d+",
    ),
    "null time": ("epochs", _set("time", 3, None), r"column 'time' row 3: null in a required column"),
    "nan reward": ("epochs", _set("reward", 4, float("nan")), r"column 'reward' row 4: nan is not a finite number"),
    "inf logp": (
        "couriers",
        _set("behaviour_logp", _agent_row, float("-inf")),
        r"column 'behaviour_logp' row \d+: -inf is not a finite number",
    ),
    "nan coordinate": ("orders", _set("x", 2, float("nan")), r"column 'x' row 2: nan is not a finite number"),
    "empty episodes": ("episodes", lambda t: t.slice(0, 0), r"holds 0 rows, expected exactly one"),
    "zero speed": (
        "episodes",
        _set("meters_per_minute", 0, 0.0),
        r"column 'meters_per_minute' row 0: 0.0 must be finite and > 0",
    ),
    "rank out of range": ("couriers", _set("rank", _agent_row, 999), r"column 'rank' row \d+: 999 out of range"),
    "positive log-probability": (
        "couriers",
        _set("behaviour_logp", _agent_row, 0.5),
        r"column 'behaviour_logp' row \d+: 0\.5 is above 0",
    ),
    "agent without candidates": (
        "couriers",
        _set("candidates", _agent_row, None),
        r"column 'candidates' row \d+: null for an agent",
    ),
    "action on an empty slot": (
        "couriers",
        lambda t: _set("action", _agent_row, 0)(_set("candidates", _agent_row, lambda c: [-1, *c[1:]])(t)),
        r"column 'action' row \d+: chooses an empty candidate slot",
    ),
    "text in a number column": (
        "orders",
        _restaurant_as_text,
        r"column 'restaurant': type string, expected int32",
    ),
    "shift of no length": (
        "shifts",
        _end_shift(2, 0),
        r"column 'off_time' row 2: (\d+) is not after on_time \1$",
    ),
    "inverted shift in a snapshot": (
        "couriers",
        _end_shift(7, -1),
        r"column 'off_time' row 7: \d+ is not after on_time \d+$",
    ),
    # The service's rules for the same parameters (service/validation.py), and the instance reader's for pay.
    "zero target click-to-door": (
        "episodes",
        _set("target_ctd", 0, 0),
        r"column 'target_ctd' row 0: 0 must be > 0$",
    ),
    "maximum below the target": (
        "episodes",
        _set("max_ctd", 0, 1),
        r"column 'max_ctd' row 0: 1 must be >= target \(40\)$",
    ),
    "negative pay": ("episodes", _set("pay_per_order", 0, -1.0), r"column 'pay_per_order' row 0: -1\.0 must be >= 0$"),
    "wrong epoch count": (
        "episodes",
        _plus("epochs", 0, 1),
        r"column 'epochs' row 0: (\d+) epochs, but the epochs table has (?!\1)\d+ rows$",
    ),
    # Minutes of the day are never negative; an order is never ready before it is placed.
    "negative free_at": ("couriers", _set("free_at", 5, -100), r"column 'free_at' row 5: -100 is negative"),
    "negative epoch time": ("epochs", _set("time", 0, -1), r"column 'time' row 0: -1 is negative"),
    "ready before placement": (
        "orders",
        _relative("ready", _placed_later, "placement", -1),
        r"column 'ready' row \d+: (\d+) is before placement (\d+)$",
    ),
    "outcome ready before placement": (
        "outcomes",
        _relative("ready", _placed_later, "placement", -1),
        r"column 'ready' row \d+: \d+ is before placement \d+$",
    ),
    # A day's epochs: numbered 0, 1, ..., one dispatch interval apart, done on the last only, counts that match.
    "time reversed": (
        "epochs",
        lambda t: t.set_column(2, "time", pa.array(t.column("time").to_pylist()[::-1], type=pa.int32())),
        r"column 'time' row 1: \d+ after \d+: not 1 minute later \(args\.sim\.dispatch_interval\)$",
    ),
    "time repeated": (
        "epochs",
        lambda t: _set("time", 3, t.column("time")[2].as_py())(t),
        r"column 'time' row 3: (\d+) after \1: not 1 minute later",
    ),
    "epoch skipped": (
        "epochs",
        lambda t: _plus("epoch", t.num_rows - 1, 1)(t),
        r"column 'epoch' row (\d+): \d+ at row \1 \(a day's epochs are numbered 0, 1, 2, \.\.\.\)$",
    ),
    "done on every epoch": ("epochs", _all("done", True), r"column 'done' row 0: true before the day's last epoch$"),
    "done on no epoch": ("epochs", _all("done", False), r"column 'done' row \d+: false on the day's last epoch$"),
    "courier count": (
        "epochs",
        _plus("n_couriers", 3, 1),
        r"column 'n_couriers' row 3: (\d+), but the couriers table has (?!\1)\d+ rows for epoch 3$",
    ),
    "agent count": (
        "epochs",
        _plus("n_agents", 3, 1),
        r"column 'n_agents' row 3: \d+, but the couriers table has \d+ agent rows for epoch 3$",
    ),
    "order count": (
        "epochs",
        _plus("n_orders", 3, -1),
        r"column 'n_orders' row 3: \d+, but the orders table has \d+ rows for epoch 3$",
    ),
    "order of no epoch": (
        "orders",
        lambda t: pa.concat_tables([t, _set("epoch", 0, 10**6)(t.slice(t.num_rows - 1))]),
        r"column 'epoch' row \d+: 1000000 is not an epoch of the day",
    ),
    # Bundles: each order once, numbered in order within the epoch.
    "order twice in a bundle": (
        "bundles",
        _set("orders", 5, lambda m: [m[0], m[0]]),
        r"column 'orders' row 5: order index (\d+) listed twice in one bundle$",
    ),
    "bundle misnumbered": ("bundles", _set("bundle", 1, 7), r"column 'bundle' row 1: 7 where \d+ was due"),
    # Ids: never empty; unique over the day (restaurants, shifts, outcomes) or within an epoch (couriers, orders).
    "empty courier id": ("couriers", _set("courier_id", 3, ""), r"column 'courier_id' row 3: empty id$"),
    "empty outcome courier": (
        "outcomes",
        _set("courier_id", _delivered, ""),
        r"column 'courier_id' row \d+: empty id$",
    ),
    "duplicate restaurant": (
        "restaurants",
        lambda t: _set("restaurant_id", 2, t.column("restaurant_id")[0].as_py())(t),
        r"column 'restaurant_id' row 2: duplicate id '[^']+' \(also row 0, the same day\)$",
    ),
    "duplicate shift": (
        "shifts",
        lambda t: _set("courier_id", 4, t.column("courier_id")[1].as_py())(t),
        r"column 'courier_id' row 4: duplicate id '[^']+' \(also row 1, the same day\)$",
    ),
    "duplicate courier in an epoch": (
        "couriers",
        lambda t: _set("courier_id", 1, t.column("courier_id")[0].as_py())(t),
        r"column 'courier_id' row 1: duplicate id '[^']+' \(also row 0, the same epoch\)$",
    ),
    "duplicate order in an epoch": (
        "orders",
        _copy_previous("order_id"),
        r"column 'order_id' row \d+: duplicate id '[^']+' \(also row \d+, the same epoch\)$",
    ),
    # Agents: numbered 0..n-1 within the epoch, each once; a choice order ranks each agent once.
    "agent out of range": (
        "couriers",
        _set("agent", _agent_row, 50),
        r"column 'agent' row \d+: 50 out of range \(0\.\.\d+",
    ),
    "agent twice in an epoch": (
        "couriers",
        _copy_previous("agent"),
        r"column 'agent' row \d+: agent \d+ twice in one epoch$",
    ),
    "rank twice in an epoch": (
        "couriers",
        _copy_previous("rank"),
        r"column 'rank' row \d+: rank \d+ twice in one epoch",
    ),
    # Outcomes: the simulator's timing rules, and the day's couriers and maximum click-to-door.
    "negative dropoff": (
        "outcomes",
        _set("dropoff", _delivered, -5),
        r"column 'dropoff' row \d+: -5 is before pickup \d+$",
    ),
    "dropoff before pickup": (
        "outcomes",
        _relative("dropoff", _delivered, "pickup", -1),
        r"column 'dropoff' row \d+: (\d+) is before pickup (\d+)$",
    ),
    "pickup before ready": (
        "outcomes",
        _relative("pickup", _carried_before_ready, "ready", -1),
        r"column 'pickup' row \d+: \d+ is before ready \d+$",
    ),
    "assigned before placement": (
        "outcomes",
        _relative("assigned_at", _where(lambda t: _carried(t) & (_col(t, "placement") > 0)), "placement", -1),
        r"column 'assigned_at' row \d+: \d+ is before placement \d+$",
    ),
    "times of an order never carried": (
        "outcomes",
        _set("courier_id", _delivered, None),
        r"column 'assigned_at' row \d+: \d+ for an order never carried \(courier_id null\): expected -1$",
    ),
    "courier not on a shift": (
        "outcomes",
        _set("courier_id", _delivered, "nobody"),
        r"column 'courier_id' row \d+: 'nobody' is not a courier of the day's shifts$",
    ),
    "delivered flag wrong": (
        "outcomes",
        _set("delivered", _delivered, False),
        r"column 'delivered' row \d+: False for an order dropped off \d+ minutes after placement",
    ),
}


def _readers(folder: Path) -> dict[str, Callable[[], object]]:
    """What ``logs card``, ``train --data`` and ``replay`` read a dataset with."""
    return {
        "card": lambda: make_card(folder),
        "day": lambda: LogDataset(folder).day(0).decisions(),
        "train": lambda: load_view(folder, cache=False),
        "replay": lambda: log_days(folder),
    }


def _assert_refused(folder: Path, path: Path, message: str) -> None:
    """Every reader refuses ``folder`` with one line: ``path``, then ``message``."""
    for reader, read in _readers(folder).items():
        with pytest.raises(LogError, match=rf"^{path}: {message}") as err:
            read()
        assert "\n" not in str(err.value), (reader, str(err.value))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_value_is_refused_naming_file_and_column(dataset: Path, tmp_path: Path, case: str) -> None:
    table, change, message = CASES[case]
    folder = _copy(dataset, tmp_path)
    _assert_refused(folder, _rewrite(folder, table, change), message)


def test_order_shown_before_its_placement_is_refused(dataset: Path, tmp_path: Path) -> None:
    folder = _copy(dataset, tmp_path)
    # Every epoch the same minutes earlier, one dispatch interval apart still: the first shows orders not yet placed.
    _rewrite(folder, "epochs", lambda t: t.set_column(2, "time", pc.subtract(t.column("time"), t.column("time")[0])))
    message = r"column 'placement' row 0: \d+ is after its epoch's time 0 \(shown before it was placed\)$"
    _assert_refused(folder, folder / "orders" / "part-000000.parquet", message)


def _assigned_after_expiry(t: pa.Table) -> pa.Table:
    """A carried order assigned, picked up and dropped off after it had expired (placement + max_ctd 90)."""
    row = _delivered(t)
    late = t.column("placement")[row].as_py() + 91
    t = _set("assigned_at", row, late)(t)
    return _set("dropoff", row, late + 200)(_set("pickup", row, late + 100)(t))


def test_order_assigned_after_it_expired_is_refused(dataset: Path, tmp_path: Path) -> None:
    folder = _copy(dataset, tmp_path)
    path = _rewrite(folder, "outcomes", _assigned_after_expiry)
    message = r"column 'assigned_at' row \d+: (\d+) is after placement \d+ \+ max_ctd 90 \(the order had expired\)$"
    _assert_refused(folder, path, message)


def _foreign_order(folder: Path) -> tuple[int, int]:
    """A bundle row of day 0 and an open order of its epoch from another restaurant than the bundle's first."""
    orders = pq.read_table(folder / "orders" / "part-000000.parquet")
    bundles = pq.read_table(folder / "bundles" / "part-000000.parquet")
    epoch, restaurant = np.asarray(orders.column("epoch")), np.asarray(orders.column("restaurant"))
    rows = zip(bundles.column("epoch").to_pylist(), bundles.column("orders").to_pylist(), strict=True)
    for row, (e, members) in enumerate(rows):
        open_restaurants = restaurant[epoch == e]  # by order index: the epoch's rows, in order
        other = np.flatnonzero(open_restaurants != open_restaurants[members[0]])
        if other.size:
            return row, int(other[0])
    raise AssertionError("no epoch with open orders of two restaurants in the fixture")


def test_bundle_of_two_restaurants_is_refused(dataset: Path, tmp_path: Path) -> None:
    folder = _copy(dataset, tmp_path)
    row, order = _foreign_order(folder)
    path = _rewrite(folder, "bundles", _set("orders", row, lambda members: [*members, order]))
    message = (
        rf"column 'orders' row {row}: order index {order} is from restaurant index \d+, "
        r"but the bundle's first order is from restaurant index \d+"
    )
    _assert_refused(folder, path, message)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("args", "x", r"manifest field 'args' is str, expected an object"),
        ("args.candidates", [16], r"manifest field 'args' \(candidates\): list, expected an object"),
        ("args.candidates.k", -3, r"manifest field 'args' \(candidates\.k\): -3 is not an integer >= 0"),
        ("args.candidates.k", 16.0, r"manifest field 'args' \(candidates\.k\): 16\.0 is not an integer >= 0"),
        ("args.sim.dispatch_interval", "2", r"manifest field 'args' \(sim\.dispatch_interval\): '2' is not an integer"),
    ],
)
def test_bad_manifest_args_are_refused_naming_the_field(
    dataset: Path, tmp_path: Path, field: str, value: object, message: str
) -> None:
    folder = _copy(dataset, tmp_path)
    man = json.loads((folder / MANIFEST).read_text())
    *parents, last = field.split(".")
    node = man
    for key in parents:
        node = node[key]
    node[last] = value
    (folder / MANIFEST).write_text(json.dumps(man))
    for read in _readers(folder).values():
        with pytest.raises(LogError, match=rf"^{folder / MANIFEST}: {message}"):
            read()


def test_cli_replay_and_train_refuse_a_zero_speed_with_one_line(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dispatch_cli.main import main

    folder = _copy(dataset, tmp_path)
    path = _rewrite(folder, "episodes", _set("meters_per_minute", 0, 0.0), episode=1)
    capsys.readouterr()
    out = tmp_path / "r"
    assert main(["replay", str(folder), "--policy", "nearest", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dispatch replay: {path}: column 'meters_per_minute' row 0: 0.0 must be finite and > 0"
    run = tmp_path / "run"
    argv = ["train", "--algo", "bc", "--data", str(folder), "--steps", "1", "--out", str(run), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{path}: column 'meters_per_minute' row 0: 0.0 must be finite and > 0"), err


def test_bad_last_day_is_refused_before_any_day_is_encoded(dataset: Path, tmp_path: Path) -> None:
    folder = _copy(dataset, tmp_path)
    encoded: list[int] = []
    build(LogDataset(folder), on_day=encoded.append)
    assert encoded == [0, 1]  # the sound dataset reports each day as it is encoded
    path = _rewrite(folder, "orders", _set("restaurant", 17, 99999), episode=1)
    encoded.clear()
    with pytest.raises(LogError, match=rf"^{path}: column 'restaurant' row 17: index 99999 out of range"):
        build(LogDataset(folder), on_day=encoded.append)
    assert encoded == []  # day 0 is sound, yet it was not encoded before day 1 was refused


def _assert_same(a: TrainingView, b: TrainingView) -> None:
    for name in TrainingView.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.fixture(scope="module")
def fresh(dataset: Path) -> TrainingView:
    """The training view of the module's dataset, encoded without any cache."""
    return build(LogDataset(dataset))


@pytest.mark.parametrize("damage", ["empty", "truncated", "flipped", "short column"])
def test_corrupt_cache_is_rebuilt(
    dataset: Path, fresh: TrainingView, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ds"
    shutil.copytree(dataset, folder)
    load_view(folder)  # writes the cache
    (cache,) = (folder / CACHE_DIR).glob("view-*.npz")
    body = cache.read_bytes()
    if damage == "short column":  # a readable archive whose arrays do not fit together
        with np.load(cache) as z:
            arrays = {name: z[name] for name in z.files}
        arrays["action"] = arrays["action"][:-1]
        with cache.open("wb") as fh:
            np.savez(fh, **arrays)
    else:
        cache.write_bytes(
            {
                "empty": b"",
                "truncated": body[: len(body) // 2],
                "flipped": body[:100] + bytes(b ^ 0xFF for b in body[100:200]) + body[200:],
            }[damage]
        )
    _assert_same(load_view(folder), fresh)  # rebuilt,
    _assert_same(load_view(folder), fresh)  # and cached again
    assert cache.is_file() and cache.read_bytes() != b""
    assert "warning" not in capsys.readouterr().err


def test_unwritable_cache_folder_is_skipped_with_a_warning(
    dataset: Path, fresh: TrainingView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(dataset, tmp_path)
    (folder / CACHE_DIR).write_text("a file where the cache folder would go")  # mkdir fails, even as root
    _assert_same(load_view(folder), fresh)
    assert "warning: training view not cached" in capsys.readouterr().err
