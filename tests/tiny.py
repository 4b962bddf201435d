"""Tiny models shared by the tests (importable as ``tiny``: this folder is on ``sys.path``
because it holds ``conftest.py``): a generator with two feature-map layers, a rule-based
segmenter, the exception the tests raise to simulate a killed run, checks of results
(against brute force; two runs bit-identical), and a loader for the scripts in benchmarks/."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Generator
from segmenters.base import Segmenter


class TinyGenerator(Generator):
    """8-dim latent -> layer "a" [8, 4, 4] -> layer "b" [6, 8, 8] -> 16x16 image; optionally
    NaN activations for the latent equal to ``nan_latent``."""

    resolution = 16
    latent_shape = (8,)

    def __init__(self, seed: int = 0, nan_latent: torch.Tensor | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(8, 8 * 16)
        self.a = nn.ReLU()
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.flat = nn.Flatten()
        self.rgb = nn.Conv2d(6, 3, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.nan_latent = nan_latent

    @property
    def layer_names(self) -> list[str]:
        return ["a", "b", "flat"]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.check_latents(z)
        x = self.a(self.fc(z).view(-1, 8, 4, 4))
        if self.nan_latent is not None:
            hit = (z == self.nan_latent).all(1)
            x = torch.where(hit[:, None, None, None], float("nan"), x)
        x = self.b(F.interpolate(x, scale_factor=2.0))
        self.flat(x[:, :1])
        return torch.tanh(self.rgb(F.interpolate(x, scale_factor=2.0)))


class CountingGenerator(TinyGenerator):
    """:class:`TinyGenerator` (same weights for the same seed) that appends one line per
    forward call, ``<pid> <first latent's sum>``, to the file ``log`` (also from worker
    processes on this machine)."""

    def __init__(self, log: str, seed: int = 0) -> None:
        super().__init__(seed)
        self.log = log

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        import os

        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {float(z[0].sum()):.6f}\n")
        return super().forward(z)


class TinySegmenter(Segmenter):
    """'red' R > 0.2, 'dark' mean < -0.3, 'never' (empty), 'blue' B > 0.3 but only on images
    whose mean green is positive (so category 'color' is absent from some images)."""

    labels = ["red", "dark", "never", "blue"]
    categories = ["object", "object", "material", "color"]
    size: tuple[int, int] | None = None

    def _segment_batch(self, images: torch.Tensor) -> torch.Tensor:
        red = images[:, 0] > 0.2
        dark = images.mean(1) < -0.3
        gate = (images[:, 1].mean((1, 2)) > 0)[:, None, None]
        blue = (images[:, 2] > 0.3) & gate
        out = torch.stack([red, dark, torch.zeros_like(red), blue], 1)
        if self.size is not None:
            out = F.interpolate(out.float(), size=self.size, mode="nearest") > 0.5
        return out

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return self.size or (height, width)


class Interrupt(Exception):
    """Raised from a callback to simulate a run killed at that point."""


def check_against_brute_force(gen: Generator, seg: Segmenter, layer: str, result: object,
                              samples: int, seed: int, quantile: float = 0.01) -> None:
    """Assert that a dissection ``result`` of ``layer`` over ``samples`` latents of ``seed``
    equals a brute-force computation (every activation upsampled bilinearly to the masks' size,
    the exact top-``quantile`` threshold, IoU by counting) to 1e-3, and is not vacuous."""
    import numpy as np

    from gandissect.common.hooks import Trace
    from gandissect.dissection.engine import brute_force

    with torch.no_grad(), Trace(gen, [layer]) as tr:
        images = gen(gen.sample_latents(samples, seed))
    masks = seg.segment(images)
    up = F.interpolate(tr[layer].float(), size=tuple(masks.shape[2:]), mode="bilinear",
                       align_corners=False)
    _, iou_ref = brute_force(up, masks, quantile)
    iou = result.iou
    assert iou.shape == iou_ref.shape
    assert np.abs(iou - iou_ref).max() <= 1e-3, np.abs(iou - iou_ref).max()
    assert iou_ref.max() > 0.01  # some unit overlaps some concept: the check is not vacuous
    assert result.concept_pixels.tolist() == masks.sum((0, 2, 3)).tolist()


#: the result arrays two runs of the same dissection must agree on bit for bit
RESULT_KEYS = ("thresholds", "iou", "intersection", "above", "concept_pixels", "frac_above",
               "rank_error", "iqr", "topk_indices", "topk_values")


def assert_identical(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two dissection results (layer -> LayerResult) are bit-identical: same layers, and every
    array of :data:`RESULT_KEYS` equal in dtype and value (``np.array_equal``)."""
    import numpy as np

    assert a.keys() == b.keys()
    for layer in a:
        for key in RESULT_KEYS:
            x, y = getattr(a[layer], key), getattr(b[layer], key)
            assert x.dtype == y.dtype and np.array_equal(x, y), (layer, key)


def load_benchmark(script: str, name: str | None = None) -> ModuleType:
    """``benchmarks/<script>.py`` imported as a fresh module (named ``name``, default
    ``script``): benchmarks are scripts, not a package."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(name or script, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
