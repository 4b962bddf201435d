"""Streaming, mergeable statistics for dissection; memory never grows with the number of samples.

Every class speaks one contract: ``add...(batch)``, ``state_dict()``, ``load_state_dict(state)``
and ``merge(other)``; merging the states of shards gives exactly the state of one pass over all
samples (all counts are int64). The quantile sketch lives in :mod:`gandissect.dissection.quantile`.
"""

from __future__ import annotations

import torch

from .quantile import UnitHistogram

__all__ = ["ConceptHistogram", "ThresholdCounts", "TopK", "UnitHistogram", "encode_rows",
           "suffix_sum"]


def suffix_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``out[..., j, ...] = sum(x[..., j:, ...])`` along ``dim``, with one extra zero at the end."""
    s = x.flip(dim).cumsum(dim).flip(dim)
    zero_shape = list(s.shape)
    zero_shape[dim] = 1
    return torch.cat([s, torch.zeros(zero_shape, dtype=s.dtype, device=s.device)], dim)


class TopK:
    """Per unit, the ``k`` samples with the largest score (ties: smaller sample index first)."""

    def __init__(self, units: int, k: int = 12, device: torch.device | str = "cpu") -> None:
        dev = torch.device(device)
        self.units, self.k = units, k
        self.values = torch.full((units, 0), float("-inf"), dtype=torch.float64, device=dev)
        self.indices = torch.zeros(units, 0, dtype=torch.long, device=dev)

    def add(self, scores: torch.Tensor, indices: torch.Tensor) -> None:
        """Scores ``[n, units]`` of samples ``indices [n]``."""
        vals = torch.cat([self.values, scores.double().T.to(self.values.device)], 1)
        new = indices.to(self.indices.device)[None].expand(self.units, -1)
        idx = torch.cat([self.indices, new], 1)
        self._keep(vals, idx)

    def _keep(self, vals: torch.Tensor, idx: torch.Tensor) -> None:
        order = idx.argsort(dim=1, stable=True)
        vals, idx = vals.gather(1, order), idx.gather(1, order)
        order = (-vals).argsort(dim=1, stable=True)[:, :self.k]
        self.values, self.indices = vals.gather(1, order), idx.gather(1, order)

    def merge(self, other: TopK) -> None:
        """Keep the best ``k`` of both."""
        self._keep(torch.cat([self.values, other.values], 1),
                   torch.cat([self.indices, other.indices], 1))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"values": self.values.clone(), "indices": self.indices.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.values = state["values"].to(self.values.device, torch.float64).clone()
        self.indices = state["indices"].to(self.indices.device, torch.long).clone()


class _Counts:
    """Shared machinery: named int64 tensors that add up under merge, and the totals of
    :meth:`add_masks` (pixels per concept, images per category, images)."""

    names: tuple[str, ...] = ()

    def __init__(self, concepts: int, categories: int, device: torch.device) -> None:
        self.concept_pixels = torch.zeros(concepts, dtype=torch.long, device=device)
        self.category_images = torch.zeros(categories, dtype=torch.long, device=device)
        self.images = torch.zeros((), dtype=torch.long, device=device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n).clone() for n in self.names}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for n in self.names:
            mine = getattr(self, n)
            if tuple(state[n].shape) != tuple(mine.shape):
                raise ValueError(f"state {n!r} has shape {list(state[n].shape)}, expected "
                                 f"{list(mine.shape)}")
            setattr(self, n, state[n].to(mine.device, mine.dtype).clone())

    def _merge_counts(self, other: _Counts, additive: tuple[str, ...],
                      equal: tuple[str, ...]) -> None:
        for n in equal:
            if not torch.equal(getattr(self, n), getattr(other, n)):
                raise ValueError(f"cannot merge: {n!r} differs between the two states")
        for n in additive:
            setattr(self, n, getattr(self, n) + getattr(other, n))

    def add_masks(self, masks: torch.Tensor, present: torch.Tensor) -> None:
        """Count concept pixels of ``masks [n, C, P]``, images per category ``present [n, K]``."""
        # (uint8 sums per map in int32: ~20x faster than a bool -> int64 reduction)
        per_map = masks.reshape(masks.shape[0], masks.shape[1], -1).view(torch.uint8)
        self.concept_pixels += per_map.sum(2, dtype=torch.int32).sum(0, dtype=torch.long)
        self.category_images += present.sum(0, dtype=torch.long)
        self.images += masks.shape[0]


def encode_rows(masks: torch.Tensor, present: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Give each distinct (concept set, category presence) of the pixels of ``masks [n, C, P]``
    (bool) on images with ``present [n, K]`` a code: returns ``codes [n, P]`` (long) and the
    tables ``concepts [codes, C]``, ``categories [codes, K]`` (bool); ``None`` when
    ``C + K > 62`` (use per-pixel rows instead)."""
    n, c, p = masks.shape
    k = present.shape[1]
    if c + k > 62:
        return None
    dtype = torch.int32 if c + k <= 30 else torch.long
    code = torch.zeros(n, p, dtype=dtype, device=masks.device)
    for i in range(c):
        code |= masks[:, i].to(dtype) << i
    pres = torch.zeros(n, dtype=dtype, device=masks.device)
    for i in range(k):
        pres |= present[:, i].to(dtype) << (c + i)
    code = (code | pres[:, None]).long()
    if c + k <= 20:
        seen = torch.bincount(code.view(-1), minlength=1 << (c + k))
        uniq = seen.nonzero().squeeze(1)
        lut = torch.zeros(1 << (c + k), dtype=torch.long, device=masks.device)
        lut[uniq] = torch.arange(uniq.numel(), device=masks.device)
        inverse = lut[code]
    else:
        uniq, inverse = torch.unique(code, return_inverse=True)
    bits = torch.arange(c + k, device=masks.device)
    table = ((uniq[:, None] >> bits) & 1).bool()
    return inverse.view(n, p), table[:, :c], table[:, c:]


