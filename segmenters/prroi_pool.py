"""Precise RoI pooling (PrRoIPool, Jiang et al., ECCV 2018) forward pass in plain torch.

Each output bin is the integral of the bilinear interpolant of the feature map over the bin,
divided by the bin's area. Feature values sit at integer coordinates ``0..W-1`` (and
``0..H-1``); the interpolant is zero outside, so a bin reaching past ``W-1`` blends with zeros
(on an 8x8 map of ones, one bin over the whole map ``[0, 8]^2`` gives ``(7.5/8)**2 ~ 0.88``).
This is what the reference CUDA/CPU kernels compute; GAN Dissection's and unifiedparsing's
UPerNet pool their pyramid with it over the RoI ``(0, 0, W, H)``.

The bilinear interpolant is separable, so the integral over a bin is ``A_y @ F @ A_x^T`` where
``A_x[p, i] = integral over bin p of hat(x - i)`` (``hat(t) = max(0, 1 - |t|)``): two small
matrix products, on any device, differentiable.
"""

from __future__ import annotations

import torch


def _hat_cdf(t: torch.Tensor) -> torch.Tensor:
    """Integral of ``hat(s) = max(0, 1 - |s|)`` from ``-inf`` to ``t``."""
    t = t.clamp(-1.0, 1.0)
    return torch.where(t <= 0, 0.5 * (t + 1) ** 2, 1 - 0.5 * (1 - t) ** 2)


def bin_weights(start: float, end: float, bins: int, size: int,
                device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[bins, size]``: integral over each of ``bins`` equal bins of ``[start, end]`` of the
    interpolation weight of feature cell ``i`` (zero outside ``0..size-1``), divided by the
    bin's length (rows of an empty bin are zero, as the reference kernel returns 0).

    >>> bin_weights(0.0, 2.0, 1, 2).tolist()  # cells at 0 and 1; [1, 2] blends with zero
    [[0.25, 0.5]]
    """
    length = max(float(end) - float(start), 0.0) / bins
    if length == 0.0:
        return torch.zeros(bins, size, device=device, dtype=dtype)
    edges = float(start) + length * torch.arange(bins + 1, device=device, dtype=torch.float64)
    cells = torch.arange(size, device=device, dtype=torch.float64)
    cdf = _hat_cdf(edges[:, None] - cells[None, :])  # [bins + 1, size]
    return ((cdf[1:] - cdf[:-1]) / length).to(dtype)


def prroi_pool2d(features: torch.Tensor, rois: torch.Tensor, pooled_height: int,
                 pooled_width: int, spatial_scale: float = 1.0) -> torch.Tensor:
    """PrRoIPool forward: ``features [N, C, H, W]``, ``rois [K, 5]`` rows
    ``(batch index, x0, y0, x1, y1)`` in input coordinates (scaled by ``spatial_scale``) ->
    ``[K, C, pooled_height, pooled_width]``.

    >>> ones = torch.ones(1, 1, 8, 8)
    >>> round(float(prroi_pool2d(ones, torch.tensor([[0.0, 0, 0, 8, 8]]), 1, 1)), 4)
    0.8789
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [N, C, H, W], got {list(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [K, 5] (batch index, x0, y0, x1, y1), got "
                         f"{list(rois.shape)}")
    if pooled_height < 1 or pooled_width < 1:
        raise ValueError(f"pooled size must be positive, got {pooled_height}x{pooled_width}")
    h, w = features.shape[2], features.shape[3]
    out = []
    for roi in rois.detach().cpu().double().tolist():
        b, x0, y0, x1, y1 = roi
        if not (0 <= int(b) < features.shape[0]) or int(b) != b:
            raise ValueError(f"RoI batch index {b} is not an image index of the "
                             f"{features.shape[0]} feature maps")
        ay = bin_weights(y0 * spatial_scale, y1 * spatial_scale, pooled_height, h,
                         features.device, features.dtype)
        ax = bin_weights(x0 * spatial_scale, x1 * spatial_scale, pooled_width, w,
                         features.device, features.dtype)
        out.append(torch.einsum("ph,chw,qw->cpq", ay, features[int(b)], ax))
    if not out:
        return features.new_zeros(0, features.shape[1], pooled_height, pooled_width)
    return torch.stack(out)


def prroi_pool_whole(features: torch.Tensor, pooled_height: int,
                     pooled_width: int) -> torch.Tensor:
    """PrRoIPool of every map over the RoI ``(0, 0, W, H)`` (how UPerNet's pyramid pooling
    calls it): ``[N, C, H, W]`` -> ``[N, C, pooled_height, pooled_width]``, batched."""
    h, w = features.shape[2], features.shape[3]
    ay = bin_weights(0.0, float(h), pooled_height, h, features.device, features.dtype)
    ax = bin_weights(0.0, float(w), pooled_width, w, features.device, features.dtype)
    return torch.einsum("ph,nchw,qw->ncpq", ay, features, ax)


__all__ = ["bin_weights", "prroi_pool2d", "prroi_pool_whole"]
