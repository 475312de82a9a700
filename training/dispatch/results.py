"""``python -m training.dispatch.results``: learned dispatch policies against the heuristics → docs/results-dispatch.md.

One command, every step cached under ``--work`` so a killed run resumes where it stopped:

1. **logs**: the ``mixed`` recipe, one logged day per training instance (instance seeds 0–5 only);
2. **train**: every algorithm (BC, InSPO) with every training seed, then export to ONNX with the
   default conflict rule (``plan``);
3. **evaluate**: every model and every heuristic on all 240 public instances (per-instance metrics
   cached in a JSON file beside the report, each model's kept while its files and the decision path's
   code, ``dispatch/``, are unchanged; heuristic rows are taken from ``docs/results.json``, written by
   ``make results`` with the same simulator, when it has them);
4. **report**: the 64 held-out instances (seeds 6–9, o50 and r50: never used for training, tuning or
   model selection) and all 240. A learned policy's value on an instance is the mean over its
   training seeds; the table adds the spread across seeds. Each comparison of InSPO with another
   policy is a paired 95% confidence interval (Student t over instances) of the per-instance
   difference; for click-to-door also an interval that counts the training seeds' spread as well.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from dispatch.assemble import MASS_THRESHOLD, PLAN_RULE
from dispatch.model import manifest_path, sha256_bytes
from simulator.cli_paths import path_arg
from simulator.engine import SimConfig
from simulator.epochs import DEFAULT_INTERVAL
from simulator.instance import list_instances
from simulator.report import markdown_table, mean_metrics
from simulator.results import KEEP, PUBLISHED, cadence, charged_ctd, floors, load_cache, save_cache
from training.dispatch.export import (
    DEFAULT_DEFER,
    DEFAULT_LOOKAHEAD,
    DEFAULT_RULE,
    PARITY_MEASURE,
    PARITY_TOLERANCE,
)
from training.harness import atomic_write_bytes

ALGOS = ("bc", "inspo")
HEURISTICS = ("reyes", "assignment", "nearest", "random")
TRAIN_INSTANCES = ("[0-5]*",)
HELD_OUT = ("[6-9]o50*", "[6-9]r50*")
COMPARED = ("ctd_mean", "undelivered_pct", "charged_ctd")
MODEL_KEY = "_model_files"  # in the metrics cache: each model's file digest when its metrics were measured


@dataclass(frozen=True)
class Protocol:
    """What the report trains and evaluates."""

    seeds: int = 3
    steps: int = 3000
    batch_size: int = 32
    rule: str = DEFAULT_RULE
    train_instances: tuple[str, ...] = TRAIN_INSTANCES
    instances: str = "*"
    # Minutes between decision epochs, for the logs and every evaluation alike.
    interval: int = DEFAULT_INTERVAL

    def sim(self) -> SimConfig:
        """The engine settings of the logs and of every evaluation."""
        return SimConfig(dispatch_interval=self.interval)


def decision_code_digest(root: Path | None = None) -> str:
    """SHA-256 over the decision path's sources (``dispatch/*.py``): candidates, features, assembly.

    A learned policy's metrics depend on this code as much as on its model file (a conflict rule's
    change keeps every model byte-identical), so cached metrics measured under other code are dropped.
    The files' bytes count, comments included: a digest of the syntax tree would ignore those but changes
    with the Python version (``ast.dump`` differs between 3.11, 3.12 and 3.13), which would drop every
    cached metric on a machine with another Python.
    """
    root = root or Path(__file__).resolve().parents[2] / "dispatch"
    h = hashlib.sha256()
    for path in sorted(root.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _instances(patterns: tuple[str, ...]) -> list[str]:
    return sorted({n for p in patterns for n in list_instances(p)})


def build_models(work: Path, proto: Protocol, jobs: int, progress: bool) -> dict[str, Path]:
    """Log, train and export every (algorithm, seed); skips what a previous run finished. Returns name → ONNX."""
    from simulator.logs.generate import generate
    from training.dispatch.export import export_run
    from training.dispatch.train import DispatchTrainConfig, train

    logs = work / "logs"
    # Resumes by itself: days already logged (and checksummed) are not simulated again.
    generate(
        logs, "mixed", _instances(proto.train_instances), days=1, seed=0, sim=proto.sim(), jobs=jobs, progress=progress
    )
    models: dict[str, Path] = {}
    for algo in ALGOS:
        for seed in range(proto.seeds):
            name = f"{algo}-s{seed}"
            run, onnx = work / "runs" / name, work / "models" / f"{name}.onnx"
            if not (onnx.is_file() and manifest_path(onnx).is_file()):
                cfg = DispatchTrainConfig(
                    data=str(logs),
                    algo=algo,
                    steps=proto.steps,
                    batch_size=proto.batch_size,
                    seed=seed,
                    out=str(run),
                    resume=True,
                    progress=progress,
                )
                print(f"train {name}: {proto.steps} steps", file=sys.stderr)
                train(cfg)
                _, diff = export_run(run, onnx, name=name, conflict_rule=proto.rule)
                if diff > PARITY_TOLERANCE:
                    onnx.unlink()  # never reused by a later run
                    raise RuntimeError(
                        f"{name}: torch/ONNX parity {diff:.2e} exceeds {PARITY_TOLERANCE} ({PARITY_MEASURE})"
                    )
            models[name] = onnx
    return models


def evaluate(
    data: dict[str, dict[str, dict[str, float]]],
    name: str,
    spec: str,
    instances: list[str],
    cache: Path,
    jobs: int,
    progress: bool,
    config: SimConfig,
) -> None:
    """Simulate ``spec`` (a heuristic or an .onnx path) under ``config`` where ``data[name]`` lacks it, then save."""
    from simulator.batch import Task, run_many

    have = data.setdefault(name, {})
    todo = [i for i in instances if i not in have]
    if not todo:
        return
    print(f"evaluate {name}: {len(todo)} instance(s)", file=sys.stderr)
    for r in run_many([Task(i, spec, config=config) for i in todo], jobs=jobs, progress=progress):
        have[r.instance_name] = {k: r.metrics[k] for k in KEEP}
    save_cache(cache, data)


def _value(metrics: dict[str, float], key: str, max_ctd: int) -> float:
    return charged_ctd(metrics, max_ctd) if key == "charged_ctd" else metrics[key]


def seed_matrix(
    data: dict[str, dict[str, dict[str, float]]],
    members: list[str],
    instances: list[str],
    key: str,
    max_ctd: dict[str, int],
) -> np.ndarray:
    """A policy's values of ``key``, one row per member (training seed, or the heuristic itself) and instance."""
    return np.array([[_value(data[m][i], key, max_ctd[i]) for i in instances] for m in members], dtype=np.float64)


