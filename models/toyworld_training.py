"""Pieces shared by the Toyworld generator's training scripts: the rendered training pool, the
sample grid written at each checkpoint (and the same grid of rendered scenes), BatchNorm
recalibration before export, float16 storage."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .toyworld.render import render_batch
from .toyworld_gan import Z_DIM, ToyworldGenerator


def render_pool(seed: int, n: int, chunk: int = 1000) -> torch.Tensor:
    """``n`` Toyworld scenes of ``seed`` as uint8 ``[n, 3, 64, 64]`` (compact training pool)."""
    out = torch.empty(n, 3, 64, 64, dtype=torch.uint8)
    for s in range(0, n, chunk):
        k = min(chunk, n - s)
        images, _ = render_batch(seed, s, k, 64)
        out[s:s + k] = torch.from_numpy(np.rint((images + 1.0) * 127.5).astype(np.uint8))
    return out


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pool images -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


@torch.no_grad()
def sample_grid(gen: nn.Module, path: Path, n: int = 64, seed: int = 12345,
                scale: int = 2) -> None:
    """Save an 8x8 grid of ``gen`` samples (latent seed ``seed``), upscaled ``scale``x."""
    assert isinstance(gen, ToyworldGenerator)
    was_training = gen.training
    gen.eval()
    imgs = gen(gen.sample_latents(n, seed))
    gen.train(was_training)
    save_grid(imgs, path, scale)


def rendered_grid(path: Path, n: int = 64, seed: int = 12345, scale: int = 2) -> None:
    """Save scenes ``0..n-1`` of render seed ``seed`` (never a training seed) like
    :func:`sample_grid`, to put the generator's samples beside what it learnt from."""
    images, _ = render_batch(seed, 0, n, 64)
    save_grid(torch.from_numpy(images), path, scale)


def save_grid(imgs: torch.Tensor, path: Path, scale: int = 2) -> None:
    """Images ``[n, 3, 64, 64]`` in [-1, 1] as a square grid PNG (1-pixel white borders),
    upscaled ``scale``x; written atomically."""
    from PIL import Image

    n = imgs.shape[0]
    side = int(math.ceil(math.sqrt(n)))
    grid = torch.ones(3, side * 66, side * 66)
    for k in range(n):
        r, c = divmod(k, side)
        grid[:, r * 66 + 1:r * 66 + 65, c * 66 + 1:c * 66 + 65] = imgs[k]
    arr = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(arr)
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    os.replace(tmp, path)


@torch.no_grad()
def recalibrate_batchnorm(gen: ToyworldGenerator, seed: int, batches: int = 50,
                          batch: int = 64) -> None:
    """Re-estimate BatchNorm running statistics of ``gen`` (cumulative mean over ``batches``)."""
    norms = [m for m in gen.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    gen.train()
    rng = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        gen(torch.randn(batch, Z_DIM, generator=rng))
    for m in norms:
        m.momentum = 0.1
    gen.eval()


def storable(state: dict[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    """Contiguous tensors, floating point ones as float16 when ``half`` (loading casts back)."""
    return {k: (v.half() if half and v.is_floating_point() else v).contiguous()
            for k, v in state.items()}
