"""The seeds every command accepts: 0 to 2**32 − 1, checked where they are typed.

numpy's generators take only non-negative seeds and torch's only 64-bit ones; one range for all keeps a seed
that works for one command working for every other (a dataset seed, then the training seed of the same run).
"""

from __future__ import annotations

import argparse

MAX_SEED = 2**32 - 1


def seed_arg(text: str) -> int:
    """argparse ``type=`` for a seed: an integer from 0 to :data:`MAX_SEED`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be 0 to {MAX_SEED}, got {value}")
    return value
