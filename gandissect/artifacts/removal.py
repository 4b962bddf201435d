"""Artifact units: score every unit of a layer by how much removing it makes the generator's
output more realistic, then prove it by removal on other samples.

A removed unit is set to a constant: its mean activation (``replace="mean"``, default; removes
what the unit varies, keeps its average contribution) or 0 (``"zero"``, plain ablation).
Per-unit scores (higher = more artifact-like for every method):

* ``method="effect"`` (default; :mod:`gandissect.artifacts.scores`): the predicted drop of the
  WHOLE generator's measure (FID or discriminator) when the unit alone is removed: a Taylor
  estimate for all units in one backward pass, exact regeneration on each unit's top images,
  and the best candidates of two screens verified by measuring the drop.
* ``method="causal"``: the mean over the unit's top set (its ``top`` images with the highest
  spatial maximum) of the per-image unrealism (``measure.per_image``: Mahalanobis distance to
  the reference features, or minus the discriminator logit) minus the same with the unit removed.
* ``method="fid"`` (the ICLR 2019 paper's): the FID between the top set's features and the
  rendered reference scenes. ``method="topset"``: the mean per-image unrealism over the top set.

Why "effect": top-set scores credit units that merely co-occur with unrealistic images, and
per-image scores ignore what a unit does to the population (variety, proportions), which is
what FID measures. Measured on the shipped Toyworld GAN (FID in segmenter features; scoring on
1,000 samples of seed 0, removal measured on 2,000 samples of seed 1; unedited 15.08, 15.31 on
seed 2, so seed-to-seed noise 0.24; random = mean +- SD of 5 draws)::

    layer   replace  k   top-k   random-k        bottom-k
    layer4  mean     5   14.87   15.42 +- 0.11   16.46
                    10   14.74   15.78 +- 0.17   17.65
                    20   14.65   16.58 +- 0.25   19.92
    layer4  zero     5   14.65   15.44 +- 0.18   16.83
                    10   14.50   15.93 +- 0.20   18.44
                    20   14.27   17.01 +- 0.32   21.38
    layer5  mean     5   14.80   15.91 +- 0.28   18.56
                    10   14.84   16.98 +- 0.75   21.61
                    20   15.07   19.08 +- 0.85   28.43
    layer6  mean     5   14.04   15.57 +- 0.15   18.41
                    10   13.53   17.38 +- 0.41   21.03
                    20   13.26   19.15 +- 0.44   26.98

(``gandissect artifacts --model toyworld --layer layer6``, ~7 min on a busy 2-core CPU.) The
earlier scores on layer4, measured before the comparison used separate seeds and several
draws (zero ablation, 1,000 samples, one random draw), did not beat random (``causal``: 15.07 /
15.80 / 16.69 vs 15.26 / 15.48 / 16.43; ``fid``: 14.76 / 15.26 / 15.54 vs 15.21 / 15.46 /
16.79; unedited 14.72) nor lower FID below unedited. On planted ground truth
(:mod:`gandissect.artifacts.plant`, ``--plant 3,40,100,150,200``, 256 scoring samples) "effect"
ranks the 5 planted units 0..4; removing the top 10 restores FID
(``tests/artifacts/test_artifacts.py``).

Memory: per-sample features ``[samples, dim]`` (or per-image unrealism), latents and per-unit
maxima and Taylor terms ``[samples, units]`` are kept (10,000 samples x 256 units: 20 MB),
nothing per pixel.

:func:`removal_study` removes the top-k, k random (several draws, mean and SD) and the k
lowest-scoring units and reports whole-generator realism for each k beside the unedited
generator and its value on a second seed (noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from models.base import Generator

from ..common.hooks import Trace, check_feature_map
from ..common.imaging import save_figure
from ..intervention.causal import random_units
from ..intervention.edit import Edit, ablation
from .quality import frechet_distance, gaussian_stats
from .realism import DiscriminatorMeasure, FIDMeasure, RealismMeasure, check_fid_samples
from .scores import Replace, default_top, effect_scores

Method = Literal["effect", "causal", "fid", "topset"]
METHODS: tuple[str, ...] = ("effect", "causal", "fid", "topset")


@dataclass
class ArtifactScores:
    """Per-unit artifact scores of one layer (higher = more artifact-like).

    ``replacement`` ``[units]`` is the value a removed unit is set to (its mean activation over
    the scoring samples for ``replace="mean"``, else 0); :func:`removal_study` uses the same."""

    layer: str
    method: str
    scores: np.ndarray  # [units] float64
    top_samples: np.ndarray  # [units, top] sample indices, strongest first
    samples: int
    seed: int
    replace: str = "zero"
    replacement: np.ndarray | None = None  # [units]; None = 0
    details: dict[str, Any] = field(default_factory=dict)  # method-specific (see effect_scores)

    def ranking(self) -> list[int]:
        """Units from most to least artifact-like (ties broken by unit index)."""
        return [int(u) for u in np.lexsort((np.arange(len(self.scores)), -self.scores))]

    def to_dict(self) -> dict[str, Any]:
        rank = self.ranking()
        return {"layer": self.layer, "method": self.method, "samples": self.samples,
                "seed": self.seed, "top": int(self.top_samples.shape[1]), "replace": self.replace,
                "ranking": rank, "scores": {str(u): float(self.scores[u]) for u in rank},
                "details": self.details}


def _spatial_check(layer: str, acts: Any) -> torch.Tensor:
    try:
        out = check_feature_map(layer, acts)
    except (TypeError, ValueError) as e:
        raise ValueError(f"artifact scores need spatial feature maps [N, C, H, W]: {e}") from e
    if out.shape[2] * out.shape[3] < 2:
        raise ValueError(f"layer {layer!r} has {out.shape[2]}x{out.shape[3]} maps; artifact "
                         "scores need spatial maps (h*w >= 2); pick a convolutional layer")
    return out


@torch.no_grad()
def artifact_scores(generator: Generator, layer: str, measure: FIDMeasure | DiscriminatorMeasure,
                    samples: int = 1000, seed: int = 0, method: Method = "effect",
                    top: int | None = None, batch_size: int = 100,
                    replace: Replace = "mean", pool: int = 10,
                    verify_samples: int = 500, client: Any = None) -> ArtifactScores:
    """Score every unit of ``layer`` (higher = more artifact-like); see the module docs.

    ``replace`` says what a removed unit becomes: ``"mean"`` (its mean activation over these
    samples and positions) or ``"zero"``; it matters for ``"effect"`` and ``"causal"``.
    ``pool`` and ``verify_samples``: see :func:`gandissect.artifacts.scores.effect_scores`.
    ``top`` (size of each unit's top set) defaults to 16 for ``"effect"`` / ``"causal"`` (cost:
    units * top extra images) and ``max(2, samples // 10)`` otherwise. For ``"fid"`` a top set no
    larger than the feature dimension gives a FewSamplesWarning with the number needed.
    ``client`` (a ``distributed.Client``, method ``"effect"`` only): the top-set images and the
    verification measurements run as tasks on its Dask cluster, with the same scores.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if client is not None and method != "effect":
        raise ValueError(f"client= runs the 'effect' method's per-unit work on a Dask cluster; "
                         f"method {method!r} runs in this process (leave client=None)")
    if replace not in ("mean", "zero"):
        raise ValueError(f"replace must be 'mean' or 'zero', got {replace!r}")
    if samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples}")
    top = default_top(method, samples) if top is None else top
    if not 1 <= top <= samples:
        raise ValueError(f"top must lie in 1..samples ({samples}), got {top}")
    details: dict[str, Any] = {}
    uses_features = method == "fid" or (method == "effect" and isinstance(measure, FIDMeasure))
    if method == "fid":
        if not isinstance(measure, FIDMeasure):
            raise ValueError("method 'fid' needs an FIDMeasure; use 'effect', 'causal' or "
                             "'topset' with the discriminator")
        check_fid_samples(top, measure.dim, f"per-unit FID over top-{top} sets")
    if method == "effect" and isinstance(measure, FIDMeasure):
        check_fid_samples(samples, measure.dim, "the FID gradient of the effect score")
    strength_parts, value_parts, latent_parts = [], [], []
    act_sum: torch.Tensor | None = None
    act_count = 0
    was_training = generator.training
    generator.eval()
    try:
        with Trace(generator, layer) as tr:
            for start in range(0, samples, batch_size):
                z = generator.sample_latents(min(batch_size, samples - start), seed, start)
                images = generator(z).clamp(-1.0, 1.0)
                acts = _spatial_check(layer, tr[layer])
                strength_parts.append(acts.flatten(2).amax(dim=2).float().cpu())
                batch_sum = acts.double().sum(dim=(0, 2, 3)).cpu()
                act_sum = batch_sum if act_sum is None else act_sum + batch_sum
                act_count += acts.shape[0] * acts.shape[2] * acts.shape[3]
                latent_parts.append(z)
                if uses_features:
                    assert isinstance(measure, FIDMeasure)
                    value_parts.append(measure.features(images).float().cpu())
                else:
                    value_parts.append(measure.per_image(images).float().cpu()[:, None])
        assert act_sum is not None
        units = int(act_sum.shape[0])
        replacement = ((act_sum / act_count).numpy() if replace == "mean"
                       else np.zeros(units, np.float64))
        strength = torch.cat(strength_parts)  # [N, U]
        vals = torch.cat(value_parts).double().numpy()  # [N, D] or [N, 1]
        order = torch.argsort(strength, dim=0, descending=True, stable=True)[:top].T.numpy()
        latents = torch.cat(latent_parts)
        if method == "effect":
            effect = effect_scores(generator, layer, measure, latents, vals, order,
                                   replacement, seed, batch_size, pool, verify_samples,
                                   client=client)
            scores, details = effect.scores, effect.details()
        elif method == "causal":
            scores = _causal_scores(generator, layer, measure, latents, order, vals[:, 0],
                                    replacement, batch_size)
        elif method == "fid":
            assert isinstance(measure, FIDMeasure)
            scores = np.array([frechet_distance(*gaussian_stats(vals[order[u]]),
                                                *measure.reference_gaussian)
                               for u in range(units)])
        else:
            scores = np.array([vals[order[u], 0].mean() for u in range(units)])
    finally:
        generator.train(was_training)
    return ArtifactScores(layer, f"{method}/{measure.name}", scores, order, samples, seed,
                          replace, replacement, details)


