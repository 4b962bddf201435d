"""Artifact units: score every unit of a layer by how unrealistic its top-activating images are,
then prove it by ablation.

Per-unit score (one generator pass over ``samples`` latents; features computed once per sample):

* each unit's activation strength on an image is its spatial maximum on that layer;
* its top set is the ``top`` images with the highest strength;
* ``method="causal"`` (default): the mean over the top set of the per-image unrealism
  (``measure.per_image``: Mahalanobis distance to the reference features, or minus the
  discriminator logit) minus the same with that one unit ablated; i.e. how much more realistic
  the unit's own images get without it. Costs ``units * top`` extra images (batched).
* ``method="fid"`` (the ICLR 2019 paper's): the FID (:func:`gandissect.quality.frechet_distance`)
  between the top set's features and the rendered reference scenes.
* ``method="topset"``: the mean per-image unrealism over the top set.

Why causal is the default: top-set scores credit every unit that merely CO-OCCURS with an
artifact (e.g. all sky units when the artifact lives in the sky); on planted ground truth in the
Toyworld GAN, top-set FID ranked 3 of 5 planted units outside the top 10, the causal score ranks
them first. Higher score = more artifact-like for every method.

Measured on the shipped Toyworld GAN (layer4, 1,000 samples, FID in segmenter features):
no set of k = 5/10/20 units found by either score lowers whole-generator FID below the unedited
14.72 (top-set FID keeps it lowest: 14.76 / 15.26 / 15.54 vs random 15.21 / 15.46 / 16.79), so
this GAN shows no removable artifact units at layer4 by these measures. On planted ground truth
(:mod:`gandissect.plant_artifacts`) the causal score ranks the 5 planted units 0..4 and removing
them restores FID (56.1 -> 22.3; unplanted 22.0; iteration-3,885 training checkpoint, 500
samples, ``--plant 3,40,100,150,200``). See ``tests/test_artifacts.py``.

Memory: per-sample features ``[samples, dim]`` (or per-image unrealism), latents and per-unit
maxima ``[samples, units]`` are kept (10,000 samples x 256 units is 10 MB), nothing per pixel.

:func:`removal_study` ablates the top-k, k random and the k lowest-scoring units and reports
whole-generator realism for each k beside the unedited generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from models.base import Generator

from .causal import random_units
from .hooks import Trace, check_feature_map
from .intervene import ablation
from .quality import frechet_distance, gaussian_stats
from .realism import DiscriminatorMeasure, FIDMeasure, RealismMeasure, check_fid_samples

Method = Literal["causal", "fid", "topset"]


@dataclass
class ArtifactScores:
    """Per-unit artifact scores of one layer (higher = more artifact-like)."""

    layer: str
    method: str
    scores: np.ndarray  # [units] float64
    top_samples: np.ndarray  # [units, top] sample indices, strongest first
    samples: int
    seed: int

    def ranking(self) -> list[int]:
        """Units from most to least artifact-like (ties broken by unit index)."""
        return [int(u) for u in np.lexsort((np.arange(len(self.scores)), -self.scores))]

    def to_dict(self) -> dict[str, Any]:
        rank = self.ranking()
        return {"layer": self.layer, "method": self.method, "samples": self.samples,
                "seed": self.seed, "top": int(self.top_samples.shape[1]), "ranking": rank,
                "scores": {str(u): float(self.scores[u]) for u in rank}}


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
                    samples: int = 1000, seed: int = 0, method: Method = "causal",
                    top: int | None = None, batch_size: int = 100) -> ArtifactScores:
    """Score every unit of ``layer`` (higher = more artifact-like); see the module docs.

    ``top`` (size of each unit's top set) defaults to 16 for ``"causal"`` (cost: units * top
    extra images) and ``max(2, samples // 10)`` otherwise. For ``"fid"`` a top set no larger than
    the feature dimension gives a FewSamplesWarning with the number of samples needed.
    """
    if method not in ("causal", "fid", "topset"):
        raise ValueError(f"method must be 'causal', 'fid' or 'topset', got {method!r}")
    if samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples}")
    if top is None:
        top = min(16, samples) if method == "causal" else max(2, samples // 10)
    if not 1 <= top <= samples:
        raise ValueError(f"top must lie in 1..samples ({samples}), got {top}")
    if method == "fid":
        if not isinstance(measure, FIDMeasure):
            raise ValueError("method 'fid' needs an FIDMeasure; use 'causal' or 'topset' with "
                             "the discriminator")
        check_fid_samples(top, measure.dim, f"per-unit FID over top-{top} sets")
    strength_parts, value_parts, latent_parts = [], [], []
    was_training = generator.training
    generator.eval()
    try:
        with Trace(generator, layer) as tr:
            for start in range(0, samples, batch_size):
                z = generator.sample_latents(min(batch_size, samples - start), seed, start)
                images = generator(z).clamp(-1.0, 1.0)
                acts = _spatial_check(layer, tr[layer])
                strength_parts.append(acts.flatten(2).amax(dim=2).float().cpu())
                latent_parts.append(z)
                if method == "fid":
                    assert isinstance(measure, FIDMeasure)
                    value_parts.append(measure.features(images).float().cpu())
                else:
                    value_parts.append(measure.per_image(images).float().cpu()[:, None])
        strength = torch.cat(strength_parts)  # [N, U]
        vals = torch.cat(value_parts).double().numpy()  # [N, D] or [N, 1]
        order = torch.argsort(strength, dim=0, descending=True, stable=True)[:top].T.numpy()
        units = strength.shape[1]
        if method == "causal":
            scores = _causal_scores(generator, layer, measure, torch.cat(latent_parts),
                                    order, vals[:, 0], batch_size)
        elif method == "fid":
            assert isinstance(measure, FIDMeasure)
            scores = np.array([frechet_distance(*gaussian_stats(vals[order[u]]), *measure._ref)
                               for u in range(units)])
        else:
            scores = np.array([vals[order[u], 0].mean() for u in range(units)])
    finally:
        generator.train(was_training)
    return ArtifactScores(layer, f"{method}/{measure.name}", scores, order, samples, seed)


def _causal_scores(generator: Generator, layer: str, measure: FIDMeasure | DiscriminatorMeasure,
                   latents: torch.Tensor, order: np.ndarray, before: np.ndarray,
                   batch_size: int) -> np.ndarray:
    """Mean over each unit's top set of ``r(x) - r(x with the unit ablated)``, batching many
    (unit, image) pairs per forward pass (each sample ablates its own unit)."""
    units, top = order.shape
    pairs_u = np.repeat(np.arange(units), top)
    pairs_i = order.reshape(-1)
    gain = np.empty(len(pairs_u), np.float64)
    keep: dict[str, torch.Tensor] = {}

    def edit(_name: str, out: torch.Tensor) -> torch.Tensor:
        return out * keep["mask"].to(out.dtype)

    with Trace(generator, layer, edit=edit, retain=False):
        for s in range(0, len(pairs_u), batch_size):
            u = torch.from_numpy(pairs_u[s:s + batch_size])
            i = torch.from_numpy(pairs_i[s:s + batch_size])
            mask = torch.ones(len(u), units, 1, 1, device=latents.device)
            mask[torch.arange(len(u)), u] = 0.0
            keep["mask"] = mask
            images = generator(latents[i]).clamp(-1.0, 1.0)
            after = measure.per_image(images).double().cpu().numpy()
            gain[s:s + len(u)] = before[pairs_i[s:s + batch_size]] - after
    out: np.ndarray = gain.reshape(units, top).mean(axis=1)
    return out


@dataclass
class RemovalStudy:
    """Realism after ablating top-k / random-k / bottom-k units, beside the unedited baseline."""

    layer: str
    measure: str
    baseline: float
    rows: list[dict[str, Any]] = field(default_factory=list)  # k, top, random, bottom (+ units)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "measure": self.measure, "baseline": self.baseline,
                "rows": self.rows}

    def table(self) -> str:
        lines = [f"{self.measure} (lower = more realistic), layer {self.layer}; "
                 f"unedited {self.baseline:.4f}",
                 f"{'k':>4} {'top-k':>10} {'random-k':>10} {'bottom-k':>10}"]
        for r in self.rows:
            lines.append(f"{r['k']:>4} {r['top']:>10.4f} {r['random']:>10.4f} "
                         f"{r['bottom']:>10.4f}")
        return "\n".join(lines)


def removal_study(generator: Generator, layer: str, ranking: Sequence[int],
                  measure: RealismMeasure, ks: Sequence[int] = (5, 10, 20), samples: int = 1000,
                  seed: int = 0, random_seed: int = 0) -> RemovalStudy:
    """Whole-generator realism (``measure``, samples ``0..samples-1`` of ``seed``) with the
    top-k, k random (excluding the top-k; ``random_seed``) and bottom-k units of ``ranking``
    ablated, for each k in ``ks``."""
    ranking = [int(u) for u in ranking]
    if not ks or min(ks) < 1 or max(ks) > len(ranking) // 2:
        raise ValueError(f"ks must lie in 1..{len(ranking) // 2} (half the ranked units), got "
                         f"{list(ks)}")
    study = RemovalStudy(layer, measure.name, measure.score(generator, samples, seed))
    for k in ks:
        top, bottom = ranking[:k], ranking[-k:]
        rand = random_units(len(ranking), k, top, random_seed + k)
        row: dict[str, Any] = {"k": int(k)}
        for name, units in (("top", top), ("random", rand), ("bottom", bottom)):
            row[name] = measure.score(generator, samples, seed, [ablation(layer, units)])
            row[f"{name}_units"] = sorted(units)
        study.rows.append(row)
    return study


def plot_removal(study: RemovalStudy, path: str | Path) -> Path:
    """Line plot of realism vs k (top / random / bottom, unedited as a dashed line) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in study.rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, style in (("top", "o-"), ("random", "s--"), ("bottom", "^:")):
        ax.plot(ks, [r[name] for r in study.rows], style, label=f"ablate {name}-k")
    ax.axhline(study.baseline, color="gray", linestyle="--", label="unedited")
    ax.set_xlabel("k units ablated")
    ax.set_ylabel(f"{study.measure} (lower = more realistic)")
    ax.set_title(f"artifact removal, {study.layer}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["ArtifactScores", "RemovalStudy", "artifact_scores", "plot_removal", "removal_study"]
