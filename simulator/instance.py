"""MDRP instances: load by name or path, validate with file/line/field errors, write back.

The format is the public Grubhub MDRP one (see ``shared/data/mdrp/README.md``): tab-separated text
files with a header line.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dispatch.snapshot import MAX_MINUTES, FloatArray, IntArray, ServiceParams

PARAM_COLUMNS = (
    "meters_per_minute",
    "pickup service minutes",
    "dropoff service minutes",
    "target click-to-door",
    "maximum click-to-door",
    "pay per order",
    "guaranteed pay per hour",
)
RESTAURANT_COLUMNS = ("restaurant", "x", "y")
ORDER_COLUMNS = ("order", "x", "y", "placement_time", "restaurant", "ready_time")
COURIER_COLUMNS = ("courier", "x", "y", "on_time", "off_time")


# Times are stored as 32-bit integers in logs and on the wire; no day needs more.


class InstanceError(ValueError):
    """A malformed instance file; the message names file, line and field."""


def default_data_dir() -> Path:
    """Where the 240 public instances live: $MDRP_DATA, else ../shared/data/mdrp beside the repo."""
    env = os.environ.get("MDRP_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    for cand in (here / "shared" / "data" / "mdrp", here.parent / "shared" / "data" / "mdrp"):
        if cand.is_dir():
            return cand
    return here.parent / "shared" / "data" / "mdrp"


@dataclass(frozen=True)
class Instance:
    """One MDRP day: restaurants, orders, couriers and parameters (struct-of-arrays)."""

    name: str
    params: ServiceParams
    restaurant_ids: tuple[str, ...]
    restaurant_xy: FloatArray
    order_ids: tuple[str, ...]
    order_xy: FloatArray
    order_placement: IntArray
    order_restaurant: IntArray
    order_ready: IntArray
    courier_ids: tuple[str, ...]
    courier_xy: FloatArray
    courier_on: IntArray
    courier_off: IntArray
    meta: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def n_orders(self) -> int:
        """Number of orders of the day."""
        return len(self.order_ids)

    @property
    def n_couriers(self) -> int:
        """Number of courier shifts of the day."""
        return len(self.courier_ids)

    def restaurant_index(self) -> dict[str, int]:
        """Map restaurant id to its row."""
        return {r: i for i, r in enumerate(self.restaurant_ids)}


def _read_table(path: Path, columns: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """Rows of a tab-separated file as (line number, fields), header checked against ``columns``."""
    if not path.is_file():
        raise InstanceError(f"{path}: file is missing")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InstanceError(f"{path}: not UTF-8 text ({exc})") from None
    lines = text.splitlines()
    if not lines:
        raise InstanceError(f"{path}: line 1: empty file, expected header {list(columns)}")
    header = [h.strip() for h in lines[0].split("\t")]
    missing = [c for c in columns if c not in header]
    if missing:
        raise InstanceError(f"{path}: line 1: missing column(s) {missing}; header is {header}")
    pos = [header.index(c) for c in columns]
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < len(header):
            raise InstanceError(
                f"{path}: line {n}: expected {len(header)} fields, found {len(parts)}"
                f" (field {header[len(parts)]!r} is missing)"
            )
        rows.append((n, [parts[p].strip() for p in pos]))
    return rows


def _number(path: Path, line: int, name: str, text: str, *, integer: bool, minimum: float | None) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InstanceError(f"{path}: line {line}: field {name!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InstanceError(f"{path}: line {line}: field {name!r}: {text!r} is not finite")
    if integer and value != int(value):
        raise InstanceError(f"{path}: line {line}: field {name!r}: {text!r} is not a whole number of minutes")
    if integer and abs(value) > MAX_MINUTES:
        raise InstanceError(f"{path}: line {line}: field {name!r}: {text!r} is beyond {MAX_MINUTES} minutes")
    if minimum is not None and value < minimum:
        raise InstanceError(f"{path}: line {line}: field {name!r}: {text!r} is below {minimum:g}")
    return value


def _ids(path: Path, rows: list[tuple[int, list[str]]], name: str) -> tuple[str, ...]:
    seen: dict[str, int] = {}
    for line, f in rows:
        if not f[0]:
            raise InstanceError(f"{path}: line {line}: field {name!r}: empty id")
        if f[0] in seen:
            raise InstanceError(
                f"{path}: line {line}: field {name!r}: duplicate id {f[0]!r} (first on line {seen[f[0]]})"
            )
        seen[f[0]] = line
    return tuple(f[0] for _, f in rows)


def resolve(name_or_path: str | Path) -> Path:
    """The folder of an instance given its name (``0o100t100s1p100``) or a path."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    cand = default_data_dir() / str(name_or_path)
    if cand.is_dir():
        return cand
    raise InstanceError(f"instance {str(name_or_path)!r}: no such folder, nor a name under {default_data_dir()}")