def _causal_scores(generator: Generator, layer: str, measure: FIDMeasure | DiscriminatorMeasure,
                   latents: torch.Tensor, order: np.ndarray, before: np.ndarray,
                   replacement: np.ndarray, batch_size: int) -> np.ndarray:
    """Mean over each unit's top set of ``r(x) - r(x with the unit removed)``, batching many
    (unit, image) pairs per forward pass (each sample removes its own unit)."""
    units, top = order.shape
    pairs_u = np.repeat(np.arange(units), top)
    pairs_i = order.reshape(-1)
    gain = np.empty(len(pairs_u), np.float64)
    keep: dict[str, torch.Tensor] = {}
    r = torch.from_numpy(np.asarray(replacement, np.float32)).view(1, -1, 1, 1)

    def edit(_name: str, out: torch.Tensor) -> torch.Tensor:
        m = keep["mask"].to(out.device, out.dtype)
        return out * (1 - m) + r.to(out.device, out.dtype) * m

    with Trace(generator, layer, edit=edit, retain=False):
        for s in range(0, len(pairs_u), batch_size):
            u = torch.from_numpy(pairs_u[s:s + batch_size])
            i = torch.from_numpy(pairs_i[s:s + batch_size])
            mask = torch.zeros(len(u), units, 1, 1)
            mask[torch.arange(len(u)), u] = 1.0
            keep["mask"] = mask
            images = generator(latents[i]).clamp(-1.0, 1.0)
            after = measure.per_image(images).double().cpu().numpy()
            gain[s:s + len(u)] = before[pairs_i[s:s + batch_size]] - after
    out: np.ndarray = gain.reshape(units, top).mean(axis=1)
    return out


