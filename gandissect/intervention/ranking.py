"""Rank a layer's units by how much they cause a concept, and sweep effects over the top k.

* :func:`rank_by_iou` - from a dissection result
  (:class:`gandissect.dissection.results.LayerResult`);
* :func:`single_unit_ace` - each unit ablated alone, ranked by the drop of the concept (with
  ``client=``, groups of units are tasks on a Dask cluster: the same numbers);
* :func:`optimize_alpha` - per-unit ablation (or insertion) strengths ``alpha`` learned by
  gradient descent through the segmenter's soft scores with an L1 sparsity penalty (ICLR 2019);
* :func:`effect_sweep` / :func:`plot_sweep` - effect of the top-k units vs k, beside k random units.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.base import Generator
from segmenters.base import Segmenter

from ..dissection.cluster import check_client
from .causal import (
    EffectStats,
    Mode,
    UnitStatistics,
    latent_batches,
    measure,
    measure_concepts,
    random_units,
    unit_statistics,
)
from .edit import Edit, intervene, layer_shape
from .fanout import measure_concepts_on_cluster


@dataclass(frozen=True, eq=False)
class UnitRanking:
    """Units of ``layer`` ordered best first for ``concept``; ``scores[u]`` is unit ``u``'s
    score (higher = more causal) under ``method``."""

    layer: str
    concept: str
    method: str
    order: tuple[int, ...]
    scores: np.ndarray = field(repr=False)

    @classmethod
    def from_scores(cls, layer: str, concept: str, method: str, scores: np.ndarray
                    ) -> UnitRanking:
        """Rank by descending score (ties: lower unit index first)."""
        s = np.asarray(scores, dtype=np.float64)
        order = tuple(int(u) for u in np.lexsort((np.arange(len(s)), -s)))
        return cls(layer, concept, method, order, s)

    def top(self, k: int) -> list[int]:
        """The ``k`` best units."""
        if not 1 <= k <= len(self.order):
            raise ValueError(f"k must be in 1..{len(self.order)} (units of layer "
                             f"{self.layer!r}), got {k}")
        return list(self.order[:k])

    def to_dict(self, k: int | None = None) -> dict[str, Any]:
        """JSON-ready dict of the top ``k`` (default all) units with their scores."""
        units = self.order if k is None else self.order[:k]
        return {"layer": self.layer, "concept": self.concept, "method": self.method,
                "units": [int(u) for u in units],
                "scores": [float(self.scores[u]) for u in units]}


def rank_by_iou(result: Any, concept: str) -> UnitRanking:
    """Rank units by their dissection IoU with ``concept`` (``result`` is a LayerResult)."""
    labels = list(result.labels)
    if concept not in labels:
        raise ValueError(f"the dissection of layer {result.layer!r} has no concept {concept!r}; "
                         f"its concepts: {', '.join(labels)}")
    return UnitRanking.from_scores(result.layer, concept, "iou",
                                   np.asarray(result.score)[:, labels.index(concept)])


def single_unit_ace(generator: Generator, segmenter: Segmenter, concept: str, layer: str,
                    samples: int = 100, seed: int = 0, units: Sequence[int] | None = None,
                    batch_size: int = 32, client: Any = None) -> UnitRanking:
    """Ablate each unit alone and rank by the mean drop of the concept pixel fraction
    (``before - after``, same samples for every unit). Units not in ``units`` score -inf.
    ``client`` (a ``distributed.Client``) runs the ablations on its Dask cluster
    (:func:`single_unit_ace_concepts`), with the same result."""
    return single_unit_ace_concepts(generator, segmenter, [concept], layer, samples, seed,
                                    units, batch_size, client=client)[concept]


def single_unit_ace_concepts(generator: Generator, segmenter: Segmenter,
                             concepts: Sequence[str], layer: str, samples: int = 100,
                             seed: int = 0, units: Sequence[int] | None = None,
                             batch_size: int = 32,
                             progress: Callable[[int], None] | None = None,
                             client: Any = None) -> dict[str, UnitRanking]:
    """:func:`single_unit_ace` for several concepts from the same ablations (one forward pass
    and segmentation per unit and batch serves every concept); ``progress`` as in
    :func:`gandissect.intervention.causal.measure_concepts`.

    ``client`` (a ``distributed.Client``): the units are split into groups, each group's
    ablations over all samples are one task (:func:`ablations_on_cluster`: the models go to
    each worker once), and the per-sample fractions are put together in unit order, so the
    rankings are bit-identical to one process; ``progress`` then gets, after each finished
    group, the samples' share of the work done (``samples`` at the end)."""
    if not concepts:
        raise ValueError("give at least one concept")
    check_client(client, "single_unit_ace")
    n_units, _, _ = layer_shape(generator, layer)
    chosen = list(range(n_units)) if units is None else [int(u) for u in units]
    if client is None:
        sets = [[Edit(layer, [u])] for u in chosen]
        before, after = measure_concepts(generator, segmenter, sets, samples, seed, concepts,
                                         batch_size=batch_size, progress=progress)
    else:
        before, after = ablations_on_cluster(client, generator, segmenter, layer, chosen,
                                             samples, seed, concepts, batch_size, progress)
    drop = (before[None] - after).mean(axis=1)  # [units, concepts]
    out = {}
    for j, concept in enumerate(concepts):
        scores = np.full(n_units, -np.inf)
        scores[chosen] = drop[:, j]
        out[concept] = UnitRanking.from_scores(layer, concept, "ace", scores)
    return out


