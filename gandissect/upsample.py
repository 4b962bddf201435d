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
dissection: it runs the cheap vertical pass densely, skips every output *segment* (row ``i``,
columns with ``j0(j) = k``) whose two source values ``row[i, k]``, ``row[i, k+1]`` are both
below the cut (an interpolated value never exceeds their maximum by more than a few ulps; the
skip test keeps a 1e-5 relative margin), and evaluates the horizontal pass only on the
remaining segments, in small chunks that stay in cache (densely when a segment spans fewer
than 4 output columns; not at all when the sizes are equal).
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
        # horizontal pass per segment k (output columns with j0 = k): step from k to j1 = k + 1
        # (0 at the clamped last column), padded weights, and whether the segment has columns
        self.seg_step = ((torch.arange(w, device=dev) + 1).clamp(max=w - 1)
                         - torch.arange(w, device=dev))
        self.seg_wx0 = torch.where(self.col_ok, self.wx0[self.cols_of_quad], 0.0)
        self.seg_wx1 = torch.where(self.col_ok, self.wx1[self.cols_of_quad], 0.0)
        self.seg_used = self.col_ok.any(1)
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
        chunk covers about ``chunk`` vertical-pass values; memory stays a small multiple of that.
        """
        a = acts.float().contiguous()
        n, units, _, w = a.shape
        H, W = self.dst
        dev = a.device
        cut64 = cut.to(dev, torch.float64)
        cut32 = round_down_f32(cut64)
        # With M = max(row[k], row[k1]) (weights >= 0, summing to 1 within an ulp), a segment's
        # values are <= 0 if M <= 0, and <= M + 3 eps |M| + 3 * 2**-149 otherwise (float32
        # rounding); so a segment with both ends <= low can hold no value > cut.
        low = cut64 - cut64.abs() * 1e-5 - 1e-43
        low = torch.where(cut64 >= 0, low.clamp(min=0.0), low)
        low = torch.where(torch.isinf(cut64), cut64, low)
        low32 = round_down_f32(low).view(1, 1, 1, units)
        if self.src == self.dst:      # a * 1 + a' * 0 == a for finite a (up to the sign of 0)
            yield from self._iter_dense(a, cut32, chunk, positions, identity=True)
            return
        if W < 4 * w:           # few columns per segment: the horizontal pass densely
            yield from self._iter_dense(a, cut32, chunk, positions, identity=False)
            return
        segs = [(k, int(self.seg_step[k]), self.cols_of_quad[k][self.col_ok[k]])
                for k in range(w) if bool(self.seg_used[k])]
        weights = [(self.wx0[c][None], self.wx1[c][None]) for _, _, c in segs]
        per = max(1, min(n, chunk // max(1, units * H * w)))
        # layout [x, i, sample, unit]: the vertical pass copies whole [sample, unit] slabs, and
        # one source column's rows are contiguous
        at = a.permute(3, 2, 0, 1).contiguous()                             # [w, h, n, U]
        tables: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for s in range(0, n, per):
            b = min(per, n - s)
            if b not in tables:     # per row r = (i, sample, unit) of a chunk: unit, cut, position
                unit_of = torch.arange(units, device=dev).repeat(H * b)
                pos_of = (torch.arange(H, device=dev).repeat_interleave(b * units) * W
                          + torch.arange(b, device=dev).repeat_interleave(units).repeat(H)
                          * (H * W))
                tables[b] = (unit_of, cut32[unit_of], pos_of)
            unit_of, cut_of, pos_of = tables[b]
            part = at[:, :, s:s + b]
            rows = (part.index_select(1, self.r0) * self.wy0[None, :, None, None]
                    + part.index_select(1, self.r1) * self.wy1[None, :, None, None])
            hot = rows > low32                                               # [w, H, b, U]
            for (k, step, cols), (wx0, wx1) in zip(segs, weights, strict=True):
                idx = (hot[k] | hot[k + step]).view(-1).nonzero().squeeze(1)
                if idx.numel() == 0:
                    continue
                v0 = rows[k].reshape(-1).index_select(0, idx)
                v1 = rows[k + step].reshape(-1).index_select(0, idx)
                vals = v0[:, None] * wx0 + v1[:, None] * wx1                  # [m, cols]
                q, c = (vals > cut_of.index_select(0, idx)[:, None]).nonzero().unbind(1)
                out = vals.view(-1).index_select(0, q * cols.numel() + c)
                seg = idx.index_select(0, q)
                pos = None
                if positions:
                    pos = pos_of.index_select(0, seg) + cols.index_select(0, c) + s * H * W
                yield out, unit_of.index_select(0, seg), pos

    def _iter_dense(self, a: torch.Tensor, cut32: torch.Tensor, chunk: int, positions: bool,
                    identity: bool
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """:meth:`iter_above` through dense chunks of :meth:`dense` (or of ``a`` itself when the
        sizes are equal)."""
        n, units = a.shape[:2]
        H, W = self.dst
        P = self.pixels
        per = max(1, chunk // max(1, units * P))
        for s in range(0, n, per):
            if identity:
                part = a[s:s + per]
            else:           # transposed maps [b, U, W, H]: both gathers copy whole rows
                rows = self.vertical(a[s:s + per]).transpose(2, 3).contiguous()
                part = (rows.index_select(2, self.c0) * self.wx0[:, None]
                        + rows.index_select(2, self.c1) * self.wx1[:, None])
            idx = (part > cut32.view(1, units, 1, 1)).view(-1).nonzero().squeeze(1)
            row = torch.div(idx, P, rounding_mode="floor")                     # sample * U + unit
            pos = None
            if positions:
                pix = idx - row * P
                if not identity:                                               # j * H + i
                    j = torch.div(pix, H, rounding_mode="floor")
                    pix = (pix - j * H) * W + j
                pos = torch.div(row, units, rounding_mode="floor") * P + pix + s * P
            yield part.reshape(-1).index_select(0, idx), row % units, pos

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
