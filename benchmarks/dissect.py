"""Benchmark dissection: time relative to the bare forward passes, and peak memory vs samples.

    python benchmarks/dissect.py --model toyworld --segmenter toyworld --layer layer4 \\
        --samples 2000 --mem-samples 1000,10000

Prints (1) the time of ``dissect()`` over ``--samples`` samples divided by the time of the bare
generator + segmenter forward passes over the same samples and batches (the "floor", measured
before and after the dissection and averaged), as wall time and as process CPU time (with one
thread the CPU ratio is the steadier one on a shared, busy machine; ``--repeats`` gives the
median over several dissections);
(2) for each count in ``--mem-samples``, in a fresh subprocess, the peak resident-set growth
during ``dissect()`` (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the run minus before
it, after loading the models and one warm-up batch). ``--random-weights`` builds the bundled
architectures with random weights when trained weights are not available (timings depend on the
architecture; sparsity on the activations).
(3) with ``--workers N`` (N > 1), after each one-process dissection a dissection with
``workers=N`` (spawned processes, ``--threads`` torch threads each; pool start-up included) of
the same samples: the wall-time ratio workers=N / workers=1 measured in this run, and whether
the two results are bit-identical.
One process keeps up to ``--cache-mb`` (default 512, as ``dissect``) of pass 1's activations and
segmentations, so pass 2 does not run the generator and segmenter again; ``--cache-mb 0`` gives
the fixed-memory two-pass run (its ratio also carries the generator up to the layer once more),
and is what the memory runs of (2) should use to show memory independent of the sample count.
(5) with ``--dtype bfloat16``, after the float32 runs, one dissection of the same samples with
``dtype="bfloat16"`` (autocast forward passes): its speed-up over the float32 dissection
(wall time, measured in this run) and the label agreement: the fraction of units interpretable
in float32 that keep their label in bfloat16. Whether this CPU has native bfloat16
(``avx512_bf16`` / ``amx_bf16`` in /proc/cpuinfo) is printed beside it: where it is emulated,
bfloat16 is much slower.
(4) with ``--cluster local:N``, the same on a Dask LocalCluster of N worker processes (one
thread each; ``pip install 'gandissect[dask]'``), started once before the repeats (its start-up
time is printed, not in the ratio; the models' scatter is in it). Each parallel ratio is printed
with ``os.getloadavg()`` (1, 5, 15 min) taken at the end of its runs: on a shared machine a
ratio means little without the load beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
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


def floor_seconds(gen: Any, seg: Any, samples: int, seed: int, batch: int
                  ) -> tuple[float, float]:
    """Wall and process-CPU time of generating and segmenting ``samples`` samples (latent
    sampling included)."""
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for s in range(0, samples, batch):
            x = gen(gen.sample_latents(min(batch, samples - s), seed, s))
            seg.segment(x)
    return time.perf_counter() - t0, time.process_time() - c0


def run_dissect(gen: Any, seg: Any, args: argparse.Namespace, samples: int, workers: int = 1,
                client: Any = None, dtype: str = "float32"
                ) -> tuple[float, float, dict[str, Any]]:
    """Wall and (parent) process-CPU time of ``dissect()`` over ``samples`` samples (on the
    Dask ``client``'s cluster if given), and its results."""
    from gandissect.dissection.engine import dissect
    t0, c0 = time.perf_counter(), time.process_time()
    res = dissect(gen, seg, args.layer, samples=samples, seed=args.seed,
                  batch_size=args.batch_size, threshold=args.threshold, workers=workers,
                  threads_per_worker=args.threads, client=client, dtype=dtype,
                  cache_mb=args.cache_mb)
    return time.perf_counter() - t0, time.process_time() - c0, res


def identical(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Every result array of every layer is bit-identical."""
    keys = ("thresholds", "iou", "intersection", "above", "concept_pixels", "frac_above",
            "rank_error", "iqr", "topk_indices", "topk_values")
    return a.keys() == b.keys() and all(
        np.array_equal(getattr(a[k], f), getattr(b[k], f)) for k in a for f in keys)


def memory_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    gen, seg = load(args)
    floor_seconds(gen, seg, args.batch_size, args.seed + 1, args.batch_size)   # warm up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds, _, _ = run_dissect(gen, seg, args, args.worker_mem)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"samples": args.worker_mem, "peak_rss_growth_mb": (after - before) / 1024,
                      "peak_rss_mb": after / 1024, "seconds": seconds}))


def print_parallel(label: str, note: str, parallel: list, runs: list, same: list,
                   load: Sequence[float]) -> None:
    """Wall times of the parallel runs, their median ratio to one process, bit-identity and
    the load average beside them."""
    ratios = [w[0] / r[0] for w, r in zip(parallel, runs, strict=True)]
    print(f"dissection, {label}{note}: {statistics.mean(w[0] for w in parallel):.2f} s wall "
          f"({', '.join(f'{w[0]:.2f}' for w in parallel)})")
    print(f"ratio {label} / workers=1: {statistics.median(ratios):.2f}x wall "
          f"({', '.join(f'{r:.2f}' for r in ratios)}); results bit-identical: {all(same)}; "
          f"load average {', '.join(f'{x:.2f}' for x in load)}")


def label_agreement(ref: dict[str, Any], other: dict[str, Any]) -> tuple[int, int]:
    """(units interpretable in ``ref`` that keep their label in ``other``, units interpretable
    in ``ref``), over all layers."""
    kept = total = 0
    for k, r in ref.items():
        ok = r.interpretable
        same = np.array(r.unit_labels) == np.array(other[k].unit_labels)
        kept += int((ok & same).sum())
        total += int(ok.sum())
    return kept, total


def native_bf16() -> str:
    """The CPU flags that give native bfloat16 matrix maths, or 'none (emulated)'."""
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return "unknown"
    have = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return ", ".join(have) if have else "none (emulated)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="toyworld")
    p.add_argument("--segmenter", default="toyworld")
    p.add_argument("--layer", action="append", default=None)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--cache-mb", type=float, default=512,
                   help="dissect(cache_mb=): MB of pass-1 batches one process keeps for pass 2")
    p.add_argument("--mem-samples", default="1000,10000",
                   help="comma-separated sample counts for the memory runs ('' to skip)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threshold", default="quantile", choices=("quantile", "iqr"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1,
                   help="dissections (each between two floor measurements); median ratio")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--workers", type=int, default=1,
                   help="also time dissect(workers=N) after each one-process run and print "
                        "the wall-time ratio N / 1 and whether the results are identical")
    p.add_argument("--cluster", default=None, metavar="local:N",
                   help="also time dissect(client=...) on a Dask LocalCluster of N worker "
                        "processes after each one-process run, and print the wall-time ratio")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="bfloat16: also time a bfloat16 dissection and print its speed-up and "
                        "label agreement with float32")
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
    # each dissection is compared with the mean of the floors measured right before and after
    # it, so that a load change on a shared machine biases the ratio less; CPU time (one thread)
    # is the steadier number; with --repeats, the median ratio over the repeats
    floors = [floor_seconds(gen, seg, args.samples, args.seed, args.batch_size)]
    runs, parallel, same, on_cluster, same_cluster = [], [], [], [], []
    loadavg: dict[str, tuple[float, float, float]] = {}
    cluster: contextlib.AbstractContextManager[Any] = contextlib.nullcontext(None)
    if args.cluster:
        from gandissect.dissection.cluster import dask_client
        cluster = dask_client(args.cluster)
    t0 = time.perf_counter()
    with cluster as client:
        started = time.perf_counter() - t0
        for _ in range(args.repeats):
            runs.append(run_dissect(gen, seg, args, args.samples))
            floors.append(floor_seconds(gen, seg, args.samples, args.seed, args.batch_size))
            if args.workers > 1:
                parallel.append(run_dissect(gen, seg, args, args.samples, args.workers))
                same.append(identical(runs[-1][2], parallel[-1][2]))
                loadavg["workers"] = os.getloadavg()
            if client is not None:
                on_cluster.append(run_dissect(gen, seg, args, args.samples, client=client))
                same_cluster.append(identical(runs[-1][2], on_cluster[-1][2]))
                loadavg["cluster"] = os.getloadavg()
    wall = [r[0] / ((a[0] + b[0]) / 2) for r, a, b in zip(runs, floors, floors[1:], strict=False)]
    cpu = [r[1] / ((a[1] + b[1]) / 2) for r, a, b in zip(runs, floors, floors[1:], strict=False)]
    print(f"model={args.model} segmenter={args.segmenter} layers={args.layer} "
          f"samples={args.samples} batch={args.batch_size} threads={args.threads} "
          f"threshold={args.threshold} repeats={args.repeats}")
    print(f"floor (generator + segmenter forward): "
          f"{statistics.mean(f[0] for f in floors):.2f} s wall "
          f"({', '.join(f'{f[0]:.2f}' for f in floors)}), "
          f"{statistics.mean(f[1] for f in floors):.2f} s CPU")
    print(f"dissection:                            "
          f"{statistics.mean(r[0] for r in runs):.2f} s wall "
          f"({', '.join(f'{r[0]:.2f}' for r in runs)}), "
          f"{statistics.mean(r[1] for r in runs):.2f} s CPU")
    print(f"ratio dissection / floor:              {statistics.median(wall):.2f}x wall, "
          f"{statistics.median(cpu):.2f}x CPU (load average {os.getloadavg()})")
    if args.dtype == "bfloat16":
        bf = run_dissect(gen, seg, args, args.samples, dtype="bfloat16")
        kept, total = label_agreement(runs[-1][2], bf[2])
        print(f"bfloat16: {runs[-1][0] / bf[0]:.2f}x the float32 dissection's speed "
              f"({bf[0]:.2f} s vs {runs[-1][0]:.2f} s wall; native bfloat16: {native_bf16()}); "
              f"{kept}/{total} = {kept / max(total, 1):.1%} of float32-interpretable units keep "
              f"their label (load average {os.getloadavg()})")
    if parallel:
        print_parallel(f"workers={args.workers}", "", parallel, runs, same, loadavg["workers"])
    if on_cluster:
        print_parallel(f"cluster {args.cluster}", f" (started in {started:.1f} s, not counted)",
                       on_cluster, runs, same_cluster, loadavg["cluster"])
    counts = [int(c) for c in args.mem_samples.split(",") if c.strip()]
    rows = []
    for n in counts:
        cmd = [sys.executable, __file__, "--worker-mem", str(n), "--model", args.model,
               "--segmenter", args.segmenter, "--seed", str(args.seed), "--batch-size",
               str(args.batch_size), "--threshold", args.threshold, "--threads",
               str(args.threads), "--cache-mb", str(args.cache_mb)
               ] + sum((["--layer", la] for la in args.layer), [])
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
