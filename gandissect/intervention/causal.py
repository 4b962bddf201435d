"""Causal effects of units on concepts: replacement values, ablation/insertion effects with CIs.

* :func:`unit_statistics` - per-unit values to insert: an exact high quantile of each unit's
  activations at the layer's resolution, and the unit's mean where a concept is present.
* :func:`causal_effect` - the average causal effect (ACE) of ablating or inserting a unit set on
  the fraction of concept pixels, with a 95% confidence interval, beside the same statistic for as
  many random units, on the same samples (latent ``i`` from ``(seed, i)``).

Definitions follow ``docs/architecture.md`` ("Ablation / insertion", "ACE").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from models.base import Generator
from segmenters.base import Segmenter

from ..common.hooks import Trace, check_feature_map
from .edit import Edit, intervene, layer_shape, resize_mask

Mode = Literal["ablate", "insert"]
#: z-value of a two-sided 95% normal interval.
Z95 = 1.959963984540054


def latent_batches(generator: Generator, samples: int, seed: int, batch_size: int
                   ) -> Iterator[torch.Tensor]:
    """Latents ``0 .. samples-1`` of ``seed`` in batches (latent ``i`` depends on ``(seed, i)``)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, samples, batch_size):
        yield generator.sample_latents(min(batch_size, samples - start), seed, start)


# ---------------------------------------------------------------------------------- statistics

class ExactQuantile:
    """Exact per-unit ``q`` quantile (linear interpolation, as ``torch.quantile``) of a stream
    of ``total`` values per unit, keeping only the ``~min(q, 1-q) * total`` most extreme values
    per unit in memory (a running top-k; no approximation)."""

    def __init__(self, q: float, total: int) -> None:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile q must lie in [0, 1], got {q}")
        if total < 1:
            raise ValueError(f"total must be >= 1, got {total}")
        self.q, self.total, self.seen = q, total, 0
        self._flip = q < 0.5  # keep the smallest values by keeping the largest of -x
        pos = (1.0 - q if self._flip else q) * (total - 1)
        self._lo = int(math.floor(pos))
        self._frac = pos - self._lo
        self.keep = total - self._lo  # largest values needed, down to ascending index lo
        self._top: torch.Tensor | None = None

    def add(self, values: torch.Tensor) -> None:
        """Add values ``[units, m]`` (any m; all batches together must give ``total``)."""
        v = values.detach().float()
        v = -v if self._flip else v
        self.seen += v.shape[1]
        if self.seen > self.total:
            raise ValueError(f"ExactQuantile got {self.seen} values per unit, expected "
                             f"{self.total}")
        cat = v if self._top is None else torch.cat([self._top, v], dim=1)
        k = min(self.keep, cat.shape[1])
        self._top = cat.topk(k, dim=1, sorted=False).values

    def result(self) -> torch.Tensor:
        """The per-unit quantile ``[units]``."""
        if self._top is None or self.seen != self.total:
            raise ValueError(f"ExactQuantile saw {self.seen} of {self.total} values per unit")
        desc = self._top.sort(dim=1, descending=True).values
        lo = desc[:, self.total - 1 - self._lo]
        hi = desc[:, max(self.total - 2 - self._lo, 0)]
        out = lo + self._frac * (hi - lo)
        return -out if self._flip else out


@dataclass(frozen=True, eq=False)
class UnitStatistics:
    """Per-unit activation statistics of one layer over ``samples`` latents of ``seed``.

    ``quantile[u]``: the ``q`` quantile of unit ``u`` over all cells of all samples (exact).
    ``concept_mean[u]``: the mean of unit ``u`` over cells where ``concept`` is present (area
    fraction of the segmentation > 0.5 in the cell), or ``None`` when no concept was given.
    """

    layer: str
    q: float
    samples: int
    seed: int
    quantile: torch.Tensor
    concept: str | None = None
    concept_mean: torch.Tensor | None = None
    present_cells: int = 0

    def values(self, units: Sequence[int], source: Literal["quantile", "concept"] = "quantile"
               ) -> torch.Tensor:
        """Replacement values for ``units``: their quantile or their mean where the concept is."""
        idx = torch.as_tensor(list(units), dtype=torch.long)
        if source == "quantile":
            return self.quantile[idx]
        if self.concept_mean is None:
            raise ValueError("these statistics have no concept mean; pass segmenter and concept "
                             "to unit_statistics")
        return self.concept_mean[idx]


def concept_cells(segmenter: Segmenter, images: torch.Tensor, concept_index: int, h: int,
                  w: int) -> torch.Tensor:
    """Bool ``[n, h, w]``: layer cells where more than half of the area carries the concept."""
    masks = segmenter.segment(images)[:, concept_index].float()[:, None]
    frac = F.adaptive_avg_pool2d(masks.cpu(), (h, w))[:, 0]
    return frac > 0.5


