"""Painted masks: an editor's layers to one mask, and any mask to a layer's grid by area
coverage (used by :class:`~gandissect.paint.painter.Painter` to make strokes).

>>> import numpy as np
>>> fit_mask(np.ones((4, 4), bool), (2, 2)).tolist()
[[1.0, 1.0], [1.0, 1.0]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

#: Largest mask side processed at full resolution; larger uploads are subsampled first.
MAX_MASK_SIDE = 4096


def mask_from_editor(value: Any) -> np.ndarray | None:
    """The painted mask (bool ``[H, W]``) of a ``gr.ImageEditor`` value: pixels where any layer
    has alpha > 0 (or any non-zero channel for layers without alpha); ``None`` if no layer."""
    if not isinstance(value, Mapping):
        return None
    layers = [np.asarray(x) for x in (value.get("layers") or []) if x is not None]
    masks = []
    for layer in layers:
        if layer.ndim == 3 and layer.shape[2] == 4:
            masks.append(layer[..., 3] > 0)
        elif layer.ndim == 3:
            masks.append(layer.max(axis=2) > 0)
        elif layer.ndim == 2:
            masks.append(layer > 0)
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out | (m if m.shape == out.shape else _resize(m.astype(np.float32), out.shape) > 0)
    return out


def _resize(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float ``[H, W]`` resized to ``size`` (area when shrinking, bilinear when growing)."""
    h, w = size
    if mask.shape == (h, w):
        return mask
    shrink = mask.shape[0] >= h and mask.shape[1] >= w
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def fit_mask(mask: Any, size: tuple[int, int]) -> np.ndarray:
    """Coverage in [0, 1] (float32 ``[h, w]``) of any 2-D mask (bool, int, float; or an
    ``[H, W, C]`` image, whose last channel counts) resized to ``size`` by area averaging.
    Any shape is accepted (stretched to ``size``); non-finite values count as 0."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., -1]
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"a stroke mask must be a 2-D array, got shape {list(m.shape)}")
    step = max(1, math.ceil(max(m.shape) / MAX_MASK_SIDE))
    m = m[::step, ::step].astype(np.float32)
    m = np.nan_to_num(m, nan=0.0, posinf=1.0, neginf=0.0)
    if m.max(initial=0.0) > 1.0:
        m = m / m.max()
    return np.clip(_resize(np.clip(m, 0.0, 1.0), size), 0.0, 1.0).astype(np.float32)
