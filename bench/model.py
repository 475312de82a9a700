"""Model benchmark: ONNX Runtime inference of the dispatch scorer, and training throughput.

Inference: the exported scorer (hidden 64) on batch 1 and 32 × {64, 256, 512} couriers × K=16
candidates, one intra-op thread and all usable threads. Training: courier-decisions per second of
BC and InSPO updates on a small log dataset generated on the fly. Usage: ``python -m bench.model``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _time(fn, seconds: float = 2.0) -> np.ndarray:  # type: ignore[no-untyped-def]
    fn()
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(out) < 5:
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return np.array(out)


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks and print Markdown tables."""
    ap = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__)
    ap.add_argument("--train-steps", type=int, default=60)
    args = ap.parse_args(argv)
    import onnxruntime as ort
    import torch

    from dispatch.candidates import CandidateConfig
    from training.dispatch.export import export
    from training.dispatch.nets import FA, FC, Scorer

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-model-"))
    path = export(Scorer(64), tmp / "scorer.onnx", "bench", "1", CandidateConfig())
    print("| threads | batch | couriers | K | p50 ms | p99 ms | courier-decisions/s |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for threads in (1, 2):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(path.read_bytes(), opts, providers=["CPUExecutionProvider"])
        for batch in (1, 32):
            for n in (64, 256, 512):
                k = 16
                feed = {
                    "agent": rng.normal(size=(batch, n, FA)).astype(np.float32),
                    "cand": rng.normal(size=(batch, n, k, FC)).astype(np.float32),
                    "cand_mask": rng.random((batch, n, k)) > 0.3,
                }
                ms = _time(lambda feed=feed, sess=sess: sess.run(["logits"], feed), 1.5)
                p50 = float(np.percentile(ms, 50))
                print(
                    f"| {threads} | {batch} | {n} | {k} | {p50:.2f} | {np.percentile(ms, 99):.2f} | "
                    f"{batch * n / p50 * 1000:,.0f} |"
                )
    from simulator.logs.generate import generate
    from training.dispatch.train import DispatchTrainConfig, train

    logs = tmp / "logs"
    generate(logs, "mixed", ["0o50t75s2p100", "3o50t100s1p100"], days=1, jobs=1, progress=False)
    print("\n| algorithm | steps | batch (epochs) | courier-decisions/s |")
    print("|---|---|---|---|")
    for algo, params in (("bc", {}), ("inspo", {"warmup_steps": args.train_steps // 2})):
        res = train(
            DispatchTrainConfig(
                data=str(logs),
                algo=algo,
                steps=args.train_steps,
                batch_size=32,
                progress=False,
                out=str(tmp / algo),
                params=params,
            )
        )
        print(f"| {algo} | {args.train_steps} | 32 | {res['stats']['courier_decisions_per_s']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