@torch.no_grad()
def unit_statistics(generator: Generator, layer: str, samples: int = 200, seed: int = 0,
                    q: float = 0.99, segmenter: Segmenter | None = None,
                    concept: str | None = None, batch_size: int = 32) -> UnitStatistics:
    """Per-unit replacement values of ``layer`` (see :class:`UnitStatistics`).

    The quantile is exact: memory holds only the top ``(1-q)`` fraction of each unit's values
    (``units * (1-q) * samples * h * w`` floats), never the whole stream.
    """
    if (segmenter is None) != (concept is None):
        raise ValueError("give both segmenter and concept (for the concept mean) or neither")
    c = segmenter.label_index(concept) if segmenter is not None and concept is not None else -1
    units, h, w = layer_shape(generator, layer)
    quant = ExactQuantile(q, samples * h * w)
    total = torch.zeros(units, dtype=torch.float64)
    count = 0
    for z in latent_batches(generator, samples, seed, batch_size):
        if segmenter is None:
            with Trace(generator, layer, stop=True) as tr:
                generator(z)
        else:
            with Trace(generator, layer) as tr:
                images = generator(z)
        act = check_feature_map(layer, tr[layer]).float().cpu()
        quant.add(act.transpose(0, 1).reshape(units, -1))
        if segmenter is not None:
            present = concept_cells(segmenter, images, c, h, w)  # [n, h, w]
            total += (act * present[:, None]).sum(dim=(0, 2, 3)).double()
            count += int(present.sum())
    mean = None
    if segmenter is not None:
        if count == 0:
            raise ValueError(f"concept {concept!r} was never present (area > 0.5 of a cell) in "
                             f"{samples} samples of seed {seed}; use more samples or the quantile")
        mean = (total / count).float()
    return UnitStatistics(layer, q, samples, seed, quant.result(), concept, mean, count)


# ---------------------------------------------------------------------------------- effects

@dataclass(frozen=True, eq=False)
class EffectStats:
    """Concept pixel fraction before/after an edit of ``units``, over the same samples.

    ``absolute`` = mean(after - before); ``relative`` = absolute / before (NaN if before == 0);
    ``ci95`` = normal-approximation 95% interval of ``absolute`` (``relative_ci95`` divides it
    by ``before``, treating ``before`` as fixed).
    """

    units: tuple[int, ...]
    before: float
    after: float
    absolute: float
    relative: float
    ci95: tuple[float, float]
    relative_ci95: tuple[float, float]
    samples: int
    changes: np.ndarray = field(repr=False)

    @classmethod
    def from_arrays(cls, units: Sequence[int], before: np.ndarray, after: np.ndarray
                    ) -> EffectStats:
        """Statistics of paired per-sample fractions (NaN samples - empty regions - dropped)."""
        ok = ~(np.isnan(before) | np.isnan(after))
        if not ok.any():
            raise ValueError("no sample has a non-empty measuring region")
        b, a = before[ok].astype(np.float64), after[ok].astype(np.float64)
        d = a - b
        mean = float(d.mean())
        half = Z95 * float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        mb = float(b.mean())
        rel = mean / mb if mb > 0 else float("nan")
        rel_ci = (((mean - half) / mb, (mean + half) / mb) if mb > 0
                  else (float("nan"), float("nan")))
        return cls(tuple(int(u) for u in units), mb, float(a.mean()), mean, rel,
                   (mean - half, mean + half), rel_ci, int(len(d)), d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None)."""
        def num(x: float) -> float | None:
            return None if math.isnan(x) else x
        return {"units": list(self.units), "before": self.before, "after": self.after,
                "absolute": num(self.absolute), "relative": num(self.relative),
                "ci95": [num(x) for x in self.ci95],
                "relative_ci95": [num(x) for x in self.relative_ci95], "samples": self.samples}


@dataclass(frozen=True, eq=False)
class CausalEffect:
    """Result of :func:`causal_effect`. ``inside``/``random_inside`` measure only inside the
    edit's mask (at segmentation resolution, where the upsampled mask > 0.5)."""

    concept: str
    layer: str
    mode: str
    seed: int
    effect: EffectStats
    random: EffectStats | None = None
    inside: EffectStats | None = None
    random_inside: EffectStats | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out: dict[str, Any] = {"concept": self.concept, "layer": self.layer, "mode": self.mode,
                               "seed": self.seed, "effect": self.effect.to_dict()}
        for name in ("random", "inside", "random_inside"):
            val = getattr(self, name)
            out[name] = None if val is None else val.to_dict()
        return out


