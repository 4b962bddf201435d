"""Pluggable realism measures of a generator's output (lower = more realistic, for all of them).

A :class:`RealismMeasure` scores a generator over samples ``0..samples-1`` of a latent seed,
optionally with interventions applied::

    fid = FIDMeasure(SegmenterFeatures.from_segmenter(segmenters.load("toyworld")))
    fid.score(gen, samples=1000, seed=0)                                  # FID vs rendered scenes
    fid.score(gen, samples=1000, seed=0, edits=[ablation("layer4", [7])])  # with unit 7 off

* :class:`FIDMeasure`: Frechet distance between Gaussians fitted to pooled encoder features of
  the generated images and of rendered Toyworld scenes from a held-out seed (the Frechet
  distance is :func:`gandissect.frechet_distance`). Feature statistics are accumulated
  streaming (:class:`StreamingGaussian`: sums and outer-product sums), never storing features.
* :class:`DiscriminatorMeasure`: minus the mean logit of the GAN's own discriminator.

FID with fewer samples than the feature dimension has a singular covariance and a large bias;
:func:`check_fid_samples` warns with the number needed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.base import Generator
from models.toyworld.render import render_batch

from ..intervention.edit import Edit, intervene
from .quality import HELD_OUT_SEED, frechet_distance


class FewSamplesWarning(UserWarning):
    """Too few samples for a stable Frechet distance in the chosen feature space."""


@runtime_checkable
class RealismMeasure(Protocol):
    """``score(generator, samples, seed, edits=()) -> float`` over a generator's samples and
    ``per_image(images) -> [n]`` per image; lower means more realistic for both."""

    name: str

    def score(self, generator: Generator, samples: int, seed: int,
              edits: Sequence[Edit] = ()) -> float: ...

    def per_image(self, images: torch.Tensor) -> torch.Tensor: ...


def limit_numpy_blas_threads(threads: int = 1) -> bool:
    """Best effort: set the thread count of numpy's bundled OpenBLAS (process-wide, like
    ``torch.set_num_threads``). On a busy 2-core machine, multi-threaded BLAS makes the many small
    eigendecompositions of per-unit FID ~100x slower. Returns whether it took effect."""
    import ctypes
    from pathlib import Path

    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for lib in sorted(libs.glob("*openblas*.so*")):
        try:
            handle = ctypes.CDLL(str(lib))
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                    "openblas_set_num_threads"):
            fn = getattr(handle, sym, None)
            if fn is not None:
                fn(int(threads))
                return True
    return False


def check_fid_samples(samples: int, dim: int, what: str = "FID") -> None:
    """Warn (:class:`FewSamplesWarning`) when ``samples <= dim``: the covariance is singular."""
    if samples <= dim:
        warnings.warn(f"{what} with {samples} samples in a {dim}-d feature space is unstable "
                      f"(singular covariance); use at least {dim + 1} samples, ideally "
                      f">= {10 * dim}", FewSamplesWarning, stacklevel=3)


class StreamingGaussian:
    """Streaming mean and covariance of feature vectors ``[n, dim]`` (float64 sums).

    Mergeable (``merge``) and serialisable (``state_dict`` / ``load_state_dict``): shards give
    the same statistics as one pass. Memory is O(dim^2), independent of the number of samples.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.count = 0
        self._sum = np.zeros(dim, np.float64)
        self._outer = np.zeros((dim, dim), np.float64)

    def add(self, features: torch.Tensor | np.ndarray) -> None:
        """Add a batch ``[n, dim]``."""
        x = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) \
            else np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features [n, {self.dim}], got shape {list(x.shape)}")
        self.count += x.shape[0]
        self._sum += x.sum(axis=0)
        self._outer += x.T @ x

    def merge(self, other: StreamingGaussian) -> None:
        """Add ``other``'s samples to this one."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge dim {other.dim} into dim {self.dim}")
        self.count += other.count
        self._sum += other._sum
        self._outer += other._outer

    def mean(self) -> np.ndarray:
        if self.count < 1:
            raise ValueError("no samples added")
        out: np.ndarray = self._sum / self.count
        return out

    def cov(self) -> np.ndarray:
        """Unbiased covariance (needs >= 2 samples)."""
        if self.count < 2:
            raise ValueError(f"need >= 2 samples for a covariance, have {self.count}")
        mu = self.mean()
        out: np.ndarray = (self._outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return (out + out.T) / 2.0

    def state_dict(self) -> dict[str, np.ndarray | int]:
        return {"count": self.count, "sum": self._sum.copy(), "outer": self._outer.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray | int]) -> None:
        s, o = np.asarray(state["sum"], np.float64), np.asarray(state["outer"], np.float64)
        if s.shape != (self.dim,) or o.shape != (self.dim, self.dim):
            raise ValueError(f"state does not match dim {self.dim}")
        self.count, self._sum, self._outer = int(state["count"]), s.copy(), o.copy()


class SegmenterFeatures(nn.Module):
    """Pooled encoder features of a U-Net segmenter (the Toyworld one): for each chosen encoder
    level, the spatial mean and/or max of its channels, concatenated. Images ``[n, 3, H, W]`` in
    [-1, 1] -> ``[n, dim]``. Default: levels 0 (full resolution: texture, high frequencies) and the
    deepest (semantics), mean and max pooled: 2 * (16 + 96) = 224 dims for the shipped net. Max
    pooling at full resolution is what exposes small local defects; mean pooling alone misses them.
    """

    def __init__(self, down: nn.ModuleList, levels: Sequence[int] | None = None,
                 pool: str = "meanmax") -> None:
        super().__init__()
        if pool not in ("mean", "max", "meanmax"):
            raise ValueError(f"pool must be 'mean', 'max' or 'meanmax', got {pool!r}")
        self.pool = pool
        self.down = down
        n = len(down)
        self.levels = (0, n - 1) if levels is None else tuple(sorted(set(levels)))
        if not self.levels or any(not 0 <= lv < n for lv in self.levels):
            raise ValueError(f"levels must be indices in 0..{n - 1}, got {self.levels}")
        widths = [_out_channels(block) for block in down]
        self.dim = sum(widths[lv] for lv in self.levels) * (2 if pool == "meanmax" else 1)

    @classmethod
    def from_segmenter(cls, segmenter: object, levels: Sequence[int] | None = None,
                       pool: str = "meanmax") -> SegmenterFeatures:
        """Features of ``segmenter.net.down`` (a :class:`segmenters.toyworld.ToyworldSegmenter`)."""
        net = getattr(segmenter, "net", None)
        down = getattr(net, "down", None)
        if not isinstance(down, nn.ModuleList):
            raise TypeError(f"{type(segmenter).__name__} has no U-Net encoder (.net.down); FID "
                            "features need the Toyworld segmenter (segmenters.load('toyworld'))")
        return cls(down, levels, pool).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.differentiable(images)

    def differentiable(self, images: torch.Tensor) -> torch.Tensor:
        """The same features, keeping autograd (for gradients of FID w.r.t. images)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [n, 3, H, W], got {list(images.shape)}")
        x = images.float()
        feats = []
        for k, block in enumerate(self.down):
            if k > max(self.levels):
                break
            if k:
                x = F.max_pool2d(x, 2)
            x = block(x)
            if k in self.levels:
                if self.pool in ("mean", "meanmax"):
                    feats.append(x.mean(dim=(2, 3)))
                if self.pool in ("max", "meanmax"):
                    feats.append(x.amax(dim=(2, 3)))
        return torch.cat(feats, dim=1)


