"""Dissection reports: ``dissect.json``, plots (PNG) and one offline ``report.html``.

The HTML embeds every image as base64 (no external assets, no network): per unit its label,
IoU and its top images with the unit's thresholded region outlined and the rest dimmed; tables
sort by IoU or by concept with a few lines of inline JavaScript.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..common.hooks import Trace
from ..common.imaging import to_uint8
from .ceiling import unreachable_concepts
from .probe import ProbeModel
from .results import LayerResult, atomic_write_bytes
from .upsample import Upsampler

__all__ = ["dissect_json", "plot_layers", "render_unit_images", "write_report"]


def dissect_json(results: dict[str, LayerResult]) -> dict[str, Any]:
    """JSON-ready summary: per layer its settings, per-concept counts and one entry per unit."""
    out: dict[str, Any] = {"layers": {}}
    for name, r in results.items():
        counts: dict[str, int] = {}
        for lab, ok in zip(r.unit_labels, r.interpretable, strict=True):
            if ok:
                counts[lab] = counts.get(lab, 0) + 1
        out["layers"][name] = {
            "settings": r.meta, "units": r.units, "interpretable": int(r.interpretable.sum()),
            "interpretable_per_concept": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
            "unreachable_concepts": unreachable_concepts(r),
            "unit_results": r.summary()}
    return out


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _outline(img: np.ndarray, region: np.ndarray, scale: int) -> np.ndarray:
    """Dim ``img [H, W, 3]`` outside ``region [H, W]`` and draw the region's border in yellow,
    after upscaling both ``scale`` times (nearest)."""
    img = img.repeat(scale, 0).repeat(scale, 1).astype(np.float32)
    reg = region.repeat(scale, 0).repeat(scale, 1)
    out = np.where(reg[..., None], img, img * 0.3 + 20)
    pad = np.pad(reg, 1, mode="edge")
    interior = (pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
    out[reg & ~interior] = (255, 230, 0)
    return out.clip(0, 255).astype(np.uint8)


@torch.no_grad()
def render_unit_images(generator: Any, result: LayerResult, seed: int, units: Sequence[int],
                       per_unit: int = 4, scale: int = 2, batch_size: int = 32
                       ) -> dict[int, np.ndarray]:
    """Per unit, a strip (uint8 ``[H, W*per_unit, 3]``) of its top samples with the region where
    its activation, upsampled bilinearly to the image, exceeds its threshold outlined. For a
    :class:`ProbeModel` (a probe-set dissection) the samples are the probe set's images."""
    wanted = sorted({int(i) for u in units for i in result.topk_indices[u][:per_unit]})
    images: dict[int, np.ndarray] = {}
    acts: dict[int, torch.Tensor] = {}
    for s in range(0, len(wanted), batch_size):
        chunk = wanted[s:s + batch_size]
        z = torch.cat([generator.sample_latents(1, seed, i) for i in chunk])
        with Trace(generator, [result.layer], stop=isinstance(generator, ProbeModel)) as tr:
            x = generator(z)
        if isinstance(generator, ProbeModel):
            x = torch.cat([generator.probe.images(i, 1) for i in chunk]) * 2 - 1
        for k, i in enumerate(chunk):
            images[i] = to_uint8(x[k:k + 1])[0]
            acts[i] = tr[result.layer][k:k + 1].float()
    strips: dict[int, np.ndarray] = {}
    for u in units:
        tiles = []
        t = result.unit_threshold(u)
        for i in result.topk_indices[u][:per_unit]:
            img = images[int(i)]
            a = acts[int(i)][:, u:u + 1]
            up = Upsampler((a.shape[2], a.shape[3]), (img.shape[0], img.shape[1]))
            region = (up.dense(a)[0, 0].double() > t).numpy()
            tiles.append(_outline(img, region, scale))
        if tiles:
            sep = np.full((tiles[0].shape[0], 2, 3), 255, dtype=np.uint8)
            strips[u] = np.concatenate(sum(([t_, sep] for t_ in tiles), [])[:-1], axis=1)
    return strips


