"""The ``"effect"`` artifact score: the first-order change of the WHOLE generator's realism
measure when one unit is removed, for every unit of a layer at once.

Removing unit u means replacing its map by a constant ``r_u`` (its mean activation, or 0). Over
the scoring samples ``i`` the measure changes by ``sum_i [phi_i(x_i with u removed) - phi_i(x_i)]``
where ``phi_i`` linearises the measure around the scoring samples:

* FID: ``phi_i(x) = g_i . f(x)`` with ``g_i = dFID / df_i`` (:func:`fid_feature_gradient`) and
  ``f`` the feature network, so the sum is the first-order FID change;
* discriminator: ``phi_i(x) = -logit(x) / N`` (the measure is a mean, so this is exact).

Two estimates of each image's term, combined per unit:

* Taylor, for all units in one backward pass: ``t_iu = sum_p dphi_i/dA_iup * (r_u - A_iup)``;
  on the shipped Toyworld GAN (layer4, mean replacement) it matched exact single-unit FID
  changes within ~0.01 FID (e.g. -0.077 vs -0.070, 0.207 vs 0.207);
* exact, on each unit's ``top`` most strongly activating images (spatial maximum): the image is
  regenerated with the unit removed and ``e_iu = phi_i(x') - phi_i(x)``. This adds, on the
  unit's strongest images, what a gradient cannot see (a defect switched on by a threshold, as
  planted by :mod:`gandissect.artifacts.plant`).

``linear_u = -(sum_{i not in top_u} t_iu + sum_{i in top_u} e_iu)`` is the predicted DECREASE
of the measure (higher = removing the unit makes the generator more realistic).

A hard-thresholded defect barely shows in a population-level linearisation when other units
paint it too (planted ground truth: 2 of 5 planted units ranked 19 and 77 by ``linear``), but
it shows in the per-image unrealism of the unit's top images (``causal_u``: mean drop of
``measure.per_image`` over the top set, computed from the same regenerated images). So the
best ``pool`` units of each screen are VERIFIED by measuring the drop of the measure (whole
generator, ``verify_samples`` scoring samples) when the unit is removed, in two contexts: alone,
and last (after all other candidates). Units that paint the same defect cover for each other:
removing one alone changes little, while removing it last removes what is left (planted ground
truth on the shipped GAN: two of five planted units gained nothing alone and ranked 23 and 134
before the second context was measured). The final score of a verified unit is the larger of the
two drops; the other units keep ``linear_u`` (same units: a predicted drop of the measure).

Cost: one forward pass and one forward+backward pass over ``samples`` images, ``units * top``
images for the top sets, and ``(4 * pool + 2) * verify_samples`` images at most to verify.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from collections.abc import Generator as Gen
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from models.base import Generator

from ..common.hooks import Trace
from ..dissection.cluster import check_client, client_threads, models_on_workers
from ..intervention.edit import Edit
from .quality import sqrtm_psd
from .realism import DiscriminatorMeasure, FIDMeasure

Replace = Literal["mean", "zero"]


def fid_feature_gradient(features: np.ndarray, mu_ref: np.ndarray, cov_ref: np.ndarray,
                         floor: float = 1e-8) -> np.ndarray:
    """``dFID / df_i`` ``[N, D]`` of FID(N(mean, unbiased cov) of ``features`` [N, D], reference).

    With ``S`` the covariance and ``R`` the reference one: ``dFID/dmu = 2 (mu - mu_r)`` and
    ``dFID/dS = I - R^1/2 M^-1/2 R^1/2`` with ``M = R^1/2 S R^1/2`` (eigenvalues of ``M`` are
    floored at ``floor`` times the largest), so
    ``g_i = 2/N (mu - mu_r) + 2/(N-1) dFID/dS (f_i - mu)``.
    """
    x = np.asarray(features, np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"need >= 2 feature vectors, got {n}")
    mu = x.mean(axis=0)
    cov = np.cov(x, rowvar=False).reshape(d, d)
    root = sqrtm_psd(np.asarray(cov_ref, np.float64))
    middle = root @ cov @ root
    vals, vecs = np.linalg.eigh((middle + middle.T) / 2.0)
    vals = np.clip(vals, floor * max(float(vals.max()), 1e-300), None)
    d_cov = np.eye(d) - root @ (vecs * vals ** -0.5) @ vecs.T @ root
    out: np.ndarray = 2.0 / n * (mu - mu_ref)[None] + 2.0 / (n - 1) * (x - mu) @ d_cov
    return out


class _Objective:
    """The measure linearised around the scoring samples.

    ``embed(images)`` -> per-image vectors (features for FID, ``[-logit]`` for the discriminator;
    autograd kept); ``phi(emb, idx)`` -> the per-image terms ``phi_i`` ``[n]``;
    ``unrealism(emb)`` -> the measure's per-image unrealism ``[n]`` (Mahalanobis distance or
    ``-logit``). ``base_phi`` / ``base_unrealism`` hold them for the unedited scoring samples.
    """

    def __init__(self, measure: FIDMeasure | DiscriminatorMeasure, first_pass: np.ndarray) -> None:
        self.measure = measure
        self.n = first_pass.shape[0]
        self.weights: torch.Tensor | None = None
        if isinstance(measure, FIDMeasure):
            self.weights = torch.from_numpy(
                fid_feature_gradient(first_pass, *measure.reference_gaussian))
        emb = torch.from_numpy(first_pass)
        self.base_phi = self.phi(emb, torch.arange(self.n)).numpy()
        self.base_unrealism = self.unrealism(emb)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        m = self.measure
        if isinstance(m, FIDMeasure):
            diff = getattr(m.features, "differentiable", m.features)
            out: torch.Tensor = diff(images).double()
            return out
        return -m.differentiable_logits(images).double()[:, None]

    def phi(self, emb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if self.weights is not None:
            return (emb * self.weights[idx].to(emb.device)).sum(dim=1)
        return emb[:, 0] / self.n

    def unrealism(self, emb: torch.Tensor) -> np.ndarray:
        if isinstance(self.measure, FIDMeasure):
            out: np.ndarray = self.measure.mahalanobis(emb).numpy()
            return out
        return emb[:, 0].detach().cpu().numpy()


@dataclass
class EffectScores:
    """Result of :func:`effect_scores` (all ``[units]`` arrays; higher = more artifact-like)."""

    scores: np.ndarray  # final: -exact change for verified units, else ``linear``
    linear: np.ndarray  # -(Taylor outside the top set + linearised exact change on it)
    causal: np.ndarray  # mean per-image unrealism drop over the top set (the second screen)
    exact: dict[int, float]  # verified units -> -(measured change when removed alone)
    verify_samples: int
    #: verified units -> -(measured change when removed after all other verified units)
    last_in: dict[int, float] = field(default_factory=dict)

    def details(self) -> dict[str, Any]:
        return {"linear": self.linear.tolist(), "causal": self.causal.tolist(),
                "verified": {str(u): v for u, v in self.exact.items()},
                "verified_last_in": {str(u): v for u, v in self.last_in.items()},
                "verify_samples": self.verify_samples}


def effect_scores(generator: Generator, layer: str, measure: FIDMeasure | DiscriminatorMeasure,
                  latents: torch.Tensor, first_pass: np.ndarray, order: np.ndarray,
                  replacement: np.ndarray, seed: int, batch_size: int = 100, pool: int = 10,
                  verify_samples: int = 500, client: Any = None) -> EffectScores:
    """Per-unit ``"effect"`` scores (see the module docs).

    ``latents`` are the ``N`` scoring latents (samples ``0..N-1`` of ``seed``), ``first_pass``
    their features ``[N, D]`` (FID) or per-image unrealism ``[N, 1]`` (discriminator), ``order``
    ``[units, top]`` each unit's top images, ``replacement`` ``[units]`` the constant a removed
    unit is set to. The ``pool`` best units by the linear score and the ``pool`` best by the
    causal screen are then VERIFIED by measuring the drop of the measure over scoring samples
    ``0..verify_samples-1`` in two contexts: the unit removed alone (``exact``), and the unit
    removed last, after all other candidates (``last_in``). Their score becomes the larger drop.

    ``client`` (a ``distributed.Client``): the top-set images (chunks of whole batches) and the
    verification measurements (one per unit set) are tasks on its Dask cluster, generator and
    linearised measure installed on each worker once; the scores are bit-identical to one
    process. The Taylor pass stays here.
    """
    check_client(client, "effect_scores")
    objective = _Objective(measure, first_pass)
    taylor = _taylor_terms(generator, layer, objective, latents, replacement, batch_size)
    with (contextlib.nullcontext(None) if client is None
          else models_on_workers(client, (generator, objective))) as run:
        return _effect_scores(generator, layer, objective, latents, order, replacement, seed,
                              batch_size, pool, verify_samples, taylor, run, client)


#: runs ``fn(models, item, *args)`` for each item on a Dask cluster (``models_on_workers``)
Runner = Callable[..., Gen[tuple[int, Any], None, None]]


def _effect_scores(generator: Generator, layer: str, objective: _Objective,
                   latents: torch.Tensor, order: np.ndarray, replacement: np.ndarray,
                   seed: int, batch_size: int, pool: int, verify_samples: int,
                   taylor: np.ndarray, run: Runner | None, client: Any) -> EffectScores:
    """:func:`effect_scores` after the Taylor pass; ``run`` (with ``client``) or here."""
    measure = objective.measure
    units = order.shape[0]
    d_phi, d_unreal = _top_set_terms(generator, layer, objective, latents, order, replacement,
                                     batch_size, run, client)
    rows = np.arange(units)[:, None]
    linear = -(taylor.sum(axis=0) - taylor[order, rows].sum(axis=1) + d_phi.sum(axis=1))
    causal = -d_unreal.mean(axis=1)
    scores = linear.copy()
    exact: dict[int, float] = {}
    verify_samples = min(int(verify_samples), latents.shape[0])
    last_in: dict[int, float] = {}
    if pool > 0:
        candidates = sorted(set(_best(linear, pool)) | set(_best(causal, pool)))
        # unedited, each candidate alone, and (to measure each one removed last) all of them
        # and all but each one
        sets = [[], *([u] for u in candidates)]
        if len(candidates) > 1:
            sets += [candidates, *([v for v in candidates if v != u] for u in candidates)]
        value = _removed_all(generator, layer, measure, sets, replacement, verify_samples, seed,
                             run)
        base, n = value[0], len(candidates)
        for j, u in enumerate(candidates):
            exact[u] = base - value[1 + j]
        if n > 1:  # each candidate's drop when it is the last one removed
            everything = value[1 + n]
            for j, u in enumerate(candidates):
                last_in[u] = value[2 + n + j] - everything
        for u in candidates:
            scores[u] = max(exact[u], last_in.get(u, exact[u]))
    return EffectScores(scores, linear, causal, exact, verify_samples, last_in)


def _removed(generator: Generator, layer: str, measure: FIDMeasure | DiscriminatorMeasure,
             units: list[int], replacement: np.ndarray, samples: int, seed: int) -> float:
    """The measure over ``samples`` samples of ``seed`` with ``units`` removed."""
    edits = [Edit(layer, units, replacement=[float(replacement[u]) for u in units])
             ] if units else []
    return measure.score(generator, samples, seed, edits)


def _removed_task(models: tuple[Generator, _Objective], units: list[int], layer: str,
                  replacement: np.ndarray, samples: int, seed: int) -> float:
    """Task of :func:`_removed_all` on a Dask worker."""
    generator, objective = models
    return _removed(generator, layer, objective.measure, units, replacement, samples, seed)


def _removed_all(generator: Generator, layer: str, measure: FIDMeasure | DiscriminatorMeasure,
                 sets: list[list[int]], replacement: np.ndarray, samples: int, seed: int,
                 run: Runner | None) -> list[float]:
    """:func:`_removed` of each unit set, here in order or (``run``) one task per set."""
    if run is None:
        return [_removed(generator, layer, measure, us, replacement, samples, seed)
                for us in sets]
    out: list[float] = [0.0] * len(sets)
    with closing(run(_removed_task, sets, layer, replacement, samples, seed,
                     label=lambda us: f"artifact-verify-{layer}-{len(us)}units")) as results:
        for i, value in results:
            out[i] = value
    return out


def _best(values: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` largest values (ties by index)."""
    return [int(u) for u in np.lexsort((np.arange(len(values)), -values))[:k]]


