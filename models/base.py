"""The Generator protocol: what every generator adapter in gandissect provides."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def per_index_normal(n: int, seed: int, start: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``n`` standard-normal tensors of ``shape``; tensor ``k`` depends only on
    ``(seed, start + k)`` (its own ``numpy`` stream), never on ``n`` or batching."""
    if n < 0 or start < 0 or seed < 0:
        raise ValueError(f"n, start and seed must be non-negative, got n={n}, start={start}, "
                         f"seed={seed}")
    out = np.empty((n, *shape), dtype=np.float32)
    for k in range(n):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, start + k])))
        out[k] = rng.standard_normal(shape, dtype=np.float32)
    return torch.from_numpy(out)


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); CPU when it has neither."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


class Generator(nn.Module, ABC):
    """A generative image model behind one interface.

    Contract: ``sample_latents(n, seed, start)`` returns latents ``[n, *latent_shape]`` where
    latent ``i`` depends only on ``(seed, start + i)``; ``forward(z)`` returns images
    ``[n, 3, R, R]`` in [-1, 1] with ``R == resolution``; ``layer_names`` lists the hookable
    submodules (their outputs are ``[n, units, h, w]`` feature maps).
    """

    #: Output side length in pixels.
    resolution: int
    #: Shape of one latent (without the batch dimension).
    latent_shape: tuple[int, ...]

    def sample_latents(self, n: int, seed: int, start: int = 0) -> torch.Tensor:
        """Latents ``start .. start+n-1`` of ``seed``, on :attr:`device`."""
        return per_index_normal(n, seed, start, tuple(self.latent_shape)).to(self.device)

    @abstractmethod
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``[n, 3, R, R]`` in [-1, 1] for latents ``z``."""

    @property
    @abstractmethod
    def layer_names(self) -> list[str]:
        """Names of the hookable layers, shallow to deep."""

    def layer(self, name: str) -> nn.Module:
        """The submodule called ``name``; a wrong name raises a ValueError listing valid ones."""
        if name not in self.layer_names:
            raise ValueError(f"unknown layer {name!r} for {type(self).__name__}; "
                             f"valid layers: {', '.join(self.layer_names)}")
        return self.get_submodule(name)

    @property
    def device(self) -> torch.device:
        return module_device(self)

    def check_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Validate a latent batch (shape, finiteness) and move it to :attr:`device`."""
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"latents must be a torch.Tensor, got {type(z).__name__}")
        if tuple(z.shape[1:]) != tuple(self.latent_shape) or z.dim() != len(self.latent_shape) + 1:
            raise ValueError(f"{type(self).__name__} expects latents of shape "
                             f"[n, {', '.join(map(str, self.latent_shape))}], got {list(z.shape)}")
        if z.is_floating_point() and not torch.isfinite(z).all():
            raise ValueError("latents contain NaN or inf values")
        return z.to(self.device)


def weights_path(weights: str | Path | None, path: str | Path | None, default: Path) -> Path:
    """The weights file for a bundled loader's ``weights=`` / ``path=`` (synonyms, as
    ``NAME:PATH`` on the command line gives ``path``): ``default`` when neither is given; a
    folder means the file named like ``default`` inside it.

    >>> weights_path(None, None, Path("w/g.safetensors")).as_posix()
    'w/g.safetensors'
    """
    if weights is not None and path is not None:
        raise ValueError("give weights= or path= (the same thing), not both")
    given = weights if weights is not None else path
    chosen = default if given is None else Path(given)
    return chosen / default.name if chosen.is_dir() else chosen


def check_loader_kwargs(factory: Callable[..., Any], kwargs: dict[str, Any], kind: str,
                        name: str) -> None:
    """Raise a clear ValueError when ``kwargs`` holds ``path`` but ``factory`` (a bundled
    model's or segmenter's loader) reads no weights file, instead of a bare TypeError."""
    if "path" not in kwargs:
        return
    params = inspect.signature(factory).parameters
    if "path" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ValueError(f"{kind} {name!r} is built in and loads no checkpoint; use {name!r} "
                         "without ':PATH'")


def check_device(device: str | torch.device, how: str = "device='cpu'") -> torch.device:
    """``device`` as a :class:`torch.device`; a ValueError (instead of torch's AssertionError at
    the first ``.to``) for a malformed name or a device this machine lacks. ``how`` ends the
    message's advice ("use ...")."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r} ({exc}); use {how}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA is not available on this machine "
                             f"(torch.cuda.is_available() is False); use {how}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"MPS is not available on this machine "
                         f"(torch.backends.mps.is_available() is False); use {how}")
    return dev
