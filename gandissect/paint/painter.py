"""GANPaint as an API: strokes, an undoable history, and rendering (brushes:
:mod:`gandissect.paint.brushes`).

A :class:`Stroke` is one painted edit: a mask at the layer's resolution, the units it uses
(from a :class:`~gandissect.paint.brushes.Brush`, or picked by hand) and whether it draws
(inserts) or removes (ablates); it becomes one :class:`gandissect.Edit`. A :class:`History` is an
immutable list of strokes with a cursor (undo / redo / reset return new histories), so per-user
state can be copied freely.

>>> import numpy as np
>>> h = History().push(Stroke("tree", "remove", "layout", (3,), (0.0,), 1.0, 4,
...                           np.ones((2, 2), np.float32)))
>>> len(h.active), len(h.undo().active), len(h.undo().redo().active)
(1, 0, 1)

:class:`Painter` holds a generator, its brushes and a lock (hooks live on the shared generator,
so forward passes of different users never overlap) and renders ``(seed, history)`` to pixels;
an inverted photo (:class:`~.photo.Photo`, :func:`~.photo.invert_photo`) takes a seed's place.
For many users, :meth:`Painter.render_many` batches concurrent requests into shared forward
passes and caches recent images (bounded); a history holds at most :data:`MAX_STROKES` strokes.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..common.fingerprint import fingerprint
from ..common.hooks import Trace
from ..common.imaging import to_uint8
from ..common.specs import split_spec
from ..intervention.causal import unit_statistics
from ..intervention.edit import Edit, intervene, layer_shape
from .brushes import BrushSet, load_or_build_brushes, shipped_brushes
from .masks import MAX_MASK_SIDE as MAX_MASK_SIDE  # re-exported
from .masks import fit_mask
from .masks import mask_from_editor as mask_from_editor  # re-exported
from .photo import Photo
from .serving import CACHE_BYTES, LRU, MAX_BATCH, Batcher, per_sample_edit

Mode = Literal["draw", "remove"]
MODES: tuple[str, ...] = ("draw", "remove")
#: Brush strengths offered by the app: how many of a concept's ranked units a stroke uses.
STRENGTHS: tuple[int, ...] = (4, 10, 20)
#: Most strokes one history holds (active and undone); one more is refused (undo or reset).
MAX_STROKES = 64


class EmptyStrokeError(ValueError):
    """A stroke mask covers no cell of the layer (nothing was painted)."""


class HistoryFullError(ValueError):
    """A history already holds its :attr:`History.limit` of active strokes."""


# ---------------------------------------------------------------------------------- strokes

@dataclass(frozen=True, eq=False)
class Stroke:
    """One painted edit: ``mode`` draw (insert ``replacement``) or remove (ablate) ``units`` of
    ``layer`` with strength ``alpha`` inside ``mask`` (float ``[h, w]`` at layer resolution)."""

    label: str
    mode: str
    layer: str
    units: tuple[int, ...]
    replacement: tuple[float, ...]
    alpha: float
    strength: int
    mask: np.ndarray = field(repr=False)

    def edit(self) -> Edit:
        """The stroke as an :class:`Edit` (replacement 0 when removing), made once."""
        return self._edit

    @cached_property
    def _edit(self) -> Edit:
        rep: Any = 0.0 if self.mode == "remove" else list(self.replacement)
        return Edit(self.layer, self.units, alpha=self.alpha, replacement=rep,
                    mask=torch.from_numpy(self.mask))

    @cached_property
    def key(self) -> bytes:
        """A digest of everything that shapes the image (equal strokes, equal keys); the mask
        must not change once the stroke is made."""
        h = hashlib.sha256(repr((self.mode, self.layer, self.units, self.replacement,
                                 self.alpha, self.mask.shape, str(self.mask.dtype))).encode())
        h.update(np.ascontiguousarray(self.mask).tobytes())
        return h.digest()

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (no mask)."""
        return {"concept": self.label, "mode": self.mode, "layer": self.layer,
                "units": list(self.units), "strength": self.strength, "alpha": self.alpha,
                "cells": int((self.mask > 0).sum())}


