"""Bilinear upsampling (``align_corners=False``) of unit maps, dense or only where needed.

The output pixel ``(i, j)`` of a bilinear upsampling depends on the four source cells of one
*quad* ``(i0(i), j0(j))``; its value never exceeds the quad's maximum. :class:`Upsampler`
computes values either for all pixels (:meth:`Upsampler.dense`) or only for the pixels of chosen
quads (:meth:`Upsampler.sparse`); both evaluate the same floating-point expression in the same
order, so a pixel gets a bit-identical value on either path (and within 1e-6 of
``F.interpolate(mode="bilinear", align_corners=False)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _axis_table(src: int, dst: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch's 1-D bilinear source indices and weights for ``align_corners=False``."""
    scale = torch.tensor(src / dst, dtype=torch.float32)
    pos = (torch.arange(dst, dtype=torch.float32) + 0.5) * scale - 0.5
    pos = pos.clamp(min=0.0)
    i0 = pos.floor().long().clamp(max=src - 1)
    i1 = (i0 + 1).clamp(max=src - 1)
    lam1 = (pos - i0.float()).clamp(0.0, 1.0)
    lam0 = 1.0 - lam1
    return i0, i1, lam0, lam1


class Upsampler:
    """Bilinear resize of ``[N, U, h, w]`` maps to ``(H, W)``, dense or sparse by quad."""

    def __init__(self, src: tuple[int, int], dst: tuple[int, int],
                 device: torch.device | str = "cpu") -> None:
        self.src = (int(src[0]), int(src[1]))
        self.dst = (int(dst[0]), int(dst[1]))
        dev = torch.device(device)
        (h, w), (H, W) = self.src, self.dst
        self.r0, self.r1, self.wy0, self.wy1 = (t.to(dev) for t in _axis_table(h, H))
        self.c0, self.c1, self.wx0, self.wx1 = (t.to(dev) for t in _axis_table(w, W))
        self.rows_of_quad, self.row_ok = self._members(self.r0, h)
        self.cols_of_quad, self.col_ok = self._members(self.c0, w)
        self.device = dev

    @staticmethod
    def _members(idx: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Output indices belonging to each quad, padded with 0 (``ok`` marks real entries)."""
        counts = torch.bincount(idx, minlength=n)
        width = max(int(counts.max().item()) if idx.numel() else 0, 1)
        table = torch.zeros(n, width, dtype=torch.long, device=idx.device)
        ok = torch.zeros(n, width, dtype=torch.bool, device=idx.device)
        for q in range(n):
            members = (idx == q).nonzero().flatten()
            table[q, :members.numel()] = members
            ok[q, :members.numel()] = True
        return table, ok

    @property
    def pixels(self) -> int:
        """Pixels per upsampled map."""
        return self.dst[0] * self.dst[1]

    def quad_max(self, acts: torch.Tensor) -> torch.Tensor:
        """Per-quad maximum ``[N, U, h, w]`` of the four source cells (an upper bound on every
        upsampled value in the quad, up to float rounding)."""
        padded = F.pad(acts, (0, 1, 0, 1), mode="replicate")
        return F.max_pool2d(padded, kernel_size=2, stride=1)

    def quad_min_bound(self, acts: torch.Tensor, count: float) -> torch.Tensor:
        """Per unit a value ``L`` (float64) with at least ``count`` upsampled values ``>= L``
        in ``acts`` (from quad minima: no upsampling); ``-inf`` if there are too few pixels."""
        qmin = -F.max_pool2d(F.pad(-acts, (0, 1, 0, 1), mode="replicate"), 2, stride=1)
        rows = self.row_ok.sum(1).double()
        cols = self.col_ok.sum(1).double()
        weight = (rows[:, None] * cols[None, :]).flatten()                  # pixels per quad
        units = acts.shape[1]
        vals = qmin.transpose(0, 1).reshape(units, -1).double()
        w = weight.repeat(acts.shape[0])[None].expand(units, -1)
        order = vals.argsort(dim=1, descending=True)
        cum = w.gather(1, order).cumsum(1)
        k = (cum < count).sum(1)
        ok = k < vals.shape[1]
        sorted_vals = vals.gather(1, order)
        bound = sorted_vals.gather(1, k.clamp(max=vals.shape[1] - 1)[:, None]).squeeze(1)
        bound = bound - bound.abs() * 1e-6 - 1e-30                           # rounding margin
        return torch.where(ok, bound, torch.full_like(bound, float("-inf")))

    def dense(self, acts: torch.Tensor) -> torch.Tensor:
        """All upsampled values ``[N, U, H, W]`` (float32)."""
        a = acts.float()
        rows = a[:, :, self.r0, :] * self.wy0[:, None] + a[:, :, self.r1, :] * self.wy1[:, None]
        return rows[..., self.c0] * self.wx0 + rows[..., self.c1] * self.wx1

    def sparse(self, acts: torch.Tensor, quads: torch.Tensor, max_quads: int = 1 << 16,
               above: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Upsampled values of every pixel in the quads marked True in ``quads [N, U, h, w]``;
        with ``above [U]`` (float32), only the values ``> above[unit]``.

        Returns ``(values, sample, unit, pixel)`` (flat pixel index ``i * W + j``), concatenated
        over chunks of at most ``max_quads`` quads.
        """
        a = acts.float()
        h, w = self.src
        W = self.dst[1]
        nz = quads.nonzero()
        outs: list[tuple[torch.Tensor, ...]] = []
        for start in range(0, nz.shape[0], max_quads):
            part = nz[start:start + max_quads]
            n, u, qi, qj = part.unbind(1)
            qi1 = (qi + 1).clamp(max=h - 1)
            qj1 = (qj + 1).clamp(max=w - 1)
            a00, a10 = a[n, u, qi, qj], a[n, u, qi1, qj]
            a01, a11 = a[n, u, qi, qj1], a[n, u, qi1, qj1]
            rows, cols = self.rows_of_quad[qi], self.cols_of_quad[qj]        # [m, R], [m, Cq]
            wy0, wy1 = self.wy0[rows], self.wy1[rows]
            r0 = a00[:, None] * wy0 + a10[:, None] * wy1                     # column j0
            r1 = a01[:, None] * wy0 + a11[:, None] * wy1                     # column j1
            wx0, wx1 = self.wx0[cols], self.wx1[cols]
            vals = r0[:, :, None] * wx0[:, None, :] + r1[:, :, None] * wx1[:, None, :]
            ok = self.row_ok[qi][:, :, None] & self.col_ok[qj][:, None, :]
            if above is not None:
                ok &= vals > above[u][:, None, None]
            q, r, c = ok.nonzero().unbind(1)
            outs.append((vals[q, r, c], n[q], u[q], rows[q, r] * W + cols[q, c]))
        if not outs:
            empty_f = torch.zeros(0, dtype=torch.float32, device=acts.device)
            empty_l = torch.zeros(0, dtype=torch.long, device=acts.device)
            return empty_f, empty_l, empty_l.clone(), empty_l.clone()
        return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))  # type: ignore[return-value]