def paired_ci(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a − b over instances and its Student-t confidence interval (instances with NaN dropped)."""
    d = a - b
    d = d[np.isfinite(d)]
    if d.size < 2:
        return float("nan"), float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
    mean = float(d.mean())
    return mean, mean - half, mean + half


def seed_aware_ci(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a − b and a confidence interval that counts the training seeds' noise as well as the instances'.

    ``a`` and ``b`` are (members × instances): a learned policy's training seeds, or a heuristic alone. The
    paired t interval of :func:`paired_ci` treats each learned policy's seed mean as fixed, so it measures
    only the instances' noise; the claim "algorithm A beats B" must also hold over the randomness of training.
    Here the variance of the mean difference is the paired one plus, for each policy with k >= 2 seeds, the
    variance of its per-seed means over k, with Satterthwaite's degrees of freedom (with 3 seeds a seed term
    has 2, so a seed spread widens the interval as it should). The per-seed means also hold some instance
    noise already counted, so the interval is conservative. With one member each it is :func:`paired_ci`.
    Instances are kept and averaged over seeds as :func:`paired_ci` and the report do (NaN seeds
    skipped, NaN instances dropped), so the point estimate is theirs.
    """
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an instance where every seed is NaN: dropped below
        d = np.nanmean(a, axis=0) - np.nanmean(b, axis=0)
        keep = np.isfinite(d)
        n = int(keep.sum())
        if n < 2:
            return float("nan"), float("nan"), float("nan")
        parts = [(float(d[keep].var(ddof=1)) / n, n - 1)]  # (variance term, its degrees of freedom)
        for m in (a, b):
            if m.shape[0] >= 2:
                seed_means = np.nanmean(m[:, keep], axis=1)
                parts.append((float(seed_means.var(ddof=1)) / m.shape[0], m.shape[0] - 1))
    var = sum(v for v, _ in parts)
    mean = float(d[keep].mean())
    if var == 0:
        return mean, mean, mean
    dof = var**2 / sum(v * v / df for v, df in parts)
    half = float(stats.t.ppf(0.5 + level / 2, dof) * np.sqrt(var))
    return mean, mean - half, mean + half


def _section(
    title: str,
    data: dict[str, dict[str, dict[str, float]]],
    groups: dict[str, list[str]],
    instances: list[str],
    max_ctd: dict[str, int],
) -> list[str]:
    labels = list(groups)
    rows = []
    for lab in labels:
        seed_mean = [{k: float(np.nanmean([data[m][i][k] for m in groups[lab]])) for k in KEEP} for i in instances]
        rows.append(mean_metrics(seed_mean))
    lines = [f"## {title} ({len(instances)} instances)", "", markdown_table(labels, rows), ""]
    charged = {
        lab: np.nanmean(seed_matrix(data, groups[lab], instances, "charged_ctd", max_ctd), axis=0).mean()
        for lab in labels
    }
    lines += [
        "Click-to-door with every undelivered order counted at the maximum (90 min): "
        + ", ".join(f"{lab} {v:.2f}" for lab, v in charged.items())
        + ".",
        "",
    ]
    spread = [lab for lab in labels if len(groups[lab]) > 1]
    if spread:
        lines += ["Spread across training seeds (std of the per-seed means):", ""]
        for lab in spread:
            per_seed = [mean_metrics([data[m][i] for i in instances]) for m in groups[lab]]
            lines.append(
                f"- {lab} ({len(groups[lab])} seeds): CtD "
                + " / ".join(f"{s['ctd_mean']:.2f}" for s in per_seed)
                + f" (std {np.std([s['ctd_mean'] for s in per_seed], ddof=1):.2f}); undelivered "
                + " / ".join(f"{s['undelivered_pct']:.2f}" for s in per_seed)
                + f"% (std {np.std([s['undelivered_pct'] for s in per_seed], ddof=1):.2f})"
            )
        lines.append("")
    if "inspo" in groups:
        lines += [
            "InSPO minus each policy, paired over instances (mean and 95% CI; negative is better for InSPO). "
            "The last column also counts the spread between the learned policies' training seeds (their per-seed "
            "means' variance, Satterthwaite degrees of freedom): the interval for the algorithm, not for these "
            "particular trained models.",
            "",
            "| vs | CtD mean | undelivered % | charged CtD | CtD and undelivered both lower (CIs below 0) "
            "| CtD mean, training seeds' spread counted too |",
            "|---|---|---|---|---|---|",
        ]
        for lab in labels:
            if lab == "inspo":
                continue
            cells, better, both = [], True, ""
            for key in COMPARED:
                a = seed_matrix(data, groups["inspo"], instances, key, max_ctd)
                b = seed_matrix(data, groups[lab], instances, key, max_ctd)
                # A policy's value on an instance is the mean over its seeds.
                mean, lo, hi = paired_ci(np.nanmean(a, axis=0), np.nanmean(b, axis=0))
                cells.append(f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]")
                better = better and (hi < 0 or key == "charged_ctd")
                if key == "ctd_mean":
                    mean, lo, hi = seed_aware_ci(a, b)
                    both = f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]"
            lines.append(f"| {lab} | " + " | ".join(cells) + f" | {'yes' if better else 'no'} | {both} |")
        lines.append("")
    return lines


