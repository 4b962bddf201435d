"""Progressive GAN generator in the exact layout of the GAN Dissection checkpoints.

The module tree and state_dict keys match ``netdissect/proggan.py`` (CSAILVision/gandissect):
``layer1 .. layerN`` (each ``conv.weight`` [out, in, k, k] without bias, and ``wscale.b`` [out]),
then ``output_RxR`` (``conv.weight`` [3, in, 1, 1], ``wscale.b`` [3]). ``layer1`` is a 4x4 conv
with padding 3 applied to ``z`` viewed as a 512x1x1 map (giving 4x4); odd layers after it
upsample 2x (nearest) first. Every block is pixel-norm -> conv -> weight scale + bias ->
leaky ReLU(0.2); the weight scale is the constant ``gain / sqrt(fan_in)`` (not stored). Old
checkpoints that still store ``*.wscale.scale`` are accepted and that stored value is used.
Channel sizes come from the state dict; the resolution is ``4 * 2**(N/2 - 1)`` for N layers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Generator
from .safe_load import CheckpointError, load_into, unwrap_state_dict


class PixelNorm(nn.Module):
    """``x / sqrt(mean_c(x^2) + 1e-8)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class WScale(nn.Module):
    """``x * scale + b``: constant ``scale = gain / sqrt(fan_in)``, learned bias ``b``."""

    def __init__(self, channels: int, fan_in: int, gain: float) -> None:
        super().__init__()
        self.scale = gain / math.sqrt(fan_in)
        self.b = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.b.view(1, -1, 1, 1)


class Conv(nn.Module):
    """A bias-free conv whose only state is ``weight`` (same key as ``nn.Conv2d(bias=False)``),
    initialised from a local generator instead of the global RNG."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, padding: int,
                 gen: torch.Generator) -> None:
        super().__init__()
        self.padding = padding
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel_size, kernel_size,
                                               generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=self.padding)


class ConvBlock(nn.Module):
    """pixel-norm -> (2x nearest upsample) -> conv (no bias) -> wscale -> leaky ReLU(0.2)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, padding: int,
                 upsample: bool, gen: torch.Generator) -> None:
        super().__init__()
        self.upsample = upsample
        self.norm = PixelNorm()
        self.conv = Conv(c_in, c_out, kernel_size, padding, gen)
        self.wscale = WScale(c_out, c_in, gain=math.sqrt(2) / kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return F.leaky_relu(self.wscale(self.conv(x)), 0.2)


class OutputBlock(nn.Module):
    """pixel-norm -> 1x1 conv to RGB (no bias) -> wscale (gain 1)."""

    def __init__(self, c_in: int, gen: torch.Generator) -> None:
        super().__init__()
        self.norm = PixelNorm()
        self.conv = Conv(c_in, 3, 1, 0, gen)
        self.wscale = WScale(3, c_in, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wscale(self.conv(self.norm(x)))


class ProGAN(Generator):
    """ProGAN generator; ``sizes = [z_dim, c_4x4, c_8x8, ...]`` as in the original code.

    ``forward(z)`` returns images clamped to [-1, 1] (the original returns them unclamped).
    Weights start as unit normals drawn from ``seed`` (biases 0) until a checkpoint is loaded.
    """

    def __init__(self, sizes: list[int], seed: int = 0) -> None:
        super().__init__()
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes must be [z_dim, c_4x4, ...] with positive entries, "
                             f"got {sizes}")
        self.sizes = [int(s) for s in sizes]
        g = torch.Generator().manual_seed(seed)
        blocks: list[nn.Module] = [ConvBlock(sizes[0], sizes[1], 4, 3, False, g),
                                   ConvBlock(sizes[1], sizes[1], 3, 1, False, g)]
        for c_in, c_out in zip(sizes[1:-1], sizes[2:], strict=True):
            blocks.append(ConvBlock(c_in, c_out, 3, 1, True, g))
            blocks.append(ConvBlock(c_out, c_out, 3, 1, False, g))
        for i, block in enumerate(blocks):
            self.add_module(f"layer{i + 1}", block)
        self.resolution = 4 * 2 ** (len(blocks) // 2 - 1)
        self.output_name = f"output_{self.resolution}x{self.resolution}"
        self.add_module(self.output_name, OutputBlock(sizes[-1], g))
        self.latent_shape = (self.sizes[0],)
        self._layers = [f"layer{i + 1}" for i in range(len(blocks))]

    @property
    def layer_names(self) -> list[str]:
        return list(self._layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.check_latents(z)
        x = x.reshape(x.shape[0], -1, 1, 1)
        for name in self._layers:
            x = self.get_submodule(name)(x)
        return self.get_submodule(self.output_name)(x).clamp(-1, 1)


def sizes_from_state_dict(sd: Mapping[str, torch.Tensor]) -> list[int]:
    """``[z_dim, c_4x4, c_8x8, ...]`` read from ``layerN.conv.weight`` shapes."""
    sizes: list[int] = []
    i = 0
    while f"layer{i + 1}.conv.weight" in sd:
        w = sd[f"layer{i + 1}.conv.weight"]
        if w.dim() != 4:
            raise CheckpointError(f"layer{i + 1}.conv.weight has shape {list(w.shape)}, "
                                  "expected [out, in, k, k]")
        if i == 0:
            sizes.append(int(w.shape[1]))
        if i % 2 == 0:
            sizes.append(int(w.shape[0]))
        i += 1
    if i < 2 or i % 2:
        raise CheckpointError(f"not a GAN Dissection ProGAN checkpoint: found {i} layerN.conv."
                              "weight entries (need an even number >= 2); keys start with "
                              f"{sorted(sd)[:5]}")
    return sizes


def _from_old_names(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the older ``features.N`` / ``output`` keys to ``layerN+1`` / ``output_RxR``."""
    out: dict[str, torch.Tensor] = {}
    n = 0
    while f"features.{n}.conv.weight" in sd:
        n += 1
    res = 4 * 2 ** (n // 2 - 1)
    for k, v in sd.items():
        if k.startswith("features."):
            _, idx, rest = k.split(".", 2)
            out[f"layer{int(idx) + 1}.{rest}"] = v
        elif k.startswith("output."):
            out[f"output_{res}x{res}." + k[len("output."):]] = v
        else:
            out[k] = v
    return out


def from_state_dict(obj: Any) -> ProGAN:
    """A :class:`ProGAN` with the weights of a loaded GAN Dissection checkpoint ``obj``
    (a state_dict, or a dict holding one under ``"state_dict"``); keys and shapes are checked."""
    sd = unwrap_state_dict(obj, prefer=("state_dict",))
    if "features.0.conv.weight" in sd:
        sd = _from_old_names(sd)
    gen = ProGAN(sizes_from_state_dict(sd))
    scales = {k: v for k, v in sd.items() if k.endswith(".wscale.scale")}
    sd = {k: v for k, v in sd.items() if k not in scales}
    load_into(gen, sd, f"ProGAN {gen.resolution}x{gen.resolution} (sizes {gen.sizes})")
    for key, value in scales.items():
        try:
            module: nn.Module | None = gen.get_submodule(key[: -len(".scale")])
        except AttributeError:
            module = None
        if value.numel() != 1:
            raise CheckpointError(f"{key} has {value.numel()} values, expected one scalar")
        if not isinstance(module, WScale):
            raise CheckpointError(f"unexpected key {key}: {key[:-6]} is not a weight scale")
        module.scale = float(value.reshape(()))
    return gen


__all__ = ["ProGAN", "from_state_dict", "sizes_from_state_dict"]
