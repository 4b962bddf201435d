"""Network dissection of a generator: which units draw which concept, scored by IoU.

Two passes over the same samples (latent ``i`` depends only on ``(seed, i)``, so pass 2
regenerates exactly what pass 1 saw):

1. generator only, stopped after the deepest requested layer: per unit, the range of raw
   activations, the top-k samples, and (``threshold="quantile"``) a histogram of the upsampled
   activations that brackets ``t_u`` inside one bin. Only values above a per-unit cut are
   binned: a guess at about twice the target fraction (from the values seen so far; see
   ``GUESS_FACTOR``). At the end, a unit whose bracket might reach below its largest cut (the
   guess was too high) is detected exactly and gets another pass-1 round cut at valid lower
   bounds only, so guesses change the cost, never the result.
2. generator + segmenter: exact int64 counts, in ``2**fine_log2`` sub-bins of that bin and above
   it, of all / per-concept / per-category pixels (one ``bincount`` over (unit, sub-bin, code of
   the pixel's concept set and its image's categories)). ``t_u`` is the sub-bin edge whose exact
   count above is nearest ``q * N * P``; IoU is then exact at ``t_u``.
   With ``threshold="iqr"``: exact per-concept histograms over the whole range instead, and per
   unit-concept the edge maximising ``I(A;S) / H(A,S)``; pairs whose best ratio stays below
   ``min_iqr`` (default 0.01) cannot label the unit (see :attr:`LayerResult.score`).

In quantile mode both passes upsample only where needed (:meth:`Upsampler.iter_above`: only
output rows whose source rows may exceed the cut are interpolated), bit-identically to the dense
upsampling, so no pass holds a batch's full-resolution maps.

``category_conditioned=True`` (Broden style): the union for concept ``c`` counts only pixels of
images where ``c``'s category is present, i.e. where some concept of that category has at least
one pixel. When every image shows every category this equals the plain IoU.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .fingerprint import fingerprint
from .hooks import Trace
from .quantile import UnitHistogram
from .results import LayerResult, atomic_write_bytes, load_results, save_results
from .stats import ConceptHistogram, ThresholdCounts, TopK, encode_rows, suffix_sum
from .upsample import Upsampler

__all__ = ["DissectConfig", "DissectMismatchError", "dissect"]


class DissectMismatchError(RuntimeError):
    """An output folder holds a run made with other arguments."""


@dataclass(frozen=True)
class DissectConfig:
    """Everything that determines a dissection's result (checked when resuming)."""

    layers: tuple[str, ...]
    samples: int
    seed: int
    quantile: float = 0.01
    batch_size: int = 32
    seg_resolution: int | None = None
    threshold: str = "quantile"
    category_conditioned: bool = False
    iou_threshold: float = 0.04
    topk: int = 12
    bins: int = 2048
    fine_log2: int = 8
    iqr_bins: int = 256
    min_iqr: float = 0.01
    model_name: str = ""
    segmenter_name: str = ""
    #: :func:`gandissect.fingerprint.fingerprint` of generator and segmenter: a folder's run is
    #: never resumed or reused with other weights
    weights: str = ""

    def check(self) -> None:
        if not self.layers:
            raise ValueError("give at least one layer to dissect")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")
        if self.threshold not in ("quantile", "iqr"):
            raise ValueError(f"threshold must be 'quantile' or 'iqr', got {self.threshold!r}")


def _first_bad(acts: torch.Tensor) -> int | None:
    """Index of the first sample with a NaN or inf activation, or ``None``."""
    if acts.numel() == 0:
        return None
    lo, hi = torch.aminmax(acts)            # NaN propagates: finite extremes = all finite
    if bool(torch.isfinite(lo) & torch.isfinite(hi)):                  # (20x faster)
        return None
    bad = ~torch.isfinite(acts.flatten(1)).all(1)
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


#: Pass-1 cut guesses (see :meth:`_LayerState.pass1`): bin only values above the level with
#: ``GUESS_FACTOR * q`` of the values seen so far in the run above it (first batch:
#: ``FIRST_GUESS_FACTOR * q`` of a subsample of its own values). A guess that turns out too
#: high costs one more pass over the generator prefix for the affected units, never accuracy.
GUESS_FACTOR = 2.0
FIRST_GUESS_FACTOR = 3.0


