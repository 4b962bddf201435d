"""Causal table: how much of a concept the best k units of a layer remove, against random units.

    python benchmarks/causal_table.py --layer layer4 \\
        --concepts tree,sky,grass,mountain,road,cloud --out results/causal_table --docs docs/causal

For each layer and concept, units are ranked three ways on the *ranking* samples (seed
``--seed``): by dissection IoU (``gandissect.dissect``, ``--dissect-samples``), by single-unit
ablation ACE (``--ace-samples``; every concept from the same ablations) and by optimised per-unit
ablation strengths (``gandissect.optimize_alpha``, ``--opt-samples`` x ``--opt-steps``).
Then the top-k units of each ranking, for each k in ``--ks``, and k random units (``--random-draws``
nested random orders, shared by all concepts) are ablated on *different* samples (seed
``--eval-seed``, default ``--seed + 1``, ``--eval-samples``), and the relative drop of the concept's
pixel fraction is reported with a 95% CI (normal approximation over samples).

The verdict at k = 20 uses a rule that can fail: the best ranking is chosen on the *ranking*
samples only (its top-20 set is ablated on ``--select-samples`` samples of ``--seed``; the one
removing most wins), then on the evaluation samples it passes when its removal exceeds the
random sets' mean removal by >= 40 points **and** the lower end of its 95% CI lies above the
upper end of the random sets' 95% CI (normal approximation over the ``--random-draws`` draws).
The ratio to random is still listed, but no longer decides anything (it is undefined when
random units remove nothing or add pixels).

Everything is cached under ``OUT/cache/<model>-<segmenter>-<weights hash>/``: the dissection
(resumable), the single-unit ACE matrix, the optimised rankings and the per-sample concept
fractions of every ablated unit set, so a rerun with more concepts, ks or layers only computes
what is new, and new weights (a different hash) never reuse stale numbers. Writes
``OUT/causal_table.md``, ``OUT/causal_table.json``, ``OUT/effect_vs_k_<layer>_<concept>.png`` and
one grid ``OUT/effect_vs_k_<layer>.png`` per layer (the .md and the grids are also copied to
``--docs`` when given).

``--cluster local:N`` (a Dask LocalCluster started for the run) or ``--scheduler ADDRESS`` (a
running one; both need ``pip install 'gandissect[dask]'``) run the dissection, the single-unit
ablations and the unit sets' ablations as tasks on Dask workers (groups of units or unit sets
per task, the models sent to each worker once): the cached numbers are the same as one
process's, so a cache filled on a cluster serves a run without one and the other way round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gandissect.common.fingerprint import fingerprint
from gandissect.common.jsonsafe import strict_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from causal_report import (  # noqa: E402  (a sibling script, not a package)
    fmt_ratio,
    passes,
    random_ci,
    save_plots,
    verdicts,
    write_markdown,
)

__all__ = ["fmt_ratio", "passes", "random_ci", "save_plots", "verdicts", "write_markdown"]

T0 = time.time()


def log(msg: str) -> None:
    """Progress line with elapsed seconds (stderr)."""
    print(f"[{time.time() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def csv(text: str, kind: type = str) -> list[Any]:
    """``"a,b"`` -> ``[kind(a), kind(b)]``."""
    return [kind(t.strip()) for t in text.split(",") if t.strip()]


def git_head() -> str:
    """Short commit of the working tree (``+dirty`` with uncommitted changes), or ``unknown``."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def key_of(units: list[int]) -> str:
    """Cache key of a unit set (order does not matter for an ablation)."""
    return ",".join(str(u) for u in sorted(units))