@dataclass(frozen=True)
class History:
    """Strokes with a cursor: ``strokes[:position]`` are active, the rest can be redone; at
    most ``limit`` strokes (:data:`MAX_STROKES`): :meth:`push` beyond raises
    :class:`HistoryFullError`."""

    strokes: tuple[Stroke, ...] = ()
    position: int = 0
    limit: int = MAX_STROKES

    def __post_init__(self) -> None:
        if not (1 <= self.limit and 0 <= self.position <= len(self.strokes) <= self.limit):
            raise ValueError(f"no history of {len(self.strokes)} strokes at position "
                             f"{self.position} with limit {self.limit}")

    @property
    def active(self) -> tuple[Stroke, ...]:
        return self.strokes[:self.position]

    @property
    def can_undo(self) -> bool:
        return self.position > 0

    @property
    def can_redo(self) -> bool:
        return self.position < len(self.strokes)

    @property
    def full(self) -> bool:
        """Whether :meth:`push` would be refused."""
        return self.position >= self.limit

    def push(self, stroke: Stroke) -> History:
        """Add ``stroke`` after the active ones (dropping any undone strokes)."""
        if self.full:
            raise HistoryFullError(f"at most {self.limit} strokes per image: undo or reset "
                                   "before painting more")
        return History(self.active + (stroke,), self.position + 1, self.limit)

    def undo(self) -> History:
        return replace(self, position=max(0, self.position - 1))

    def redo(self) -> History:
        return replace(self, position=min(len(self.strokes), self.position + 1))

    def reset(self) -> History:
        return History(limit=self.limit)

    def rows(self) -> list[list[Any]]:
        """One table row per active stroke: #, concept, mode, strength, alpha, units, layer."""
        return [[i + 1, s.label, s.mode, s.strength, s.alpha, ", ".join(map(str, s.units)),
                 s.layer] for i, s in enumerate(self.active)]


# ---------------------------------------------------------------------------------- painter