def _check_extent(params: ServiceParams, tables: list[tuple[Path, list[int], FloatArray]]) -> None:
    """Refuse a day whose points lie so far apart that one travel leg exceeds MAX_MINUTES.

    Travel minutes feed int64 route arithmetic (sums and products of legs), so a far point would wrap
    around into nonsense times instead of failing; the service refuses such requests the same way.
    ``tables`` holds each file with its data lines and their (x, y) rows. The point named is the one
    farthest from the median point, the likely typo.
    """
    xy = np.concatenate([t[2] for t in tables])
    if xy.shape[0] < 2:
        return
    span = float(np.hypot(*(xy.max(axis=0) - xy.min(axis=0))))
    if span / params.meters_per_minute <= MAX_MINUTES:
        return
    off = np.abs(xy - np.median(xy, axis=0))
    far = int(np.argmax(off.max(axis=1)))
    field = "x" if off[far, 0] >= off[far, 1] else "y"
    for path, lines, rows in tables:
        if far < rows.shape[0]:
            raise InstanceError(
                f"{path}: line {lines[far]}: field {field!r}: {rows[far, 0 if field == 'x' else 1]:g} m is so far from "
                f"the other points that a leg at {params.meters_per_minute:g} m/min takes over {MAX_MINUTES} minutes"
            )
        far -= rows.shape[0]


def load(name_or_path: str | Path) -> Instance:
    """Load and validate one instance folder."""
    folder = resolve(name_or_path)
    pf = folder / "instance_parameters.txt"
    prow = _read_table(pf, PARAM_COLUMNS)
    if not prow:
        raise InstanceError(f"{pf}: line 2: no parameter row")
    pl, pv = prow[0]
    vals = [_number(pf, pl, c, v, integer=False, minimum=0) for c, v in zip(PARAM_COLUMNS, pv, strict=True)]
    if vals[0] <= 0:
        raise InstanceError(f"{pf}: line {pl}: field 'meters_per_minute': must be positive")
    for i in (1, 2, 3, 4):
        if vals[i] != int(vals[i]):
            raise InstanceError(f"{pf}: line {pl}: field {PARAM_COLUMNS[i]!r}: not a whole number of minutes")
    params = ServiceParams(vals[0], int(vals[1]), int(vals[2]), int(vals[3]), int(vals[4]), vals[5], vals[6])
    if broken := params.problem():  # the rules the service decides by (a zero target, a maximum below it)
        name, rule = broken
        column = PARAM_COLUMNS[list(ServiceParams.__dataclass_fields__).index(name)]
        raise InstanceError(f"{pf}: line {pl}: field {column!r}: {getattr(params, name)!r} {rule}")

    rf = folder / "restaurants.txt"
    rrows = _read_table(rf, RESTAURANT_COLUMNS)
    rids = _ids(rf, rrows, "restaurant")
    rxy = np.array(
        [
            [_number(rf, ln, c, v, integer=False, minimum=None) for c, v in zip(("x", "y"), f[1:3], strict=True)]
            for ln, f in rrows
        ],
        dtype=np.float64,
    ).reshape(-1, 2)
    rindex = {r: i for i, r in enumerate(rids)}

    of = folder / "orders.txt"
    orows = _read_table(of, ORDER_COLUMNS)
    oids = _ids(of, orows, "order")
    oxy, oplace, orest, oready = [], [], [], []
    for ln, f in orows:
        oxy.append(
            [
                _number(of, ln, "x", f[1], integer=False, minimum=None),
                _number(of, ln, "y", f[2], integer=False, minimum=None),
            ]
        )
        place = _number(of, ln, "placement_time", f[3], integer=True, minimum=0)
        if f[4] not in rindex:
            raise InstanceError(f"{of}: line {ln}: field 'restaurant': unknown restaurant {f[4]!r}")
        ready = _number(of, ln, "ready_time", f[5], integer=True, minimum=0)
        if ready < place:
            raise InstanceError(
                f"{of}: line {ln}: field 'ready_time': {int(ready)} is before placement_time {int(place)}"
            )
        oplace.append(place)
        orest.append(rindex[f[4]])
        oready.append(ready)

    cf = folder / "couriers.txt"
    crows = _read_table(cf, COURIER_COLUMNS)
    cids = _ids(cf, crows, "courier")
    cxy, con, coff = [], [], []
    for ln, f in crows:
        cxy.append(
            [
                _number(cf, ln, "x", f[1], integer=False, minimum=None),
                _number(cf, ln, "y", f[2], integer=False, minimum=None),
            ]
        )
        on = _number(cf, ln, "on_time", f[3], integer=True, minimum=0)
        off = _number(cf, ln, "off_time", f[4], integer=True, minimum=0)
        if off <= on:
            raise InstanceError(f"{cf}: line {ln}: field 'off_time': {int(off)} is not after on_time {int(on)}")
        con.append(on)
        coff.append(off)

    order_xy = np.array(oxy, dtype=np.float64).reshape(-1, 2)
    courier_xy = np.array(cxy, dtype=np.float64).reshape(-1, 2)
    _check_extent(
        params,
        [
            (rf, [ln for ln, _ in rrows], rxy),
            (of, [ln for ln, _ in orows], order_xy),
            (cf, [ln for ln, _ in crows], courier_xy),
        ],
    )
    return Instance(
        name=folder.name,
        params=params,
        restaurant_ids=rids,
        restaurant_xy=rxy,
        order_ids=oids,
        order_xy=order_xy,
        order_placement=np.array(oplace, dtype=np.int64),
        order_restaurant=np.array(orest, dtype=np.int64),
        order_ready=np.array(oready, dtype=np.int64),
        courier_ids=cids,
        courier_xy=courier_xy,
        courier_on=np.array(con, dtype=np.int64),
        courier_off=np.array(coff, dtype=np.int64),
    )