def _taylor_terms(generator: Generator, layer: str, objective: _Objective, latents: torch.Tensor,
                  replacement: np.ndarray, batch_size: int) -> np.ndarray:
    """``t[i, u] = sum_p dphi_i/dA[i,u,p] * (r_u - A[i,u,p])`` by one backward pass per batch."""
    n = latents.shape[0]
    r = torch.from_numpy(np.asarray(replacement, np.float32))
    out = np.empty((n, len(r)), np.float64)
    leaf: dict[str, torch.Tensor] = {}

    def edit(_name: str, acts: torch.Tensor) -> torch.Tensor:
        leaf["a"] = acts.detach().requires_grad_(True)
        return leaf["a"]

    with Trace(generator, layer, edit=edit, retain=False), torch.enable_grad():
        for s in range(0, n, batch_size):
            idx = torch.arange(s, min(s + batch_size, n))
            images = generator(latents[idx]).clamp(-1.0, 1.0)
            total = objective.phi(objective.embed(images), idx).sum()
            (grad,) = torch.autograd.grad(total, leaf["a"])
            a = leaf.pop("a").detach()
            if a.shape[1] != len(r):
                raise ValueError(f"replacement has {len(r)} values, layer {layer!r} has "
                                 f"{a.shape[1]} units")
            delta = r.to(a.device, a.dtype).view(1, -1, 1, 1) - a
            out[s:s + len(idx)] = (grad * delta).double().sum(dim=(2, 3)).cpu().numpy()
    return out


