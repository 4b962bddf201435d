"""One batch of a dissection pass: the run's models and fixed settings (:class:`_Run`) and the
per-batch code (:func:`_run_span`), shared by one process and the workers
(:mod:`gandissect.dissection.workers`) of :func:`gandissect.dissection.engine.dissect`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..common.hooks import Trace
from .config import DissectConfig
from .layer_stats import _first_bad, _LayerState
from .probe import ProbeModel, is_probe, probe_masks
from .stats import encode_rows


def _category_index(categories: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    names = sorted(set(categories), key=list(categories).index)
    return names, torch.tensor([names.index(c) for c in categories], dtype=torch.long)


@dataclass
class _Run:
    """The models and fixed settings of one dissection: everything a batch needs besides the
    statistics (built the same way in the parent and in every worker). ``probe`` is the probe
    set when the masks are ground truth (then ``generator`` is a
    :class:`~gandissect.dissection.probe.ProbeModel` and ``segmenter`` the probe set)."""

    generator: Any
    segmenter: Any
    cfg: DissectConfig
    dev: torch.device
    labels: list[str]
    categories: list[str]
    cat_names: list[str]
    cat_of: torch.Tensor
    R: int
    seg_hw: tuple[int, int]
    dst: tuple[int, int]
    probe: Any = None

    @classmethod
    def make(cls, generator: Any, segmenter: Any, cfg: DissectConfig,
             device: str | torch.device) -> _Run:
        """Move the models to ``device`` (eval mode) and check the layers exist. A probe set
        in place of ``segmenter`` supplies the masks, and a model that is not yet a
        :class:`ProbeModel` is run on its images."""
        dev = torch.device(device)
        probe = segmenter if is_probe(segmenter) else None
        if probe is not None and not isinstance(generator, ProbeModel):
            generator = ProbeModel(generator, probe)
        generator = generator.to(dev).eval()
        if probe is None:
            segmenter.to(dev)
        for name in cfg.layers:
            generator.layer(name)                               # unknown layer -> clear error
        labels, categories = list(segmenter.labels), list(segmenter.categories)
        if len(labels) != len(categories):
            raise ValueError(f"{type(segmenter).__name__} has {len(labels)} labels but "
                             f"{len(categories)} categories (one per label expected)")
        cat_names, cat_of = _category_index(categories)
        R = int(generator.resolution)
        seg_hw = tuple(probe.mask_size) if probe is not None else \
            tuple(segmenter.output_size(R, R))
        res = cfg.seg_resolution
        dst = (res, res) if res else seg_hw
        return cls(generator, segmenter, cfg, dev, labels, categories, cat_names, cat_of, R,
                   (int(seg_hw[0]), int(seg_hw[1])), (int(dst[0]), int(dst[1])), probe)

    def new_state(self, units: int, src: tuple[int, int], guess: tuple[float, float]
                  ) -> _LayerState:
        """Empty statistics for a layer of ``units`` maps of size ``src``, with the cut guess
        factors ``guess`` (the parent's ``FIRST_GUESS_FACTOR``, ``GUESS_FACTOR``)."""
        return _LayerState(self.cfg, units, src, self.dst, self.dev, len(self.labels),
                           len(self.cat_names), guess)


@dataclass
class _BatchCache:
    """Pass-1 outputs one process keeps for its later rounds, up to ``budget`` bytes: per batch
    start, the layers' activations and the segmentation (``flat`` masks, ``present``,
    ``coded``). A batch cached in pass 1 runs the whole generator and the segmenter once
    (instead of the generator up to the layer in pass 1 and again, whole, in pass 2); later
    pass-1 rounds and pass 2 read it (pass 2 frees it). The tensors are the ones the passes
    would compute again (a deterministic generator and segmenter), so results are unchanged.
    On a Dask worker, one cache serves the worker's chunks of a run (:mod:`.workers`); its
    methods may be called from several threads."""

    budget: int
    used: int = 0
    per_sample: int = 0
    entries: dict[int, tuple[dict[str, torch.Tensor], tuple[Any, ...], int]] = \
        field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def room(self, n: int) -> bool:
        """Whether a batch of ``n`` samples would fit (the first batch is tried unseen)."""
        return self.budget > 0 and self.used + self.per_sample * n <= self.budget

    def put(self, start: int, acts: dict[str, torch.Tensor], seg: tuple[Any, ...],
            n: int) -> None:
        size = sum(t.nbytes for t in acts.values()) + sum(
            t.nbytes for part in seg if part is not None
            for t in (part if isinstance(part, tuple) else (part,)))
        with self.lock:
            self.per_sample = max(self.per_sample, -(-size // n))
            if self.used + size <= self.budget and start not in self.entries:
                self.entries[start] = (acts, seg, size)
                self.used += size

    def take(self, start: int, free: bool) -> tuple[dict[str, torch.Tensor], tuple[Any, ...]
                                                    ] | None:
        """The batch at ``start`` if cached (and forgotten when ``free``)."""
        with self.lock:
            hit = self.entries.pop(start, None) if free else self.entries.get(start)
            if hit is None:
                return None
            if free:
                self.used -= hit[2]
        return hit[0], hit[1]


def _check_acts(acts: dict[str, torch.Tensor], states: dict[str, _LayerState], start: int,
                seed: int) -> None:
    """Refuse NaN/inf activations (naming the layer and the global sample index) and maps
    whose shape differs from the probe's."""
    for name, a in acts.items():
        st = states[name]
        bad = _first_bad(a)
        if bad is not None:
            raise ValueError(f"layer {name!r} produced NaN or inf activations for sample "
                             f"{start + bad} (seed {seed})")
        if (a.shape[1], a.shape[2], a.shape[3]) != (st.units, *st.src):
            raise ValueError(f"layer {name!r} changed shape to {list(a.shape[1:])}")


def _run_batch(run: _Run, states: dict[str, _LayerState], phase: int, start: int, n: int,
               seen: int, cache: _BatchCache | None = None) -> None:
    """Add samples ``start .. start+n-1`` to ``states`` (the layers this round runs) in pass
    ``phase``; ``seen`` as in :meth:`_LayerState.pass1`. On a probe set the model stops after
    the deepest layer in both passes (the masks come from the probe set). With a ``cache``
    (one process, not on a probe set) pass 1 keeps what pass 2 needs while it has room."""
    cfg, gen = run.cfg, run.generator
    idx = torch.arange(start, start + n, device=run.dev)
    hit = cache.take(start, free=phase == 2) if cache is not None else None
    keep = hit is None and cache is not None and phase == 1 and cache.room(n) \
        and set(states) == set(cfg.layers)          # pass 2 needs every layer
    if hit is not None:
        acts = {k: hit[0][k] for k in states}
    else:
        z = gen.sample_latents(n, cfg.seed, start)
        images: Any = None
        with Trace(gen, list(states), stop=(phase == 1 and not keep) or run.probe is not None
                   ) as tr, _precision(run):
            images = gen(z)
        acts = {k: tr[k].float() for k in states}
        _check_acts(acts, states, start, cfg.seed)
    if keep:
        assert cache is not None
        cache.put(start, acts, _segmentation(run, images), n)
    if phase == 1:
        for k, st in states.items():
            st.pass1(acts[k], idx, cfg.threshold == "quantile", seen)
    elif hit is not None:
        flat, present, coded = hit[1]
        for k, st in states.items():
            st.pass2(acts[k], flat, present, coded)
    else:
        if run.probe is not None:
            masks = probe_masks(run.probe, start, n).to(run.dev)
            if tuple(masks.shape[2:]) != run.dst:
                masks = F.interpolate(masks.float(), size=run.dst, mode="nearest") > 0.5
            present = _category_presence(masks, run.cat_of, len(run.cat_names))
            flat = masks.flatten(2)
            coded = encode_rows(flat, present)
        else:
            flat, present, coded = _segmentation(run, images)
        for k, st in states.items():
            st.pass2(acts[k], flat, present, coded)


def _segmentation(run: _Run, images: torch.Tensor) -> tuple[Any, ...]:
    """``(flat masks [n, C, P], present [n, K], coded)`` of generated ``images``, as pass 2
    computes them."""
    with _precision(run):
        masks = _segment(run.segmenter, images, run.R, run.seg_hw, run.dst)
    present = _category_presence(masks, run.cat_of, len(run.cat_names))
    flat = masks.flatten(2)
    return flat, present, encode_rows(flat, present)


def _precision(run: _Run) -> torch.autocast:
    """The forward passes' precision: autocast to bfloat16 when the run asks for it (a no-op
    context for float32)."""
    return torch.autocast(run.dev.type, dtype=torch.bfloat16,
                          enabled=run.cfg.dtype == "bfloat16")


def _run_span(run: _Run, states: dict[str, _LayerState], phase: int, start: int, stop: int,
              seen: int, after_batch: Callable[[int, int], None] | None = None,
              cache: _BatchCache | None = None) -> None:
    """Add samples ``start .. stop-1`` batch by batch (``start`` a multiple of the batch size,
    so the batches are those of a one-process run); ``seen`` = samples of the round already in
    ``states``; ``after_batch(first, end)`` after each batch. Shared by one process and workers
    (only one process passes a ``cache``)."""
    s = start
    while s < stop:
        n = min(run.cfg.batch_size, stop - s)
        _run_batch(run, states, phase, s, n, seen + s - start, cache)
        s += n
        if after_batch is not None:
            after_batch(s - n, s)


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

