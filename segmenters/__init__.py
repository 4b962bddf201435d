"""Segmenter adapters, loaded by name with :func:`load`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from models.base import check_device, check_loader_kwargs

from .base import KNOWN_CATEGORIES, Segmenter

#: Bundled segmenters: name -> ("module:callable", one-line description).
REGISTRY: dict[str, tuple[str, str]] = {
    "toyworld": ("segmenters.toyworld:load_segmenter",
                 "small CNN trained on Toyworld scenes (15 object/part concepts)"),
    "color": ("segmenters.color:ColorSegmenter",
              "rule-based: one of 11 basic colour names per pixel, works on any image"),
    "planted": ("segmenters.palette:PaletteSegmenter",
                "exact labels for the planted generator's flat-colour paintings"),
    "upernet": ("segmenters.upernet:load_segmenter",
                "Unified Perceptual Parsing (UPerNet ResNet-50; object/part/material), "
                "needs path= to a local folder"),
    "segformer": ("segmenters.segformer:load_segmenter",
                  "SegFormer via transformers (ADE20K, 150 objects), "
                  "needs path= to a local folder or a hub id"),
}


def available() -> dict[str, str]:
    """Known segmenter names and their descriptions."""
    return {name: desc for name, (_, desc) in REGISTRY.items()}


def load(name: str, device: str = "cpu", **kwargs: Any) -> Segmenter:
    """The segmenter called ``name`` on ``device``; an unknown name lists the known ones, and a
    device this machine lacks raises a clear ValueError before anything is loaded."""
    check_device(device)
    if name not in REGISTRY:
        raise ValueError(f"unknown segmenter {name!r}; known segmenters: "
                         f"{', '.join(sorted(REGISTRY))}")
    target, _ = REGISTRY[name]
    module, attr = target.split(":")
    factory: Callable[..., Segmenter] = getattr(importlib.import_module(module), attr)
    check_loader_kwargs(factory, kwargs, "segmenter", name)
    return factory(device=device, **kwargs)


__all__ = ["KNOWN_CATEGORIES", "REGISTRY", "Segmenter", "available", "load"]
