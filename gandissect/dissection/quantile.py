"""A streaming, mergeable per-unit histogram on a power-of-two grid, used as a quantile sketch.

Unit ``u``'s bins are the right-closed intervals ``((m_u + k) * 2**e_u, (m_u + k + 1) * 2**e_u]``,
``k = 0 .. bins-1``. The grid is a deterministic function of the declared value range (the
smallest exponent ``e >= E_MIN`` whose aligned grid covers it), so widening the range only ever
merges whole bins 2:1 and two histograms that saw the same values agree bin for bin, whatever
the order or sharding. All edges are exact float64 numbers and bin assignment is exact, so
``count_above(edge)`` is an exact count for every grid edge.

**Error bound.** For a quantile ``p`` the exact value lies in the returned bracket
``(lo, hi]`` (one bin, width ``2**e_u``), and the number of values between ``lo`` and the exact
quantile is at most ``mass`` (the count in that bin): ``quantile()`` reports both.

>>> import torch
>>> h = UnitHistogram(units=1, bins=64)
>>> x = torch.arange(1, 1001, dtype=torch.float32)[None]
>>> h.extend_range(x.min(1).values, x.max(1).values)
>>> h.add_dense(x)
>>> lo, hi, mass = h.quantile(0.9)
>>> bool(lo[0] < 900 <= hi[0])
True
"""

from __future__ import annotations

import torch

#: Smallest and largest grid exponents considered.
E_MIN, E_MAX = -64, 128


