"""Malformed instance files: InstanceError names the file, the line and the field.

Each case copies a small public instance to tmp_path, breaks one thing, and loads it.
Data row k of a file (0-based) is on line k + 2 (the header is line 1).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from simulator import instance as instance_mod
from simulator.instance import Instance, InstanceError, default_data_dir, list_instances, load, save
from tests.helpers import make_instance

SMALL = "0o50t75s1p100"
FILES = ("instance_parameters.txt", "restaurants.txt", "orders.txt", "couriers.txt")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    dst = tmp_path / SMALL
    dst.mkdir()
    for f in FILES:
        shutil.copy(default_data_dir() / SMALL / f, dst / f)
    return dst


def table(folder: Path, name: str) -> list[list[str]]:
    return [ln.split("\t") for ln in (folder / name).read_text().splitlines()]


def write_table(folder: Path, name: str, rows: list[list[str]]) -> None:
    (folder / name).write_text("\n".join("\t".join(r) for r in rows) + "\n")


def edit(folder: Path, name: str, line: int, column: str, value: str) -> list[str]:
    """Set ``column`` on file line ``line`` (1-based, header is 1); returns the edited row."""
    rows = table(folder, name)
    col = rows[0].index(column)
    rows[line - 1][col] = value
    write_table(folder, name, rows)
    return rows[line - 1]


def load_error(folder: Path) -> str:
    with pytest.raises(InstanceError) as info:
        load(folder)
    return str(info.value)


def assert_names(msg: str, folder: Path, name: str, line: int, field: str) -> None:
    assert str(folder / name) in msg, msg
    assert f"line {line}:" in msg, msg
    assert f"'{field}'" in msg, msg


def test_unbroken_copy_loads(folder: Path) -> None:
    inst = load(folder)
    assert inst.n_orders == 252 and inst.n_couriers == 61


def test_missing_column(folder: Path) -> None:
    rows = table(folder, "orders.txt")
    col = rows[0].index("ready_time")
    write_table(folder, "orders.txt", [r[:col] + r[col + 1 :] for r in rows])
    assert_names(load_error(folder), folder, "orders.txt", 1, "ready_time")


def test_missing_field_in_a_row(folder: Path) -> None:
    rows = table(folder, "couriers.txt")
    rows[4] = rows[4][:-1]  # line 5 lacks off_time
    write_table(folder, "couriers.txt", rows)
    assert_names(load_error(folder), folder, "couriers.txt", 5, "off_time")


@pytest.mark.parametrize(
    ("name", "line", "field", "value"),
    [
        ("orders.txt", 3, "placement_time", "-5"),
        ("orders.txt", 4, "ready_time", "-1"),
        ("couriers.txt", 6, "on_time", "-30"),
        ("couriers.txt", 7, "off_time", "-1"),
    ],
)
def test_negative_time(folder: Path, name: str, line: int, field: str, value: str) -> None:
    edit(folder, name, line, field, value)
    msg = load_error(folder)
    assert_names(msg, folder, name, line, field)
    assert value in msg


def test_unknown_restaurant(folder: Path) -> None:
    edit(folder, "orders.txt", 4, "restaurant", "r999999")
    msg = load_error(folder)
    assert_names(msg, folder, "orders.txt", 4, "restaurant")
    assert "r999999" in msg


@pytest.mark.parametrize(
    ("name", "line", "field"),
    [
        ("couriers.txt", 2, "x"),
        ("orders.txt", 10, "y"),
        ("restaurants.txt", 3, "x"),
        ("orders.txt", 11, "placement_time"),
        ("instance_parameters.txt", 2, "pay per order"),
    ],
)
@pytest.mark.parametrize("value", ["nan", "NaN", "inf"])
def test_not_finite(folder: Path, name: str, line: int, field: str, value: str) -> None:
    edit(folder, name, line, field, value)
    assert_names(load_error(folder), folder, name, line, field)


@pytest.mark.parametrize(
    ("name", "line", "field", "value"),
    [
        ("orders.txt", 5, "ready_time", "soon"),
        ("orders.txt", 6, "x", "12,5"),
        ("couriers.txt", 8, "on_time", ""),
        ("restaurants.txt", 9, "y", "north"),
        ("instance_parameters.txt", 2, "meters_per_minute", "fast"),
    ],
)
def test_non_numeric(folder: Path, name: str, line: int, field: str, value: str) -> None:
    edit(folder, name, line, field, value)
    assert_names(load_error(folder), folder, name, line, field)


@pytest.mark.parametrize(
    ("name", "line", "field"),
    [("orders.txt", 3, "ready_time"), ("couriers.txt", 3, "off_time")],
)
def test_time_too_large_for_int64(folder: Path, name: str, line: int, field: str) -> None:
    # 1e30 minutes is finite and whole, but cannot be held in the int64 time arrays: it must be
    # reported as a malformed field, not escape as a bare OverflowError.
    edit(folder, name, line, field, "1e30")
    assert_names(load_error(folder), folder, name, line, field)


@pytest.mark.parametrize(
    ("name", "line", "field", "value"),
    [("orders.txt", 2, "x", "1e300"), ("couriers.txt", 4, "y", "-1e17"), ("restaurants.txt", 3, "x", "4e15")],
)
def test_a_point_too_far_for_int64_travel_minutes(folder: Path, name: str, line: int, field: str, value: str) -> None:
    # Finite coordinates, but a leg to them takes more minutes than int64 route arithmetic holds: the
    # simulator used to wrap around into negative drop-off times that the checker called feasible.
    edit(folder, name, line, field, value)
    msg = load_error(folder)
    assert_names(msg, folder, name, line, field)
    assert "minutes" in msg, msg


def test_a_far_but_safe_point_loads(folder: Path) -> None:
    edit(folder, "orders.txt", 2, "x", "1e9")  # ~ 3e6 minutes at the instance's speed: absurd, but exact
    assert load(folder).order_xy[0, 0] == 1e9


def test_fractional_minutes(folder: Path) -> None:
    edit(folder, "orders.txt", 7, "placement_time", "100.5")
    assert_names(load_error(folder), folder, "orders.txt", 7, "placement_time")


def test_ready_before_placement(folder: Path) -> None:
    rows = table(folder, "orders.txt")
    place = int(rows[5][rows[0].index("placement_time")])
    edit(folder, "orders.txt", 6, "ready_time", str(place - 1))
    msg = load_error(folder)
    assert_names(msg, folder, "orders.txt", 6, "ready_time")
    assert str(place) in msg


def test_ready_equal_to_placement_is_fine(folder: Path) -> None:
    rows = table(folder, "orders.txt")
    place = rows[5][rows[0].index("placement_time")]
    edit(folder, "orders.txt", 6, "ready_time", place)
    inst = load(folder)
    assert inst.order_ready[4] == int(place)


@pytest.mark.parametrize(
    ("name", "field"), [("orders.txt", "order"), ("couriers.txt", "courier"), ("restaurants.txt", "restaurant")]
)
def test_duplicate_id(folder: Path, name: str, field: str) -> None:
    rows = table(folder, name)
    first = rows[1][0]
    edit(folder, name, 7, field, first)
    msg = load_error(folder)
    assert_names(msg, folder, name, 7, field)
    assert first in msg and "line 2" in msg  # where the id first appeared


@pytest.mark.parametrize("delta", [0, -10])
def test_off_time_not_after_on_time(folder: Path, delta: int) -> None:
    rows = table(folder, "couriers.txt")
    on = int(rows[2][rows[0].index("on_time")])
    edit(folder, "couriers.txt", 3, "off_time", str(on + delta))
    assert_names(load_error(folder), folder, "couriers.txt", 3, "off_time")


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [("target click-to-door", "0", "must be > 0"), ("maximum click-to-door", "30", "must be >= target")],
)
def test_parameters_the_service_would_refuse(folder: Path, field: str, value: str, rule: str) -> None:
    # The same rules as a request's and a logged day's parameters (ServiceParams.problem).
    edit(folder, "instance_parameters.txt", 2, field, value)
    msg = load_error(folder)
    assert_names(msg, folder, "instance_parameters.txt", 2, field)
    assert rule in msg, msg


def test_zero_speed(folder: Path) -> None:
    edit(folder, "instance_parameters.txt", 2, "meters_per_minute", "0")
    assert_names(load_error(folder), folder, "instance_parameters.txt", 2, "meters_per_minute")


@pytest.mark.parametrize("name", FILES)
def test_missing_file(folder: Path, name: str) -> None:
    (folder / name).unlink()
    msg = load_error(folder)
    assert str(folder / name) in msg and "missing" in msg


@pytest.mark.parametrize("name", FILES)
def test_empty_file(folder: Path, name: str) -> None:
    (folder / name).write_text("")
    msg = load_error(folder)
    assert str(folder / name) in msg
    assert "line 1:" in msg
    # The expected header (the fields) is named.
    first_column = {
        "instance_parameters.txt": "meters_per_minute",
        "restaurants.txt": "restaurant",
        "orders.txt": "order",
        "couriers.txt": "courier",
    }[name]
    assert first_column in msg


def test_header_only_parameter_file(folder: Path) -> None:
    rows = table(folder, "instance_parameters.txt")
    write_table(folder, "instance_parameters.txt", rows[:1])
    msg = load_error(folder)
    assert str(folder / "instance_parameters.txt") in msg and "line 2" in msg


def test_unknown_instance_name() -> None:
    with pytest.raises(InstanceError, match="no_such_instance"):
        load("no_such_instance")


# ----------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------


def assert_same_instance(a: Instance, b: Instance) -> None:
    assert a.params == b.params
    assert a.restaurant_ids == b.restaurant_ids
    assert a.order_ids == b.order_ids
    assert a.courier_ids == b.courier_ids
    for f in (
        "restaurant_xy",
        "order_xy",
        "order_placement",
        "order_restaurant",
        "order_ready",
        "courier_xy",
        "courier_on",
        "courier_off",
    ):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype, f
        assert np.array_equal(x, y), f


def test_round_trip_of_a_public_instance(tmp_path: Path) -> None:
    inst = load(SMALL)
    out = save(inst, tmp_path / "copy")
    back = load(out)
    assert back.name == "copy"
    assert_same_instance(inst, back)
    # The written text is byte-identical to the public files.
    for f in FILES:
        assert (out / f).read_bytes() == (default_data_dir() / SMALL / f).read_bytes(), f


def test_round_trip_of_a_hand_built_instance(tmp_path: Path) -> None:
    from dispatch.snapshot import ServiceParams

    params = ServiceParams(
        meters_per_minute=333.5,
        pickup_service=6,
        dropoff_service=2,
        target_ctd=35,
        max_ctd=80,
        pay_per_order=7.25,
        guaranteed_pay_per_hour=12.5,
    )
    inst = make_instance(
        restaurants=[("rA", 0.5, -10.25), ("rB", 1e6, 2.0)],
        orders=[("x1", 1.125, 2.0, 5, "rB", 9), ("x2", -3.0, 4.75, 0, "rA", 0)],
        couriers=[("k1", 7.0, 8.0, 0, 60)],
        params=params,
    )
    back = load(save(inst, tmp_path / "hand"))
    assert_same_instance(inst, back)
    # Saving the loaded copy again writes the same bytes.
    again = save(back, tmp_path / "hand2")
    for f in FILES:
        assert (again / f).read_bytes() == (tmp_path / "hand" / f).read_bytes()


def test_load_by_name_and_by_path_agree() -> None:
    by_name = load(SMALL)
    by_path = load(default_data_dir() / SMALL)
    by_str = load(str(default_data_dir() / SMALL))
    assert by_name.name == by_path.name == by_str.name == SMALL
    assert_same_instance(by_name, by_path)
    assert_same_instance(by_name, by_str)
    assert SMALL in list_instances("0o50*")
    assert len(list_instances()) == 240


def test_mdrp_data_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inst = load(SMALL)
    save(inst, tmp_path / "mine")
    monkeypatch.setenv("MDRP_DATA", str(tmp_path))
    assert instance_mod.default_data_dir() == tmp_path
    assert list_instances() == ["mine"]
    assert_same_instance(load("mine"), inst)


def test_column_order_does_not_matter(folder: Path) -> None:
    rows = table(folder, "orders.txt")
    perm = [5, 3, 0, 4, 2, 1]
    write_table(folder, "orders.txt", [[r[k] for k in perm] for r in rows])
    assert_same_instance(load(folder), load(SMALL))


def test_crlf_line_endings_and_blank_lines(folder: Path) -> None:
    for f in FILES:
        lines = (folder / f).read_text().splitlines()
        (folder / f).write_bytes(("\r\n".join([*lines[:2], "", *lines[2:]]) + "\r\n").encode())
    assert_same_instance(load(folder), load(SMALL))


def test_error_on_a_later_line_names_that_line(folder: Path) -> None:
    n = len(table(folder, "orders.txt"))
    edit(folder, "orders.txt", n, "y", "?")
    assert_names(load_error(folder), folder, "orders.txt", n, "y")
