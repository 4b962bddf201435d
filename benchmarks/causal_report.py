"""The causal table's verdict and its report (used by ``benchmarks/causal_table.py``): the pass
rule at k = 20, the Markdown note and the effect-vs-k plots."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

#: The bar at k = 20: removal minus random removal, in fractions.
MARGIN = 0.40


def random_ci(draws: list[float]) -> tuple[float, float]:
    """95% CI of the mean removal of random unit sets (normal approximation over draws).

    >>> [round(x, 3) for x in random_ci([0.1, 0.1, 0.1])]
    [0.1, 0.1]
    """
    x = np.asarray(draws, dtype=np.float64)
    half = 1.96 * float(x.std(ddof=1)) / math.sqrt(len(x)) if len(x) > 1 else math.inf
    return float(x.mean()) - half, float(x.mean()) + half


def passes(row: dict[str, Any]) -> bool:
    """The k = 20 bar: removal - random >= MARGIN and CI(best) above CI(random).

    >>> row = {"relative_removal": 0.5, "ci95": [0.45, 0.55], "random_removal": -0.02,
    ...        "random_removal_draws": [-0.6, 0.5, 0.04]}
    >>> passes(row)  # 52 points above random, but random's CI reaches 0.6: fails
    False
    >>> passes({**row, "random_removal_draws": [-0.03, -0.01, -0.02]})
    True
    """
    lo_best = row["ci95"][0]
    hi_random = random_ci(row["random_removal_draws"])[1]
    return bool(row["relative_removal"] - row["random_removal"] >= MARGIN and lo_best > hi_random)


def verdicts(rows: list[dict[str, Any]], k: int = 20) -> list[dict[str, Any]]:
    """Per (layer, concept): the ranking chosen on the ranking samples (``select_removal``, the
    top-``k`` set's removal there), its evaluation at ``k`` and whether it meets the bar."""
    out = []
    for lc in dict.fromkeys((r["layer"], r["concept"]) for r in rows):
        at = [r for r in rows if (r["layer"], r["concept"]) == lc and r["k"] == k]
        if not at:
            continue
        best = max(at, key=lambda r: r["select_removal"])
        out.append({**best, "random_ci95": list(random_ci(best["random_removal_draws"])),
                    "pass": passes(best)})
    return out


def fmt_ratio(x: float) -> str:
    return "n/a (random <= 0)" if math.isinf(x) else f"{x:.1f}x"


def write_markdown(rows: list[dict[str, Any]], args: argparse.Namespace, meta: dict[str, Any],
                   plots: list[str], path: Path) -> None:
    """The note: the done-when verdict at k=20, then every (concept, ranking, k) row."""
    lines = ["# Causal table: ablating the best k units vs k random units", "",
             f"Model `{args.model}`, segmenter `{args.segmenter}` (hash of both weights: "
             f"`{meta['fingerprint']}`; code at git `{meta['git']}`). "
             f"Rankings measured on seed {args.seed} (dissection "
             f"{args.dissect_samples} samples, single-unit ACE {args.ace_samples}, optimised "
             f"alpha {args.opt_samples} samples x {args.opt_steps} steps, l1 {args.opt_l1:g}); "
             f"**effects measured on different samples: seed {args.eval_seed}, "
             f"{args.eval_samples} samples**. Removal = 1 - mean(concept pixel fraction after) "
             "/ mean(before), with a 95% CI over samples. Random = mean over "
             f"{args.random_draws} random unit sets of the same size (nested random orders). "
             f"Best = the ranking whose top-20 removes most on {args.select_samples} samples "
             f"of the *ranking* seed {args.seed} (never chosen on the evaluation samples). "
             "The CI is a normal approximation and can pass 100%. Ablating random units can "
             "*increase* a concept (negative removal: the distorted image shows more of it to "
             "the segmenter); the ratio is then undefined (n/a) and decides nothing. "
             f"**Pass** = removal - random >= {MARGIN:.0%} points and the lower end of the "
             "best's 95% CI above the upper end of random's 95% CI (over the random draws).",
             "",
             f"Command: `{meta['command']}` ({args.threads} torch thread(s)): "
             f"{meta['compute_seconds']:.0f} s of compute for the cached results it uses "
             f"(dissection, rankings, ablations), {meta['seconds']:.0f} s wall for this "
             "invocation (which reuses the cache).", "",
             f"**Layers meeting the bar for tree and >= 2 more concepts: "
             f"{', '.join(meta['layers_passing']) or 'none'}.**", "",
             f"## Verdict at k = 20 (removal - random >= {MARGIN:.0%} points, CIs apart)", "",
             "| layer | concept | pixel fraction | best ranking (removal on ranking seed) | "
             "removal [95% CI] | random [95% CI] (draws) | ratio | pass |",
             "|---|---|---|---|---|---|---|---|"]
    for v in verdicts(rows):
        draws = ", ".join(f"{x:.1%}" for x in v["random_removal_draws"])
        rlo, rhi = v["random_ci95"]
        lines.append(f"| {v['layer']} | {v['concept']} | {v['before']:.3f} | {v['ranking']} "
                     f"({v['select_removal']:.1%}) | "
                     f"{v['relative_removal']:.1%} [{v['ci95'][0]:.1%}, {v['ci95'][1]:.1%}] | "
                     f"{v['random_removal']:.1%} [{rlo:.1%}, {rhi:.1%}] ({draws}) | "
                     f"{fmt_ratio(v['ratio'])} | {'yes' if v['pass'] else 'no'} |")
    lines += ["", "## All rankings and k", "",
              "| layer | concept | ranking | k | removal [95% CI] | random | ratio |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['concept']} | {r['ranking']} | {r['k']} | "
                     f"{r['relative_removal']:.1%} [{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}] | "
                     f"{r['random_removal']:.1%} | {fmt_ratio(r['ratio'])} |")
    lines += ["", "## Effect vs k", ""] + [f"![{p}]({p})" for p in plots] + [""]
    path.write_text("\n".join(lines))


def draw(ax: Any, rows: list[dict[str, Any]], layer: str, concept: str) -> None:
    """Removal vs k for every ranking (95% CI bands) and random units (min-max band of draws)."""
    sel = [r for r in rows if r["layer"] == layer and r["concept"] == concept]
    for name in dict.fromkeys(r["ranking"] for r in sel):
        rs = [r for r in sel if r["ranking"] == name]
        ks = [r["k"] for r in rs]
        ax.plot(ks, [r["relative_removal"] for r in rs], "-o", ms=3, label=name)
        ax.fill_between(ks, [r["ci95"][0] for r in rs], [r["ci95"][1] for r in rs], alpha=0.2)
    rs = [r for r in sel if r["ranking"] == sel[0]["ranking"]]
    ks = [r["k"] for r in rs]
    ax.plot(ks, [r["random_removal"] for r in rs], "--o", ms=3, color="grey", label="random")
    ax.fill_between(ks, [min(r["random_removal_draws"]) for r in rs],
                    [max(r["random_removal_draws"]) for r in rs], color="grey", alpha=0.2)
    ax.axhline(0.5, color="k", lw=0.5, ls=":")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.05)
    ax.set_xlabel("units ablated (k)")
    ax.set_ylabel(f"{concept} pixels removed")
    ax.set_title(f"ablate {concept} @ {layer}", fontsize=10)


def save_plots(rows: list[dict[str, Any]], layer: str, concepts: list[str], out: Path
               ) -> tuple[list[str], str]:
    """One PNG per concept, and one grid PNG of all concepts of the layer; returns names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for c in concepts:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        try:
            draw(ax, rows, layer, c)
            ax.legend(fontsize=8)
            fig.tight_layout()
            names.append(f"effect_vs_k_{layer}_{c}.png")
            fig.savefig(out / names[-1], dpi=100)
        finally:
            plt.close(fig)
    cols = min(3, len(concepts))
    nrows = math.ceil(len(concepts) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False)
    try:
        for ax, c in zip(axes.ravel(), concepts, strict=False):
            draw(ax, rows, layer, c)
        for ax in axes.ravel()[len(concepts):]:
            ax.set_visible(False)
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        grid = f"effect_vs_k_{layer}.png"
        fig.savefig(out / grid, dpi=72)
    finally:
        plt.close(fig)
    from PIL import Image

    with Image.open(out / grid) as im:  # a 64-colour palette: ~3x smaller file for the docs
        small = im.convert("RGB").quantize(64)
    small.save(out / grid, optimize=True)
    return names, grid
