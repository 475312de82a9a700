"""Plain-text and Markdown tables of MDRP metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# (metric key, column title, format)
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("orders", "orders", "{:.0f}"),
    ("undelivered_pct", "undeliv %", "{:.2f}"),
    ("ctd_mean", "CtD mean", "{:.2f}"),
    ("ctd_p90", "CtD p90", "{:.1f}"),
    ("overage_mean", "overage", "{:.2f}"),
    ("ready_to_pickup_mean", "RtP mean", "{:.2f}"),
    ("ready_to_door_mean", "RtD mean", "{:.2f}"),
    ("on_time_pct", "on-time %", "{:.1f}"),
    ("utilisation_mean", "util", "{:.2f}"),
    ("orders_per_hour_mean", "ord/h", "{:.2f}"),
    ("bundle_size_mean", "bundle", "{:.3f}"),
    ("cost_per_order", "$/order", "{:.2f}"),
    ("guaranteed_share", "guar.", "{:.2f}"),
)
# The fleet-time figures of simulator.fleet (simulated days only).
FLEET_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("deadhead_per_bundle", "to restaurant min/bundle", "{:.2f}"),
    ("lead_per_bundle", "assigned-to-pickup min/bundle", "{:.2f}"),
    ("work_per_delivered", "work min/delivered order", "{:.2f}"),
)


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean across instances of each instance's own metric (the published convention)."""
    keys = rows[0].keys() if rows else []
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}


def text_table(
    labels: Sequence[str],
    rows: Sequence[dict[str, float]],
    label_title: str = "policy",
    columns: Sequence[tuple[str, str, str]] = TABLE_COLUMNS,
) -> str:
    """A fixed-width table, one row per label (``columns``: the MDRP metrics unless given)."""
    head = [label_title] + [t for _, t, _ in columns]
    body = [[lab] + [fmt.format(r[k]) for k, _, fmt in columns] for lab, r in zip(labels, rows, strict=True)]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True)))]
    for row in body:
        lines.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
    return "\n".join(lines)


def markdown_table(labels: Sequence[str], rows: Sequence[dict[str, float]], label_title: str = "policy") -> str:
    """The same table in Markdown."""
    head = [label_title] + [t for _, t, _ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lab, r in zip(labels, rows, strict=True):
        lines.append("| " + " | ".join([lab] + [fmt.format(r[k]) for k, _, fmt in TABLE_COLUMNS]) + " |")
    return "\n".join(lines)
