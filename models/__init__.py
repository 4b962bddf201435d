"""Generator adapters and the bundled models, loaded by name with :func:`load`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .base import Generator, check_device, check_loader_kwargs, per_index_normal

#: Bundled generators: name -> ("module:callable", one-line description).
REGISTRY: dict[str, tuple[str, str]] = {
    "toyworld": ("models.toyworld_gan:load_generator",
                 "ProGAN-style GAN trained on Toyworld scenes (64x64, bundled weights)"),
    "planted": ("models.planted:PlantedGenerator",
                "Toyworld generator with one planted ground-truth unit per concept"),
}


def available() -> dict[str, str]:
    """Known generator names (bundled, then zoo) and their descriptions."""
    from .zoo import ZOO

    out = {name: desc for name, (_, desc) in REGISTRY.items()}
    out.update({name: f"{e.description} (download, {e.resolution}px)" for name, e in ZOO.items()})
    return out


def load(name: str, device: str = "cpu", **kwargs: Any) -> Generator:
    """The generator called ``name``, in eval mode on ``device``.

    Bundled models (:data:`REGISTRY`) load from the package; zoo models (``models.zoo.ZOO``)
    and families with ``path=`` go through :func:`models.zoo.load_zoo_model` (verified,
    cached download; ``trust_pickle`` etc. pass through). An unknown name raises a ValueError
    listing the known ones, and so does a device this machine lacks (e.g. ``"cuda"`` without
    CUDA), before anything is loaded.
    """
    check_device(device)
    if name not in REGISTRY:
        from .zoo import FAMILIES, ZOO, load_zoo_model

        if name in ZOO or name in FAMILIES:
            return load_zoo_model(name, device=device, **kwargs)
        raise ValueError(f"unknown model {name!r}; known models: "
                         f"{', '.join(sorted(REGISTRY) + sorted(ZOO))}; families (with path=): "
                         f"{', '.join(FAMILIES)}")
    target, _ = REGISTRY[name]
    module, attr = target.split(":")
    factory: Callable[..., Generator] = getattr(importlib.import_module(module), attr)
    check_loader_kwargs(factory, kwargs, "model", name)
    gen = factory(**kwargs)
    return gen.to(device).eval()


__all__ = ["Generator", "REGISTRY", "available", "load", "per_index_normal"]