def _out_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise TypeError("encoder block without a Conv2d")
    return int(convs[-1].out_channels)


def _batches(samples: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, samples, batch_size):
        yield start, min(batch_size, samples - start)


@torch.no_grad()
def generated_images(generator: Generator, samples: int, seed: int, edits: Sequence[Edit] = (),
                     batch_size: int = 100) -> Iterator[torch.Tensor]:
    """Batches of ``generator``'s images (clamped to [-1, 1]) for latents ``0..samples-1``."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    with intervene(generator, *edits):
        for start, n in _batches(samples, batch_size):
            yield generator(generator.sample_latents(n, seed, start)).clamp(-1.0, 1.0)


class FIDMeasure:
    """FID in a feature space against rendered Toyworld scenes ``0..reference_samples-1`` of
    ``reference_seed`` (held out from GAN training). Reference statistics are computed once."""

    name = "fid"

    def __init__(self, features: nn.Module, reference_samples: int = 2000,
                 reference_seed: int = HELD_OUT_SEED, batch_size: int = 100) -> None:
        self.features = features
        self.dim = int(features.dim)  # type: ignore[arg-type]
        self.batch_size = batch_size
        check_fid_samples(reference_samples, self.dim, "reference FID statistics")
        self.reference = StreamingGaussian(self.dim)
        for start, n in _batches(reference_samples, batch_size):
            images, _ = render_batch(reference_seed, start, n, 64)
            self.reference.add(self.features(torch.from_numpy(images)))
        self._ref = (self.reference.mean(), self.reference.cov())
        self._precision: torch.Tensor | None = None

    @property
    def reference_gaussian(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``[dim]`` and covariance ``[dim, dim]`` of the reference features."""
        return self._ref

    def stats(self, images: Iterator[torch.Tensor]) -> StreamingGaussian:
        """Streaming feature statistics of image batches."""
        acc = StreamingGaussian(self.dim)
        for batch in images:
            acc.add(self.features(batch))
        return acc

    def distance(self, stats: StreamingGaussian) -> float:
        """FID of accumulated statistics against the reference."""
        return frechet_distance(stats.mean(), stats.cov(), *self._ref)

    def per_image(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image unrealism ``[n]``: squared Mahalanobis distance of each image's features to
        the reference Gaussian (covariance regularised by 1e-6 of its mean variance)."""
        return self.mahalanobis(self.features(images)).float()

    def mahalanobis(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance ``[n]`` (float64) of features ``[n, dim]`` to the
        reference Gaussian; see :meth:`per_image`."""
        if self._precision is None:
            mu, cov = self._ref
            reg = 1e-6 * float(np.trace(cov)) / self.dim
            self._precision = torch.from_numpy(np.linalg.inv(cov + reg * np.eye(self.dim)))
        d = features.detach().double().cpu() - torch.from_numpy(self._ref[0])
        return torch.einsum("nd,de,ne->n", d, self._precision, d)

    def score(self, generator: Generator, samples: int, seed: int,
              edits: Sequence[Edit] = ()) -> float:
        check_fid_samples(samples, self.dim)
        if samples < 2:
            raise ValueError(f"FID needs >= 2 samples, got {samples}")
        return self.distance(self.stats(generated_images(generator, samples, seed, edits,
                                                         self.batch_size)))


class DiscriminatorMeasure:
    """Minus the mean realism logit of ``discriminator`` (images ``[n,3,H,W]`` -> logits ``[n]``)
    over the generated samples: lower = the discriminator finds them more real."""

    name = "discriminator"

    def __init__(self, discriminator: nn.Module | None, batch_size: int = 100) -> None:
        if discriminator is None:
            raise ValueError("this generator has no discriminator; choose the 'fid' measure "
                             "(or pass the GAN's discriminator)")
        self.discriminator = discriminator.eval()
        #: images the discriminator judges together (minibatch-stddev group; 1 = each alone)
        self.group = max(1, int(getattr(discriminator, "mbstd_group", 0) or 0))
        self.batch_size = -(-batch_size // self.group) * self.group  # a multiple of the group

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.differentiable_logits(images)

    def differentiable_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Realism logits ``[n]``, keeping autograd.

        A discriminator with a minibatch-stddev feature (``mbstd_group = g``) sees consecutive
        chunks of ``g`` images together, so an image's logit depends on the images of its chunk
        only (not on the batch size): :meth:`score` is the same for every ``batch_size``.
        """
        n = images.shape[0]
        outs = [self.discriminator(images[s:s + self.group]) for s in range(0, n, self.group)]
        return torch.cat(outs).reshape(n, -1).mean(dim=1)

    def per_image(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image unrealism ``[n]``: minus the discriminator logit."""
        return -self.logits(images).float()

    def score(self, generator: Generator, samples: int, seed: int,
              edits: Sequence[Edit] = ()) -> float:
        total, count = 0.0, 0
        for batch in generated_images(generator, samples, seed, edits, self.batch_size):
            total += float(self.logits(batch).double().sum())
            count += batch.shape[0]
        return -total / count


__all__ = ["DiscriminatorMeasure", "FIDMeasure", "FewSamplesWarning", "RealismMeasure",
           "SegmenterFeatures", "StreamingGaussian", "check_fid_samples", "generated_images",
           "limit_numpy_blas_threads"]
