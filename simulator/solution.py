"""The three MDRP solution files: write them from engine records, read them back."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from simulator.engine import EpisodeRecords

ASSIGNMENTS = "solution_info_assignments.txt"
ORDERS = "solution_info_orders.txt"
COURIERS = "solution_info_couriers.txt"


class SolutionError(ValueError):
    """A malformed solution file; the message names file and line."""


def _write(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write(records: EpisodeRecords, folder: str | Path) -> Path:
    """Write assignments, orders and courier-move files (each atomically) into ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    inst = records.instance
    lines = ["assignment_time pickup_time courier orders"]
    for a in records.assignments:
        orders = " ".join(inst.order_ids[o] for o in a.orders)
        lines.append(f"{a.time} {a.pickup} {inst.courier_ids[a.courier]} {orders}")
    _write(out / ASSIGNMENTS, lines)
    lines = ["order placement_time ready_time pickup_time dropoff_time courier"]
    for o in range(inst.n_orders):
        c = int(records.order_courier[o])
        if c < 0:
            continue
        lines.append(
            f"{inst.order_ids[o]} {int(inst.order_placement[o])} {int(inst.order_ready[o])} "
            f"{int(records.order_pickup[o])} {int(records.order_dropoff[o])} {inst.courier_ids[c]}"
        )
    _write(out / ORDERS, lines)
    lines = ["courier departure_time origin destination"]
    by_courier: dict[int, list[str]] = {}
    for mv in records.moves:
        by_courier.setdefault(mv.courier, []).append(
            f"{inst.courier_ids[mv.courier]} {mv.departure} {mv.origin} {mv.destination}"
        )
    for c in sorted(by_courier):
        lines.extend(by_courier[c])
    _write(out / COURIERS, lines)
    return out


@dataclass(frozen=True)
class SolutionFiles:
    """Parsed rows of the three files, with their line numbers for error messages."""

    assignments: list[tuple[int, int, int, str, tuple[str, ...]]]
    orders: list[tuple[int, str, int, int, int, int, str]]
    moves: list[tuple[int, str, int, str, str]]


def _rows(path: Path, min_fields: int) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise SolutionError(f"{path}: file is missing")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SolutionError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise SolutionError(f"{path}: cannot read ({exc.strerror or exc})") from None
    out = []
    for n, line in enumerate(text.splitlines()[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < min_fields:
            raise SolutionError(f"{path}: line {n}: expected at least {min_fields} fields, found {len(parts)}")
        out.append((n, parts))
    return out


def _int(path: Path, line: int, name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SolutionError(f"{path}: line {line}: field {name!r}: {text!r} is not a whole number") from None


def read(folder: str | Path) -> SolutionFiles:
    """Parse the three solution files of ``folder``."""
    d = Path(folder)
    pa, po, pc = d / ASSIGNMENTS, d / ORDERS, d / COURIERS
    assignments = [
        (n, _int(pa, n, "assignment_time", f[0]), _int(pa, n, "pickup_time", f[1]), f[2], tuple(f[3:]))
        for n, f in _rows(pa, 4)
    ]
    orders = [
        (
            n,
            f[0],
            _int(po, n, "placement_time", f[1]),
            _int(po, n, "ready_time", f[2]),
            _int(po, n, "pickup_time", f[3]),
            _int(po, n, "dropoff_time", f[4]),
            f[5],
        )
        for n, f in _rows(po, 6)
    ]
    moves = [(n, f[0], _int(pc, n, "departure_time", f[1]), f[2], f[3]) for n, f in _rows(pc, 4)]
    return SolutionFiles(assignments, orders, moves)
