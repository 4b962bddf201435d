"""Benchmark dissection: time relative to the bare forward passes, and peak memory vs samples.

    python benchmarks/dissect.py --model toyworld --segmenter toyworld --layer layer4 \\
        --samples 2000 --mem-samples 1000,10000

Prints (1) the wall time of ``dissect()`` over ``--samples`` samples divided by the wall time of
the bare generator + segmenter forward passes over the same samples and batches (the "floor");
(2) for each count in ``--mem-samples``, in a fresh subprocess, the peak resident-set growth
during ``dissect()`` (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the run minus before
it, after loading the models and one warm-up batch). ``--random-weights`` builds the bundled
architectures with random weights when trained weights are not available (timings depend on the
architecture; sparsity on the activations).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import torch


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    import models
    import segmenters
    if args.random_weights and args.model == "toyworld":
        from models.toyworld_gan import ToyworldGenerator
        gen: Any = ToyworldGenerator().eval()
    else:
        gen = models.load(args.model)
    if args.random_weights and args.segmenter == "toyworld":
        from segmenters.toyworld import ToyworldSegmenter, ToyworldUNet
        seg: Any = ToyworldSegmenter(ToyworldUNet(), batch_size=args.batch_size)
    else:
        seg = segmenters.load(args.segmenter)
        seg.batch_size = args.batch_size
    return gen, seg


def floor_seconds(gen: Any, seg: Any, samples: int, seed: int, batch: int) -> float:
    """Wall time of generating and segmenting ``samples`` samples (latent sampling included)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, samples, batch):
            x = gen(gen.sample_latents(min(batch, samples - s), seed, s))
            seg.segment(x)
    return time.perf_counter() - t0


def run_dissect(gen: Any, seg: Any, args: argparse.Namespace, samples: int) -> float:
    from gandissect.dissect import dissect
    t0 = time.perf_counter()
    dissect(gen, seg, args.layer, samples=samples, seed=args.seed, batch_size=args.batch_size,
            threshold=args.threshold)
    return time.perf_counter() - t0


def memory_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    gen, seg = load(args)
    floor_seconds(gen, seg, args.batch_size, args.seed + 1, args.batch_size)   # warm up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = run_dissect(gen, seg, args, args.worker_mem)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"samples": args.worker_mem, "peak_rss_growth_mb": (after - before) / 1024,
                      "peak_rss_mb": after / 1024, "seconds": seconds}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="toyworld")
    p.add_argument("--segmenter", default="toyworld")
    p.add_argument("--layer", action="append", default=None)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--mem-samples", default="1000,10000",
                   help="comma-separated sample counts for the memory runs ('' to skip)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threshold", default="quantile", choices=("quantile", "iqr"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--worker-mem", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.layer:
        args.layer = ["layer4"]
    if args.worker_mem:
        memory_worker(args)
        return 0
    torch.set_num_threads(args.threads)
    gen, seg = load(args)
    floor_seconds(gen, seg, args.batch_size, args.seed + 1, args.batch_size)   # warm up
    floor = floor_seconds(gen, seg, args.samples, args.seed, args.batch_size)
    took = run_dissect(gen, seg, args, args.samples)
    print(f"model={args.model} segmenter={args.segmenter} layers={args.layer} "
          f"samples={args.samples} batch={args.batch_size} threads={args.threads} "
          f"threshold={args.threshold}")
    print(f"floor (generator + segmenter forward): {floor:.2f} s")
    print(f"dissection:                            {took:.2f} s")
    print(f"ratio dissection / floor:              {took / floor:.2f}x")
    counts = [int(c) for c in args.mem_samples.split(",") if c.strip()]
    rows = []
    for n in counts:
        cmd = [sys.executable, __file__, "--worker-mem", str(n), "--model", args.model,
               "--segmenter", args.segmenter, "--seed", str(args.seed), "--batch-size",
               str(args.batch_size), "--threshold", args.threshold, "--threads",
               str(args.threads)] + sum((["--layer", la] for la in args.layer), [])
        if args.random_weights:
            cmd.append("--random-weights")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"memory at {n:6d} samples: peak RSS growth during dissect() "
              f"{r['peak_rss_growth_mb']:.1f} MB (peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"{r['seconds']:.1f} s)")
    if len(rows) >= 2:
        # the warm-up batch often sets the peak already, so compare whole-process peaks too
        print(f"peak RSS ratio {rows[-1]['samples']} vs {rows[0]['samples']} samples: "
              f"{rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
