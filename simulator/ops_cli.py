"""``dispatch ab`` and ``dispatch replay``: the operators' tools (handlers import lazily)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from simulator.cli_paths import path_arg
from simulator.epochs import add_interval_option

POLICY_HELP = (
    "a heuristic (nearest, reyes, ...), a behaviour recipe (reyes-soft, ...; add :greedy), "
    "a path to an .onnx model, or grpc://host:port[/model]"
)


# Upper bounds on work-sizing flags: far past any useful value, low enough that a typo fails at once
# instead of filling memory or running for days.
MAX_SEEDS = 1000  # replicate days per instance in an A/B
# Scale of the replicate perturbation: at 10 a preparation time's log-normal σ is 1.5 (a 3σ day multiplies it by
# 90), well past any plausible day; beyond it the perturbation overflows float64.
MAX_NOISE = 10.0
MAX_BOOTSTRAP = 100_000  # resamples; a 95% percentile interval is stable to 0.01 well before this
MAX_SAMPLES = 10_000  # target actions per logged state (DR, ground truth)
MIN_SPEEDUP = 1e-3  # simulated minutes per real minute; below it a day's pacing overflows clock arithmetic


def _first_problem(*checks: tuple[bool, str]) -> str:
    """The message of the first failed check ('' when all pass); each check is written so NaN fails it."""
    return next((message for ok, message in checks if not ok), "")


def _check_instances(specs: list[str]) -> None:
    """InstanceError on a spec that is no loadable day, raised before --out is created or written.

    A day that failed mid-run would leave a manifest with the bad name, and that folder then refuses
    the corrected command. Files are loaded (about 2 ms a day); synthetic days only have their seed
    checked, generating them would cost more than the check is worth.
    """
    from simulator.instance import InstanceError
    from simulator.sources import load_spec

    for spec in specs:
        if spec.startswith("synthetic:"):
            seed = spec.split(":", 1)[1]
            try:
                int(seed)
            except ValueError:
                raise InstanceError(f"instance {spec!r}: synthetic seed {seed!r} is not an integer") from None
        else:
            load_spec(spec)


def register(sub: Any) -> None:
    """Add ``ab`` and ``replay`` to the ``dispatch`` parser."""
    p = sub.add_parser(
        "ab",
        help="A/B two policies in the simulator with common random numbers and a paired report",
        description=(
            "Simulate every instance × replicate seed under policy A and policy B on exactly the same day "
            "(common random numbers), then compare them metric by metric with paired statistics (t and "
            "bootstrap intervals, effect size, Holm-corrected p-values). Writes OUT/report.md (+ PNG plots) "
            "and OUT/report.json once every day is done; a stopped run resumes when rerun with the same arguments."
        ),
    )
    p.add_argument("--a", required=True, metavar="POLICY", help=f"arm A: {POLICY_HELP}")
    p.add_argument("--b", required=True, metavar="POLICY", help=f"arm B: {POLICY_HELP}")
    p.add_argument(
        "--instances",
        action="append",
        default=[],
        metavar="SPEC|GLOB",
        help="instances: names, globs ('seed0/*', '*o50*'), paths, synthetic:SEED or synthetic:A-B (repeatable)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="replicate seeds per instance (default 1); seed 0 is the day as published, seeds >= 1 perturb it",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=1.0,
        help="scale of the replicate perturbation, 0 to 10 (default 1: preparation σ=0.15, speed σ=0.05; 0: off)",
    )
    add_interval_option(p)
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate for Holm (default 0.05)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--out", type=path_arg, required=True, help="report folder (created, or resumed)")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (default: usable cores)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=ab)

    r = sub.add_parser(
        "replay",
        help="replay historical days through a policy: shadow, counterfactual re-simulation, off-policy estimates",
        description=(
            "Replay logged days (a log dataset folder) or MDRP instance days (--instance; their history is "
            "played by --baseline) through a policy. shadow: every logged snapshot goes to the policy, "
            "agreement/latency/errors are reported; resim: each day is re-simulated under the policy and its "
            "MDRP metrics compared with the logged ones; ope: IPS, self-normalised IPS and doubly robust "
            "estimates of the policy's per-decision reward from the logged behaviour probabilities. Writes "
            "OUT/report.md and OUT/report.json once every part is done; a stopped run resumes when rerun."
        ),
    )
    r.add_argument("logs", nargs="?", type=path_arg, help="log dataset folder (from `dispatch logs generate`)")
    r.add_argument(
        "--instance",
        action="append",
        default=[],
        metavar="SPEC|GLOB",
        help="MDRP instance day(s) instead of logs: names, globs, paths, synthetic:SEED (repeatable)",
    )
    r.add_argument("--baseline", default="reyes", metavar="POLICY", help="who dispatched instance days (default reyes)")
    r.add_argument("--policy", required=True, metavar="POLICY", help=POLICY_HELP)
    r.add_argument(
        "--mode",
        choices=("shadow", "resim", "ope", "all"),
        default="all",
        help="what to run (default all: shadow + resim, + ope when the days are logs and the policy has probabilities)",
    )
    r.add_argument("--pace", choices=("fast", "recorded"), default="fast", help="shadow pace (default fast)")
    r.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        help="with --pace recorded: simulated minutes per real minute (default 1 = the recorded pace itself)",
    )
    r.add_argument(
        "--max-errors", type=int, default=0, help="shadow decisions allowed to fail before stopping (default 0)"
    )
    r.add_argument("--samples", type=int, default=8, help="target actions sampled per state for DR (default 8)")
    r.add_argument(
        "--truth",
        type=int,
        default=0,
        metavar="N",
        help="also measure the OPE estimand's ground truth in the simulator with N samples per state (default off)",
    )
    add_interval_option(r, "for instance days; log days replay at the interval their log records")
    r.add_argument("--out", type=path_arg, required=True, help="report folder (created, or resumed)")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    r.set_defaults(handler=replay)


def ab(args: argparse.Namespace) -> int:
    """Run or resume an A/B and print the verdicts."""
    from simulator.ab.crn import NoiseConfig
    from simulator.ab.run import ABConfig, ABError, run_ab
    from simulator.batch import default_jobs
    from simulator.instance import InstanceError
    from simulator.policies import PolicySpecError, resolve
    from simulator.sources import expand
    from simulator.writable import foreign_output

    problem = _first_problem(
        (1 <= args.seeds <= MAX_SEEDS, f"--seeds must be 1 to {MAX_SEEDS}, got {args.seeds}"),
        (args.interval >= 1, f"--interval must be >= 1, got {args.interval}"),
        (0 <= args.noise <= MAX_NOISE, f"--noise must be 0 to {MAX_NOISE:g}, got {args.noise}"),
        (0 < args.alpha < 1, f"--alpha must be between 0 and 1 (exclusive), got {args.alpha}"),
        (100 <= args.bootstrap <= MAX_BOOTSTRAP, f"--bootstrap must be 100 to {MAX_BOOTSTRAP}, got {args.bootstrap}"),
        (args.jobs >= 0, f"--jobs must be >= 0 (0: usable cores), got {args.jobs}"),
        ((foreign := foreign_output(args.out, own="ab.json")) is None, f"--out {args.out}: {foreign}"),
    )
    if problem:
        print(f"dispatch ab: {problem}", file=sys.stderr)
        return 2
    try:
        instances = expand(args.instances or ["0o50t75s2p100"])
        _check_instances(instances)
        for spec in (args.a, args.b):
            resolve(spec)  # fail before any simulation on a typo (a gRPC spec is parsed, not yet dialled)
        config = ABConfig(
            args.a,
            args.b,
            tuple(instances),
            args.seeds,
            NoiseConfig().scaled(args.noise),
            args.interval,
            args.alpha,
            args.bootstrap,
        )
        run = run_ab(config, args.out, jobs=args.jobs or default_jobs(), progress=not args.no_progress)
    except (InstanceError, PolicySpecError, ABError) as exc:
        print(f"dispatch ab: {exc}", file=sys.stderr)
        return 2
    if not run.complete:
        print(
            f"dispatch ab: STOPPED — {run.error}\n{run.done} of {run.total} days finished and kept; no report was "
            f"written (see {run.out / 'STATUS.md'}). Rerun the same command to resume.",
            file=sys.stderr,
        )
        return 1
    assert run.report is not None
    for line in run.report["verdicts"].values():
        print(line)
    print(f"\nreport: {run.out / 'report.md'} (JSON: {run.out / 'report.json'})")
    return 0


def replay(args: argparse.Namespace) -> int:
    """Run or resume a replay and print its headline numbers."""
    from dispatch.candidates import CandidateConfig
    from simulator.engine import RewardConfig
    from simulator.instance import InstanceError
    from simulator.logs.dataset import LogError, read_manifest
    from simulator.policies import PolicySpecError, resolve
    from simulator.replay.days import instance_days, log_days
    from simulator.replay.ope import resolve_target
    from simulator.replay.run import ReplayConfig, ReplayError, run_replay
    from simulator.replay.shadow import ShadowConfig
    from simulator.sources import expand
    from simulator.writable import foreign_output

    if (args.logs is None) == (not args.instance):
        print("dispatch replay: give a log folder or --instance (one of the two)", file=sys.stderr)
        return 2
    problem = _first_problem(
        # inf is allowed: no wait between decisions, the same as --pace fast.
        (args.speedup >= MIN_SPEEDUP, f"--speedup must be a number >= {MIN_SPEEDUP:g}, got {args.speedup}"),
        (args.max_errors >= 0, f"--max-errors must be >= 0, got {args.max_errors}"),
        (1 <= args.samples <= MAX_SAMPLES, f"--samples must be 1 to {MAX_SAMPLES}, got {args.samples}"),
        (0 <= args.truth <= MAX_SAMPLES, f"--truth must be 0 (off) to {MAX_SAMPLES}, got {args.truth}"),
        (args.interval >= 1, f"--interval must be >= 1, got {args.interval}"),
        ((foreign := foreign_output(args.out, own="replay.json")) is None, f"--out {args.out}: {foreign}"),
    )
    if problem:
        print(f"dispatch replay: {problem}", file=sys.stderr)
        return 2
    try:
        resolve(args.policy)  # a gRPC spec is parsed, not yet dialled
        if args.instance:
            resolve(args.baseline)
        reward, cands = RewardConfig(), CandidateConfig()
        if args.logs is not None:
            days = log_days(args.logs)
            made = read_manifest(args.logs).get("args", {})
            try:
                reward = RewardConfig(**made.get("reward", {}))
                cands = CandidateConfig(**made.get("candidates", {}))
            except (TypeError, ValueError) as exc:  # an unknown field, or a value the config refuses
                raise LogError(f"{args.logs}: manifest field 'args' (reward or candidates): {exc}") from None
            source: dict[str, Any] = {"logs": str(args.logs.resolve())}
        else:
            specs = expand(args.instance)
            _check_instances(specs)
            days = instance_days(specs, args.baseline, args.interval)
            source = {"instances": specs, "baseline": args.baseline, "interval": args.interval}
        modes: tuple[str, ...]
        if args.mode != "all":
            modes = (args.mode,)
        else:
            modes = ("shadow", "resim")
            if args.logs is not None:
                try:
                    resolve_target(args.policy, cands)
                    modes += ("ope",)
                except PolicySpecError as exc:
                    print(f"dispatch replay: skipping off-policy estimates: {exc}", file=sys.stderr)
        config = ReplayConfig(
            args.policy,
            modes,
            source,
            ShadowConfig(args.pace, args.speedup, args.max_errors),
            args.samples,
            args.truth,
            reward,
            cands,
        )
        run = run_replay(config, days, args.out, progress=not args.no_progress)
    except (InstanceError, LogError, PolicySpecError, ReplayError) as exc:
        print(f"dispatch replay: {exc}", file=sys.stderr)
        return 2
    if not run.complete:
        print(
            f"dispatch replay: STOPPED — {run.error}\n{run.done} of {run.total} parts finished and kept; no report "
            f"was written (see {run.out / 'STATUS.md'}). Rerun the same command to resume.",
            file=sys.stderr,
        )
        return 1
    rep = run.report or {}
    if "shadow" in rep:
        s = rep["shadow"]
        print(
            f"shadow: per-courier agreement {100 * s['per_courier_agreement']:.2f}%, joint "
            f"{100 * s['joint_agreement']:.2f}%, latency p50 {s['latency_ms']['p50']:.2f} ms, errors {len(s['errors'])}"
        )
    if "resim" in rep:
        m = rep["resim"]["metrics"]["ctd_mean"]
        print(f"resim: mean CtD logged {m['mean_a']:.2f} -> policy {m['mean_b']:.2f} min")
    if "ope" in rep:
        e = rep["ope"]
        print(
            "ope (per-decision reward): logged "
            + ", ".join(f"{k} {e[k]['value']:.4f}" for k in ("behaviour", "ips", "snips", "dr"))
        )
    print(f"\nreport: {run.out / 'report.md'} (JSON: {run.out / 'report.json'})")
    return 0
