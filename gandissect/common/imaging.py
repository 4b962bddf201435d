"""Small image helpers shared by the CLI, reports and the app: grids, label maps, PNG output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Images ``[N, 3, H, W]`` (or ``[3, H, W]``) in [-1, 1] -> uint8 ``[N, H, W, 3]``."""
    arr = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else images
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got shape {list(arr.shape)}")
    return np.clip((arr + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def make_grid(images: np.ndarray, ncol: int = 8, scale: int = 1, pad: int = 1) -> np.ndarray:
    """Tile uint8 images ``[N, H, W, 3]`` into one uint8 image, ``ncol`` per row, each upscaled
    ``scale`` times (nearest) with ``pad`` white pixels between tiles."""
    n, h, w, _ = images.shape
    if n == 0:
        raise ValueError("cannot make a grid of zero images")
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, ncol)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + c * (w + pad):pad + c * (w + pad) + w] = images[k]
    return grid


def label_palette(n: int) -> np.ndarray:
    """``n`` distinct, deterministic RGB colours (uint8 ``[n, 3]``) for drawing label maps."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    out = np.zeros((n, 3), dtype=np.uint8)
    for i, h in enumerate(hues):
        k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
        rgb = 0.85 - 0.6 * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
        out[i] = (rgb * 255).astype(np.uint8)
    return out


def masks_to_label_image(masks: torch.Tensor | np.ndarray, channels: list[int] | None = None
                         ) -> np.ndarray:
    """Colour a multi-label mask stack ``[N, C, H, W]`` as uint8 ``[N, H, W, 3]``: each pixel
    takes the colour of the last of ``channels`` (default: all) that is set; black if none."""
    m = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    chans = list(range(m.shape[1])) if channels is None else channels
    pal = label_palette(m.shape[1])
    out = np.zeros((m.shape[0], m.shape[2], m.shape[3], 3), dtype=np.uint8)
    for c in chans:
        out[m[:, c].astype(bool)] = pal[c]
    return out


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 ``[H, W, 3]`` array as PNG, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure ``fig`` to ``path`` (parent folders created) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