def _top_set_terms(generator: Generator, layer: str, objective: _Objective,
                   latents: torch.Tensor, order: np.ndarray, replacement: np.ndarray,
                   batch_size: int, run: Runner | None = None, client: Any = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """For ``i = order[u, j]``, with x' = x_i regenerated with unit u removed:
    ``phi_i(x') - phi_i(x_i)`` and ``unrealism(x') - unrealism(x_i)``, both ``[units, top]``.
    Many (unit, image) pairs share a forward pass (each sample removes its own unit); with
    ``run``, chunks of whole batches are tasks (4 per worker thread of ``client``)."""
    units, top = order.shape
    pairs_u = np.repeat(np.arange(units), top)
    pairs_i = order.reshape(-1)
    if run is None:
        d_phi, d_unreal = _pair_terms(generator, layer, objective, latents[pairs_i], pairs_u,
                                      pairs_i, replacement, batch_size)
        return d_phi.reshape(units, top), d_unreal.reshape(units, top)
    batches = -(-len(pairs_u) // batch_size)
    count = min(batches, 4 * client_threads(client))
    cuts = [batch_size * (batches * k // count) for k in range(count + 1)]
    items = [(a, latents[pairs_i[a:b]], pairs_u[a:b], pairs_i[a:b])
             for a, b in zip(cuts, cuts[1:], strict=False)]
    d_phi = np.empty(len(pairs_u), np.float64)
    d_unreal = np.empty(len(pairs_u), np.float64)
    with closing(run(_pair_task, items, layer, replacement, batch_size,
                     label=lambda it: f"artifact-topsets-{layer}-{it[0]}")) as results:
        for k, (phi, unreal) in results:
            a = items[k][0]
            d_phi[a:a + len(phi)], d_unreal[a:a + len(phi)] = phi, unreal
    return d_phi.reshape(units, top), d_unreal.reshape(units, top)


def _pair_task(models: tuple[Generator, _Objective],
               item: tuple[int, torch.Tensor, np.ndarray, np.ndarray], layer: str,
               replacement: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Task of :func:`_top_set_terms` on a Dask worker: :func:`_pair_terms` of one chunk."""
    generator, objective = models
    _, z, pairs_u, pairs_i = item
    return _pair_terms(generator, layer, objective, z, pairs_u, pairs_i, replacement,
                       batch_size)


@torch.no_grad()
def _pair_terms(generator: Generator, layer: str, objective: _Objective, z: torch.Tensor,
                pairs_u: np.ndarray, pairs_i: np.ndarray, replacement: np.ndarray,
                batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The changes of ``phi`` and unrealism of images ``pairs_i`` (latents ``z``, one row per
    pair) regenerated with units ``pairs_u`` removed, ``batch_size`` pairs per pass."""
    units = len(replacement)
    r = torch.from_numpy(np.asarray(replacement, np.float32))
    d_phi = np.empty(len(pairs_u), np.float64)
    d_unreal = np.empty(len(pairs_u), np.float64)
    state: dict[str, Any] = {}

    def edit(_name: str, acts: torch.Tensor) -> torch.Tensor:
        m = state["mask"].to(acts.device, acts.dtype)
        return acts * (1 - m) + r.to(acts.device, acts.dtype).view(1, -1, 1, 1) * m

    with Trace(generator, layer, edit=edit, retain=False):
        for s in range(0, len(pairs_u), batch_size):
            sl = slice(s, s + batch_size)
            u = torch.from_numpy(pairs_u[sl])
            i = torch.from_numpy(pairs_i[sl])
            mask = torch.zeros(len(u), units, 1, 1)
            mask[torch.arange(len(u)), u] = 1.0
            state["mask"] = mask
            emb = objective.embed(generator(z[sl]).clamp(-1.0, 1.0))
            d_phi[sl] = objective.phi(emb, i).cpu().numpy() - objective.base_phi[pairs_i[sl]]
            d_unreal[sl] = objective.unrealism(emb) - objective.base_unrealism[pairs_i[sl]]
    return d_phi, d_unreal


def default_top(method: str, samples: int) -> int:
    """Top-set size per unit: 16 for the causal / effect scores, else 10% of the samples."""
    if method in ("causal", "effect"):
        return min(16, samples)
    return max(2, samples // 10)


__all__ = ["EffectScores", "Replace", "default_top", "effect_scores", "fid_feature_gradient"]
