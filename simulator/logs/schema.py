"""The log format: Parquet tables, one part file per logged day, plus ``manifest.json``.

A dataset folder holds ``manifest.json`` and one sub-folder per table with ``part-<episode>.parquet``
files. Every part carries key/value metadata ``dispatch_logs.schema_version`` and
``dispatch_logs.table`` so a reader can reject foreign or newer files. Tables (all keyed by
``episode``; ``epoch`` is the decision index within the day):

- ``episodes``: one row per day: instance name and content hash, recipe, seed, service parameters,
  total reward, number of epochs, headline MDRP metrics.
- ``restaurants``: the day's restaurants (id, x, y).
- ``epochs``: one row per decision epoch: time, counts, shared reward and its components, ``done``.
- ``couriers``: one row per courier in the epoch's snapshot: id, position and minute it is free,
  shift; for available couriers (agents) also the candidate list (rows of ``bundles``), the action
  (slot, −1 = wait), the behaviour log-probability and the position in the sequential choice order.
- ``orders``: one row per open order in the epoch's snapshot (its position in the table is the
  order index the snapshot uses).
- ``bundles``: one row per candidate bundle of the epoch: order indices in drop-off sequence.
- ``outcomes``: one row per order of the day: its attributes (restaurant row, drop-off point,
  placement, ready), courier, assignment, pickup and drop-off minutes (−1 when never carried),
  delivered within the maximum click-to-door.
- ``shifts``: one row per courier shift of the day (on-location, on and off time).

``restaurants``, ``outcomes``, ``shifts`` and the parameters in ``episodes`` rebuild the day's
instance; ``epochs``, ``couriers``, ``orders`` and ``bundles`` rebuild every decision.

What the writer guarantees, and ``LogDataset`` checks of every day before any reader uses it: service
parameters the service accepts (speed > 0, service minutes >= 0, 0 < target <= maximum click-to-door) and
pay >= 0; minutes of the day >= 0; ids non-empty and unique (per day; per epoch in ``couriers`` and
``orders``); ``epochs`` numbered 0..n-1 with n the day's ``epochs``, one dispatch interval apart, ``done``
on the last only, and counts that match the rows of ``couriers`` and ``orders``; agents numbered
0..n_agents-1 within an epoch and ranked at most once; bundles numbered in order, each listing open orders
of one restaurant once; orders ready no sooner than placed and shown no sooner; outcomes of -1 throughout
for an order never carried, otherwise carried by a courier of ``shifts``, assigned between placement and
expiry, picked up no sooner than assigned and ready, dropped off no sooner than picked up, and
``delivered`` exactly when dropped off within the maximum click-to-door.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
FORMAT = "dispatch-logs"
META_VERSION = b"dispatch_logs.schema_version"
META_TABLE = b"dispatch_logs.table"

I32 = pa.int32()
F64 = pa.float64()
STR = pa.string()

REWARD_COMPONENTS = ("assigned", "on_time", "ctd_minutes", "overage_minutes", "expired", "late_undelivered")
EPISODE_METRICS = (
    "ctd_mean",
    "ctd_p90",
    "undelivered_pct",
    "on_time_pct",
    "overage_mean",
    "ready_to_pickup_mean",
    "cost_per_order",
    "bundle_size_mean",
    "utilisation_mean",
)

TABLES: dict[str, pa.Schema] = {
    "episodes": pa.schema(
        [
            ("episode", I32),
            ("instance", STR),
            ("instance_hash", STR),
            ("recipe", STR),
            ("seed", pa.int64()),
            ("meters_per_minute", F64),
            ("pickup_service", I32),
            ("dropoff_service", I32),
            ("target_ctd", I32),
            ("max_ctd", I32),
            ("pay_per_order", F64),
            ("guaranteed_pay_per_hour", F64),
            ("total_reward", F64),
            ("epochs", I32),
        ]
        + [(m, F64) for m in EPISODE_METRICS]
    ),
    "restaurants": pa.schema([("episode", I32), ("restaurant_id", STR), ("x", F64), ("y", F64)]),
    "epochs": pa.schema(
        [
            ("episode", I32),
            ("epoch", I32),
            ("time", I32),
            ("n_couriers", I32),
            ("n_orders", I32),
            ("n_agents", I32),
            ("reward", F64),
        ]
        + [(c, F64) for c in REWARD_COMPONENTS]
        + [("done", pa.bool_())]
    ),
    "couriers": pa.schema(
        [
            ("episode", I32),
            ("epoch", I32),
            ("courier_id", STR),
            ("x", F64),
            ("y", F64),
            ("free_at", I32),
            ("on_time", I32),
            ("off_time", I32),
            ("agent", I32),
            ("rank", I32),
            ("candidates", pa.list_(I32)),
            ("action", I32),
            ("behaviour_logp", F64),
        ]
    ),
    "orders": pa.schema(
        [
            ("episode", I32),
            ("epoch", I32),
            ("order_id", STR),
            ("restaurant", I32),
            ("x", F64),
            ("y", F64),
            ("placement", I32),
            ("ready", I32),
        ]
    ),
    "bundles": pa.schema([("episode", I32), ("epoch", I32), ("bundle", I32), ("orders", pa.list_(I32))]),
    "outcomes": pa.schema(
        [
            ("episode", I32),
            ("order_id", STR),
            ("restaurant", I32),
            ("x", F64),
            ("y", F64),
            ("placement", I32),
            ("ready", I32),
            ("courier_id", STR),
            ("assigned_at", I32),
            ("pickup", I32),
            ("dropoff", I32),
            ("delivered", pa.bool_()),
        ]
    ),
    "shifts": pa.schema(
        [("episode", I32), ("courier_id", STR), ("x", F64), ("y", F64), ("on_time", I32), ("off_time", I32)]
    ),
}


def with_metadata(table: str) -> pa.Schema:
    """The schema of ``table`` carrying the format's metadata."""
    return TABLES[table].with_metadata({META_VERSION: str(SCHEMA_VERSION).encode(), META_TABLE: table.encode()})
