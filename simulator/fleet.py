"""Where the couriers' time goes: per-bundle figures of an executed day, next to the MDRP metrics.

The MDRP metrics (:mod:`simulator.metrics`) say how orders fared; these say how the fleet was used,
which is what decides how many orders a loaded day can serve at all:

- ``deadhead_per_bundle``: mean minutes driven to the restaurant per executed bundle;
- ``lead_per_bundle``: mean minutes from the assignment to the pickup (driving there plus waiting for
  the food), i.e. how early a courier is committed; a committed courier serves nobody else;
- ``work_per_delivered``: driving + service minutes of the whole fleet per delivered order.

They come from the engine's records, so they exist for simulated days only (solution files carry no
assignment times).
"""

from __future__ import annotations

import numpy as np

from simulator.engine import EpisodeRecords


def fleet_time(records: EpisodeRecords) -> dict[str, float]:
    """The three figures above for one simulated day (NaN where nothing was executed)."""
    # The engine records each bundle as one move to its restaurant followed by one move per drop-off.
    to_restaurant, at = [], 0
    for a in records.assignments:
        move = records.moves[at]
        to_restaurant.append(move.arrival - move.departure)
        at += 1 + len(a.orders)
    leads = [a.pickup - a.time for a in records.assignments]
    p = records.instance.params
    delivered = (records.order_dropoff >= 0) & (records.order_dropoff - records.instance.order_placement <= p.max_ctd)
    n = int(delivered.sum())
    return {
        "deadhead_per_bundle": float(np.mean(to_restaurant)) if to_restaurant else float("nan"),
        "lead_per_bundle": float(np.mean(leads)) if leads else float("nan"),
        "work_per_delivered": float(records.courier_work.sum() / n) if n else float("nan"),
    }
