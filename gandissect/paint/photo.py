"""Photos in the painter: an inverted photo is one more kind of image a
:class:`~gandissect.paint.painter.Painter` holds and renders with a history of strokes.

A :class:`Photo` wraps an :class:`~gandissect.inversion.invert.Inversion`: rendering it with
strokes applies their edits to the inverted features (:meth:`Inversion.render`) and composites
the change into the photo (:meth:`Inversion.composite`), so only the painted area changes; no
stroke gives the photo itself. :func:`invert_photo` makes one for a painter (its layer, its
resolution; the shared generator is copied under the painter's lock and never modified).
:class:`PhotoStore` keeps the photos of many app sessions, bounded in bytes
(:meth:`Photo.nbytes` counts :meth:`Inversion.state_nbytes`) and in number.

A photo is inverted a few layers before the painter's and only the layers after the
painter's are adapted (:func:`photo_settings`). Strokes on layers before the photo's layer
change nothing (the inverted features replace that layer's output); strokes on its layer or
later ones act as on samples.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
import torch

from ..common.imaging import to_uint8
from ..intervention.edit import Edit
from ..inversion.invert import Inversion, InversionSettings, Progress, invert
from ..inversion.photo import load_photo
from .serving import LRU

#: Rendered images one photo keeps for reuse (undo/redo, the image before a stroke).
PHOTO_CACHE = 16
#: Bytes of inverted photos an app keeps for all its sessions (on the bundled GAN some 170
#: photos of 1.5 MB for the layer5 brushes, 70 of 3.5 MB for layer4); the least recently used
#: are dropped first.
PHOTO_BYTES = 256 * 2 ** 20
#: Most inverted photos an app keeps, whatever their size.
MAX_PHOTOS = 256


class Stroke(Protocol):
    """What a photo needs of a stroke (:class:`~gandissect.paint.painter.Stroke`)."""

    @property
    def key(self) -> bytes: ...

    def edit(self) -> Edit: ...


class Painter(Protocol):
    """What :func:`invert_photo` needs of a :class:`~gandissect.paint.painter.Painter`."""

    name: str
    layer: str
    generator: Any

    @property
    def resolution(self) -> int: ...

    @property
    def layers(self) -> list[str]: ...

    @property
    def lock(self) -> AbstractContextManager[Any]: ...


class Photo:
    """An inverted photo: :meth:`render` gives it with strokes, as uint8 ``[R, R, 3]``.

    Thread-safe: renders hold the photo's own lock (they hook the inversion's private model,
    never the shared generator); up to :data:`PHOTO_CACHE` recent renders are cached."""

    def __init__(self, inversion: Inversion, name: str = "photo") -> None:
        self.inversion = inversion
        self.name = name
        self._lock = threading.Lock()
        self._cache: LRU[tuple[bytes, ...], np.ndarray] = LRU(PHOTO_CACHE)
        self.image = _frozen(to_uint8(inversion.photo[None])[0])
        self.reconstruction = _frozen(to_uint8(inversion.reconstruction)[0])

    @property
    def layer(self) -> str:
        return self.inversion.layer

    @property
    def psnr(self) -> float:
        """Reconstruction PSNR (dB) of the last stage (adaptation)."""
        return float(self.inversion.psnr.get("adapt", next(iter(self.inversion.psnr.values()))))

    @property
    def resolution(self) -> int:
        return int(self.inversion.photo.shape[-1])

    def render_tensor(self, strokes: Sequence[Stroke] = ()) -> torch.Tensor:
        """The photo ``[1, 3, R, R]`` in [-1, 1] with ``strokes`` applied in order: their edits
        on the inverted features, composited into the photo (the photo itself without any)."""
        if not strokes:
            return self.inversion.photo[None].clone()
        with self._lock:
            edited = self.inversion.render([s.edit() for s in strokes])
            return self.inversion.composite(edited)

    def render(self, strokes: Sequence[Stroke] = ()) -> np.ndarray:
        """uint8 ``[R, R, 3]`` (read-only) of :meth:`render_tensor`, cached."""
        key = tuple(s.key for s in strokes)
        image = self._cache.get(key)
        if image is None:
            image = self.image if not strokes else _frozen(to_uint8(self.render_tensor(strokes))[0])
            self._cache.put(key, image)
        return image

    def nbytes(self) -> int:
        """Bytes this photo holds at most: the inversion's own tensors, the photo, and its
        cache of renders when full."""
        image = self.image.nbytes
        tensors = 2 * self.inversion.photo.numel() * self.inversion.photo.element_size()
        return int(self.inversion.state_nbytes() + tensors + (2 + PHOTO_CACHE) * image)

    def describe(self) -> str:
        """One line: the reconstruction error after each stage and the time it took."""
        names = {"encoder": "start", "optimize": "features optimised", "adapt": "adapted"}
        stages = ", ".join(f"{names.get(k, k)} {v:.1f} dB" for k, v in self.inversion.psnr.items())
        seconds = sum(self.inversion.seconds.values())
        return f"reconstruction PSNR {self.psnr:.1f} dB ({stages}; {seconds:.0f} s)"


def _frozen(image: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(image).copy()
    out.setflags(write=False)
    return out


#: How many layers before the painter's a photo is inverted at (see :func:`photo_settings`).
INVERSION_DEPTH = 3


def inversion_layer(layers: Sequence[str], layer: str) -> str:
    """The layer a photo is inverted at for brushes on ``layer`` (one of ``layers``, the
    generator's in order): :data:`INVERSION_DEPTH` layers before it (the first layer when
    there are fewer)."""
    layers = list(layers)
    if layer not in layers:
        raise ValueError(f"{layer!r} is not one of the generator's layers {layers}")
    return layers[max(layers.index(layer) - INVERSION_DEPTH, 0)]


def photo_settings(layers: Sequence[str], layer: str,
                   settings: InversionSettings | None = None) -> InversionSettings:
    """``settings`` (default :class:`InversionSettings`) for photos edited by brushes on
    ``layer``: features optimised at :func:`inversion_layer` and only the layers after
    ``layer`` adapted. The brushes' units are then computed by the original generator from the
    optimised features, instead of being optimised or adapted to the photo themselves, so a
    remove stroke is not redrawn. On the bundled GAN (layer5 brushes, 42 held-out scenes with
    trees; docs/inversion.md) a 20-unit tree-remove stroke took 73% of a tree this way (mean),
    53% when inverting at layer4 and adapting everything after it."""
    return replace(settings or InversionSettings(), layer=inversion_layer(layers, layer),
                   adapt_after=layer)


def invert_photo(painter: Painter, source: Any, settings: InversionSettings | None = None,
                 encoder: torch.nn.Module | None = None, progress: Progress | None = None,
                 name: str = "photo") -> Photo:
    """``source`` (a path, encoded bytes, a PIL image or an array, read by
    :func:`~gandissect.inversion.photo.load_photo` at the painter's resolution; PhotoError
    when it is not a usable image) inverted into the painter's generator with
    :func:`photo_settings` for the painter's layer (``settings.layer`` and
    ``settings.adapt_after`` are replaced), so the painter's strokes act on it. The shared
    generator is copied under the painter's lock (no render's hooks come along) and never
    modified."""
    photo = load_photo(source, painter.resolution)
    settings = photo_settings(painter.layers, painter.layer, settings)
    generator = painter.generator
    if next(iter(generator.parameters()), None) is None:
        raise ValueError(f"the model {painter.name or type(generator).__name__!r} has no "
                         "parameters to invert a photo into; use a trained generator "
                         "(e.g. --model toyworld)")
    inv = invert(generator, photo, encoder=encoder, settings=settings, progress=progress,
                 lock=painter.lock)
    return Photo(inv, name)


def photo_encoder(model: str) -> torch.nn.Module | None:
    """The bundled encoder that starts inversions into ``model`` (a registry name), if there is
    one that matches the weights: ``toyworld`` has one; others start from seeded latents."""
    if model != "toyworld":
        return None
    try:
        from models.toyworld_encoder import load_encoder
        return load_encoder()
    except (OSError, ValueError):
        return None


class PhotoStore:
    """Inverted photos by token (unguessable, one per upload), at most ``max_bytes`` (by
    :meth:`Photo.nbytes`) and ``max_photos``: adding one more drops the least recently used.
    Thread-safe."""

    def __init__(self, max_bytes: int = PHOTO_BYTES, max_photos: int = MAX_PHOTOS) -> None:
        self._photos: LRU[str, Photo] = LRU(max_photos, max_bytes, size=Photo.nbytes)

    def add(self, photo: Photo) -> str:
        token = secrets.token_hex(16)
        self._photos.put(token, photo)
        return token

    def get(self, token: str | None) -> Photo | None:
        """The photo of ``token`` (now the most recently used), or None if dropped or unknown."""
        return self._photos.get(token) if token else None

    def drop(self, token: str | None) -> None:
        if token:
            self._photos.pop(token)

    @property
    def nbytes(self) -> int:
        return self._photos.nbytes

    def __len__(self) -> int:
        return len(self._photos)

    def __contains__(self, token: object) -> bool:
        return token in self._photos