def _decoding(rule: str) -> str:
    """How the report's models turn scores into joint actions, in words."""
    if rule == PLAN_RULE:
        return (
            f"joint actions by the `{rule}` rule (the rolling-horizon plan of `reyes`, each courier's best 16 of its "
            "bundles, the pairs of each priority group ranked by the plan's value blended with the model's "
            "preference: `dispatch/plan.py`)"
        )
    return (
        f"with a {DEFAULT_LOOKAHEAD}-minute lookahead (couriers about to be free reserve orders), joint actions by "
        f"the `{rule}` rule, picks reached {DEFAULT_DEFER} or more minutes before the food is ready deferred to "
        "the next epoch"
    )


def render(data: dict[str, dict[str, dict[str, float]]], groups: dict[str, list[str]], proto: Protocol) -> str:
    """The Markdown report."""
    everything = list_instances(proto.instances)
    held = [i for i in _instances(HELD_OUT) if i in everything]
    fl = floors(everything)
    max_ctd = {i: fl[i][2] for i in everything}
    lines = [
        "# Learned dispatch policies against the heuristics",
        "",
        "Produced by `make results-dispatch` (`python -m training.dispatch.results`). Training data: the "
        f"`mixed` recipe, one logged day on each of the {len(_instances(proto.train_instances))} instances "
        f"{', '.join(f'`{p}`' for p in proto.train_instances)}. "
        f"Each learned policy: {proto.seeds} training seeds × {proto.steps} steps (batch {proto.batch_size}), "
        f"exported to ONNX, {_decoding(proto.rule)}. Decision epochs {cadence(proto.sim())}, in the logs and in "
        "every evaluation. Its row is the mean over its seeds of each "
        "instance's metric. Figures are means across instances (the published convention).",
        "",
        PUBLISHED,
        "",
        f"Per-order floor (prep + direct travel + service), mean over all {len(everything)}: "
        f"{np.mean([fl[i][0] for i in everything]):.2f} min; over the {len(held)} held-out: "
        f"{np.mean([fl[i][0] for i in held] or [np.nan]):.2f} min. Orders no dispatcher can deliver within "
        f"90 min: {np.mean([fl[i][1] for i in everything]):.3f}% (all), "
        f"{np.mean([fl[i][1] for i in held] or [np.nan]):.3f}% (held out).",
        "",
    ]
    if held:
        lines += _section("Held out: seeds 6–9, o50 and r50", data, groups, held, max_ctd)
    lines += _section("All instances", data, groups, everything, max_ctd)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the whole protocol and write the report."""
    from simulator.batch import default_jobs

    ap = argparse.ArgumentParser(prog="python -m training.dispatch.results", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=path_arg, default=Path("docs/results-dispatch.md"), help="Markdown report")
    ap.add_argument("--work", type=path_arg, default=Path("runs/results-dispatch"), help="logs, runs and models")
    ap.add_argument("--seeds", type=int, default=Protocol.seeds, help="training seeds per algorithm (default 3)")
    ap.add_argument("--steps", type=int, default=Protocol.steps, help="training steps (default 3000)")
    ap.add_argument(
        "--train-instances",
        action="append",
        metavar="GLOB",
        help="instances whose logged days train the policies (repeatable; default: every seed 0-5 instance); "
        "held-out seeds 6-9 are refused",
    )
    ap.add_argument("--instances", default="*", help="glob of the instances evaluated (default all 240)")
    ap.add_argument("--heuristic-cache", type=path_arg, default=Path("docs/results.json"), help="make results' cache")
    ap.add_argument("--jobs", type=int, default=0, help="worker processes (default: usable cores)")
    ap.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.steps < 1:
        ap.error("--seeds and --steps must be at least 1")
    train_set = tuple(args.train_instances or TRAIN_INSTANCES)
    leaked = sorted(set(_instances(train_set)) & set(_instances(HELD_OUT)))
    if leaked:
        ap.error(
            f"--train-instances includes held-out instances ({', '.join(leaked[:3])}...): "
            "seeds 6-9 are never trained on"
        )
    if not _instances(train_set) or not list_instances(args.instances):
        ap.error("--train-instances and --instances must each match at least one public instance")
    proto = Protocol(seeds=args.seeds, steps=args.steps, train_instances=train_set, instances=args.instances)
    jobs = args.jobs or default_jobs()
    args.work.mkdir(parents=True, exist_ok=True)
    stamp, wanted = args.work / "protocol.json", json.dumps(asdict(proto), sort_keys=True)
    if stamp.is_file() and stamp.read_text() != wanted:
        ap.error(f"{args.work} holds a run of another protocol ({stamp.read_text()}); use a new --work or the same one")
    atomic_write_bytes(stamp, wanted.encode())
    models = build_models(args.work, proto, jobs, not args.no_progress)
    cache = args.out.with_suffix(".json")
    data = load_cache(cache, proto.sim())
    # Metrics are kept per model: a model whose file, manifest (conflict rule), decoding threshold or
    # decision-path code changed since they were measured is evaluated again.
    code = decision_code_digest()
    digests = {
        name: {
            "onnx_sha256": sha256_bytes(path.read_bytes()),
            "manifest_sha256": sha256_bytes(manifest_path(path).read_bytes()),
            "mass_threshold": MASS_THRESHOLD,
            "decision_code_sha256": code,
        }
        for name, path in models.items()
    }
    for name, digest in digests.items():
        if data.get(MODEL_KEY, {}).get(name) != digest:
            data.pop(name, None)
    data[MODEL_KEY] = digests  # type: ignore[assignment]
    if args.heuristic_cache.is_file():
        known = load_cache(args.heuristic_cache, proto.sim())  # rows of other engine settings are not taken
        for h in HEURISTICS:
            data[h] = {**data.get(h, {}), **known.get(h, {})}  # a fresh `make results` wins
    everything = list_instances(args.instances)
    policies = {name: str(path) for name, path in models.items()} | {h: h for h in HEURISTICS}
    for name, spec in policies.items():
        evaluate(data, name, spec, everything, cache, jobs, not args.no_progress, proto.sim())
    groups = {a: [f"{a}-s{s}" for s in range(proto.seeds)] for a in ALGOS} | {h: [h] for h in HEURISTICS}
    text = render(data, groups, proto)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, (text + "\n").encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