def removal_edit(layer: str, units: Sequence[int], replacement: np.ndarray | None) -> Edit:
    """An edit setting ``units`` to their ``replacement`` values (0 when ``None``)."""
    units = [int(u) for u in units]
    if replacement is None:
        return ablation(layer, units)
    return Edit(layer, units, replacement=[float(replacement[u]) for u in units])


@dataclass
class RemovalStudy:
    """Realism after removing top-k / random-k (several draws) / bottom-k units, beside the
    unedited generator on the same evaluation samples and on a second seed (noise)."""

    layer: str
    measure: str
    baseline: float
    seed: int = 0
    samples: int = 0
    replace: str = "zero"
    baseline_2: float | None = None  # unedited, second evaluation seed
    noise_seed: int | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def noise(self) -> float | None:
        """Seed-to-seed difference of the unedited realism (None without a second seed)."""
        return None if self.baseline_2 is None else abs(self.baseline - self.baseline_2)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "measure": self.measure, "baseline": self.baseline,
                "seed": self.seed, "samples": self.samples, "replace": self.replace,
                "baseline_2": self.baseline_2, "noise_seed": self.noise_seed,
                "noise": self.noise, "top_beats_random": self.top_beats_random(),
                "rows": self.rows}

    def top_beats_random(self) -> bool:
        """Top-k below the random-k mean by more than two random-draw SDs and the seed noise,
        at every k."""
        margin = self.noise or 0.0
        return bool(self.rows) and all(
            r["top"] < r["random"] - max(2.0 * r["random_sd"], margin) for r in self.rows)

    def table(self) -> str:
        draws = len(self.rows[0]["random_values"]) if self.rows else 0
        head = (f"{self.measure} (lower = more realistic), layer {self.layer}, units set to "
                f"{self.replace}; {self.samples} samples of seed {self.seed}; unedited "
                f"{self.baseline:.3f}")
        if self.baseline_2 is not None:
            head += (f" (seed {self.noise_seed}: {self.baseline_2:.3f}; noise "
                     f"{self.noise:.3f})")
        lines = [head, f"{'k':>4} {'top-k':>9} {f'random-k ({draws} draws)':>22} "
                       f"{'bottom-k':>9}"]
        for r in self.rows:
            rnd = f"{r['random']:.3f} +- {r['random_sd']:.3f}"
            lines.append(f"{r['k']:>4} {r['top']:>9.3f} {rnd:>22} {r['bottom']:>9.3f}")
        lines.append("top-k beats random-k at every k (by > 2 SD and > noise): "
                     f"{'yes' if self.top_beats_random() else 'no'}")
        return "\n".join(lines)


