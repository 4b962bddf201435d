"""Benchmark the paint brushes in context: does drawing a concept in a box make it appear there?

    python benchmarks/paint_context.py [--model toyworld] [--layer layer4] [--n 50] \
        [--tree-size 16] [--door-size 8] [--strength 20] [--need 0.3] [--out results/paint_context]

The GAN dissection paper's context experiment, done with the app's own brushes (the shipped or
cached :class:`~gandissect.paint.brushes.BrushSet` of ``--layer``, the ``--strength`` best
units, the painter's insertion values). Each case draws ``concept`` in a square of image pixels
(``--tree-size`` for trees, ``--door-size`` for doors) placed on ``context``: generator samples
of ``--seed`` are scanned in order, and the first ``--n`` that hold a square covered by
``context`` (and not by ``concept``) for at least ``--context`` of its pixels, with under 5%
``concept`` already there, are used (the most covered square, scanned every 2 pixels). A draw
*works* when the segmenter then sees ``concept`` in at least ``--need`` of the square. The cases
are the issue's bars: tree on grass (works in >= 80% of images), door on wall (>= 50%) and door
in sky (<= 10%: doors belong on walls). A rendered door is about 3 x 3-13 pixels of a 64-pixel
scene and a wall rarely holds a 16-pixel square, so doors are drawn in 8-pixel squares (a
door's size). Prints the success rate and the mean concept fraction in the square before and
after, with ``os.getloadavg()`` beside them; ``--out`` writes ``results.json`` and a figure of
the first edits of each case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gandissect.paint.painter import Painter, open_painter  # noqa: E402

#: (concept drawn, context it is drawn on, the issue's bar as (">=" or "<=", rate)).
CASES: tuple[tuple[str, str, str, float], ...] = (
    ("tree", "grass", ">=", 0.8), ("door", "wall", ">=", 0.5), ("door", "sky", "<=", 0.1))


def _load() -> str:
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def best_square(context: np.ndarray, size: int, step: int = 2) -> tuple[float, int, int]:
    """``(coverage, y, x)`` of the ``size`` square (top-left every ``step`` pixels, the last
    flush with the border) most covered by the bool mask ``context`` ``[H, W]``."""
    h, w = context.shape
    if not 1 <= size <= min(h, w):
        raise ValueError(f"square size must be in 1..{min(h, w)}, got {size}")
    cover = F.avg_pool2d(torch.from_numpy(context.astype(np.float32))[None, None], size, 1)[0, 0]
    ys = sorted(set(range(0, h - size + 1, step)) | {h - size})
    xs = sorted(set(range(0, w - size + 1, step)) | {w - size})
    grid = cover[ys][:, xs]
    i = int(torch.argmax(grid))
    return float(grid.flatten()[i]), ys[i // len(xs)], xs[i % len(xs)]


def run_case(painter: Painter, seg: Any, concept: str, context: str, n: int, size: int,
             strength: int, need: float, min_context: float, seed: int, scan: int,
             batch: int = 32) -> dict[str, Any]:
    """Draw ``concept`` on ``context`` in the first ``n`` samples (indices from ``seed``) that
    hold a suitable square; scans at most ``scan`` samples. Per-image fractions in the result."""
    ci, xi = seg.label_index(concept), seg.label_index(context)
    used: list[dict[str, Any]] = []
    start = seed
    while len(used) < n and start < seed + scan:
        seeds = list(range(start, min(start + batch, seed + scan)))
        start += len(seeds)
        masks = seg.segment(painter.render_batch([(s, ()) for s in seeds])).cpu().numpy()
        picks: list[tuple[Any, ...]] = []
        for s, m in zip(seeds, masks, strict=True):
            cov, y, x = best_square(m[xi] & ~m[ci], size)
            box = np.zeros(m.shape[1:], dtype=bool)
            box[y:y + size, x:x + size] = True
            if cov >= min_context and m[ci][box].mean() < 0.05 and len(used) + len(picks) < n:
                stroke = painter.stroke(concept, "draw", box, strength=strength)
                picks.append((s, y, x, cov, box, float(m[ci][box].mean()), stroke))
        if not picks:
            continue
        after = seg.segment(painter.render_batch([(p[0], (p[6],)) for p in picks])).cpu().numpy()
        for p, a in zip(picks, after, strict=True):
            s, y, x, cov, box, before, _ = p
            frac = float(a[ci][box].mean())
            used.append({"seed": s, "y": y, "x": x, "context": round(cov, 4),
                         "before": round(before, 4), "after": round(frac, 4),
                         "works": frac >= need})
    return {"concept": concept, "context": context, "images": len(used),
            "scanned": start - seed,
            "success": float(np.mean([u["works"] for u in used])) if used else float("nan"),
            "before": float(np.mean([u["before"] for u in used])) if used else float("nan"),
            "after": float(np.mean([u["after"] for u in used])) if used else float("nan"),
            "per_image": used}


def figure(painter: Painter, results: list[dict[str, Any]], strength: int, path: Path,
           columns: int = 6) -> Path:
    """Rows: per case, the first ``columns`` images before (top) and after (bottom) the draw,
    with the square outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2 * len(results), columns, figsize=(columns * 1.3,
                                                                  len(results) * 2.8))
    for r, res in enumerate(results):
        for c in range(columns):
            for k in range(2):
                ax = axes[2 * r + k, c]
                ax.axis("off")
                if c >= len(res["per_image"]):
                    continue
                item, size = res["per_image"][c], res["size"]
                box = np.zeros((painter.resolution,) * 2, dtype=bool)
                box[item["y"]:item["y"] + size, item["x"]:item["x"] + size] = True
                strokes = (painter.stroke(res["concept"], "draw", box, strength=strength),) \
                    if k else ()
                ax.imshow(painter.render(item["seed"], strokes))
                ax.add_patch(plt.Rectangle((item["x"] - 0.5, item["y"] - 0.5), size, size,
                                           fill=False, color="red", lw=0.8))
                if c == 0:
                    ax.set_title(f"{'draw' if k else 'before'} {res['concept']} on "
                                 f"{res['context']}", fontsize=7, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="toyworld")
    ap.add_argument("--segmenter", default="toyworld")
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--n", type=int, default=50, help="images per case")
    ap.add_argument("--tree-size", type=int, default=16, help="tree square side (image pixels)")
    ap.add_argument("--door-size", type=int, default=8, help="door square side (image pixels)")
    ap.add_argument("--strength", type=int, default=20, help="units per stroke")
    ap.add_argument("--need", type=float, default=0.3,
                    help="a draw works when the concept covers this share of the square")
    ap.add_argument("--context", type=float, default=0.75,
                    help="least share of the square covered by the context concept")
    ap.add_argument("--seed", type=int, default=1000, help="first sample index scanned")
    ap.add_argument("--scan", type=int, default=2000, help="most samples scanned per case")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        painter = open_painter(args.model, args.segmenter, args.layer)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seg = painter.segmenter
    results = []
    for concept, context, op, bar in CASES:
        if concept not in painter.concepts:
            print(f"{concept} on {context}: no {concept} brush at {args.layer}")
            continue
        size = args.tree_size if concept == "tree" else args.door_size
        res = run_case(painter, seg, concept, context, args.n, size, args.strength,
                       args.need, args.context, args.seed, args.scan)
        met = (res["success"] >= bar) if op == ">=" else (res["success"] <= bar)
        res["bar"] = f"{op} {bar:.0%}"
        res["size"] = size
        res["met"] = bool(met)
        results.append(res)
        print(f"draw {concept:5s} on {context:5s} ({size}px square): works in "
              f"{res['success']:.0%} of {res['images']} images ({res['scanned']} scanned); "
              f"{concept} in the square "
              f"{res['before']:.1%} -> {res['after']:.1%}; bar {op} {bar:.0%}: "
              f"{'met' if met else 'NOT met'}   [{_load()}]")
    print(f"{time.perf_counter() - t0:.0f} s; model {args.model}, layer {args.layer}, "
          f"strength {args.strength}, need {args.need:.0%}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(
            {"settings": {k: str(v) for k, v in vars(args).items()}, "cases": results},
            indent=1))
        figure(painter, results, args.strength, args.out / "paint_context.png")
        print(f"wrote {args.out}/results.json and paint_context.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
