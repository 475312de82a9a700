"""Instance specs as users type them: a public name, a folder path, or ``synthetic:SEED``."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from simulator import instance as inst_mod
from simulator.instance import Instance, InstanceError
from simulator.seeds import MAX_SEED

# Synthetic days run one by one: a range longer than this is a typo, and expanding it would only fill memory
# before the first day runs.
MAX_RANGE = 100_000


def load_spec(spec: str) -> Instance:
    """Load ``0o100t100s1p100``, a path to an instance folder, or ``synthetic:SEED``."""
    if not spec.strip():
        raise InstanceError("an instance name is empty")
    if spec.startswith("synthetic:"):
        from simulator.synthetic import SyntheticConfig, generate

        seed_text = spec.split(":", 1)[1]
        try:
            seed = int(seed_text)
        except ValueError:
            raise InstanceError(f"instance {spec!r}: synthetic seed {seed_text!r} is not an integer") from None
        if not 0 <= seed <= MAX_SEED:
            raise InstanceError(f"instance {spec!r}: synthetic seed must be 0..{MAX_SEED}, got {seed}")
        return generate(SyntheticConfig(), seed)
    return inst_mod.load(spec)


def expand(patterns: list[str]) -> list[str]:
    """Expand globs over the public instance names (``'0*'``, ``'seed0/*'``, ``'*o50*'``); others pass."""
    out: list[str] = []
    names: list[str] | None = None  # listed on first use: synthetic specs and folders need no data folder
    for pat in patterns:
        if not pat.strip():
            raise InstanceError("an instance pattern is empty")
        if pat.startswith("synthetic:") and "-" in pat[len("synthetic:") :]:
            lo, hi = pat[len("synthetic:") :].split("-", 1)
            if not lo.strip():
                raise InstanceError(f"instance {pat!r}: synthetic seeds must be 0..{MAX_SEED}")
            try:
                seeds = range(int(lo), int(hi) + 1)
            except ValueError:
                raise InstanceError(f"instance range {pat!r}: expected synthetic:A-B with integers") from None
            if not seeds:
                raise InstanceError(f"instance range {pat!r} is empty: A must not exceed B")
            if seeds.start < 0 or seeds.stop - 1 > MAX_SEED:
                raise InstanceError(f"instance range {pat!r}: synthetic seeds must be 0..{MAX_SEED}")
            if len(seeds) > MAX_RANGE:
                raise InstanceError(
                    f"instance range {pat!r} holds {len(seeds):,} days; at most {MAX_RANGE:,} per pattern"
                )
            out.extend(f"synthetic:{s}" for s in seeds)
            continue
        typed = pat
        if pat.startswith("seed") and "/" in pat:
            # 'seed3/*' selects every variant of base day 3.
            seed, rest = pat[4:].split("/", 1)
            pat = f"{seed}{rest.replace('*', '') or ''}*" if rest != "*" else f"{seed}*"
        if any(ch in pat for ch in "*?[") and not Path(pat).exists():
            names = inst_mod.list_instances() if names is None else names
            matched = [n for n in names if fnmatch.fnmatch(n, pat)]
            if not matched:
                raise InstanceError(f"instance pattern {typed!r} matches none of the {len(names)} public instances")
            out.extend(matched)
        else:
            out.append(pat)
    return list(dict.fromkeys(out))
