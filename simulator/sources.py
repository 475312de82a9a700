"""Instance specs as users type them: a public name, a folder path, or ``synthetic:SEED``."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from simulator import instance as inst_mod
from simulator.instance import Instance, InstanceError


def load_spec(spec: str) -> Instance:
    """Load ``0o100t100s1p100``, a path to an instance folder, or ``synthetic:SEED``."""
    if spec.startswith("synthetic:"):
        from simulator.synthetic import SyntheticConfig, generate

        seed_text = spec.split(":", 1)[1]
        try:
            seed = int(seed_text)
        except ValueError:
            raise InstanceError(f"instance {spec!r}: synthetic seed {seed_text!r} is not an integer") from None
        return generate(SyntheticConfig(), seed)
    return inst_mod.load(spec)


def expand(patterns: list[str]) -> list[str]:
    """Expand globs over the public instance names (``'0*'``, ``'seed0/*'``, ``'*o50*'``); others pass."""
    out: list[str] = []
    names = inst_mod.list_instances()
    for pat in patterns:
        if pat.startswith("synthetic:") and "-" in pat[len("synthetic:") :]:
            lo, hi = pat[len("synthetic:") :].split("-", 1)
            try:
                seeds = range(int(lo), int(hi) + 1)
            except ValueError:
                raise InstanceError(f"instance range {pat!r}: expected synthetic:A-B with integers") from None
            if not seeds:
                raise InstanceError(f"instance range {pat!r} is empty: A must not exceed B")
            out.extend(f"synthetic:{s}" for s in seeds)
            continue
        typed = pat
        if pat.startswith("seed") and "/" in pat:
            # 'seed3/*' selects every variant of base day 3.
            seed, rest = pat[4:].split("/", 1)
            pat = f"{seed}{rest.replace('*', '') or ''}*" if rest != "*" else f"{seed}*"
        if any(ch in pat for ch in "*?[") and not Path(pat).exists():
            matched = [n for n in names if fnmatch.fnmatch(n, pat)]
            if not matched:
                raise InstanceError(f"instance pattern {typed!r} matches none of the {len(names)} public instances")
            out.extend(matched)
        else:
            out.append(pat)
    return list(dict.fromkeys(out))