def random_units(n_units: int, k: int, exclude: Sequence[int], seed: int) -> list[int]:
    """``k`` distinct units of ``0..n_units-1`` not in ``exclude``, drawn with a local numpy
    Generator seeded by ``seed`` (same seed, same units)."""
    pool = np.setdiff1d(np.arange(n_units), np.asarray(list(exclude), dtype=np.int64))
    if k > len(pool):
        raise ValueError(f"cannot draw {k} random units: the layer has only {len(pool)} units "
                         "outside the chosen ones")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x7A2D])))
    return sorted(int(u) for u in rng.choice(pool, size=k, replace=False))


def region_at(mask: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """A layer mask (``[h, w]`` or ``[n, h, w]``) upsampled bilinearly to the segmentation size
    and thresholded at 0.5: bool ``[1 or n, H', W']`` (``None`` for no mask)."""
    if mask is None:
        return None
    m = torch.as_tensor(mask).float()
    m = (m if m.dim() == 3 else m[None])[:, None]
    up = resize_mask(m, *size) if m.shape[-2] >= size[0] else F.interpolate(
        m, size=size, mode="bilinear", align_corners=False)
    return up[:, 0] > 0.5


def _fractions(masks: torch.Tensor, region: torch.Tensor | None) -> np.ndarray:
    """Per-sample fraction of concept pixels ``masks [n, H, W]`` (inside ``region``; NaN where
    the region is empty)."""
    m = masks.float()
    if region is None:
        return m.mean(dim=(1, 2)).numpy().astype(np.float64)
    r = region.to(m.device).expand_as(m).float()
    area = r.sum(dim=(1, 2))
    inside = (m * r).sum(dim=(1, 2))
    frac = torch.where(area > 0, inside / area.clamp(min=1), torch.full_like(area, float("nan")))
    return frac.numpy().astype(np.float64)


def _batch_slice(t: torch.Tensor | None, start: int, n: int, samples: int
                 ) -> torch.Tensor | None:
    """Rows ``start .. start+n`` of a per-sample tensor ``[samples, ...]``; 2-D masks and
    ``[1, ...]`` tensors are shared by all samples and returned as they are."""
    if t is None or t.dim() == 2 or t.shape[0] == 1:
        return t
    if t.shape[0] != samples:
        raise ValueError(f"per-sample mask has {t.shape[0]} masks for {samples} samples; give "
                         "one [h, w] mask or exactly one per sample")
    return t[start:start + n]


def _check_edit_sets(generator: Generator, edit_sets: Sequence[Sequence[Edit]]) -> None:
    """Raise a clear error for any edit that does not fit its layer (units, mask size)."""
    shapes: dict[str, tuple[int, int, int]] = {}
    for edits in edit_sets:
        for e in edits:
            if e.layer not in shapes:
                shapes[e.layer] = layer_shape(generator, e.layer)
            e.check_layer(*shapes[e.layer])


@torch.no_grad()
def measure(generator: Generator, segmenter: Segmenter, concept: str,
            edit_sets: Sequence[Sequence[Edit]], samples: int, seed: int,
            regions: Sequence[torch.Tensor | None] | None = None, batch_size: int = 32
            ) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample concept fractions ``before [S, N]`` and ``after [S, N]`` for each of ``S``
    edit sets, on the same ``N`` latents; ``regions[s]`` (bool ``[1|N, H', W']`` at segmentation
    resolution, or None) restricts where edit set ``s`` is measured. Edit masks may be
    ``[N, h, w]`` (one per sample; sliced per batch). The unedited output is generated and
    segmented once per batch."""
    c = segmenter.label_index(concept)
    regs = list(regions) if regions is not None else [None] * len(edit_sets)
    if len(regs) != len(edit_sets):
        raise ValueError("give one region (or None) per edit set")
    _check_edit_sets(generator, edit_sets)  # before any long computation
    before = np.zeros((len(edit_sets), samples))
    after = np.zeros((len(edit_sets), samples))
    start = 0
    for z in latent_batches(generator, samples, seed, batch_size):
        n = z.shape[0]
        base = segmenter.segment(generator(z))[:, c].cpu()
        for s, edits in enumerate(edit_sets):
            region = _batch_slice(regs[s], start, n, samples)
            batch_edits = [replace(e, mask=_batch_slice(e.mask, start, n, samples))
                           for e in edits]
            with intervene(generator, *batch_edits, check=False):
                out = segmenter.segment(generator(z))[:, c].cpu()
            before[s, start:start + n] = _fractions(base, region)
            after[s, start:start + n] = _fractions(out, region)
        start += n
    return before, after


@torch.no_grad()
def measure_concepts(generator: Generator, segmenter: Segmenter,
                     edit_sets: Sequence[Sequence[Edit]], samples: int, seed: int,
                     concepts: Sequence[str] | None = None, batch_size: int = 32,
                     progress: Callable[[int], None] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Whole-image pixel fractions of several concepts at once: ``before [N, C]`` (unedited) and
    ``after [S, N, C]`` for each of ``S`` edit sets, on latents ``0..N-1`` of ``seed``; ``C``
    follows ``concepts`` (default: all of ``segmenter.labels``). One forward pass and one
    segmentation per edit set and batch serve every concept (``measure`` without regions gives
    the same numbers one concept at a time). ``progress(samples_done)`` runs after each batch."""
    names = list(segmenter.labels) if concepts is None else list(concepts)
    idx = [segmenter.label_index(c) for c in names]
    _check_edit_sets(generator, edit_sets)  # before any long computation
    before = np.zeros((samples, len(idx)))
    after = np.zeros((len(edit_sets), samples, len(idx)))

    def fractions(images: torch.Tensor) -> np.ndarray:
        masks = segmenter.segment(images)[:, idx].cpu()
        return masks.float().mean(dim=(2, 3)).numpy().astype(np.float64)

    start = 0
    for z in latent_batches(generator, samples, seed, batch_size):
        n = z.shape[0]
        before[start:start + n] = fractions(generator(z))
        for s, edits in enumerate(edit_sets):
            with intervene(generator, *edits, check=False):
                after[s, start:start + n] = fractions(generator(z))
        start += n
        if progress is not None:
            progress(start)
    return before, after


def causal_effect(generator: Generator, segmenter: Segmenter, concept: str, units: Sequence[int],
                  layer: str, mode: Mode = "ablate", samples: int = 200, seed: int = 0,
                  mask: torch.Tensor | None = None, random_baseline: bool = True,
                  replacement: float | torch.Tensor | None = None, alpha: float = 1.0,
                  stats: UnitStatistics | None = None, q: float = 0.99,
                  source: Literal["quantile", "concept"] = "quantile", batch_size: int = 32
                  ) -> CausalEffect:
    """ACE of ablating (replacement 0) or inserting ``units`` of ``layer`` on ``concept``.

    For ``mode="insert"`` the replacement defaults to each unit's ``q`` quantile from ``stats``
    (computed with :func:`unit_statistics` on the same samples when not given), or with
    ``source="concept"`` its mean where the concept is present; a scalar or per-unit
    ``replacement`` overrides it. With ``random_baseline`` the same is measured for
    ``len(units)`` random units of the layer (see :func:`random_units`). With a ``mask``
    (``[h, w]`` or ``[n, h, w]`` at the layer's resolution) the edit acts only there, and the
    effect is also measured inside the mask.
    """
    if mode not in ("ablate", "insert"):
        raise ValueError(f"mode must be 'ablate' or 'insert', got {mode!r}")
    if mode == "ablate" and replacement is not None:
        raise ValueError("ablation replaces with 0; 'replacement' is only for mode='insert'")
    segmenter.label_index(concept)
    n_units, h, w = layer_shape(generator, layer)
    chosen = [int(u) for u in units]
    Edit(layer, chosen).check_layer(n_units, h, w)
    rand = random_units(n_units, len(chosen), chosen, seed) if random_baseline else []
    scalar = replacement is None or not isinstance(replacement, torch.Tensor) or \
        replacement.dim() == 0
    need_stats = mode == "insert" and (replacement is None or (rand and not scalar))
    if need_stats and stats is None:
        con = (segmenter, concept) if source == "concept" else (None, None)
        stats = unit_statistics(generator, layer, samples, seed, q=q, segmenter=con[0],
                                concept=con[1], batch_size=batch_size)

    def values(us: list[int], given: float | torch.Tensor | None) -> float | torch.Tensor:
        if mode == "ablate":
            return 0.0
        if given is not None:
            return given
        assert stats is not None
        return stats.values(us, source)

    sets = [[Edit(layer, chosen, alpha=alpha, replacement=values(chosen, replacement),
                  mask=mask)]]
    if rand:
        sets.append([Edit(layer, rand, alpha=alpha,
                          replacement=values(rand, replacement if scalar else None), mask=mask)])
    regions: list[torch.Tensor | None] = [None] * len(sets)
    if mask is not None:
        seg_size = segmenter.output_size(generator.resolution, generator.resolution)
        reg = region_at(mask, seg_size)
        sets, regions = sets + sets, regions + [reg] * len(sets)
    before, after = measure(generator, segmenter, concept, sets, samples, seed, regions,
                            batch_size)
    k = len(before) // (2 if mask is not None else 1)
    res = [EffectStats.from_arrays(s[0].units, before[i], after[i]) for i, s in enumerate(sets)]
    return CausalEffect(concept, layer, mode, seed, res[0], res[1] if rand else None,
                        res[k] if mask is not None else None,
                        res[k + 1] if mask is not None and rand else None)