class Ledger:
    """Compute seconds spent on each cached result (``compute_seconds.json`` in the cache), so a
    table rebuilt from the cache still reports what computing it cost."""

    def __init__(self, cache: Path) -> None:
        self.path = cache / "compute_seconds.json"
        self.seconds: dict[str, float] = (json.loads(self.path.read_text())
                                          if self.path.exists() else {})
        self.used: set[str] = set()

    def add(self, key: str, seconds: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        self.path.write_text(json.dumps(self.seconds, indent=1))

    def total(self) -> float:
        """Seconds of every result this invocation used (computed now or earlier)."""
        return sum(self.seconds.get(k, 0.0) for k in self.used)


LEDGER: Ledger | None = None


def charge(key: str, seconds: float | None = None) -> None:
    """Mark ``key`` used by this invocation and add ``seconds`` of new compute to it."""
    if LEDGER is not None:
        LEDGER.used.add(key)
        if seconds is not None:
            LEDGER.add(key, seconds)


class EffectCache:
    """Per-sample whole-image fractions of all segmenter concepts, unedited (``before [N, C]``)
    and with each ablated unit set (``after[key] [N, C]``), on one (layer, seed, samples)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.before: np.ndarray | None = None
        self.after: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path, allow_pickle=False) as f:
                for name in f.files:
                    if name == "__before__":
                        self.before = f[name]
                    else:
                        self.after[name] = f[name]

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp.npz")
        arrays: dict[str, np.ndarray] = dict(self.after)
        if self.before is not None:
            arrays["__before__"] = self.before
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(self.path)


def measure_sets(gen: Any, seg: Any, layer: str, sets: list[list[int]], cache: EffectCache,
                 samples: int, seed: int, batch_size: int, chunk: int = 6,
                 client: Any = None) -> None:
    """Ablate every unit set not yet in ``cache`` (``chunk`` sets per pass over the samples;
    the cache is saved after each chunk, so an interrupted run resumes). With a Dask
    ``client`` a chunk holds ``chunk`` sets per worker thread, in groups of sets that are tasks
    (the same numbers as one process)."""
    from gandissect.dissection.cluster import client_threads
    from gandissect.intervention.causal import measure_concepts
    from gandissect.intervention.edit import Edit
    from gandissect.intervention.fanout import measure_concepts_on_cluster

    todo, seen = [], set(cache.after)
    for us in sets:
        k = key_of(us)
        if k not in seen:
            seen.add(k)
            todo.append(sorted(us))
    log(f"{layer}: {len(todo)} new unit sets to ablate on {samples} samples of seed {seed} "
        f"({len(cache.after)} cached)")
    charge(cache.path.name)
    if client is not None:
        chunk *= client_threads(client)
    for i in range(0, len(todo), chunk):
        t = time.time()
        part = todo[i:i + chunk]
        edit_sets = [[Edit(layer, us)] for us in part]
        if client is None:
            before, after = measure_concepts(gen, seg, edit_sets, samples, seed,
                                             batch_size=batch_size)
        else:
            before, after = measure_concepts_on_cluster(client, gen, seg, edit_sets, samples,
                                                        seed, batch_size=batch_size,
                                                        label=f"sets-{layer}")
        if cache.before is None:
            cache.before = before
        elif not np.array_equal(cache.before, before):
            raise RuntimeError(f"unedited fractions differ from the cached ones in {cache.path}; "
                               "the generator or segmenter is not deterministic - delete the cache")
        for us, a in zip(part, after, strict=True):
            cache.after[key_of(us)] = a
        cache.save()
        charge(cache.path.name, time.time() - t)
        log(f"{layer}: ablated {min(i + chunk, len(todo))}/{len(todo)} sets")


def iou_rankings(gen: Any, seg: Any, args: argparse.Namespace, layer: str, cache: Path,
                 client: Any = None) -> dict[str, Any]:
    from gandissect.dissection.engine import dissect
    from gandissect.intervention.ranking import rank_by_iou

    folder = cache / f"dissect_{layer}_n{args.dissect_samples}_s{args.seed}"
    log(f"{layer}: dissection of {args.dissect_samples} samples (cached in {folder})")
    t, fresh = time.time(), not (folder / "results.json").exists()
    res = dissect(gen, seg, layer, samples=args.dissect_samples, seed=args.seed,
                  batch_size=args.batch_size, out=folder, model_name=args.model,
                  segmenter_name=args.segmenter, client=client)[layer]
    charge(folder.name, time.time() - t if fresh else None)
    return {c: rank_by_iou(res, c) for c in args.concepts}


def ace_rankings(gen: Any, seg: Any, args: argparse.Namespace, layer: str, cache: Path,
                 client: Any = None) -> dict[str, Any]:
    from gandissect.intervention.ranking import UnitRanking, single_unit_ace_concepts

    path = cache / f"ace_{layer}_n{args.ace_samples}_s{args.seed}.npz"
    labels = list(seg.labels)
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            drop = f["drop"]
    else:
        log(f"{layer}: single-unit ACE of every unit on {args.ace_samples} samples")
        t = time.time()
        ranks = single_unit_ace_concepts(gen, seg, labels, layer, args.ace_samples, args.seed,
                                         batch_size=args.batch_size,
                                         progress=lambda n: log(f"{layer}: ACE {n} samples"),
                                         client=client)
        drop = np.stack([ranks[c].scores for c in labels], axis=1)
        np.savez(path, drop=drop)
        charge(path.name, time.time() - t)
    charge(path.name)
    return {c: UnitRanking.from_scores(layer, c, "ace", drop[:, labels.index(c)])
            for c in args.concepts}


def opt_rankings(gen: Any, seg: Any, args: argparse.Namespace, layer: str, cache: Path
                 ) -> dict[str, Any]:
    from gandissect.intervention.ranking import UnitRanking, optimize_alpha

    out = {}
    for c in args.concepts:
        path = cache / (f"opt2_{layer}_{c}_n{args.opt_samples}_s{args.seed}_t{args.opt_steps}"
                        f"_l{args.opt_l1:g}_b{args.opt_batch}.json")
        if path.exists():
            d = json.loads(path.read_text())
            out[c] = UnitRanking(layer, c, "optimized", tuple(d["order"]),
                                 np.asarray(d["scores"]))
            charge(path.name)
            continue
        t = time.time()
        r = optimize_alpha(gen, seg, c, layer, samples=args.opt_samples, seed=args.seed,
                           steps=args.opt_steps, l1=args.opt_l1, batch_size=args.opt_batch)
        log(f"{layer}: optimised alpha for {c} in {time.time() - t:.0f}s "
            f"({int((r.scores > 0.5).sum())} units with alpha > 0.5)")
        path.write_text(json.dumps({"order": list(r.order), "scores": r.scores.tolist()}))
        charge(path.name, time.time() - t)
        out[c] = r
    return out


#: k at which the best ranking is chosen (on the ranking samples) and the verdict is made.
SELECT_K = 20


def random_orders(n_units: int, draws: int, seed: int) -> list[list[int]]:
    """``draws`` random permutations of the units (local RNG); top-k = the first k (nested)."""
    return [np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, d, 0x5EED])))
            .permutation(n_units).tolist() for d in range(draws)]


def removal(before: np.ndarray, after: np.ndarray) -> tuple[float, float, float, float]:
    """Relative removal ``1 - mean(after)/mean(before)`` with its 95% CI, and mean(before)."""
    from gandissect.intervention.causal import EffectStats

    e = EffectStats.from_arrays([0], before, after)
    return -e.relative, -e.relative_ci95[1], -e.relative_ci95[0], e.before


def study_layer(gen: Any, seg: Any, args: argparse.Namespace, layer: str, cache: Path,
                client: Any = None) -> list[dict[str, Any]]:
    """Rank, ablate and tabulate one layer; returns one row per (concept, ranking, k). With a
    Dask ``client`` the dissection, the single-unit ablations and the unit sets' ablations
    run as tasks on its cluster (the same numbers; the optimised alphas stay here)."""
    from gandissect.intervention.edit import layer_shape

    n_units, _, _ = layer_shape(gen, layer)
    ks = [k for k in args.ks if k <= n_units]
    rankings: dict[str, dict[str, Any]] = {}
    if "iou" in args.rankings:
        rankings["iou"] = iou_rankings(gen, seg, args, layer, cache, client)
    if "ace" in args.rankings:
        rankings["ace"] = ace_rankings(gen, seg, args, layer, cache, client)
    if "optimized" in args.rankings:
        rankings["optimized"] = opt_rankings(gen, seg, args, layer, cache)
    rand = random_orders(n_units, args.random_draws, args.eval_seed)
    sets = [r[c].top(k) for r in rankings.values() for c in args.concepts for k in ks]
    sets += [order[:k] for order in rand for k in ks]
    ec = EffectCache(cache / f"effects_{layer}_n{args.eval_samples}_s{args.eval_seed}.npz")
    measure_sets(gen, seg, layer, sets, ec, args.eval_samples, args.eval_seed, args.batch_size,
                 client=client)
    assert ec.before is not None
    # choosing the best ranking must not look at the evaluation samples: its top-k sets at the
    # verdict's k are ablated on ranking-seed samples, and that removal decides
    sel_k = min(SELECT_K, n_units)
    sc = EffectCache(cache / f"select_{layer}_n{args.select_samples}_s{args.seed}.npz")
    measure_sets(gen, seg, layer, [r[c].top(sel_k) for r in rankings.values()
                                   for c in args.concepts], sc, args.select_samples, args.seed,
                 args.batch_size, client=client)
    assert sc.before is not None
    labels = list(seg.labels)
    rows = []
    for c in args.concepts:
        j = labels.index(c)
        b = ec.before[:, j]
        for k in ks:
            rnd = [removal(b, ec.after[key_of(o[:k])][:, j])[0] for o in rand]
            rmean = float(np.mean(rnd))
            for name, r in rankings.items():
                units = r[c].top(k)
                rem, lo, hi, mb = removal(b, ec.after[key_of(units)][:, j])
                ratio = rem / rmean if rmean > 0 else math.inf
                sel = removal(sc.before[:, j], sc.after[key_of(r[c].top(sel_k))][:, j])[0]
                rows.append({"layer": layer, "concept": c, "ranking": name, "k": k,
                             "select_removal": sel, "select_samples": args.select_samples,
                             "units": units, "relative_removal": rem, "ci95": [lo, hi],
                             "random_removal": rmean, "random_removal_draws": rnd,
                             "ratio": ratio, "before": mb, "eval_samples": len(b),
                             "eval_seed": args.eval_seed, "rank_seed": args.seed})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toyworld")
    p.add_argument("--segmenter", default="toyworld")
    p.add_argument("--layer", default="layer4", help="layer or comma-separated layers")
    p.add_argument("--concepts", default="tree,sky,grass,mountain,road,cloud")
    p.add_argument("--rankings", default="iou,ace,optimized")
    p.add_argument("--ks", default="1,2,5,10,20,40")
    p.add_argument("--seed", type=int, default=0, help="seed of the ranking samples")
    p.add_argument("--eval-seed", type=int, default=None, help="seed of the evaluation samples "
                   "(default --seed + 1; must differ from --seed)")
    p.add_argument("--samples", dest="eval_samples", type=int, default=200,
                   help="evaluation samples per ablation")
    p.add_argument("--dissect-samples", type=int, default=500)
    p.add_argument("--ace-samples", type=int, default=32)
    p.add_argument("--opt-samples", type=int, default=64)
    p.add_argument("--opt-steps", type=int, default=40)
    p.add_argument("--opt-batch", type=int, default=8)
    p.add_argument("--opt-l1", type=float, default=0.01)
    p.add_argument("--random-draws", type=int, default=5)
    p.add_argument("--select-samples", type=int, default=64,
                   help="ranking-seed samples on which the best ranking is chosen")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cluster", metavar="local:N", default=None,
                       help="run the dissection and the ablations as tasks on a Dask cluster of "
                            "N worker processes started for the run (pip install "
                            "'gandissect[dask]'); the same numbers as one process")
    where.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="the same on the running Dask cluster whose scheduler is at ADDRESS "
                            "(tcp://HOST:PORT)")
    p.add_argument("--out", default="results/causal_table")
    p.add_argument("--docs", default=None,
                   help="also copy the table .md and the per-layer plot grids here")
    args = p.parse_args(argv)
    args.layers, args.concepts = csv(args.layer), csv(args.concepts)
    args.rankings, args.ks = csv(args.rankings), sorted(set(csv(args.ks, int)))
    args.eval_seed = args.seed + 1 if args.eval_seed is None else args.eval_seed
    bad = set(args.rankings) - {"iou", "ace", "optimized"}
    if bad or not args.rankings:
        p.error(f"--rankings takes iou, ace, optimized; got {args.rankings}")
    if args.eval_seed == args.seed:
        p.error("--eval-seed must differ from --seed (effects on the ranking samples overfit)")
    if not args.ks or args.ks[0] < 1:
        p.error(f"--ks must be positive unit counts, got {args.ks}")
    if args.cluster is not None:
        from gandissect.dissection.cluster import parse_cluster, require_distributed

        try:
            parse_cluster(args.cluster)
        except ValueError as e:
            p.error(str(e))
        require_distributed()
    torch.set_num_threads(max(1, args.threads))

    import models
    import segmenters

    gen = models.load(args.model)
    seg = segmenters.load(args.segmenter)
    seg.batch_size = args.batch_size
    for c in args.concepts:
        seg.label_index(c)  # unknown concept -> clear error now, not after an hour
    fp = fingerprint(gen, seg)
    out = Path(args.out)
    cache = out / "cache" / f"{args.model}-{args.segmenter}-{fp}"
    cache.mkdir(parents=True, exist_ok=True)
    log(f"weights {fp}; cache {cache}")
    global LEDGER
    LEDGER = Ledger(cache)
    rows: list[dict[str, Any]] = []
    context: Any = contextlib.nullcontext(None)
    if args.cluster is not None or args.scheduler is not None:
        from gandissect.dissection.cluster import dask_client

        context = dask_client(args.cluster, args.scheduler)
    with context as client:
        for layer in args.layers:
            rows += study_layer(gen, seg, args, layer, cache, client)
    plots, grids = [], []
    for layer in args.layers:
        names, grid = save_plots(rows, layer, args.concepts, out)
        plots += names
        grids.append(grid)
    cmd = "python benchmarks/causal_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    passing = []
    for layer in args.layers:
        ok = {v["concept"] for v in verdicts(rows) if v["layer"] == layer and v["pass"]}
        if "tree" in ok and len(ok - {"tree"}) >= 2:
            passing.append(f"{layer} ({', '.join(c for c in args.concepts if c in ok)})")
    meta = {"fingerprint": fp, "command": cmd, "seconds": time.time() - T0, "git": git_head(),
            "compute_seconds": LEDGER.total(),
            "layers_passing": passing,
            "args": {k: v for k, v in vars(args).items()}}
    write_markdown(rows, args, meta, grids, out / "causal_table.md")
    (out / "causal_table.json").write_text(json.dumps(
        strict_json({"meta": meta, "verdicts": verdicts(rows), "rows": rows}), indent=1))
    if args.docs:
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        for name in ["causal_table.md", *grids]:
            shutil.copy(out / name, docs / name)
    for v in verdicts(rows):
        print(f"{v['layer']} {v['concept']:9s} best={v['ranking']:9s} k=20 removal "
              f"{v['relative_removal']:6.1%} random {v['random_removal']:6.1%} ratio "
              f"{fmt_ratio(v['ratio'])} {'PASS' if v['pass'] else 'fail'}")
    log(f"wrote {out / 'causal_table.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