class Painter:
    """Renders ``(seed, history)`` of ``generator`` and makes strokes from masks and brushes.

    Thread-safe: forward passes (which add hooks to the shared generator) hold one lock;
    :meth:`render_many` batches concurrent requests (at most ``max_batch`` images a pass) and
    caches up to ``cache_bytes`` of rendered images.
    """

    def __init__(self, generator: Any, brushes: BrushSet | None = None, name: str = "",
                 layer: str | None = None, segmenter: Any = None, max_batch: int = MAX_BATCH,
                 cache_bytes: int = CACHE_BYTES) -> None:
        if brushes is None and layer is None:
            raise ValueError("give the brushes or, until they are built, their layer")
        self.generator = generator.eval()
        self.segmenter = segmenter
        self.layer: str = brushes.layer if brushes is not None else str(layer)
        self.name = name
        self._lock = threading.Lock()
        self._shapes: dict[str, tuple[int, int, int]] = {}
        self._quantiles: dict[str, tuple[float, ...]] = {}
        self._brushes: BrushSet | None = None
        self.batcher: Batcher[tuple[int, tuple[Stroke, ...]], np.ndarray] = Batcher(
            self._render_images, max_batch=max_batch)
        self.cache: LRU[tuple[int, tuple[bytes, ...]], np.ndarray] = LRU(
            4096, cache_bytes, size=lambda a: int(a.nbytes))
        if brushes is not None:
            self.set_brushes(brushes)

    @property
    def lock(self) -> threading.Lock:
        """Held by every forward pass on the shared generator (they hook it)."""
        return self._lock

    @property
    def brushes(self) -> BrushSet:
        """The brushes; ValueError while they are still being built (:attr:`ready`)."""
        if self._brushes is None:
            raise ValueError(f"the brushes of layer {self.layer!r} are still being built")
        return self._brushes

    @property
    def ready(self) -> bool:
        """Whether the brushes are there (images render before that, strokes need them)."""
        return self._brushes is not None

    def set_brushes(self, brushes: BrushSet) -> None:
        """Hand over the brushes once built (a background build calls this)."""
        if brushes.layer != self.layer:
            raise ValueError(f"brushes of layer {brushes.layer!r} for a painter of {self.layer!r}")
        self._quantiles.setdefault(brushes.layer, brushes.quantile)
        self._brushes = brushes

    @property
    def concepts(self) -> list[str]:
        """Concepts that have a brush (at least one causal unit); none until :attr:`ready`."""
        return list(self._brushes.brushes) if self._brushes is not None else []

    @property
    def layers(self) -> list[str]:
        return list(self.generator.layer_names)

    @property
    def resolution(self) -> int:
        return int(self.generator.resolution)

    def layer_shape(self, layer: str | None = None) -> tuple[int, int, int]:
        """``(units, h, w)`` of ``layer`` (default: the brushes' layer)."""
        layer = layer or self.layer
        if layer not in self._shapes:
            if layer not in self.layers:
                raise ValueError(f"unknown layer {layer!r}; layers: {', '.join(self.layers)}")
            with self._lock:
                self._shapes[layer] = layer_shape(self.generator, layer)
        return self._shapes[layer]

    def quantiles(self, layer: str) -> tuple[float, ...]:
        """Per-unit insertion values of ``layer`` (computed once over 50 samples if needed)."""
        if layer not in self._quantiles:
            self.layer_shape(layer)
            q = float(self._brushes.meta.get("q", 0.99)) if self._brushes is not None else 0.99
            with self._lock:
                stats = unit_statistics(self.generator, layer, samples=50, seed=0, q=q)
            self._quantiles[layer] = tuple(float(v) for v in stats.quantile)
        return self._quantiles[layer]

    def latent(self, seed: int) -> torch.Tensor:
        """Latent of image ``seed`` (sample 0 of that seed)."""
        seed = int(seed)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        return self.generator.sample_latents(1, seed, 0)

    def layer_mask(self, mask: Any, layer: str | None = None) -> np.ndarray:
        """A painted mask (any size) as area coverage ``[h, w]`` of ``layer``'s grid; raises
        :class:`EmptyStrokeError` when it covers nothing."""
        _, h, w = self.layer_shape(layer)
        if mask is None:
            raise EmptyStrokeError("nothing was painted")
        # first to the image (the mask is drawn over it), then by area to the layer's grid
        at_image = fit_mask(mask, (self.resolution, self.resolution))
        grid = fit_mask(at_image, (h, w))
        if not (grid > 0).any():
            raise EmptyStrokeError("nothing was painted")
        return grid

    def stroke(self, concept: str, mode: str, mask: Any, strength: int = 4,
               alpha: float = 1.0) -> Stroke:
        """A brush stroke: the ``strength`` best units of ``concept``'s brush, inside ``mask``."""
        if concept not in self.brushes.brushes:
            raise ValueError(f"no brush for concept {concept!r}; brushes: "
                             f"{', '.join(self.concepts) or '(none)'}")
        brush = self.brushes.brushes[concept]
        units = brush.top(int(strength))
        return self._stroke(concept, mode, self.layer, units, mask, int(strength), alpha,
                            brush.values[:len(units)])

    def unit_stroke(self, layer: str, units: Sequence[int] | str, mode: str, mask: Any,
                    alpha: float = 1.0) -> Stroke:
        """An expert stroke on hand-picked ``units`` of ``layer`` (a list or "3, 17, 40")."""
        parsed = parse_units(units)
        n, _, _ = self.layer_shape(layer)
        bad = [u for u in parsed if u >= n]
        if bad:
            raise ValueError(f"layer {layer!r} has units 0..{n - 1}; got {bad}")
        return self._stroke("units " + ",".join(map(str, parsed)), mode, layer, parsed, mask,
                            len(parsed), alpha)

    def _stroke(self, label: str, mode: str, layer: str, units: Sequence[int], mask: Any,
                strength: int, alpha: float, values: Sequence[float] | None = None) -> Stroke:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        alpha = float(alpha)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha (intensity) must lie in (0, 1], got {alpha}")
        grid = self.layer_mask(mask, layer)
        if mode == "remove":
            rep: tuple[float, ...] = (0.0,) * len(units)
        elif values is not None:
            rep = tuple(float(v) for v in values)
        else:
            rep = tuple(self.quantiles(layer)[u] for u in units)
        return Stroke(label, mode, layer, tuple(int(u) for u in units), rep, alpha, strength,
                      grid)

    def render_tensor(self, seed: int, strokes: Sequence[Stroke] = ()) -> torch.Tensor:
        """The image ``[1, 3, H, W]`` in [-1, 1] of ``seed`` with ``strokes`` applied in order."""
        return self.render_batch([(seed, strokes)])

    @torch.no_grad()
    def render_batch(self, items: Sequence[tuple[int, Sequence[Stroke]]]) -> torch.Tensor:
        """Images ``[n, 3, H, W]`` in [-1, 1] of ``(seed, strokes)`` items in one forward pass;
        each item's strokes act on its own sample only (:func:`~.serving.per_sample_edit`).
        Equal to rendering each item alone up to the rounding of batched convolutions (bit for
        bit on generators whose ops do not depend on the batch size)."""
        if not items:
            raise ValueError("nothing to render")
        z = torch.cat([self.latent(seed) for seed, _ in items])
        edits = [[s.edit() for s in strokes] for _, strokes in items]
        layers = list(dict.fromkeys(e.layer for es in edits for e in es))
        with self._lock, (Trace(self.generator, layers, edit=per_sample_edit(edits),
                                retain=False) if layers else contextlib.nullcontext()):
            return self.generator(z).detach().cpu()

    def _render_images(self, items: list[tuple[int, tuple[Stroke, ...]]]) -> list[np.ndarray]:
        images = to_uint8(self.render_batch(items))
        return [img.copy() for img in images]  # own memory: the cache weighs each alone

    def render_many(self, items: Sequence[tuple[int | Photo, Sequence[Stroke]]]
                    ) -> list[np.ndarray]:
        """uint8 ``[H, W, 3]`` images (read-only) of ``(image, strokes)`` items; an image is a
        sample's seed or an inverted :class:`~.photo.Photo` (rendered by its own model,
        composited into the photo). Thread-safe: images rendered lately come from the cache;
        the samples are rendered in one forward pass shared with what other threads ask for
        at the same time."""
        samples = [(seed, strokes) for seed, strokes in items if not isinstance(seed, Photo)]
        reqs = {(int(seed), tuple(s.key for s in strokes)): (int(seed), tuple(strokes))
                for seed, strokes in samples}
        if any(seed < 0 for seed, _ in reqs.values()):
            raise ValueError(f"seeds must be >= 0, got {[seed for seed, _ in samples]}")
        found = {k: img for k in reqs if (img := self.cache.get(k)) is not None}
        todo = [k for k in reqs if k not in found]
        for k, img in zip(todo, self.batcher([reqs[k] for k in todo]), strict=True):
            img.setflags(write=False)
            self.cache.put(k, img)
            found[k] = img
        return [seed.render(strokes) if isinstance(seed, Photo) else
                found[(int(seed), tuple(s.key for s in strokes))] for seed, strokes in items]

    def render(self, seed: int | Photo, strokes: Sequence[Stroke] = (), scale: int = 1
               ) -> np.ndarray:
        """uint8 ``[H*scale, W*scale, 3]`` image of a seed or a photo (nearest-neighbour
        upscaling), as :meth:`render_many` makes it."""
        return upscale(self.render_many([(seed, strokes)])[0], scale)

    @torch.no_grad()
    def feature_map(self, seed: int, unit: int, layer: str | None = None,
                    strokes: Sequence[Stroke] = (), scale: int = 1) -> np.ndarray:
        """uint8 RGB: the image with unit ``unit``'s (edited) activation, bilinearly upsampled
        and normalised to its maximum, blended over it as a heatmap."""
        layer = layer or self.layer
        n, _, _ = self.layer_shape(layer)
        if not 0 <= int(unit) < n:
            raise ValueError(f"layer {layer!r} has units 0..{n - 1}; got {unit}")
        z = self.latent(seed)
        edits = [s.edit() for s in strokes]
        with self._lock, intervene(self.generator, *edits, check=False), \
                Trace(self.generator, layer) as tr:
            img = self.generator(z).detach().cpu()
        act = tr[layer][:, int(unit):int(unit) + 1].float().cpu()
        up = F.interpolate(act, size=img.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        top = float(up.max())
        norm = (up.clamp(min=0) / top).numpy() if top > 0 else np.zeros(up.shape, np.float32)
        heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        base = to_uint8(img)[0].astype(np.float32)
        out = (0.4 * base + 0.6 * heat.astype(np.float32)).round().astype(np.uint8)
        return upscale(out, scale)


def parse_units(units: Sequence[int] | str) -> tuple[int, ...]:
    """Units from a list or a comma/space separated string; distinct, non-negative, non-empty."""
    if isinstance(units, str):
        parts = [p for p in units.replace(",", " ").split() if p]
        try:
            parsed = [int(p) for p in parts]
        except ValueError as exc:
            raise ValueError(f"units must be whole numbers separated by commas, got {units!r}"
                             ) from exc
    else:
        parsed = [int(u) for u in units]
    if not parsed:
        raise ValueError("give at least one unit, e.g. '3, 17'")
    if min(parsed) < 0:
        raise ValueError(f"unit indices must be >= 0, got {parsed}")
    return tuple(dict.fromkeys(parsed))


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of ``[H, W, C]`` by an integer ``scale`` >= 1."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    return image if scale == 1 else np.repeat(np.repeat(image, scale, 0), scale, 1)


def load_models(model: str, segmenter: str, layer: str, trust_pickle: bool = False
                ) -> tuple[Any, Any]:
    """The generator and segmenter named ``model`` and ``segmenter`` (registry names, or
    ``NAME:PATH`` as on the command line), checked to have ``layer``. A missing weights file
    raises FileNotFoundError that names the planted fallback."""
    import models
    import segmenters

    model_name, model_kw = split_spec(model)
    seg_name, seg_kw = split_spec(segmenter)
    if trust_pickle:
        if model_name not in models.REGISTRY:
            model_kw["trust_pickle"] = True
        if seg_kw:
            seg_kw["trust_pickle"] = True
    try:
        gen = models.load(model_name, **model_kw)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}\nThe {model!r} weights are missing; try "
                                "--model planted --segmenter planted --layer layout") from exc
    if layer not in gen.layer_names:
        raise ValueError(f"model {model!r} has no layer {layer!r}; layers: "
                         f"{', '.join(gen.layer_names)}")
    return gen, segmenters.load(seg_name, **seg_kw)


