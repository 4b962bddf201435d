"""Statistics of one dissected layer: pass-1 histogram, top-k and cut guesses, pass-2 exact
counts, merging of worker chunks, and the final thresholds and IoU (see
:mod:`gandissect.dissection.engine` for the algorithm)."""

from __future__ import annotations

import torch

from .config import DissectConfig
from .quantile import UnitHistogram
from .stats import ConceptHistogram, ThresholdCounts, TopK, suffix_sum
from .upsample import Upsampler


def _first_bad(acts: torch.Tensor) -> int | None:
    """Index of the first sample with a NaN or inf activation, or ``None``."""
    if acts.numel() == 0:
        return None
    lo, hi = torch.aminmax(acts)            # NaN propagates: finite extremes = all finite
    if bool(torch.isfinite(lo) & torch.isfinite(hi)):                  # (20x faster)
        return None
    bad = ~torch.isfinite(acts.flatten(1)).all(1)
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


class _LayerState:
    """Pass-1 and pass-2 statistics of one layer."""

    def __init__(self, cfg: DissectConfig, units: int, src: tuple[int, int],
                 dst: tuple[int, int], device: torch.device, concepts: int,
                 categories: int, guess: tuple[float, float]) -> None:
        self.cfg, self.units, self.src, self.dst = cfg, units, src, dst
        self.device, self.concepts, self.categories = device, concepts, categories
        self.q = cfg.quantile
        #: (first-batch, later) cut guess factors (``FIRST_GUESS_FACTOR``, ``GUESS_FACTOR`` of
        #: :mod:`gandissect.dissection.engine`; a worker gets the parent's)
        self.guess = guess
        self.up = Upsampler(src, dst, device)
        self.hist = UnitHistogram(units, cfg.bins, device)
        self.topk = TopK(units, cfg.topk, device)
        self.target = cfg.quantile * cfg.samples * self.up.pixels
        self.counts: ThresholdCounts | ConceptHistogram | None = None
        # pass-1 round: 0 = all samples, all units; r > 0 = again for units whose guess failed
        self.round = 0
        self.active = torch.ones(units, dtype=torch.bool, device=device)
        self.cut = torch.full((units,), -float("inf"), dtype=torch.float64, device=device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"hist.{k}": v for k, v in self.hist.state_dict().items()}
        out.update({f"topk.{k}": v for k, v in self.topk.state_dict().items()})
        out.update({"p1.round": torch.tensor(self.round), "p1.active": self.active.clone(),
                    "p1.cut": self.cut.clone()})
        if self.counts is not None:
            out.update({f"counts.{k}": v for k, v in self.counts.state_dict().items()})
        return out

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict` (or :meth:`blank_state`)."""
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        self.hist.load_state_dict(part("hist."))
        self.topk.load_state_dict(part("topk."))
        self.round = int(state["p1.round"])
        self.active = state["p1.active"].to(self.active.device, torch.bool).clone()
        self.cut = state["p1.cut"].to(self.cut.device, torch.float64).clone()
        if any(k.startswith("counts.") for k in state):
            self.start_pass2()
            assert self.counts is not None
            self.counts.load_state_dict(part("counts."))

    #: state-dict entries that describe a round's configuration rather than accumulate
    _CONFIG_KEYS = frozenset({"hist.vmin", "hist.vmax", "hist.e", "hist.m", "p1.round",
                              "p1.active", "p1.cut", "counts.lo_index", "counts.e", "counts.m"})

    def blank_state(self) -> dict[str, torch.Tensor]:
        """This state's configuration (histogram grid, cuts, active units, round, pass-2
        brackets or grid) with empty accumulators: where a worker starts a chunk of the round.
        :meth:`merge` of the chunk's final state then adds exactly the chunk's samples."""
        out = {}
        for k, v in self.state_dict().items():
            if k in self._CONFIG_KEYS:
                out[k] = v
            elif k.startswith("topk."):
                out[k] = v[:, :0]
            else:
                out[k] = torch.zeros_like(v)
        return out

    def merge(self, state: dict[str, torch.Tensor]) -> None:
        """Add a worker's final state for other samples of the same round (started from
        :meth:`blank_state`): counts add, ranges widen, top-k keeps the best of both, and the
        cut becomes the larger one (all values above it are binned in both)."""
        other = _LayerState(self.cfg, self.units, self.src, self.dst, self.device,
                            self.concepts, self.categories, self.guess)
        other.load({k: v.to(self.device) for k, v in state.items()})
        if other.round != self.round or not torch.equal(other.active, self.active):
            raise ValueError("cannot merge statistics of different pass-1 rounds")
        self.hist.merge(other.hist)
        self.topk.merge(other.topk)
        self.cut = torch.maximum(self.cut, other.cut)
        if isinstance(self.counts, ThresholdCounts) and isinstance(other.counts, ThresholdCounts):
            self.counts.merge(other.counts)
        elif isinstance(self.counts, ConceptHistogram) and \
                isinstance(other.counts, ConceptHistogram):
            self.counts.merge(other.counts)
        elif self.counts is not None or other.counts is not None:
            raise ValueError("cannot merge statistics of different passes")

    # ------------------------------------------------------------------ pass 1
    def pass1(self, acts: torch.Tensor, indices: torch.Tensor, quantile_mode: bool,
              seen: int) -> None:
        """Add a batch; ``seen`` = samples of this round already in these statistics (a worker's
        chunk starts at 0). It only steers the cut guesses, never the result.

        Histogram every upsampled value above a per-unit cut (the rest only counted). Let ``C``
        be the largest cut of the round and ``lo`` the bracket edge that the histogram yields
        (:meth:`UnitHistogram.top_edge`). Every value ``> C`` is binned, so ``lo`` is exact
        whenever ``lo >= floor_grid(C)`` (checked by :meth:`failed_units`). Round 0 cuts at a
        guess (``GUESS_FACTOR``); later rounds only at valid lower bounds of the threshold,
        which cannot fail.
        """
        if self.round == 0:
            peaks = acts.amax((2, 3))                                        # [n, U]
            self.topk.add(peaks, indices)
            self.hist.extend_range(acts.amin((0, 2, 3)), peaks.amax(0))
        if not quantile_mode or not bool(self.active.any()):
            return
        units = self.active.nonzero().squeeze(1)
        a = acts if units.numel() == self.units else acts.index_select(1, units)
        cut = self.hist.top_edge(self.target)[0][units]                    # valid lower bound
        if self.round > 0:
            cut = torch.maximum(cut, self.up.quad_min_bound(a, self.target))   # also valid
        elif seen == 0:                       # estimate from a subsample of the batch's values
            sub = self.up.subsample(a).transpose(0, 1).reshape(units.numel(), -1)
            k = int(sub.shape[1] - self.guess[0] * self.q * sub.shape[1])
            if k >= 1:
                cut = torch.maximum(cut, sub.kthvalue(k, dim=1).values.double())
        else:           # (at most all binned values: a low first guess is not made lower)
            want = torch.minimum(self.hist.counts.sum(1).double(),
                                 torch.tensor(self.guess[1] * self.q * seen * self.up.pixels))
            cut = torch.maximum(cut, self.hist.top_edge(want)[0][units])
        self.cut[units] = torch.maximum(self.cut[units], cut)
        flat = [self.hist.flat_index(v, units[u])
                for v, u, _ in self.up.iter_above(a, cut, positions=False)]
        before = self.hist.counts.sum(1)
        if flat:
            self.hist.add_flat(torch.cat(flat))
        added = self.hist.counts.sum(1) - before
        pixels = acts.shape[0] * self.up.pixels
        self.hist.add_below(torch.where(self.active, pixels - added, 0))

    def failed_units(self) -> torch.Tensor:
        """Active units whose histogram may not hold their threshold's bracket (bool ``[U]``)."""
        edge, j = self.hist.top_edge(self.target)
        w = self.hist.width()
        floor_cut = torch.floor(self.cut / w) * w                        # exact: w = 2**e
        return self.active & ((j < 0) | (edge < floor_cut))

    def restart(self, units: torch.Tensor) -> None:
        """Start a pass-1 round for ``units`` (bool ``[U]``), forgetting their histogram."""
        self.hist.counts[units] = 0
        self.hist.below[units] = 0
        self.cut[units] = -float("inf")
        self.active = units.clone()
        self.round += 1

    # ------------------------------------------------------------------ pass 2
    def start_pass2(self) -> None:
        """Set up pass 2's counts from the pass-1 histogram."""
        cfg, n_concepts, n_categories = self.cfg, self.concepts, self.categories
        if cfg.threshold == "quantile":
            _, j = self.hist.top_edge(self.target)
            lo_index = self.hist.m + j.clamp(min=0)
            self.counts = ThresholdCounts(lo_index, self.hist.e, n_concepts, n_categories,
                                          cfg.fine_log2)
        else:
            tmp = UnitHistogram(self.units, cfg.iqr_bins, self.hist.e.device)
            tmp.extend_range(self.hist.vmin, self.hist.vmax)
            self.counts = ConceptHistogram(tmp.e, tmp.m, cfg.iqr_bins, n_concepts, n_categories)

    def pass2(self, acts: torch.Tensor, masks: torch.Tensor, present: torch.Tensor,
              coded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> None:
        """Add a batch: ``masks [n, C, P]``, ``present [n, K]``, ``coded`` = their
        :func:`encode_rows` (or ``None``: per-pixel rows)."""
        if isinstance(self.counts, ThresholdCounts):
            if coded is not None:
                codes, concepts, categories = coded
                cells = []
                for v, u, pos in self.up.iter_above(acts, self.counts.lo):
                    assert pos is not None
                    cells.append(self.counts.cell_code(v, u, codes.view(-1).index_select(0, pos),
                                                       concepts.shape[0]))
                if cells:
                    self.counts.add_cell_codes(torch.cat(cells), concepts, categories)
            else:
                for v, u, pos in self.up.iter_above(acts, self.counts.lo):
                    assert pos is not None
                    sample, pix = pos // self.up.pixels, pos % self.up.pixels
                    self.counts.add(v, u, masks.permute(0, 2, 1)[sample, pix], present[sample])
        elif isinstance(self.counts, ConceptHistogram):
            self.counts.add(self.up.dense(acts).flatten(2), masks, present)
        else:
            raise RuntimeError("pass 2 not started")
        assert self.counts is not None
        self.counts.add_masks(masks, present)


def _iou(inter: torch.Tensor, above: torch.Tensor, concept: torch.Tensor) -> torch.Tensor:
    union = above + concept - inter
    return torch.where(union > 0, inter.double() / union.clamp(min=1).double(), 0.0)


def _finish_quantile(st: _LayerState, cat_of: torch.Tensor, cfg: DissectConfig
                     ) -> dict[str, torch.Tensor]:
    c = st.counts
    assert isinstance(c, ThresholdCounts)
    above_edges = c.above[:, None] + suffix_sum(c.fine, 1)                # [U, F+1]
    j = (above_edges.double() - st.target).abs().argmin(1)
    at = c.counts_at(j)
    pixels = int(c.images) * st.up.pixels
    if cfg.category_conditioned:
        above = at["above_category"][:, cat_of]                            # [U, C]
    else:
        above = at["above"][:, None].expand(-1, cat_of.numel())
    return {"thresholds": c.fine_edges().gather(1, j[:, None]).squeeze(1),
            "iou": _iou(at["intersection"], above, c.concept_pixels[None]),
            "intersection": at["intersection"], "above": at["above"],
            "concept_pixels": c.concept_pixels,
            "frac_above": at["above"].double() / max(pixels, 1),
            "iqr": torch.zeros(c.above_concept.shape, dtype=torch.float64),
            "rank_error": at["bin_mass"].double() / max(pixels, 1)}


def _finish_iqr(st: _LayerState, cat_of: torch.Tensor, cfg: DissectConfig
                ) -> dict[str, torch.Tensor]:
    h = st.counts
    assert isinstance(h, ConceptHistogram)
    P = st.up.pixels
    inter = suffix_sum(h.concept, 1).double()                              # [U, B+1, C]
    if cfg.category_conditioned:
        above = suffix_sum(h.category, 1)[:, :, cat_of].double()            # [U, B+1, C]
        total = (h.category_images[cat_of].double() * P)[None, None]
    else:
        above = suffix_sum(h.counts, 1)[:, :, None].double().expand_as(inter)
        total = torch.tensor(float(h.images) * P, dtype=torch.float64)
    s = h.concept_pixels.double()[None, None]
    n = total.clamp(min=1)
    p11, p10, p01 = inter / n, (above - inter) / n, (s - inter) / n
    p00 = (1 - p11 - p10 - p01).clamp(min=0)
    pa, ps = p11 + p10, p11 + p01

    def plogp(p: torch.Tensor) -> torch.Tensor:
        return torch.where(p > 0, p * torch.log(p.clamp(min=1e-300)), 0.0)

    def term(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ok = (p > 0) & (a > 0) & (b > 0)
        return torch.where(ok, p * torch.log(p.clamp(min=1e-300) / (a * b).clamp(min=1e-300)),
                           0.0)
    mi = (term(p11, pa, ps) + term(p10, pa, 1 - ps) + term(p01, 1 - pa, ps)
          + term(p00, 1 - pa, 1 - ps))
    hj = -(plogp(p11) + plogp(p10) + plogp(p01) + plogp(p00))
    iqr = torch.where(hj > 0, mi / hj.clamp(min=1e-300), 0.0)
    j = iqr.argmax(1)                                                      # [U, C]
    inter_j = inter.gather(1, j[:, None]).squeeze(1).round().long()
    above_j = above.gather(1, j[:, None]).squeeze(1).round().long()
    all_above = suffix_sum(h.counts, 1)[:, :, None].expand(-1, -1, j.shape[1])
    above_all_j = all_above.gather(1, j[:, None]).squeeze(1)
    pixels = max(int(h.images) * P, 1)
    return {"thresholds": h.edges().gather(1, j),
            "iou": _iou(inter_j, above_j, h.concept_pixels[None]),
            "iqr": iqr.gather(1, j[:, None]).squeeze(1),
            "intersection": inter_j, "above": above_all_j,
            "concept_pixels": h.concept_pixels,
            "frac_above": above_all_j.double().mean(1) / pixels,
            "rank_error": torch.zeros(j.shape[0], dtype=torch.float64)}
