"""Toyworld as a probe set: rendered scenes with the renderer's exact multi-label masks.

Sample ``i`` is Toyworld scene ``i`` of ``seed`` (``models.toyworld.render.render_scene``), so
it depends only on ``(seed, i, resolution, typed)``. Labels are the 15 Toyworld concepts in
``models.toyworld.CONCEPTS`` order: 9 ``object`` concepts (sky ... road; ``tree`` = crown ∪
trunk, ``house`` = wall ∪ roof ∪ door ∪ window) and 6 ``part`` concepts (crown, trunk, wall,
roof, door, window). Parts occur only inside their object, so Broden's category-conditioned
IoU (count a part only on images that have parts) is meaningful.

``typed=True`` renders scene ``i`` with the renderer's scene type ``SCENE_TYPES[i % 6]``
(village, forest, lake, road, mountains, open_field: balanced, as ``render_typed_batch`` and the
bundled scene classifier's data); the default draws untyped scenes. ``scene_labels=True`` adds
one whole-image label per scene type, of category ``scene``, named ``<type>-s`` (Broden's suffix
for scenes; ``road-s`` is not the object ``road``): the type of each scene by the renderer's
rule ``scene_type_of`` (for typed scenes, the type asked for).

``colors=True`` adds Broden's ``color`` category: 11 per-pixel labels ``black-c`` ...
``yellow-c``, derived from the image itself as Broden does; each pixel gets exactly one, named
by the HSV rule of ``segmenters.color`` (the toolkit's colour segmenter; Broden used van de
Weijer et al.'s learnt colour names, which are not available offline).

>>> probe = ToyworldProbe(size=4, resolution=32)
>>> probe.images(0, 2).shape, probe.masks(3, 1).shape
(torch.Size([2, 3, 32, 32]), torch.Size([1, 15, 32, 32]))
>>> probe.categories.count("part")
6
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from models.toyworld.concepts import CATEGORIES, CONCEPTS
from models.toyworld.render import SCENE_TYPES, Scene, render_scene, scene_type_of
from segmenters.color import COLOR_NAMES, color_index

from .base import ProbeSet

#: Default scene seed of the probe set. Differs from the seeds Toyworld models are trained and
#: evaluated on: 0 (GAN and segmenter training, classifier data), 1 (classifier held-out),
#: 777,777 (segmenter validation), 1,000,003 (segmenter held-out), 2,000,003 (gan-quality's
#: reference, ``HELD_OUT_SEED``).
PROBE_SEED = 3_000_017

#: Whole-image labels of ``scene_labels=True``: ``<type>-s`` per renderer scene type.
SCENE_LABELS: tuple[str, ...] = tuple(f"{t}-s" for t in SCENE_TYPES)

#: Labels of ``colors=True``: ``<term>-c`` (Broden's suffix for colours) for the 11 basic
#: colour terms of ``segmenters.color`` (Broden's colour terms, from van de Weijer et al. 2009).
COLOR_LABELS: tuple[str, ...] = tuple(f"{c}-c" for c in COLOR_NAMES)


class ToyworldProbe(ProbeSet):
    """``size`` Toyworld scenes of ``seed`` at ``resolution``² pixels, with exact masks at the
    same resolution; optionally typed scenes and whole-image ``scene`` labels (see module
    docstring)."""

    def __init__(self, seed: int = PROBE_SEED, size: int = 10_000, resolution: int = 64,
                 scene_labels: bool = False, typed: bool = False, colors: bool = False) -> None:
        for name, v in (("seed", seed), ("size", size), ("resolution", resolution)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if size < 1:
            raise ValueError(f"size (number of scenes) must be >= 1, got {size}")
        if resolution < 16:
            raise ValueError(f"Toyworld scenes need resolution >= 16 pixels, got {resolution}")
        self.seed, self.size, self.resolution = seed, size, resolution
        self.scene_labels, self.typed = bool(scene_labels), bool(typed)
        self.colors = bool(colors)
        self.labels = list(CONCEPTS) + (list(SCENE_LABELS) if scene_labels else []) + (
            list(COLOR_LABELS) if colors else [])
        self.categories = list(CATEGORIES) + (["scene"] * len(SCENE_LABELS)
                                              if scene_labels else []) + (
            ["color"] * len(COLOR_LABELS) if colors else [])
        self.image_size = self.mask_size = (resolution, resolution)
        self._cache: tuple[int, int, np.ndarray, np.ndarray] | None = None
        self._scene0: str | None = None

    def __len__(self) -> int:
        return self.size

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None                              # never ship rendered batches
        return state

    def _render(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Images ``[n, 3, S, S]`` in [0, 1] and masks ``[n, C, S, S]`` of one range; the last
        range is kept, since the engine asks for images and masks of the same batch."""
        if self._cache is not None and self._cache[:2] == (start, n):
            return self._cache[2], self._cache[3]
        s = self.resolution
        images = np.empty((n, 3, s, s), dtype=np.float32)
        masks = np.empty((n, len(self.labels), s, s), dtype=bool)
        for k in range(n):
            scene = self._scene(start + k)
            images[k] = np.clip((scene.image + 1.0) * 0.5, 0.0, 1.0)
            masks[k, :len(CONCEPTS)] = scene.masks
            if self.scene_labels:
                masks[k, len(CONCEPTS):len(CONCEPTS) + len(SCENE_LABELS)] = False
                masks[k, len(CONCEPTS) + SCENE_TYPES.index(scene_type_of(scene.leaf))] = True
        if self.colors:
            first = len(self.labels) - len(COLOR_LABELS)
            names = color_index(torch.from_numpy(images)).numpy()
            for j in range(len(COLOR_LABELS)):
                masks[:, first + j] = names == j
        self._cache = (start, n, images, masks)
        return images, masks

    def _scene(self, i: int) -> Scene:
        """Scene ``i``: typed ``SCENE_TYPES[i % 6]`` when ``typed``, else untyped."""
        kind = SCENE_TYPES[i % len(SCENE_TYPES)] if self.typed else None
        return render_scene(self.seed, i, self.resolution, scene_type=kind)

    def scene_type(self, i: int) -> str:
        """The scene type of sample ``i`` by the renderer's rule (``scene_type_of``)."""
        return str(scene_type_of(self._scene(i).leaf))

    def _images(self, start: int, n: int) -> torch.Tensor:
        return torch.from_numpy(self._render(start, n)[0].copy())

    def _masks(self, start: int, n: int) -> torch.Tensor:
        return torch.from_numpy(self._render(start, n)[1].copy())

    def describe(self) -> dict[str, Any]:
        """Name, seed, size, resolution, label count, and ``scene0_sha256``, a hash of scene 0
        as rendered now (its 8-bit image and leaf map), so a change of the renderer changes the
        identity too; ``colors: True`` only with ``colors`` (so the default's is unchanged)."""
        if self._scene0 is None:
            scene = self._scene(0)
            quantized = np.round((scene.image + 1.0) * 127.5).astype(np.uint8)
            h = hashlib.sha256(quantized.tobytes())       # 8 bits: robust to float rounding
            h.update(scene.leaf.tobytes())
            self._scene0 = h.hexdigest()[:12]
        return {"name": "toyworld", "seed": self.seed, "size": self.size,
                "resolution": self.resolution, "typed": self.typed,
                "scene_labels": self.scene_labels,
                "labels": len(self.labels), "scene0_sha256": self._scene0,
                **({"colors": True} if self.colors else {})}


__all__ = ["COLOR_LABELS", "PROBE_SEED", "SCENE_LABELS", "ToyworldProbe"]