def ablate_each(models: tuple[Generator, Segmenter], units: Sequence[int], layer: str,
                  samples: int, seed: int, concepts: Sequence[str] | None, batch_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``measure_concepts`` of ``units``, each ablated alone, with ``models = (generator,
    segmenter)``: the task of the brush build on a Dask cluster."""
    generator, segmenter = models
    return measure_concepts(generator, segmenter, [[Edit(layer, [u])] for u in units],
                            samples, seed, concepts, batch_size=batch_size)


def ablations_on_cluster(client: Any, generator: Generator, segmenter: Segmenter, layer: str,
                         units: Sequence[int], samples: int, seed: int,
                         concepts: Sequence[str] | None, batch_size: int = 32,
                         progress: Callable[[int], None] | None = None,
                         tasks_per_thread: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``measure_concepts`` of each of ``units`` ablated alone (``before [N, C]``,
    ``after [len(units), N, C]``), computed on ``client``'s Dask cluster: contiguous groups of
    units (``tasks_per_thread`` per worker thread) are tasks, each over all samples with the
    same batches as one process, so every number is the one process's
    (:func:`gandissect.intervention.fanout.measure_concepts_on_cluster`);
    ``progress(samples * units_done // len(units))`` after each group."""
    if not units:
        raise ValueError("give at least one unit")
    return measure_concepts_on_cluster(client, generator, segmenter,
                                       [[Edit(layer, [int(u)])] for u in units], samples, seed,
                                       concepts, batch_size, progress, tasks_per_thread,
                                       label=f"ablate-{layer}")


@contextmanager
def frozen(*modules: Any) -> Iterator[None]:
    """Temporarily set ``requires_grad=False`` on the parameters of ``modules`` (``None`` and
    objects that are not ``nn.Module`` are skipped), restoring each flag afterwards - also after
    an exception. Gradients then flow only to the tensors being optimised."""
    params = [p for m in modules if isinstance(m, torch.nn.Module) for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def optimize_alpha(generator: Generator, segmenter: Segmenter, concept: str, layer: str,
                   mode: Mode = "ablate", samples: int = 64, seed: int = 0, steps: int = 60,
                   lr: float = 0.05, l1: float = 0.01, init: float = 0.5, batch_size: int = 16,
                   stats: UnitStatistics | None = None,
                   progress: Callable[[int, float], None] | None = None) -> UnitRanking:
    """Learn per-unit ``alpha`` in [0, 1] (projected Adam, the ICLR 2019 method) minimising

    * ``mode="ablate"``: ``after / before + l1 * sum(alpha)``,
    * ``mode="insert"``: ``-after / (1 - before) + l1 * sum(alpha)`` (the gain in fractions of
      what can be gained, up to a constant; replacement = ``stats`` quantiles),

    where ``after`` is the batch's mean soft concept score with all units edited by ``alpha``
    and ``before`` the mean unedited score over the ``samples`` latents. Normalising makes ``l1``
    the price of one unit in *fractions of the concept*, the same for a large and a rare concept
    (with the raw score a rare concept's gradients fall below ``l1`` and every alpha collapses
    to 0). Needs ``segmenter.concept_probs(images) -> [N, C, H, W]`` (differentiable); the
    generator's and segmenter's own parameters get no gradients.

    Returns the units ranked by learned alpha (``scores`` = alpha); ties (many alphas end at 1
    or 0) are broken by the mean gradient of the concept term over the steps (units whose
    ablation or insertion helps most first)."""
    probs = getattr(segmenter, "concept_probs", None)
    if not callable(probs):
        raise TypeError(f"{type(segmenter).__name__} has no differentiable concept_probs(images); "
                        "optimised alpha needs soft class scores - rank by 'ace' instead")
    if mode not in ("ablate", "insert"):
        raise ValueError(f"mode must be 'ablate' or 'insert', got {mode!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    c = segmenter.label_index(concept)
    n_units, _, _ = layer_shape(generator, layer)
    if mode == "insert" and stats is None:
        stats = unit_statistics(generator, layer, samples, seed, batch_size=batch_size)
    r = torch.zeros(n_units) if mode == "ablate" else stats.quantile  # type: ignore[union-attr]
    batches = list(latent_batches(generator, samples, seed, batch_size))
    with torch.no_grad():
        base = sum(float(probs(generator(z))[:, c].mean(dim=(1, 2)).sum())
                   for z in batches) / samples
    scale = base if mode == "ablate" else 1.0 - base
    if scale <= 1e-8:
        where = "absent from" if mode == "ablate" else "everywhere in"
        raise ValueError(f"concept {concept!r} is {where} the {samples} samples of seed {seed} "
                         f"(mean soft score {base:.3g}); nothing to {mode} - use more samples "
                         "or another concept")
    sign = 1.0 if mode == "ablate" else -1.0
    alpha = torch.full((n_units,), float(init), requires_grad=True)
    opt = torch.optim.Adam([alpha], lr=lr)
    grad_sum = torch.zeros(n_units)
    seg_modules = [v for v in getattr(segmenter, "__dict__", {}).values()
                   if isinstance(v, torch.nn.Module)]
    with frozen(generator, segmenter, *seg_modules):
        for step in range(steps):
            z = batches[step % len(batches)]
            with intervene(generator, Edit(layer, range(n_units), alpha=alpha, replacement=r),
                           check=False):
                effect = sign * probs(generator(z))[:, c].mean() / scale
            (g,) = torch.autograd.grad(effect, alpha)
            grad_sum += g
            loss = float(effect.detach()) + l1 * float(alpha.detach().sum())
            opt.zero_grad()
            alpha.grad = g + l1  # d(l1 * sum(alpha)) / d alpha = l1 (alpha >= 0)
            opt.step()
            with torch.no_grad():
                alpha.clamp_(0.0, 1.0)
            if progress is not None:
                progress(step, loss)
    a = alpha.detach().numpy().astype(np.float64)
    order = tuple(int(u) for u in np.lexsort((np.arange(n_units), grad_sum.numpy(), -a)))
    return UnitRanking(layer, concept, "optimized", order, a)


def effect_sweep(generator: Generator, segmenter: Segmenter, concept: str, layer: str,
                 rankings: dict[str, Sequence[int]], ks: Sequence[int], mode: Mode = "ablate",
                 samples: int = 100, seed: int = 0, random_baseline: bool = True,
                 stats: UnitStatistics | None = None, batch_size: int = 32
                 ) -> dict[str, list[EffectStats]]:
    """Effect of editing the top ``k`` units of each ranking (units best first) for each ``k``,
    and of ``k`` random units (excluding the first ranking's top ``k``) under key ``"random"``;
    all on the same samples, the unedited output computed once."""
    if not rankings:
        raise ValueError("give at least one ranking")
    n_units, _, _ = layer_shape(generator, layer)
    for name, order in rankings.items():
        if max(ks) > len(order):
            raise ValueError(f"ranking {name!r} has {len(order)} units, fewer than k={max(ks)}")
    if mode == "insert" and stats is None:
        stats = unit_statistics(generator, layer, samples, seed, batch_size=batch_size)
    names = list(rankings)
    first = list(rankings[names[0]])
    sets_units = {name: [list(rankings[name][:k]) for k in ks] for name in names}
    if random_baseline:
        sets_units["random"] = [random_units(n_units, k, first[:k], seed) for k in ks]

    def edit(us: list[int]) -> Edit:
        rep = 0.0 if mode == "ablate" else stats.values(us)  # type: ignore[union-attr]
        return Edit(layer, us, replacement=rep)

    flat = [(name, us) for name, lst in sets_units.items() for us in lst]
    before, after = measure(generator, segmenter, concept, [[edit(us)] for _, us in flat],
                            samples, seed, batch_size=batch_size)
    out: dict[str, list[EffectStats]] = {name: [] for name in sets_units}
    for i, (name, us) in enumerate(flat):
        out[name].append(EffectStats.from_arrays(us, before[i], after[i]))
    return out


def default_ks(k_max: int) -> list[int]:
    """1, 2, 3, 5, 10, 20, 50, ... up to and including ``k_max``."""
    ks = [k for k in (1, 2, 3, 5, 10, 20, 50, 100, 200, 500) if k < k_max]
    return ks + [k_max]


def plot_sweep(sweep: dict[str, list[EffectStats]], ks: Sequence[int], path: str | Path,
               title: str = "", relative: bool = True) -> Path:
    """Line plot of the effect (relative by default) vs k, with 95% CI bands; writes PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    try:
        for name, effects in sweep.items():
            if relative:
                y = [e.relative for e in effects]
                lo = [e.relative_ci95[0] for e in effects]
                hi = [e.relative_ci95[1] for e in effects]
            else:
                y = [e.absolute for e in effects]
                lo = [e.ci95[0] for e in effects]
                hi = [e.ci95[1] for e in effects]
            style = "--" if name == "random" else "-"
            ax.plot(list(ks), y, style, marker="o", label=name)
            ax.fill_between(list(ks), lo, hi, alpha=0.2)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_xlabel("number of units k")
        ax.set_ylabel("relative change of concept pixels" if relative
                      else "change of concept pixel fraction")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