def plot_layers(results: dict[str, LayerResult], folder: Path) -> dict[str, Path]:
    """Write the PNG plots; returns name -> path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, r in results.items():
        stem = name.replace("/", "_")
        counts = {lab: 0 for lab in r.labels}
        for lab, ok in zip(r.unit_labels, r.interpretable, strict=True):
            counts[lab] += int(ok)
        order = sorted(counts, key=lambda c: -counts[c])
        fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(order)), 3))
        ax.bar(range(len(order)), [counts[c] for c in order], color="tab:blue")
        ax.set_xticks(range(len(order)), order, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("interpretable units")
        ax.set_title(f"{name}: units per concept (IoU > {r.iou_threshold:g})")
        fig.tight_layout()
        paths[f"concepts_{stem}"] = folder / f"concepts_{stem}.png"
        fig.savefig(paths[f"concepts_{stem}"], dpi=90)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(4, 3))
        ax.hist(r.best_iou, bins=30, color="tab:gray")
        ax.axvline(r.iou_threshold, color="tab:red", linestyle="--", label="threshold")
        ax.set_xlabel("best IoU per unit")
        ax.set_ylabel("units")
        ax.set_title(f"{name}: IoU histogram")
        ax.legend()
        fig.tight_layout()
        paths[f"iou_{stem}"] = folder / f"iou_{stem}.png"
        fig.savefig(paths[f"iou_{stem}"], dpi=90)
        plt.close(fig)

    layers = list(results)
    cats = sorted({c for r in results.values() for c in r.categories})
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(layers)), 3))
    bottom = np.zeros(len(layers))
    for cat in cats:
        vals = np.array([sum(1 for c, ok in zip(r.unit_categories, r.interpretable, strict=True)
                             if ok and c == cat) / max(r.units, 1) for r in results.values()])
        ax.bar(layers, vals, bottom=bottom, label=cat)
        bottom += vals
    ax.set_ylabel("fraction of units interpretable")
    ax.set_title("comparison across layers")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths["layers"] = folder / "layers.png"
    fig.savefig(paths["layers"], dpi=90)
    plt.close(fig)
    return paths


_SCRIPT = """
function sortTable(id, key) {
  const body = document.getElementById(id).tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => key === 'iou'
    ? parseFloat(b.dataset.iou) - parseFloat(a.dataset.iou)
    : a.dataset.label.localeCompare(b.dataset.label) ||
      parseFloat(b.dataset.iou) - parseFloat(a.dataset.iou));
  rows.forEach(r => body.appendChild(r));
}
"""


def write_report(results: dict[str, LayerResult], folder: str | Path, generator: Any = None,
                 seed: int | None = None, per_unit: int = 4, max_units: int | None = None
                 ) -> Path:
    """Write ``dissect.json``, plots and ``report.html`` into ``folder``; returns the HTML path.

    Unit images need ``generator`` (and ``seed``, default: the one recorded in the results);
    without it the report has tables and plots only. ``max_units`` limits the units shown per
    layer (highest IoU first).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "dissect.json",
                       json.dumps(dissect_json(results), indent=1).encode())
    plots = plot_layers(results, folder)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>gandissect report</title>",
             "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
             "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}"
             "tr.dim{color:#999}img{image-rendering:pixelated}</style>",
             f"<script>{_SCRIPT}</script></head><body><h1>Dissection report</h1>",
             f"<img src='{_b64(plots['layers'].read_bytes())}' alt='layers'>"]
    for t, (name, r) in enumerate(results.items()):
        stem = name.replace("/", "_")
        order = np.argsort(-r.best_iou, kind="stable")
        shown = [int(u) for u in (order if max_units is None else order[:max_units])]
        strips: dict[int, np.ndarray] = {}
        if generator is not None:
            strips = render_unit_images(generator, r, int(seed if seed is not None
                                                          else r.meta.get("seed", 0)),
                                        shown, per_unit)
        mode = r.meta.get("threshold", "quantile")
        parts.append(f"<h2>Layer {html.escape(name)}</h2><p>{r.units} units, "
                     f"{int(r.interpretable.sum())} interpretable (IoU &gt; {r.iou_threshold:g}); "
                     f"threshold: {html.escape(str(mode))}, q = {r.meta.get('quantile')}, "
                     f"{r.meta.get('samples')} samples, seed {r.meta.get('seed')}.</p>")
        unreachable = unreachable_concepts(r)
        if unreachable:
            listed = ", ".join(f"{html.escape(k)} (at most {v:.3f})" for k, v in
                               unreachable.items())
            parts.append(f"<p><b>Cannot be labelled at this q:</b> {listed}. These concepts "
                         "cover so many pixels that a unit on for the top q of pixels cannot "
                         f"reach IoU &gt; {r.iou_threshold:g} with them, however well it draws "
                         "them (use <code>--threshold iqr</code> to score them).</p>")
        for key in (f"concepts_{stem}", f"iou_{stem}"):
            parts.append(f"<img src='{_b64(plots[key].read_bytes())}' alt='{key}'>")
        tid = f"units{t}"
        parts.append(f"<p>sort: <button onclick=\"sortTable('{tid}','iou')\">by IoU</button> "
                     f"<button onclick=\"sortTable('{tid}','label')\">by concept</button></p>"
                     f"<table id='{tid}'><thead><tr><th>unit</th><th>label</th><th>category</th>"
                     "<th>IoU</th><th>top images</th></tr></thead><tbody>")
        labels, cats, best = r.unit_labels, r.unit_categories, r.best_iou
        for u in shown:
            img = (f"<img src='{_b64(_png(strips[u]))}' alt='unit {u}'>" if u in strips else "")
            cls = "" if r.interpretable[u] else " class='dim'"
            parts.append(f"<tr{cls} data-iou='{best[u]:.6f}' data-label='{html.escape(labels[u])}'>"
                         f"<td>{u}</td><td>{html.escape(labels[u])}</td>"
                         f"<td>{html.escape(cats[u])}</td><td>{best[u]:.3f}</td><td>{img}</td></tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    path = folder / "report.html"
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path
