"""PrRoIPool forward (segmenters.prroi_pool) against brute-force numerical integration of the
zero-padded bilinear interpolant, and the values quoted in the docs."""

from __future__ import annotations

import pytest
import torch

from segmenters.prroi_pool import bin_weights, prroi_pool2d, prroi_pool_whole


def _interpolant(f: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation of ``f [C, H, W]`` at points (x, y), values at integer
    coordinates, zero outside the map (the reference kernel's data fetch)."""
    h, w = f.shape[1:]
    x0, y0 = x.floor(), y.floor()
    out = torch.zeros(f.shape[0], *x.shape, dtype=f.dtype)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            vals = f[:, yi.clamp(0, h - 1).long(), xi.clamp(0, w - 1).long()]
            out += vals * (wgt * inside)
    return out


def _brute(f: torch.Tensor, roi: list[float], ph: int, pw: int, scale: float,
           n: int = 300) -> torch.Tensor:
    """Midpoint-rule integral over each bin with n x n points, divided by the bin area."""
    _, x0, y0, x1, y1 = (v * scale if i else v for i, v in enumerate(roi))
    bw, bh = max(x1 - x0, 0) / pw, max(y1 - y0, 0) / ph
    out = torch.zeros(f.shape[0], ph, pw, dtype=f.dtype)
    if bw * bh == 0:
        return out
    t = (torch.arange(n, dtype=f.dtype) + 0.5) / n
    for p in range(ph):
        for q in range(pw):
            ys = y0 + bh * (p + t)
            xs = x0 + bw * (q + t)
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            out[:, p, q] = _interpolant(f, xx, yy).mean(dim=(1, 2))
    return out


def test_against_numerical_integration() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    rois = torch.tensor([[0, 0.0, 0.0, 7.0, 6.0],       # whole map (UPerNet's PPM)
                         [1, 1.3, 0.7, 5.2, 4.9],       # fractional corners
                         [0, -2.0, -1.5, 9.5, 8.0],     # beyond the border: zeros blend in
                         [1, 2.0, 3.0, 2.0, 5.0]],      # zero width: empty bins give 0
                        dtype=torch.float64)
    for ph, pw, scale in ((1, 1, 1.0), (2, 3, 1.0), (3, 2, 0.5)):
        got = prroi_pool2d(feats, rois, ph, pw, scale)
        assert got.shape == (4, 3, ph, pw)
        for k, roi in enumerate(rois.tolist()):
            want = _brute(feats[int(roi[0])], roi, ph, pw, scale)
            torch.testing.assert_close(got[k], want, atol=2e-4, rtol=0)
    assert not got[3].any()


def test_known_values_and_whole_map() -> None:
    ones = torch.ones(1, 1, 8, 8)
    # one bin over [0, 8]^2: the last cell [7, 8] blends with zero -> (7.5 / 8)^2
    assert float(prroi_pool_whole(ones, 1, 1)) == pytest.approx((7.5 / 8) ** 2)
    two = prroi_pool_whole(ones, 2, 2)[0, 0]
    torch.testing.assert_close(two, torch.tensor([[1.0, 0.875], [0.875, 0.875 ** 2]]))
    feats = torch.randn(3, 4, 5, 9, generator=torch.Generator().manual_seed(1))
    rois = torch.tensor([[i, 0.0, 0.0, 9.0, 5.0] for i in range(3)])
    for s in (1, 2, 3, 6):
        torch.testing.assert_close(prroi_pool_whole(feats, s, s), prroi_pool2d(feats, rois, s, s))
    # linear in the features and differentiable (plain torch ops)
    x = feats.clone().requires_grad_(True)
    prroi_pool_whole(x, 3, 3).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bin_weights_rows_integrate_the_hat_functions() -> None:
    w = bin_weights(0.0, 10.0, 5, 10, dtype=torch.float64)
    # each interior bin [2k, 2k+2] sees cell totals summing to 1 (partition of unity)
    torch.testing.assert_close(w[:4].sum(1), torch.ones(4, dtype=torch.float64))
    assert float(w[4].sum()) == pytest.approx(0.75)  # [8, 10]: the last cell fades to zero


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        prroi_pool2d(torch.zeros(1, 1, 4, 4), torch.zeros(2, 4), 2, 2)
    with pytest.raises(ValueError, match="batch index"):
        prroi_pool2d(torch.zeros(1, 1, 4, 4), torch.tensor([[3.0, 0, 0, 4, 4]]), 2, 2)
    with pytest.raises(ValueError, match="N, C, H, W"):
        prroi_pool2d(torch.zeros(4, 4), torch.tensor([[0.0, 0, 0, 4, 4]]), 2, 2)