class _LayerState:
    """Pass-1 and pass-2 statistics of one layer."""

    def __init__(self, cfg: DissectConfig, units: int, src: tuple[int, int],
                 dst: tuple[int, int], device: torch.device) -> None:
        self.units, self.src, self.dst = units, src, dst
        self.q = cfg.quantile
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

    def load(self, state: dict[str, torch.Tensor], cfg: DissectConfig, n_concepts: int,
             n_categories: int) -> None:
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        self.hist.load_state_dict(part("hist."))
        self.topk.load_state_dict(part("topk."))
        self.round = int(state["p1.round"])
        self.active = state["p1.active"].to(self.active.device, torch.bool).clone()
        self.cut = state["p1.cut"].to(self.cut.device, torch.float64).clone()
        if any(k.startswith("counts.") for k in state):
            self.start_pass2(cfg, n_concepts, n_categories)
            assert self.counts is not None
            self.counts.load_state_dict(part("counts."))

    # ------------------------------------------------------------------ pass 1
    def pass1(self, acts: torch.Tensor, indices: torch.Tensor, quantile_mode: bool,
              seen: int) -> None:
        """Add a batch; ``seen`` = samples of this round before it.

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
            k = int(sub.shape[1] - FIRST_GUESS_FACTOR * self.q * sub.shape[1])
            if k >= 1:
                cut = torch.maximum(cut, sub.kthvalue(k, dim=1).values.double())
        else:           # (at most all binned values: a low first guess is not made lower)
            want = torch.minimum(self.hist.counts.sum(1).double(),
                                 torch.tensor(GUESS_FACTOR * self.q * seen * self.up.pixels))
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
    def start_pass2(self, cfg: DissectConfig, n_concepts: int, n_categories: int) -> None:
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


def _category_index(categories: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    names = sorted(set(categories), key=list(categories).index)
    return names, torch.tensor([names.index(c) for c in categories], dtype=torch.long)


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


def _save_state(path: Path, cfg: DissectConfig, phase: int, next_sample: int,
                layers: dict[str, _LayerState]) -> None:
    tensors = {f"{name}/{k}": v.contiguous().cpu()
               for name, st in layers.items() for k, v in st.state_dict().items()}
    meta = {"config": json.dumps(asdict(cfg)), "phase": str(phase),
            "next_sample": str(next_sample)}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def _check_folder(folder: Path, cfg: DissectConfig) -> None:
    cfg_path = folder / "config.json"
    mine = asdict(cfg)
    if cfg_path.exists():
        theirs = json.loads(cfg_path.read_text())
        if theirs != json.loads(json.dumps(mine)):
            diff = sorted(k for k in set(mine) | set(theirs) if json.loads(json.dumps(
                mine.get(k))) != theirs.get(k))
            raise DissectMismatchError(
                f"{folder} holds a dissection run with other arguments (differs in: "
                f"{', '.join(diff)}); use another output folder, or delete {folder} to start over")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cfg_path, json.dumps(mine, indent=1).encode())


def dissect(generator: Any, segmenter: Any, layers: str | Sequence[str], samples: int,
            seed: int, quantile: float = 0.01, batch_size: int = 32,
            seg_resolution: int | None = None, device: str | torch.device = "cpu",
            threshold: str = "quantile", category_conditioned: bool = False,
            iou_threshold: float = 0.04, topk: int = 12, out: str | Path | None = None,
            checkpoint_seconds: float = 30.0, progress: bool = False,
            on_batch: Callable[[int, int], None] | None = None,
            **extra: Any) -> dict[str, LayerResult]:
    """Dissect ``layers`` of ``generator`` with ``segmenter`` over samples ``0..samples-1`` of
    ``seed``; return one :class:`LayerResult` per layer (see the module docstring).

    With ``out``, statistics are saved there atomically every ``checkpoint_seconds`` and at the
    end of each pass; calling again with the same arguments resumes from the saved state and
    returns exactly what an uninterrupted run returns. A folder holding a run with other
    arguments raises :class:`DissectMismatchError`. ``on_batch(pass, samples_done)`` is called
    after each batch (and its checkpoint, if due). ``extra`` may set ``bins``, ``fine_log2``,
    ``iqr_bins``, ``min_iqr``, ``model_name``, ``segmenter_name`` (recorded in the config, with
    the weights' fingerprint).
    """
    names = (layers,) if isinstance(layers, str) else tuple(layers)
    cfg = DissectConfig(layers=names, samples=samples, seed=seed, quantile=quantile,
                        batch_size=batch_size, seg_resolution=seg_resolution,
                        threshold=threshold, category_conditioned=category_conditioned,
                        iou_threshold=iou_threshold, topk=topk,
                        weights=fingerprint(generator, segmenter), **extra)
    cfg.check()
    dev = torch.device(device)
    generator = generator.to(dev).eval()
    segmenter.to(dev)
    for name in names:
        generator.layer(name)                                   # unknown layer -> clear error
    labels, categories = list(segmenter.labels), list(segmenter.categories)
    cat_names, cat_of = _category_index(categories)
    R = int(generator.resolution)
    seg_hw = segmenter.output_size(R, R)
    dst = (seg_resolution, seg_resolution) if seg_resolution else tuple(seg_hw)

    folder = Path(out) if out is not None else None
    state_path = folder / "state.safetensors" if folder else None
    if folder is not None:
        _check_folder(folder, cfg)
        if (folder / "results.json").exists() and not (state_path and state_path.exists()):
            return load_results(folder)

    states: dict[str, _LayerState] = {}
    phase, next_sample = 1, 0
    saved: dict[str, torch.Tensor] = {}
    if state_path is not None and state_path.exists():
        from safetensors import safe_open
        with safe_open(str(state_path), "pt") as f:
            meta = f.metadata()
        phase, next_sample = int(meta["phase"]), int(meta["next_sample"])
        saved = load_file(str(state_path))

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=2 * samples, unit="sample", desc="dissect", dynamic_ncols=True)
        bar.update((phase - 1) * samples + next_sample)

    # probe sample 0 once: layer shapes (and their validity) before any statistics exist
    with torch.no_grad(), Trace(generator, list(names), stop=True) as probe:
        generator(generator.sample_latents(1, seed, 0))
    for name in names:
        a = probe[name]
        states[name] = _LayerState(cfg, a.shape[1], (a.shape[2], a.shape[3]), dst, dev)
        part = {k[len(name) + 1:]: v.to(dev) for k, v in saved.items() if k.startswith(name + "/")}
        if part:
            states[name].load(part, cfg, len(labels), len(cat_names))

    def check(acts: dict[str, torch.Tensor], start: int) -> None:
        for name, a in acts.items():
            st = states[name]
            bad = _first_bad(a)
            if bad is not None:
                raise ValueError(f"layer {name!r} produced NaN or inf activations for sample "
                                 f"{start + bad} (seed {seed})")
            if (a.shape[1], a.shape[2], a.shape[3]) != (st.units, *st.src):
                raise ValueError(f"layer {name!r} changed shape to {list(a.shape[1:])}")

    last_save = time.monotonic()
    with torch.no_grad():
        while phase <= 2:
            if phase == 2:
                for st in states.values():
                    if st.counts is None:
                        st.start_pass2(cfg, len(labels), len(cat_names))
            # pass 1 after round 0 re-runs only layers with units left to redo
            needed = [k for k in names if phase == 2 or states[k].round == 0
                      or bool(states[k].active.any())]
            while next_sample < samples:
                n = min(batch_size, samples - next_sample)
                z = generator.sample_latents(n, seed, next_sample)
                idx = torch.arange(next_sample, next_sample + n, device=dev)
                with Trace(generator, needed, stop=(phase == 1)) as tr:
                    images = generator(z)
                acts = {k: tr[k].float() for k in needed}
                check(acts, next_sample)
                if phase == 1:
                    for k in needed:
                        states[k].pass1(acts[k], idx, cfg.threshold == "quantile", next_sample)
                else:
                    masks = _segment(segmenter, images, R, seg_hw, dst)
                    present = _category_presence(masks, cat_of, len(cat_names))
                    flat = masks.flatten(2)
                    coded = encode_rows(flat, present)
                    for k in needed:
                        states[k].pass2(acts[k], flat, present, coded)
                next_sample += n
                if bar is not None:
                    bar.update(n)
                if state_path is not None and time.monotonic() - last_save >= checkpoint_seconds:
                    _save_state(state_path, cfg, phase, next_sample, states)
                    last_save = time.monotonic()
                if on_batch is not None:
                    on_batch(phase, next_sample)
            failed = {k: st.failed_units() for k, st in states.items()} \
                if phase == 1 and cfg.threshold == "quantile" else {}
            if any(bool(f.any()) for f in failed.values()):
                for k, f in failed.items():                 # guess too high: redo these units
                    states[k].restart(f)
                if bar is not None:
                    bar.total += samples
                    bar.refresh()
                next_sample = 0
            else:
                phase, next_sample = phase + 1, 0
            if state_path is not None:
                _save_state(state_path, cfg, phase, next_sample, states)
                last_save = time.monotonic()
    if bar is not None:
        bar.close()
    results = {}
    for name in names:
        st = states[name]
        fin = (_finish_quantile if cfg.threshold == "quantile" else _finish_iqr)(st, cat_of, cfg)
        meta = json.loads(json.dumps(asdict(cfg)))
        meta.update(layer_shape=[st.units, *st.src], seg_shape=list(dst),
                    category_names=cat_names)
        results[name] = LayerResult(
            layer=name, labels=labels, categories=categories,
            topk_indices=st.topk.indices.cpu().numpy(), topk_values=st.topk.values.cpu().numpy(),
            meta=meta, **{k: v.cpu().numpy() for k, v in fin.items()})
    if folder is not None:
        save_results(results, folder)
        assert state_path is not None
        state_path.unlink(missing_ok=True)
    return results


def _segment(segmenter: Any, images: torch.Tensor, R: int, seg_hw: tuple[int, int],
             dst: tuple[int, int]) -> torch.Tensor:
    """Masks ``[n, C, *dst]`` (bool) for generated ``images``, with shape checks."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 \
            or tuple(images.shape[2:]) != (R, R):
        raise ValueError(f"generator returned images of shape {list(getattr(images, 'shape', []))}"
                         f", expected [n, 3, {R}, {R}] (its declared resolution)")
    masks = segmenter.segment(images)
    expect = (images.shape[0], len(segmenter.labels), *seg_hw)
    if tuple(masks.shape) != expect or masks.dtype != torch.bool:
        raise ValueError(f"segmenter returned masks {list(masks.shape)} ({masks.dtype}), expected "
                         f"{list(expect)} bool for images of {R}x{R}; check its output_size()")
    if tuple(masks.shape[2:]) != tuple(dst):
        masks = F.interpolate(masks.float(), size=dst, mode="nearest") > 0.5
    return masks


def _category_presence(masks: torch.Tensor, cat_of: torch.Tensor, k: int) -> torch.Tensor:
    """``[n, K]``: category ``k`` has at least one pixel in image ``n``."""
    any_c = masks.flatten(2).any(2)                                        # [n, C]
    out = torch.zeros(masks.shape[0], k, dtype=torch.bool, device=masks.device)
    for i in range(k):
        out[:, i] = any_c[:, cat_of.to(masks.device) == i].any(1)
    return out


def brute_force(acts: torch.Tensor, masks: torch.Tensor, quantile: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Reference for tests: thresholds ``[U]`` and IoU ``[U, C]`` from full tensors
    (``acts [N, U, H', W']`` already upsampled, ``masks [N, C, H', W']``)."""
    U = acts.shape[1]
    flat = acts.transpose(0, 1).reshape(U, -1).double()
    t = torch.quantile(flat, 1 - quantile, dim=1)
    on = flat > t[:, None]
    m = masks.transpose(0, 1).reshape(masks.shape[1], -1).double()
    inter = on.double() @ m.T
    union = on.sum(1, keepdim=True) + m.sum(1)[None] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), 0.0)
    return t.numpy(), iou.numpy()
