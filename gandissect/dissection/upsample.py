"""Bilinear upsampling (``align_corners=False``) of unit maps, dense or only where needed.

The output pixel ``(i, j)`` of a bilinear upsampling depends on the four source cells of one
*quad* ``(i0(i), j0(j))``; its value never exceeds the quad's maximum. Every path evaluates the
same separable float32 expression in the same order::

    row[i, x] = a[i0(i), x] * wy0[i] + a[i1(i), x] * wy1[i]           (vertical pass)
    out[i, j] = row[i, j0(j)] * wx0[j] + row[i, j1(j)] * wx1[j]       (horizontal pass)

so a pixel gets a bit-identical value (up to the sign of zero) from :meth:`Upsampler.dense`
(all pixels), :meth:`Upsampler.sparse` (pixels of chosen quads) and
:meth:`Upsampler.iter_above` (only the values above a per-unit cut), within 1e-6 of
``F.interpolate(mode="bilinear", align_corners=False)``. ``iter_above`` is the fast path of
dissection: an output row ``(sample, unit, i)`` whose two source rows ``i0(i)``, ``i1(i)`` stay
below the cut holds no value above it (an interpolated value never exceeds the maximum of its
sources by more than a few ulps; the skip test keeps a 1e-5 relative margin), so it runs the
vertical pass only on the other rows, and the horizontal pass only on those of them whose
exact maximum may exceed the cut (not at all when the sizes are equal).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F


def round_down_f32(x: torch.Tensor) -> torch.Tensor:
    """Largest float32 <= x (float64 in; +-inf kept), so that for float32 ``v``:
    ``v > x`` iff ``v > round_down_f32(x)``."""
    f = x.float()
    down = torch.nextafter(f, torch.full_like(f, -float("inf")))
    return torch.where(f.double() > x, down, f)


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

    def vertical(self, acts: torch.Tensor) -> torch.Tensor:
        """The vertical pass ``[N, U, H, w]`` (float32): rows interpolated, columns not yet."""
        a = acts.float()
        return (a.index_select(2, self.r0) * self.wy0[:, None]
                + a.index_select(2, self.r1) * self.wy1[:, None])

    def dense(self, acts: torch.Tensor, chunk: int = 1 << 21) -> torch.Tensor:
        """All upsampled values ``[N, U, H, W]`` (float32)."""
        a = acts.float()
        n, units = a.shape[:2]
        out = torch.empty(n, units, *self.dst, dtype=torch.float32, device=a.device)
        per = max(1, chunk // max(1, units * self.pixels))
        for s in range(0, n, per):      # transposed [b, U, W, H]: the gathers copy whole rows
            rows = self.vertical(a[s:s + per]).transpose(2, 3).contiguous()
            out[s:s + per] = (rows.index_select(2, self.c0) * self.wx0[:, None]
                              + rows.index_select(2, self.c1) * self.wx1[:, None]
                              ).transpose(2, 3)
        return out

    def subsample(self, acts: torch.Tensor, step: int = 5) -> torch.Tensor:
        """Upsampled values ``[N, U, H', W']`` at every ``step``-th output row and column only
        (cheap; for estimates). An odd ``step`` visits every interpolation phase of a
        power-of-two scale, so the subsample is not biased towards source cells or midpoints."""
        H, W = self.dst
        ri = torch.arange(0, H, step, device=self.r0.device)
        ci = torch.arange(step // 2, W, step, device=self.c0.device)
        a = acts.float()
        rows = (a.index_select(2, self.r0[ri]) * self.wy0[ri][:, None]
                + a.index_select(2, self.r1[ri]) * self.wy1[ri][:, None])
        return (rows.index_select(3, self.c0[ci]) * self.wx0[ci]
                + rows.index_select(3, self.c1[ci]) * self.wx1[ci])

    def iter_above(self, acts: torch.Tensor, cut: torch.Tensor, chunk: int = 1 << 20,
                   positions: bool = True
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Every upsampled value ``v > cut[unit]`` (``cut [U]``, any float dtype, +-inf allowed),
        as chunks ``(values, unit, position)`` with ``position = sample * H * W + i * W + j``
        (``None`` unless ``positions``); the values are bit-identical to :meth:`dense`'s. Each
        chunk covers the samples of about ``chunk`` vertical-pass values; memory stays a small
        multiple of that.

        Only *hot* output rows ``(sample, unit, i)`` are interpolated: those whose source rows
        ``i0(i)``, ``i1(i)`` have a maximum above ``low`` (the cut minus a rounding margin). Their
        vertical pass gives exact rows ``[m, w]``; then the horizontal pass runs densely on the
        rows whose maximum is above ``low`` (in a transposed ``[W, m]`` layout, so that the
        column gathers copy whole rows); with equal sizes the source rows are the values.
        """
        a = acts.float().contiguous()
        n, units, h, w = a.shape
        H, W = self.dst
        dev = a.device
        cut64 = cut.to(dev, torch.float64)
        cut32 = round_down_f32(cut64)
        identity = self.src == self.dst
        if identity:            # a * 1 + a' * 0 == a for finite a: the values are the sources
            low32 = cut32
        else:
            # Every value of an output row is a convex combination (float32 weights summing to 1
            # within an ulp) of source values <= M, computed in at most two rounded passes: it
            # is <= 0 if M <= 0, and <= M + 6 eps |M| + 6 * 2**-149 otherwise. So a row whose
            # sources (or vertical-pass values) are all <= low holds no value > cut.
            low = cut64 - cut64.abs() * 1e-5 - 1e-43
            low = torch.where(cut64 >= 0, low.clamp(min=0.0), low)
            low = torch.where(torch.isinf(cut64), cut64, low)
            low32 = round_down_f32(low)
        per = max(1, min(n, chunk // max(1, units * H * w)))
        for s in range(0, n, per):
            part = a[s:s + per]
            smax = part.amax(3)                                               # [b, U, h]
            bound = smax if identity else torch.maximum(smax.index_select(2, self.r0),
                                                        smax.index_select(2, self.r1))
            hot = (bound > low32.view(1, units, 1)).view(-1).nonzero().squeeze(1)
            if hot.numel() == 0:
                continue
            su = torch.div(hot, H, rounding_mode="floor")                     # b * U + unit
            i = hot - su * H
            src = part.reshape(-1, w)
            if identity:
                rows = src.index_select(0, hot)                               # [m, w]
            else:               # the vertical pass of the hot rows: same expression as vertical()
                rows = (src.index_select(0, su * h + self.r0.index_select(0, i))
                        * self.wy0.index_select(0, i)[:, None]
                        + src.index_select(0, su * h + self.r1.index_select(0, i))
                        * self.wy1.index_select(0, i)[:, None])
            unit = su % units
            base = (torch.div(su, units, rounding_mode="floor") + s) * (H * W) + i * W
            if identity:
                q, j = (rows > cut32.index_select(0, unit)[:, None]).nonzero().unbind(1)
                out = rows.view(-1).index_select(0, q * w + j)
            else:               # all columns of the rows whose exact maximum exceeds low
                keep = (rows.amax(1) > low32.index_select(0, unit)).nonzero().squeeze(1)
                rows, unit, base = (t.index_select(0, keep) for t in (rows, unit, base))
                m = rows.shape[0]
                rt = rows.t().contiguous()                 # [w, m]: the gathers copy whole rows
                vals = (rt.index_select(0, self.c0) * self.wx0[:, None]
                        + rt.index_select(0, self.c1) * self.wx1[:, None])        # [W, m]
                j, q = (vals > cut32.index_select(0, unit)[None]).nonzero().unbind(1)
                out = vals.view(-1).index_select(0, j * m + q)
            pos = base.index_select(0, q) + j if positions else None
            yield out, unit.index_select(0, q), pos

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
