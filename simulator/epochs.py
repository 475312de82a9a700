"""The decision cadence: minutes between decision epochs, shared by the engine and the CLIs (no heavy imports).

One minute, the finest the integer-minute MDRP clock allows, was chosen on the training-seed instances 2-5
(docs/dispatch-experiments.md §19): against two minutes it cut click-to-door by 0.3-0.4 min for `reyes` and
the learned `plan` policies at the same lost orders, while it slowed `assignment`, which commits every free
courier at once. The plan's commitment horizon (``dispatch.plan.PlanParams.interval``, 2 minutes) is a
separate setting: the service cannot know how often its callers decide.
"""

from __future__ import annotations

from typing import Any

DEFAULT_INTERVAL = 1


def add_interval_option(parser: Any, note: str = "") -> None:
    """Add ``--interval`` (minutes between decision epochs, default DEFAULT_INTERVAL) to an argparse parser."""
    extra = f"; {note}" if note else ""
    parser.add_argument(
        "--interval",
        type=int,
        default=DEFAULT_INTERVAL,
        help=f"minutes between decision epochs (default {DEFAULT_INTERVAL}{extra})",
    )
