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

from collections.abc import Callable, Sequence
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
    """``model`` with the output of each of ``layers`` rotated across units by
    ``random_rotation(units, seed)``.

    ``units`` (one per layer, or one int for a single layer) is read from each layer's (last)
    ``out_channels`` / ``num_features`` when not given (:func:`layer_units` measures it). The
    rotations are buffers, so they are part of the model's fingerprint. Every other attribute
    the engine uses (``sample_latents``, ``resolution``, ``layer_names``) is the model's, so
    generators and classifiers wrapped this way dissect like the originals.

    The network itself computes exactly as before: ``layer(name)`` of a rotated layer is a
    *view* (an identity module) that receives ``Q @ a`` while the real layer passes ``a`` on
    unchanged, so a :class:`~gandissect.common.hooks.Trace` (and so :func:`dissect`) records
    the rotated maps and a deeper rotated layer is the rotation of the original network's
    layer. The hooks feeding the views exist only during a forward pass: the wrapped model is
    never changed. (Edits applied to a view change nothing downstream.)"""

    def __init__(self, model: nn.Module, layers: str | Sequence[str], seed: int,
                 units: int | Sequence[int] | None = None) -> None:
        super().__init__()
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"give one or more distinct layers to rotate, got {layers!r}")
        if units is None:
            counts: list[int | None] = [None] * len(names)
        elif isinstance(units, int):
            counts = [units]
        else:
            counts = [int(u) for u in units]
        if len(counts) != len(names):
            raise ValueError(f"{len(counts)} unit counts for {len(names)} layers")
        self.model, self.rotated_layers, self.seed = model, names, int(seed)
        self.views = nn.ModuleList([nn.Identity() for _ in names])
        for i, (name, count) in enumerate(zip(names, counts, strict=True)):
            module = resolve_layer(model, name)                # unknown layer -> clear error
            if count is None:
                count = _declared_units(module)
                if count is None:
                    raise ValueError(f"cannot tell how many units layer {name!r} "
                                     f"({type(module).__name__}) has; pass units=")
            self.register_buffer(f"rotation_{i}", random_rotation(count, seed))

    @property
    def rotation(self) -> torch.Tensor:
        """The first layer's rotation matrix ``[units, units]``."""
        return self.rotation_of(self.rotated_layers[0])

    def rotation_of(self, layer: str) -> torch.Tensor:
        """The rotation matrix applied to ``layer``."""
        if layer not in self.rotated_layers:
            raise ValueError(f"layer {layer!r} is not rotated (rotated: "
                             f"{', '.join(self.rotated_layers)})")
        q = self._buffers[f"rotation_{self.rotated_layers.index(layer)}"]
        assert q is not None
        return q

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("model", "_modules", "_parameters", "_buffers") \
                    or name.startswith("rotation_") \
                    or "model" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["model"], name)

    def layer(self, name: str) -> nn.Module:
        """The view of a rotated layer (it receives the rotated maps), else the model's layer."""
        if name in self.rotated_layers:
            return self.views[self.rotated_layers.index(name)]
        return resolve_layer(self.model, name)

    def _hook(self, layer: str) -> Callable[[nn.Module, Any, Any], None]:
        q_full = self.rotation_of(layer)
        view = self.views[self.rotated_layers.index(layer)]

        def rotate(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                raise ValueError(f"layer {layer!r} output is not a feature map [N, C, H, W]; "
                                 f"cannot rotate it")
            units = output.shape[1]
            if q_full.shape[0] != units:
                raise ValueError(f"rotation is {q_full.shape[0]}x{q_full.shape[0]} but layer "
                                 f"{layer!r} has {units} units")
            q = q_full.to(device=output.device, dtype=output.dtype)
            view(torch.einsum("uv,nvhw->nuhw", q, output))       # the output itself goes on
        return rotate

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        handles = []
        try:
            for name in self.rotated_layers:
                handles.append(resolve_layer(self.model, name).register_forward_hook(
                    self._hook(name)))
            return self.model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