def _fmt(v: float) -> str:
    return str(int(v)) if float(v) == int(v) else repr(float(v))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save(inst: Instance, folder: str | Path) -> Path:
    """Write an instance in the MDRP text format (each file written atomically)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    p = inst.params
    _write_atomic(
        out / "instance_parameters.txt",
        "\t".join(PARAM_COLUMNS)
        + "\n"
        + "\t".join(
            _fmt(v)
            for v in (
                p.meters_per_minute,
                p.pickup_service,
                p.dropoff_service,
                p.target_ctd,
                p.max_ctd,
                p.pay_per_order,
                p.guaranteed_pay_per_hour,
            )
        )
        + "\n",
    )
    lines = ["\t".join(RESTAURANT_COLUMNS)]
    lines += [f"{r}\t{_fmt(x)}\t{_fmt(y)}" for r, (x, y) in zip(inst.restaurant_ids, inst.restaurant_xy, strict=True)]
    _write_atomic(out / "restaurants.txt", "\n".join(lines) + "\n")
    lines = ["\t".join(ORDER_COLUMNS)]
    for i, o in enumerate(inst.order_ids):
        x, y = inst.order_xy[i]
        lines.append(
            f"{o}\t{_fmt(x)}\t{_fmt(y)}\t{int(inst.order_placement[i])}\t"
            f"{inst.restaurant_ids[inst.order_restaurant[i]]}\t{int(inst.order_ready[i])}"
        )
    _write_atomic(out / "orders.txt", "\n".join(lines) + "\n")
    lines = ["\t".join(COURIER_COLUMNS)]
    for i, c in enumerate(inst.courier_ids):
        x, y = inst.courier_xy[i]
        lines.append(f"{c}\t{_fmt(x)}\t{_fmt(y)}\t{int(inst.courier_on[i])}\t{int(inst.courier_off[i])}")
    _write_atomic(out / "couriers.txt", "\n".join(lines) + "\n")
    return out


def list_instances(pattern: str = "*") -> list[str]:
    """Names of the public instances matching a glob (``'0*'``, ``'*o50*'``), sorted."""
    import fnmatch

    root = default_data_dir()
    try:
        names = sorted(p.name for p in root.iterdir() if (p / "orders.txt").is_file())
    except OSError as exc:
        where = "MDRP_DATA" if os.environ.get("MDRP_DATA") else "the default data folder"
        raise InstanceError(f"{root}: cannot list the public instances ({where}: {exc.strerror})") from None
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def content_hash(inst: Instance) -> str:
    """SHA-256 of an instance's content (ids, coordinates, times, parameters), independent of its name."""
    import hashlib

    h = hashlib.sha256()
    h.update(repr(inst.params).encode())
    for ids in (inst.restaurant_ids, inst.order_ids, inst.courier_ids):
        h.update("\x1f".join(ids).encode())
    for arr in (
        inst.restaurant_xy,
        inst.order_xy,
        inst.order_placement,
        inst.order_restaurant,
        inst.order_ready,
        inst.courier_xy,
        inst.courier_on,
        inst.courier_off,
    ):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()