def grid_for_range(vmin: torch.Tensor, vmax: torch.Tensor, bins: int,
                   e_floor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest exponent ``e >= max(E_MIN, e_floor)`` and offset ``m`` so that
    ``(m * 2**e, (m + bins) * 2**e]`` covers ``[vmin, vmax]`` (float64, per unit)."""
    es = torch.arange(E_MIN, E_MAX + 1, dtype=torch.float64, device=vmin.device)
    scale = torch.exp2(-es)[None, :]                                    # [1, E]
    lo = torch.ceil(vmin.double()[:, None] * scale) - 1                 # m at each e
    hi = torch.ceil(vmax.double()[:, None] * scale)
    fits = (hi - lo) <= bins
    if e_floor is not None:
        fits &= es[None, :] >= e_floor.double()[:, None]
    if not bool(fits.any(1).all()):
        raise ValueError("activation range too large for the histogram grid")
    first = fits.double().argmax(1)
    e = es[first].long()
    m = lo.gather(1, first[:, None]).squeeze(1).long()
    return e, m


class UnitHistogram:
    """Per-unit counts of values on an adaptive power-of-two grid (see the module docstring).

    ``below[u]`` counts values the caller chose not to bin (known to be ``<= cut``); they lie
    below every edge the caller later asks about. Memory: ``units * bins`` int64.
    """

    def __init__(self, units: int, bins: int = 2048, device: torch.device | str = "cpu") -> None:
        if bins < 2 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= 2, got {bins}")
        dev = torch.device(device)
        self.units, self.bins = units, bins
        self.counts = torch.zeros(units, bins, dtype=torch.long, device=dev)
        self.below = torch.zeros(units, dtype=torch.long, device=dev)
        self.vmin = torch.full((units,), float("inf"), dtype=torch.float64, device=dev)
        self.vmax = torch.full((units,), float("-inf"), dtype=torch.float64, device=dev)
        self.e = torch.zeros(units, dtype=torch.long, device=dev)
        self.m = torch.zeros(units, dtype=torch.long, device=dev)

    # ----------------------------------------------------------------- grid
    @property
    def initialized(self) -> torch.Tensor:
        """Units whose range has been declared."""
        return self.vmin <= self.vmax

    def width(self) -> torch.Tensor:
        """Bin width per unit (float64)."""
        return torch.exp2(self.e.double())

    def edges(self) -> torch.Tensor:
        """Exact bin edges ``[units, bins + 1]`` (float64)."""
        k = torch.arange(self.bins + 1, device=self.counts.device, dtype=torch.float64)
        return (self.m.double()[:, None] + k) * self.width()[:, None]

    def extend_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Declare that values in ``[lo, hi]`` (per unit) may be added; regrid if needed."""
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError("histogram range must be finite")
        vmin = torch.minimum(self.vmin, lo.double())
        vmax = torch.maximum(self.vmax, hi.double())
        self._regrid(vmin, vmax)

    def _regrid(self, vmin: torch.Tensor, vmax: torch.Tensor) -> None:
        init = self.initialized
        valid = vmin <= vmax
        e_floor = torch.where(init, self.e, torch.full_like(self.e, E_MIN))
        e, m = grid_for_range(torch.where(valid, vmin, 0.0), torch.where(valid, vmax, 0.0),
                              self.bins, e_floor)
        changed = init & ((e != self.e) | (m != self.m))
        if bool(changed.any()):
            old = (self.m[:, None] + torch.arange(self.bins, device=self.m.device))  # global idx
            shift = (e - self.e).clamp(min=0)
            new_global = torch.div(old, (2 ** shift)[:, None], rounding_mode="floor")
            local = new_global - m[:, None]
            rows = changed.nonzero().flatten()
            nonzero = self.counts[rows] != 0
            if bool(((local[rows] < 0) | (local[rows] >= self.bins))[nonzero].any()):
                raise RuntimeError("internal error: regrid would drop counts")
            fresh = torch.zeros(rows.numel(), self.bins, dtype=torch.long, device=m.device)
            fresh.scatter_add_(1, local[rows].clamp(0, self.bins - 1), self.counts[rows])
            self.counts[rows] = fresh
        self.e, self.m = e, m
        self.vmin, self.vmax = vmin, vmax

    def bin_index(self, values: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Exact right-closed bin of each value for its unit (may be outside 0..bins-1)."""
        if values.dtype == torch.float32 and bool(((self.e <= 0) & (self.e > -100)).all()):
            # float32 times a power of two 2**-e >= 1 only changes the exponent: exact (no
            # underflow; no overflow either, as the values lie within the grid's range)
            k = torch.ceil(values * torch.exp2(-self.e.float()).index_select(0, units)).long()
        else:
            scaled64 = values.double() * torch.exp2(-self.e[units].double())
            k = torch.ceil(scaled64).long()
        return k - (self.m + 1).index_select(0, units)

    # ----------------------------------------------------------------- adding
    def add(self, values: torch.Tensor, units: torch.Tensor) -> None:
        """Count ``values[i]`` for unit ``units[i]`` (values must lie in the declared range)."""
        if values.numel():
            self.add_flat(self.flat_index(values, units))

    def flat_index(self, values: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """``unit * bins + bin`` of each value (for :meth:`add_flat`); checks the range."""
        k = self.bin_index(values, units)
        if k.numel() and (int(k.min()) < 0 or int(k.max()) >= self.bins):
            raise ValueError("value outside the declared histogram range; call extend_range first")
        return k + units * self.bins

    def add_flat(self, flat: torch.Tensor) -> None:
        """Count values given by :meth:`flat_index` (the grid must not change in between)."""
        self.counts += torch.bincount(flat, minlength=self.units * self.bins).view_as(self.counts)

    def add_dense(self, values: torch.Tensor) -> None:
        """Count values ``[units, n]`` (row ``u`` belongs to unit ``u``)."""
        units = torch.arange(self.units, device=values.device)[:, None].expand_as(values)
        self.add(values.reshape(-1), units.reshape(-1))

    def add_below(self, counts: torch.Tensor) -> None:
        """Count values that were not binned because they are below the caller's cut."""
        self.below += counts.long()

    # ----------------------------------------------------------------- queries
    def total(self) -> torch.Tensor:
        """Values seen per unit (binned + below)."""
        return self.counts.sum(1) + self.below

    def count_above_edges(self) -> torch.Tensor:
        """``[units, bins + 1]``: number of binned values above each edge."""
        suffix = self.counts.flip(1).cumsum(1).flip(1)
        return torch.cat([suffix, torch.zeros_like(suffix[:, :1])], 1)

    def top_edge(self, target: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Largest edge with at least ``target`` binned values above it, and its index ``j`` (the
        bin right above it is bin ``j``); ``-inf`` and ``-1`` where no edge qualifies."""
        above = self.count_above_edges().double()
        tgt = torch.as_tensor(target, dtype=torch.float64, device=above.device)
        ok = above >= (tgt[:, None] if tgt.dim() else tgt)
        j = ok.sum(1) - 1                  # counts above edges never increase: ok is a prefix
        edge = torch.where(j >= 0, (self.m + j).double() * self.width(),
                           torch.full_like(self.vmin, float("-inf")))
        return edge, j

    def quantile(self, p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bracket ``(lo, hi]`` holding the exact ``p`` quantile (the value with a fraction ``1-p``
        of values above it) and ``mass``, the count in that bracket (the rank error bound)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {p}")
        target = (1.0 - p) * self.total().double()
        edge, j = self.top_edge(target)
        inside = (j >= 0) & (j < self.bins)
        jj = j.clamp(0, self.bins - 1)
        mass = torch.where(inside, self.counts.gather(1, jj[:, None]).squeeze(1), 0)
        return edge, edge + self.width(), mass

    # ----------------------------------------------------------------- contract
    def merge(self, other: UnitHistogram) -> None:
        """Add ``other``'s counts (same units and bins) into this histogram."""
        if (other.units, other.bins) != (self.units, self.bins):
            raise ValueError("cannot merge histograms with different units or bins")
        if not bool(other.initialized.any()):
            return
        both_lo = torch.minimum(self.vmin, other.vmin)
        both_hi = torch.maximum(self.vmax, other.vmax)
        mine = UnitHistogram(self.units, self.bins, self.counts.device)
        mine.load_state_dict(other.state_dict())
        init = self.initialized | other.initialized
        lo = torch.where(init, both_lo, 0.0)
        hi = torch.where(init, both_hi, 0.0)
        self._regrid_partial(lo, hi, init)
        mine._regrid_partial(lo, hi, init)
        self.counts += mine.counts
        self.below += mine.below

    def _regrid_partial(self, lo: torch.Tensor, hi: torch.Tensor, init: torch.Tensor) -> None:
        vmin = torch.where(init, lo, self.vmin)
        vmax = torch.where(init, hi, self.vmax)
        self._regrid(vmin, vmax)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that fully describe the histogram."""
        return {"counts": self.counts.clone(), "below": self.below.clone(),
                "vmin": self.vmin.clone(), "vmax": self.vmax.clone(),
                "e": self.e.clone(), "m": self.m.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict` (shapes must match)."""
        if tuple(state["counts"].shape) != (self.units, self.bins):
            raise ValueError(f"histogram state has shape {list(state['counts'].shape)}, "
                             f"expected {[self.units, self.bins]}")
        dev = self.counts.device
        self.counts = state["counts"].to(dev, torch.long).clone()
        self.below = state["below"].to(dev, torch.long).clone()
        self.vmin = state["vmin"].to(dev, torch.float64).clone()
        self.vmax = state["vmax"].to(dev, torch.float64).clone()
        self.e = state["e"].to(dev, torch.long).clone()
        self.m = state["m"].to(dev, torch.long).clone()
