"""Ground truth for artifact finding: plant visible defects driven by chosen units.

:func:`plant_artifacts` returns a COPY of a generator in which each chosen unit of a layer paints
a high-frequency checkerboard blotch onto the output image wherever that unit is strongly active
(over each layer cell above a high quantile of its own activations). The unit's activation is
read where the next module consumes it, i.e. AFTER any intervention on the layer, so ablating a
planted unit removes its blotch. The original generator is untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Generator

from ..common.hooks import Trace, check_feature_map, resolve_layer


def _consumer(generator: Generator, layer: str) -> nn.Module:
    """The first module whose forward receives ``layer``'s output tensor (found by probing)."""
    module = resolve_layer(generator, layer)
    seen: dict[str, Any] = {}
    handles = []

    def grab(_m: nn.Module, _i: Any, out: Any) -> None:
        seen["out"] = out

    def make_pre(m: nn.Module) -> Any:
        def pre(_m: nn.Module, inputs: Any) -> None:
            if "out" in seen and "consumer" not in seen and any(
                    x is seen["out"] for x in inputs):
                seen["consumer"] = m
        return pre

    handles.append(module.register_forward_hook(grab))
    for m in generator.modules():
        if m is not module and m is not generator:
            handles.append(m.register_forward_pre_hook(make_pre(m)))
    try:
        with torch.no_grad():
            generator(generator.sample_latents(1, 0))
    finally:
        for h in handles:
            h.remove()
    if "consumer" not in seen:
        raise ValueError(f"could not find the module consuming layer {layer!r}'s output; "
                         "plant_artifacts needs a generator whose layers feed submodules")
    found: nn.Module = seen["consumer"]
    return found


def checkerboard(size: int, period: int = 2) -> torch.Tensor:
    """``[size, size]`` of +1/-1 squares with side ``period`` pixels."""
    idx = torch.arange(size) // period
    return ((idx[:, None] + idx[None, :]) % 2).float() * 2.0 - 1.0


@torch.no_grad()
def plant_artifacts(generator: Generator, layer: str, units: Sequence[int],
                    quantile: float = 0.99, amplitude: float = 1.0, period: int = 2,
                    probe_samples: int = 200, seed: int = 99) -> Generator:
    """A copy of ``generator`` where each of ``units`` of ``layer`` adds ``amplitude`` times a
    checkerboard (colour-alternating, side ``period`` px) to the output over every layer cell
    (nearest upsampling: a square blotch) where the unit's activation exceeds its ``quantile``
    (measured over ``probe_samples`` latents of ``seed``). The copy gets ``planted_units`` and
    ``planted_thresholds``."""
    units = [int(u) for u in units]
    if not units or len(set(units)) != len(units):
        raise ValueError(f"units must be distinct and non-empty, got {units}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    planted = copy.deepcopy(generator).eval()
    with Trace(planted, layer, stop=True) as tr:
        planted(planted.sample_latents(probe_samples, seed))
    acts = check_feature_map(layer, tr[layer])
    if max(units) >= acts.shape[1]:
        raise ValueError(f"layer {layer!r} has {acts.shape[1]} units; got units {units}")
    sel = acts[:, units].transpose(0, 1).reshape(len(units), -1).float()
    thresholds = torch.quantile(sel, quantile, dim=1)
    consumer = _consumer(planted, layer)
    state: dict[str, torch.Tensor] = {}
    idx = torch.tensor(units)

    def capture(_m: nn.Module, inputs: Any) -> None:
        x = inputs[0]
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            state["maps"] = x.index_select(1, idx.to(x.device))

    def paint(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        maps = state.pop("maps", None)
        if maps is None:
            return out
        size = out.shape[-1]
        up = F.interpolate(maps.float(), size=out.shape[-2:], mode="nearest")
        t = thresholds.to(up.device).view(1, -1, 1, 1)
        mask = (up > t).any(dim=1, keepdim=True).to(out.dtype)  # [n, 1, H, W]
        board = checkerboard(size, period).to(out.device, out.dtype)
        pattern = torch.stack([board, -board, board])[None]  # colour-alternating
        return (out + amplitude * mask * pattern).clamp(-1.0, 1.0)

    consumer.register_forward_pre_hook(capture)
    planted.register_forward_hook(paint)
    planted.planted_units = list(units)  # type: ignore[assignment]
    planted.planted_thresholds = thresholds.tolist()  # type: ignore[assignment]
    return planted


__all__ = ["checkerboard", "plant_artifacts"]