def removal_study(generator: Generator, layer: str, ranking: Sequence[int],
                  measure: RealismMeasure, ks: Sequence[int] = (5, 10, 20), samples: int = 1000,
                  seed: int = 0, random_seed: int = 0, random_draws: int = 5,
                  replacement: np.ndarray | None = None, noise_seed: int | None = None,
                  replace: str | None = None) -> RemovalStudy:
    """Whole-generator realism (``measure``, samples ``0..samples-1`` of ``seed``) with the
    top-k, k random (``random_draws`` draws, never the top-k; ``random_seed``) and bottom-k units
    of ``ranking`` removed (set to ``replacement[u]``, 0 when ``None``), for each k in ``ks``.
    With ``noise_seed`` the unedited generator is also measured on that seed. Use a ``seed``
    other than the scoring seed, so the evaluation samples are not the ones that chose the
    units."""
    ranking = [int(u) for u in ranking]
    if not ks or min(ks) < 1 or max(ks) > len(ranking) // 2:
        raise ValueError(f"ks must lie in 1..{len(ranking) // 2} (half the ranked units), got "
                         f"{list(ks)}")
    if random_draws < 1:
        raise ValueError(f"random_draws must be >= 1, got {random_draws}")
    if replacement is not None and len(replacement) != len(ranking):
        raise ValueError(f"replacement has {len(replacement)} values for {len(ranking)} units")
    replace = replace or ("zero" if replacement is None else "given values")
    study = RemovalStudy(layer, measure.name, measure.score(generator, samples, seed), seed,
                         samples, replace)
    if noise_seed is not None:
        study.baseline_2 = measure.score(generator, samples, noise_seed)
        study.noise_seed = noise_seed

    def score(units: Sequence[int]) -> float:
        return measure.score(generator, samples, seed, [removal_edit(layer, units, replacement)])

    for k in ks:
        top, bottom = ranking[:k], ranking[-k:]
        draws = [random_units(len(ranking), k, top, random_seed + 1000 * d + k)
                 for d in range(random_draws)]
        values = [score(units) for units in draws]
        study.rows.append({
            "k": int(k), "top": score(top), "bottom": score(bottom),
            "random": float(np.mean(values)),
            "random_sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "random_values": values, "top_units": sorted(top), "bottom_units": sorted(bottom),
            "random_units": draws})
    return study


def plot_removal(study: RemovalStudy, path: str | Path) -> Path:
    """Line plot of realism vs k (top / random / bottom, unedited as a dashed line) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in study.rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ks, [r["top"] for r in study.rows], "o-", label="remove top-k")
    ax.errorbar(ks, [r["random"] for r in study.rows], [r["random_sd"] for r in study.rows],
                fmt="s--", capsize=3, label="remove random-k (mean, SD)")
    ax.plot(ks, [r["bottom"] for r in study.rows], "^:", label="remove bottom-k")
    ax.axhline(study.baseline, color="gray", linestyle="--", label="unedited")
    if study.baseline_2 is not None:
        ax.axhline(study.baseline_2, color="gray", linestyle=":", label="unedited, 2nd seed")
    ax.set_xlabel(f"k units removed (set to {study.replace})")
    ax.set_ylabel(f"{study.measure} (lower = more realistic)")
    ax.set_title(f"artifact removal, {study.layer}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["METHODS", "ArtifactScores", "RemovalStudy", "artifact_scores", "plot_removal",
           "removal_edit", "removal_study"]