class ThresholdCounts(_Counts):
    """Exact intersection counts at every candidate threshold inside a bracket ``(lo, hi]``.

    Per unit ``u`` the bracket is split into ``2**fine_log2`` bins on an exact grid; the class
    counts, for pixels above ``hi`` and for pixels in each fine bin: all of them, those inside
    each concept, and those on images where each category is present. For any fine edge ``t``
    this gives the exact ``|A > t|``, ``|A > t and S_c|`` and per-category ``|A > t|``.
    Pixels ``<= lo`` are ignored. Memory: ``units * fine * (concepts + categories + 1)`` int64.
    """

    names = ("lo_index", "e", "above", "above_concept", "above_category", "fine",
             "fine_concept", "fine_category", "concept_pixels", "category_images", "images")

    def __init__(self, lo_index: torch.Tensor, e: torch.Tensor, concepts: int, categories: int,
                 fine_log2: int = 8) -> None:
        """The bracket of unit ``u`` is ``(lo_index[u] * 2**e[u], (lo_index[u]+1) * 2**e[u]]``."""
        dev = lo_index.device
        super().__init__(concepts, categories, dev)
        units, fine = lo_index.numel(), 2 ** fine_log2
        self.fine_log2 = fine_log2
        self.lo_index, self.e = lo_index.long().clone(), e.long().clone()
        self.above = torch.zeros(units, dtype=torch.long, device=dev)
        self.above_concept = torch.zeros(units, concepts, dtype=torch.long, device=dev)
        self.above_category = torch.zeros(units, categories, dtype=torch.long, device=dev)
        self.fine = torch.zeros(units, fine, dtype=torch.long, device=dev)
        self.fine_concept = torch.zeros(units, fine, concepts, dtype=torch.long, device=dev)
        self.fine_category = torch.zeros(units, fine, categories, dtype=torch.long, device=dev)

    @property
    def lo(self) -> torch.Tensor:
        """Lower bracket end per unit (float64, exact)."""
        return self.lo_index.double() * torch.exp2(self.e.double())

    @property
    def hi(self) -> torch.Tensor:
        """Upper bracket end per unit (float64, exact)."""
        return (self.lo_index + 1).double() * torch.exp2(self.e.double())

    def fine_edges(self) -> torch.Tensor:
        """Candidate thresholds ``[units, fine + 1]`` (float64, exact), ``lo`` to ``hi``."""
        fine = self.fine.shape[1]
        k = torch.arange(fine + 1, dtype=torch.float64, device=self.fine.device)
        width = torch.exp2((self.e - self.fine_log2).double())
        return (self.lo_index.double()[:, None] * fine + k) * width[:, None]

    def bin_index(self, values: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Per value: its fine bin ``0 .. fine-1`` inside the bracket, ``fine`` above ``hi``,
        ``-1`` at or below ``lo`` (exact: scaling by powers of two)."""
        fine = self.fine.shape[1]
        shift = self.fine_log2 - self.e
        if values.dtype == torch.float32 and bool(((shift >= 0) & (shift < 100)).all()):
            # float32 times 2**shift >= 1 only changes the exponent: exact
            scale = torch.exp2(shift.float()).index_select(0, units)
        else:
            values = values.double()
            scale = torch.exp2(shift.double()).index_select(0, units)
        k = torch.ceil(values * scale).long()
        k -= (self.lo_index * fine + 1).index_select(0, units)
        return k.clamp_(-1, fine)

    def add_coded(self, values: torch.Tensor, units: torch.Tensor, codes: torch.Tensor,
                  code_concepts: torch.Tensor, code_categories: torch.Tensor,
                  max_bins: int = 1 << 23) -> None:
        """Like :meth:`add`, with each pixel's concept and category rows given as an index
        ``codes [m]`` into the tables ``code_concepts [K, C]`` / ``code_categories [K, Kc]``
        (bool); one ``bincount`` over (unit, bin, code) instead of a row per pixel."""
        cc = self.cell_code(values, units, codes, code_concepts.shape[0])
        self.add_cell_codes(cc, code_concepts, code_categories, max_bins)

    def cell_code(self, values: torch.Tensor, units: torch.Tensor, codes: torch.Tensor,
                  n_codes: int) -> torch.Tensor:
        """``(unit * (fine + 1) + bin) * n_codes + code`` per value above ``lo`` (the others are
        dropped), for :meth:`add_cell_codes`."""
        k = self.bin_index(values, units)
        if k.numel() and int(k.min()) < 0:
            keep = (k >= 0).nonzero().squeeze(1)
            units, k, codes = units[keep], k[keep], codes[keep]
        return (units * (self.fine.shape[1] + 1) + k) * n_codes + codes

    def add_cell_codes(self, cell_codes: torch.Tensor, code_concepts: torch.Tensor,
                       code_categories: torch.Tensor, max_bins: int = 1 << 23) -> None:
        """Count :meth:`cell_code` values; at most ``max_bins`` counters at a time."""
        width = self.fine.shape[1] + 1
        cells = self.fine.shape[0] * width
        n_codes = code_concepts.shape[0]
        per = max(1, max_bins // max(1, cells))
        if per >= n_codes:
            acc = torch.bincount(cell_codes, minlength=cells * n_codes)
            self._add_table(acc.view(-1, width, n_codes), code_concepts, code_categories)
            return
        cell, code = cell_codes // n_codes, cell_codes % n_codes
        for g in range(0, n_codes, per):
            gk = min(per, n_codes - g)
            sel = ((code >= g) & (code < g + gk)).nonzero().squeeze(1)
            acc = torch.bincount(cell[sel] * gk + (code[sel] - g), minlength=cells * gk)
            self._add_table(acc.view(-1, width, gk), code_concepts[g:g + gk],
                            code_categories[g:g + gk])

    def _add_table(self, acc: torch.Tensor, concepts: torch.Tensor,
                   categories: torch.Tensor) -> None:
        """Add per (unit, bin, code) counts ``acc [U, fine + 1, K]``; float64 products of
        integer counts below 2**53 are exact."""
        fine = self.fine.shape[1]
        a = acc.double()
        tot = acc.sum(2)
        self.fine += tot[:, :fine]
        self.above += tot[:, fine]
        conc = (a @ concepts.double()).long()
        self.fine_concept += conc[:, :fine]
        self.above_concept += conc[:, fine]
        cat = (a @ categories.double()).long()
        self.fine_category += cat[:, :fine]
        self.above_category += cat[:, fine]

    def add(self, values: torch.Tensor, units: torch.Tensor, concept_rows: torch.Tensor,
            category_rows: torch.Tensor) -> None:
        """Count pixels with ``values`` of ``units``; ``concept_rows [m, C]`` / ``category_rows
        [m, K]`` (bool) say which concepts each pixel shows and which categories its image has."""
        v = values.double()
        keep = v > self.lo[units]
        v, units = v[keep], units[keep]
        crow, krow = concept_rows[keep].long(), category_rows[keep].long()
        over = v > self.hi[units]
        u_over = units[over]
        self.above += torch.bincount(u_over, minlength=self.above.numel())
        self.above_concept.index_add_(0, u_over, crow[over])
        self.above_category.index_add_(0, u_over, krow[over])
        inside = ~over
        ui = units[inside]
        fine = self.fine.shape[1]
        width_exp = (self.e[ui] - self.fine_log2).double()
        k = torch.ceil(v[inside] * torch.exp2(-width_exp)).long() - 1 - self.lo_index[ui] * fine
        if k.numel() and bool(((k < 0) | (k >= fine)).any()):
            raise RuntimeError("internal error: fine bin out of range")
        flat = ui * fine + k
        self.fine += torch.bincount(flat, minlength=self.fine.numel()).view_as(self.fine)
        self.fine_concept.view(-1, crow.shape[1]).index_add_(0, flat, crow[inside])
        self.fine_category.view(-1, krow.shape[1]).index_add_(0, flat, krow[inside])

    def merge(self, other: ThresholdCounts) -> None:
        """Add another shard's counts (same brackets)."""
        self._merge_counts(other, self.names[2:], ("lo_index", "e"))

    def counts_at(self, j: torch.Tensor) -> dict[str, torch.Tensor]:
        """Exact counts at fine edge ``j[u]`` (0..fine) per unit: ``above [U]``,
        ``intersection [U, C]``, ``above_category [U, K]``, and ``bin_mass [U]`` (the larger
        count of the two fine bins next to the edge: the rank error bound)."""
        idx = j.long()
        fine_above = suffix_sum(self.fine, 1).gather(1, idx[:, None]).squeeze(1)
        inter = suffix_sum(self.fine_concept, 1)
        inter = inter.gather(1, idx[:, None, None].expand(-1, 1, inter.shape[2])).squeeze(1)
        cat = suffix_sum(self.fine_category, 1)
        cat = cat.gather(1, idx[:, None, None].expand(-1, 1, cat.shape[2])).squeeze(1)
        padded = torch.nn.functional.pad(self.fine, (1, 1))
        mass = torch.maximum(padded.gather(1, idx[:, None]), padded.gather(1, idx[:, None] + 1))
        return {"above": self.above + fine_above,
                "intersection": self.above_concept + inter,
                "above_category": self.above_category + cat,
                "bin_mass": mass.squeeze(1)}


class ConceptHistogram(_Counts):
    """Per unit, a histogram of all (upsampled) values on a fixed exact grid, split by concept
    and by category presence; any grid edge ``t`` gives exact ``|A > t|``, ``|A > t and S_c|``.

    Used for the information-quality-ratio threshold. Memory: ``units * bins * (C + K + 1)``.
    """

    names = ("e", "m", "counts", "concept", "category", "concept_pixels", "category_images",
             "images")

    def __init__(self, e: torch.Tensor, m: torch.Tensor, bins: int, concepts: int,
                 categories: int) -> None:
        """Unit ``u``'s bins are ``((m[u]+k) * 2**e[u], (m[u]+k+1) * 2**e[u]]``, k < bins."""
        dev = e.device
        super().__init__(concepts, categories, dev)
        units = e.numel()
        self.bins = bins
        self.e, self.m = e.long().clone(), m.long().clone()
        self.counts = torch.zeros(units, bins, dtype=torch.long, device=dev)
        self.concept = torch.zeros(units, bins, concepts, dtype=torch.long, device=dev)
        self.category = torch.zeros(units, bins, categories, dtype=torch.long, device=dev)

    def edges(self) -> torch.Tensor:
        """Exact edges ``[units, bins + 1]`` (float64)."""
        k = torch.arange(self.bins + 1, dtype=torch.float64, device=self.e.device)
        return (self.m.double()[:, None] + k) * torch.exp2(self.e.double())[:, None]

    def add(self, values: torch.Tensor, masks: torch.Tensor, present: torch.Tensor,
            chunk: int = 1 << 19) -> None:
        """Values ``[n, U, P]``, masks ``[n, C, P]`` (bool), category presence ``[n, K]``."""
        n, units, pix = values.shape
        cmask = masks.permute(0, 2, 1).float()                       # [n, P, C]
        kmask = present.float()                                      # [n, K]
        per = max(1, chunk // max(1, units * pix))
        for s in range(0, n, per):
            v = values[s:s + per].double()                           # [b, U, P]
            b = v.shape[0]
            k = torch.ceil(v * torch.exp2(-self.e.double())[None, :, None]).long() - 1
            k = k - self.m[None, :, None]
            if bool(((k < 0) | (k >= self.bins)).any()):
                raise ValueError("value outside the histogram range")
            flat = (torch.arange(units, device=k.device)[None, :, None] * self.bins + k).reshape(-1)
            self.counts += torch.bincount(flat, minlength=self.counts.numel()).view_as(self.counts)
            # concept and category counts: float32 sums of 0/1 rows per (unit, bin), rounded
            for total, rows in ((self.concept, cmask[s:s + b, None]),          # [b, 1, P, C]
                                (self.category, kmask[s:s + b, None, None])):  # [b, 1, 1, K]
                rows = rows.expand(b, units, pix, -1).reshape(-1, rows.shape[3])
                acc = torch.zeros(units * self.bins, rows.shape[1], device=k.device)
                acc.index_add_(0, flat, rows)
                total += acc.round().long().view_as(total)

    def merge(self, other: ConceptHistogram) -> None:
        """Add another shard's counts (same grid)."""
        self._merge_counts(other, self.names[2:], ("e", "m"))
