"""Spatial insertion: where in the image can a unit set make a concept appear?

:func:`insertion_heatmap` inserts ``units`` inside a small square placed at each location of a
grid over the layer, and measures the fraction of the square's pixels (at segmentation
resolution) that carry the concept afterwards - the context experiment of the GAN dissection
paper (doors appear on walls, not in the sky).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.base import Generator
from segmenters.base import Segmenter

from .causal import UnitStatistics, measure, region_at, unit_statistics
from .edit import Edit, layer_shape


def square_masks(h: int, w: int, size: int, stride: int) -> tuple[torch.Tensor, list[int],
                                                                 list[int]]:
    """Masks ``[L, h, w]`` of a ``size`` x ``size`` square at rows ``ys`` x columns ``xs``
    (top-left corners every ``stride`` cells, the last flush with the border); returns
    ``(masks, ys, xs)`` with ``L = len(ys) * len(xs)`` in row-major order."""
    if not 1 <= size <= min(h, w):
        raise ValueError(f"square size must be in 1..{min(h, w)} (the layer is {h}x{w}), "
                         f"got {size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")

    def corners(n: int) -> list[int]:
        out = list(range(0, n - size + 1, stride))
        return out if out[-1] == n - size else out + [n - size]

    ys, xs = corners(h), corners(w)
    masks = torch.zeros(len(ys) * len(xs), h, w)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            masks[i * len(xs) + j, y:y + size, x:x + size] = 1.0
    return masks, ys, xs


@dataclass(frozen=True, eq=False)
class InsertionHeatmap:
    """``success[i, j]``: mean (over samples) fraction of the square at ``(ys[i], xs[j])``
    carrying the concept after insertion; ``before[i, j]`` the same without insertion."""

    concept: str
    layer: str
    units: tuple[int, ...]
    size: int
    ys: list[int]
    xs: list[int]
    samples: int
    seed: int
    success: np.ndarray = field(repr=False)
    before: np.ndarray = field(repr=False)

    @property
    def gain(self) -> np.ndarray:
        """``success - before``: how much concept the insertion added at each location."""
        return self.success - self.before

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"concept": self.concept, "layer": self.layer, "units": list(self.units),
                "size": self.size, "ys": self.ys, "xs": self.xs, "samples": self.samples,
                "seed": self.seed, "success": self.success.round(6).tolist(),
                "before": self.before.round(6).tolist()}


def insertion_heatmap(generator: Generator, segmenter: Segmenter, concept: str,
                      units: Sequence[int], layer: str, samples: int = 16, seed: int = 0,
                      size: int = 4, stride: int | None = None,
                      replacement: float | torch.Tensor | None = None,
                      stats: UnitStatistics | None = None, batch_size: int = 16
                      ) -> InsertionHeatmap:
    """Insert ``units`` (replacement: ``replacement``, else the ``stats`` / freshly computed
    0.99 quantiles) inside a ``size``-cell square at every grid location (``stride`` defaults
    to ``size``) and measure concept pixels inside the square. Cost: ``samples x (1 + L)``
    forward passes for ``L`` locations."""
    segmenter.label_index(concept)
    n_units, h, w = layer_shape(generator, layer)
    us = [int(u) for u in units]
    Edit(layer, us).check_layer(n_units, h, w)
    masks, ys, xs = square_masks(h, w, size, size if stride is None else stride)
    if replacement is None:
        if stats is None:
            stats = unit_statistics(generator, layer, samples, seed, batch_size=batch_size)
        replacement = stats.values(us)
    seg_size = segmenter.output_size(generator.resolution, generator.resolution)
    sets = [[Edit(layer, us, replacement=replacement, mask=m)] for m in masks]
    regions = [region_at(m, seg_size) for m in masks]
    before, after = measure(generator, segmenter, concept, sets, samples, seed, regions,
                            batch_size)
    shape = (len(ys), len(xs))
    return InsertionHeatmap(concept, layer, tuple(us), size, ys, xs, samples, seed,
                            np.nanmean(after, axis=1).reshape(shape),
                            np.nanmean(before, axis=1).reshape(shape))


def plot_heatmap(heatmap: InsertionHeatmap, path: str | Path, title: str = "") -> Path:
    """Draw ``heatmap.success`` over the layer grid as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4, 3.5))
    try:
        im = ax.imshow(heatmap.success, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(heatmap.xs)), [str(x) for x in heatmap.xs], fontsize=6)
        ax.set_yticks(range(len(heatmap.ys)), [str(y) for y in heatmap.ys], fontsize=6)
        ax.set_title(title or f"insert {heatmap.concept}: fraction inside the square")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
