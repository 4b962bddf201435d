"""GAN quality as a segmentation statistic: Frechet distance of concept-fraction vectors.

For every image, a segmenter's masks give a vector ``f[c]`` = fraction of the image's pixels that
carry concept ``c``. The *Frechet segmentation distance* (FSD) compares the Gaussians fitted to
these vectors for generated images and for rendered Toyworld scenes of a held-out seed:

    FSD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)

(the Frechet/2-Wasserstein distance of two Gaussians). It is reported beside a *floor* (the
same between two disjoint sets of rendered scenes: what sampling noise alone gives) and the
value for a freshly initialised generator of the same architecture (what "no training" gives).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from models.base import Generator
from models.toyworld.render import render_batch
from segmenters.base import Segmenter

#: Seed of the rendered reference scenes (disjoint from training seed 0).
HELD_OUT_SEED = 2_000_003


def sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (via ``eigh``).

    Tiny negative eigenvalues from round-off are clipped to 0.
    """
    sym = (matrix + matrix.T) / 2.0
    vals, vecs = np.linalg.eigh(sym)
    root: np.ndarray = (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T
    return root


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray,
                     cov2: np.ndarray) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2), in float64.

    Uses Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2), a symmetric PSD matrix, so only ``eigh``
    is needed. The result is clipped at 0 (round-off can make it slightly negative).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size,) * 2:
        raise ValueError(f"mismatched shapes: mu {mu1.shape} vs {mu2.shape}, "
                         f"cov {cov1.shape} vs {cov2.shape}")
    root1 = sqrtm_psd(cov1)
    middle = root1 @ cov2 @ root1
    vals = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    tr_cross = float(np.sqrt(np.clip(vals, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_cross)
    return max(value, 0.0)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``features`` ``[N, D]``, float64; needs N >= 2."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features [N, D] with N >= 2, got shape {list(x.shape)}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def fsd_of(features1: np.ndarray, features2: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets ``[N, D]``."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


def concept_fractions(masks: torch.Tensor) -> np.ndarray:
    """Per-image concept pixel fractions ``[N, C]`` of boolean masks ``[N, C, H, W]``."""
    if masks.dim() != 4:
        raise ValueError(f"masks must be [N, C, H, W], got {list(masks.shape)}")
    out: np.ndarray = masks.float().mean(dim=(2, 3)).cpu().numpy().astype(np.float64)
    return out


def _batches(samples: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, samples, batch_size):
        yield start, min(batch_size, samples - start)


@torch.no_grad()
def generated_fractions(generator: Generator, segmenter: Segmenter, samples: int, seed: int,
                        batch_size: int = 100, progress: bool = True,
                        desc: str = "generated") -> np.ndarray:
    """Concept fractions ``[samples, C]`` of ``generator``'s samples ``0..samples-1`` of
    ``seed``."""
    feats = []
    for start, n in tqdm(list(_batches(samples, batch_size)), desc=desc, disable=not progress):
        images = generator(generator.sample_latents(n, seed, start)).clamp(-1.0, 1.0)
        feats.append(concept_fractions(segmenter.segment(images)))
    return np.concatenate(feats) if feats else np.zeros((0, len(segmenter.labels)))


@torch.no_grad()
def rendered_fractions(segmenter: Segmenter, samples: int, seed: int = HELD_OUT_SEED,
                       start: int = 0, batch_size: int = 100, progress: bool = True,
                       desc: str = "rendered") -> tuple[np.ndarray, np.ndarray]:
    """Concept fractions of rendered scenes ``start..start+samples-1`` of ``seed``: as seen by
    ``segmenter`` ``[samples, C]``, and from the renderer's exact masks ``[samples, 15]``."""
    seen, truth = [], []
    for s, n in tqdm(list(_batches(samples, batch_size)), desc=desc, disable=not progress):
        images, masks = render_batch(seed, start + s, n, 64)
        seen.append(concept_fractions(segmenter.segment(torch.from_numpy(images))))
        truth.append(concept_fractions(torch.from_numpy(masks)))
    return np.concatenate(seen), np.concatenate(truth)


def fresh_generator(generator: Generator, seed: int) -> Generator:
    """A freshly initialised generator of ``generator``'s class (init seeded, global RNG
    untouched), in eval mode on the same device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            fresh = type(generator)()
        except TypeError as e:
            raise TypeError(f"cannot build an untrained {type(generator).__name__} without "
                            f"arguments ({e}); pass untrained=<a fresh instance>") from e
    return fresh.to(generator.device).eval()


def gan_quality(generator: Generator, segmenter: Segmenter, samples: int = 2000, seed: int = 0,
                batch_size: int = 100, untrained: Generator | None = None,
                progress: bool = True) -> dict:
    """Segmentation-based quality of ``generator`` against rendered Toyworld scenes.

    Returns ``{"fsd", "fsd_floor", "fsd_untrained", "concept_rates", "samples", "seed",
    "reference_seed"}``. ``concept_rates[c]`` holds the mean pixel fraction of concept ``c``
    in ``"generated"`` images and ``"rendered"`` scenes (both as seen by ``segmenter``), plus
    ``"rendered_truth"`` from the renderer's own masks when the segmenter's labels are
    Toyworld concepts. ``untrained`` defaults to a fresh instance of ``generator``'s class,
    initialised from ``seed``. The floor compares rendered scenes ``0..samples-1`` with
    ``samples..2*samples-1`` of the held-out seed.
    """
    if samples < 2:
        raise ValueError(f"samples must be >= 2 to fit a covariance, got {samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from models.toyworld.concepts import CONCEPTS

    was_training = generator.training
    generator.eval()
    try:
        gen = generated_fractions(generator, segmenter, samples, seed, batch_size, progress)
    finally:
        generator.train(was_training)
    ref, ref_truth = rendered_fractions(segmenter, samples, HELD_OUT_SEED, 0, batch_size,
                                        progress, "rendered")
    ref2, _ = rendered_fractions(segmenter, samples, HELD_OUT_SEED, samples, batch_size,
                                 progress, "rendered (floor)")
    fresh = untrained if untrained is not None else fresh_generator(generator, seed)
    unt = generated_fractions(fresh.eval(), segmenter, samples, seed, batch_size, progress,
                              "untrained")
    labels = list(segmenter.labels)
    truth_idx = ({c: CONCEPTS.index(c) for c in labels} if set(labels) <= set(CONCEPTS)
                 else {})
    rates = concept_rates(gen, ref, labels)
    for c in rates if truth_idx else ():
        rates[c]["rendered_truth"] = float(ref_truth[:, truth_idx[c]].mean())
    return {"fsd": fsd_of(gen, ref), "fsd_floor": fsd_of(ref2, ref),
            "fsd_untrained": fsd_of(unt, ref), "concept_rates": rates, "samples": samples,
            "seed": seed, "reference_seed": HELD_OUT_SEED}


def concept_rates(generated: np.ndarray, rendered: np.ndarray, labels: Sequence[str]
                  ) -> dict[str, dict[str, float]]:
    """``{concept: {"generated", "rendered"}}``: mean pixel fractions of each concept over the
    per-image fractions ``[n, C]`` of generated and of rendered images (columns in ``labels``
    order)."""
    return {c: {"generated": float(generated[:, k].mean()),
                "rendered": float(rendered[:, k].mean())} for k, c in enumerate(labels)}


def concept_coverage_ok(result: dict, min_rendered: float = 0.01,
                        min_ratio: float = 1 / 3) -> dict[str, bool]:
    """For concepts covering >= ``min_rendered`` of rendered pixels: is the generated rate at
    least ``min_ratio`` of the rendered one?"""
    return {c: r["generated"] >= min_ratio * r["rendered"]
            for c, r in result["concept_rates"].items() if r["rendered"] >= min_rendered}


def format_table(result: dict) -> str:
    """A readable text table of a :func:`gan_quality` result."""
    ok = concept_coverage_ok(result)
    lines = [f"FSD {result['fsd']:.5f}   floor {result['fsd_floor']:.5f}   "
             f"untrained {result['fsd_untrained']:.5f}   "
             f"({result['samples']} samples, seed {result['seed']}, "
             f"reference seed {result['reference_seed']})",
             f"{'concept':<10} {'generated':>10} {'rendered':>10} {'ratio':>7}  check"]
    for c, r in result["concept_rates"].items():
        ratio = r["generated"] / r["rendered"] if r["rendered"] > 0 else float("nan")
        check = ("ok" if ok[c] else "LOW") if c in ok else "(<1%)"
        lines.append(f"{c:<10} {r['generated']:>10.4f} {r['rendered']:>10.4f} "
                     f"{ratio:>7.2f}  {check}")
    return "\n".join(lines)


__all__ = ["HELD_OUT_SEED", "concept_coverage_ok", "concept_fractions", "concept_rates",
           "format_table", "frechet_distance", "fsd_of", "gan_quality", "gaussian_stats",
           "sqrtm_psd"]
