"""Reading a photo for inversion: any PNG/JPEG (or array) -> a square ``[3, R, R]`` tensor.

The contract (documented for users and the app): the photo is converted to RGB (greyscale is
repeated, an alpha channel is composited over white), centre-cropped to a square on its shorter
side, then resized to the generator's resolution with PIL's area-averaging ``BOX`` filter when
shrinking and ``BICUBIC`` when enlarging, and scaled to [-1, 1]. Files larger than
:data:`MAX_BYTES` or images with more than :data:`MAX_PIXELS` pixels are refused before
decoding the pixels (the size is read from the header), so a hostile upload cannot exhaust
memory.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

#: Largest photo file accepted (bytes).
MAX_BYTES = 20 * 1024 * 1024
#: Largest photo accepted (width x height pixels).
MAX_PIXELS = 40_000_000
#: Smallest side accepted (pixels).
MIN_SIDE = 8


class PhotoError(ValueError):
    """A photo that cannot be used; the message says what is wrong and what to do."""


def _open(source: str | Path | bytes) -> Image.Image:
    if isinstance(source, bytes):
        if len(source) > MAX_BYTES:
            raise PhotoError(f"the photo is {len(source) / 2**20:.1f} MB; the limit is "
                             f"{MAX_BYTES / 2**20:.0f} MB: save it smaller (e.g. as JPEG)")
        data = io.BytesIO(source)
        name = "the uploaded photo"
    else:
        path = Path(source)
        if not path.is_file():
            raise PhotoError(f"{path} is not a file; give the path of a PNG or JPEG photo")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise PhotoError(f"{path} is {size / 2**20:.1f} MB; the limit is "
                             f"{MAX_BYTES / 2**20:.0f} MB: save it smaller (e.g. as JPEG)")
        data = io.BytesIO(path.read_bytes())
        name = str(path)
    try:
        image = Image.open(data)  # reads the header only
        w, h = image.size
        if w * h > MAX_PIXELS:
            raise PhotoError(f"{name} has {w}x{h} pixels; the limit is {MAX_PIXELS:,}: "
                             "downscale it first")
        image.load()
    except Image.DecompressionBombError as e:
        raise PhotoError(f"{name} has too many pixels ({e}); the limit is {MAX_PIXELS:,}: "
                         "downscale it first") from None
    except (UnidentifiedImageError, OSError) as e:
        raise PhotoError(f"{name} is not a readable image ({e}); give a PNG or JPEG") from None
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    a = np.asarray(array)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise PhotoError(f"a photo array must be [H, W], [H, W, 3] or [H, W, 4], got shape "
                         f"{tuple(a.shape)}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.shape[0] * a.shape[1] > MAX_PIXELS:
        raise PhotoError(f"the photo has {a.shape[1]}x{a.shape[0]} pixels; the limit is "
                         f"{MAX_PIXELS:,}: downscale it first")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise PhotoError(f"a photo array must be uint8 or float in [0, 1], got {a.dtype}")
        if not np.isfinite(a).all():
            raise PhotoError("the photo array holds NaN or infinite values")
        if a.min() < 0.0 or a.max() > 1.0:
            raise PhotoError(f"a float photo array must lie in [0, 1], got "
                             f"[{a.min():.3g}, {a.max():.3g}]")
        a = np.round(a * 255.0).astype(np.uint8)
    return _to_rgb(Image.fromarray(a, "RGBA" if a.shape[2] == 4 else "RGB"))


def load_photo(source: str | Path | bytes | np.ndarray | Image.Image, resolution: int,
               ) -> torch.Tensor:
    """The photo ``source`` (a file path, encoded bytes, a PIL image, or an ``[H, W(, C)]``
    uint8 / [0, 1]-float array) as a float32 tensor ``[3, resolution, resolution]`` in
    [-1, 1], by the module's crop-and-resize contract. Raises :class:`PhotoError` for
    anything that is not a usable image."""
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    image: Any
    if isinstance(source, np.ndarray):
        image = _from_array(source)
    elif isinstance(source, Image.Image):
        w, h = source.size
        if w * h > MAX_PIXELS:
            raise PhotoError(f"the photo has {w}x{h} pixels; the limit is {MAX_PIXELS:,}: "
                             "downscale it first")
        image = _to_rgb(source)
    else:
        image = _to_rgb(_open(source))
    w, h = image.size
    if min(w, h) < MIN_SIDE:
        raise PhotoError(f"the photo is {w}x{h} pixels; give one at least {MIN_SIDE} pixels "
                         "on each side")
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        method = Image.Resampling.BOX if side > resolution else Image.Resampling.BICUBIC
        image = image.resize((resolution, resolution), method)
    a = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))