def brush_key(model: str, segmenter: str, layer: str, generator: Any, seg: Any,
              **build: Any) -> str:
    """The brush cache key: ``<model>-<segmenter>-<layer>-<fingerprint>[-<settings hash>]``
    (names without their ``:PATH``); it changes whenever either network's weights change, so
    a swapped model never reuses stale brushes."""
    key = f"{split_spec(model)[0]}-{split_spec(segmenter)[0]}-{layer}-{fingerprint(generator, seg)}"
    settings = "-".join(f"{k}{v}" for k, v in sorted(build.items()))
    if settings:
        key += "-" + hashlib.sha256(settings.encode()).hexdigest()[:8]
    return key


def open_painter(model: str, segmenter: str, layer: str, folder: str | Path | None = None,
                 progress: Callable[[str], None] | None = None, trust_pickle: bool = False,
                 **build: Any) -> Painter:
    """Load ``model`` and ``segmenter`` by registry name and return a :class:`Painter` for
    ``layer``; brushes are cached in ``folder`` (default
    :func:`gandissect.paint.brushes.cache_dir`) under :func:`brush_key` ``.json``; without
    ``folder``, brushes shipped for the bundled models are used when they match.
    ``model`` and ``segmenter`` may be ``NAME:PATH`` (a local checkpoint, folder or hub id, as
    on the command line); ``trust_pickle`` reaches the loaders that read checkpoint files. A
    missing weights file raises FileNotFoundError that names the planted fallback. (The app
    builds in the background instead: :mod:`gandissect.paint.job`.)"""
    gen, seg = load_models(model, segmenter, layer, trust_pickle)
    key = brush_key(model, segmenter, layer, gen, seg, **build)
    brushes = (shipped_brushes(gen, seg, layer, key) if folder is None else None) or \
        load_or_build_brushes(gen, seg, layer, key, folder, progress, **build)
    return Painter(gen, brushes, name=split_spec(model)[0], segmenter=seg)
