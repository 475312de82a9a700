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
        r"column 'meters_per_minute' row 0: speed 0.0 is not positive",
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
    assert err == f"dispatch replay: {path}: column 'meters_per_minute' row 0: speed 0.0 is not positive"
    run = tmp_path / "run"
    argv = ["train", "--algo", "bc", "--data", str(folder), "--steps", "1", "--out", str(run), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{path}: column 'meters_per_minute' row 0: speed 0.0 is not positive"), err


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
