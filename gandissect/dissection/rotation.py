"""The random-rotation baseline of Network Dissection (Bau et al., TPAMI 2018): is a layer's
interpretability a property of its units, or of the space they span?

:class:`Rotated` makes a model whose ``layer`` outputs ``Q @ a`` (per pixel, over units) for a
seeded random orthogonal ``Q``: the same information in another basis. Dissecting it with the
same settings and comparing the count of interpretable units with the unrotated layer's is the
paper's test (it found a rotated basis much less interpretable, so units are meaningful axes).

>>> import torch
>>> q = random_rotation(4, seed=0)
>>> bool(torch.allclose(q @ q.T, torch.eye(4), atol=1e-5))
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..common.hooks import Trace, check_feature_map, resolve_layer


def random_rotation(units: int, seed: int) -> torch.Tensor:
    """A ``[units, units]`` float32 orthogonal matrix drawn uniformly (Haar) from the
    orthogonal group, determined by ``seed`` alone (QR of a seeded Gaussian matrix with the
    signs of R's diagonal folded into Q)."""
    if units < 1:
        raise ValueError(f"units must be >= 1, got {units}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, units])))
    g = rng.standard_normal((units, units))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))[None, :]
    return torch.from_numpy(q.astype(np.float32))


def _declared_units(module: nn.Module) -> int | None:
    """The channels ``module`` outputs as its last submodule declaring them says
    (``out_channels`` of a convolution, ``num_features`` of a norm), or None."""
    for m in reversed(list(module.modules())):
        for attr in ("num_features", "out_channels"):
            v = getattr(m, attr, None)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    return None


def layer_units(model: nn.Module, layer: str, *inputs: Any) -> int:
    """The number of units (channels) of ``layer``'s output when ``model`` runs on
    ``inputs`` (a partial forward pass, stopped after the layer)."""
    with torch.no_grad(), Trace(model, [layer], stop=True) as tr:
        model(*inputs)
    return int(check_feature_map(layer, tr[layer]).shape[1])


class Rotated(nn.Module):
    """``model`` with ``layer``'s output rotated across units by ``random_rotation(units,
    seed)``.

    ``units`` is read from the layer's (last) ``out_channels`` / ``num_features`` when not
    given (:func:`layer_units` measures it). The rotation is a buffer, so it is part of the
    model's fingerprint. Every other attribute the engine uses (``sample_latents``,
    ``resolution``, ``layer_names``, ``layer``) is the model's, so generators and classifiers
    wrapped this way dissect like the originals. The rotation hook is attached only during a
    forward pass, before any other hook of the layer (so a
    :class:`~gandissect.common.hooks.Trace` records the rotated maps): the wrapped model itself
    is never changed."""

    def __init__(self, model: nn.Module, layer: str, seed: int, units: int | None = None) -> None:
        super().__init__()
        self.model, self.rotated_layer, self.seed = model, layer, int(seed)
        module = resolve_layer(model, layer)                   # unknown layer -> clear error
        if units is None:
            units = _declared_units(module)
            if units is None:
                raise ValueError(f"cannot tell how many units layer {layer!r} "
                                 f"({type(module).__name__}) has; pass units=")
        self.register_buffer("rotation", random_rotation(units, seed))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("model", "_modules", "_parameters", "_buffers") \
                    or "model" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["model"], name)

    def layer(self, name: str) -> nn.Module:
        return resolve_layer(self.model, name)

    def _rotate(self, module: nn.Module, inputs: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise ValueError(f"layer {self.rotated_layer!r} output is not a feature map "
                             f"[N, C, H, W]; cannot rotate it")
        units = output.shape[1]
        if self.rotation.shape[0] != units:
            raise ValueError(f"rotation is {self.rotation.shape[0]}x{self.rotation.shape[0]} but "
                             f"layer {self.rotated_layer!r} has {units} units")
        q = self.rotation.to(device=output.device, dtype=output.dtype)
        return torch.einsum("uv,nvhw->nuhw", q, output)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        handle = resolve_layer(self.model, self.rotated_layer).register_forward_hook(
            self._rotate, prepend=True)
        try:
            return self.model(*args, **kwargs)
        finally:
            handle.remove()
