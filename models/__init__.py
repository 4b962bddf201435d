"""Generator adapters and the bundled models, loaded by name with :func:`load`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .base import Generator, per_index_normal

#: Bundled generators: name -> ("module:callable", one-line description).
REGISTRY: dict[str, tuple[str, str]] = {
    "toyworld": ("models.toyworld_gan:load_generator",
                 "ProGAN-style GAN trained on Toyworld scenes (64x64, bundled weights)"),
    "planted": ("models.planted:PlantedGenerator",
                "Toyworld generator with one planted ground-truth unit per concept"),
}


def available() -> dict[str, str]:
    """Known generator names and their descriptions."""
    return {name: desc for name, (_, desc) in REGISTRY.items()}


def load(name: str, device: str = "cpu", **kwargs: Any) -> Generator:
    """The bundled generator called ``name``, in eval mode on ``device``.

    An unknown name raises a ValueError listing the known ones.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}")
    target, _ = REGISTRY[name]
    module, attr = target.split(":")
    factory: Callable[..., Generator] = getattr(importlib.import_module(module), attr)
    gen = factory(**kwargs)
    return gen.to(device).eval()


__all__ = ["Generator", "REGISTRY", "available", "load", "per_index_normal"]
