"""Inverting a photo into a generator, GANPaint Studio's way (Bau et al., SIGGRAPH 2019).

Three stages, each measured (PSNR against the photo):

1. **encoder**: a trained encoder predicts a latent ``z0`` (optional; without one the stage
   keeps the best of a few seeded latents);
2. **optimise**: the features ``h`` of one layer (``layer``, the paint layer) are optimised from
   ``G_layer(z0)`` so that the rest of the generator renders the photo (pixel L1 + MSE + a
   perceptual term on fixed convolutional features);
3. **adapt**: the parameters *after* that layer (or after a later layer, ``adapt_after``)
   are perturbed a little (a penalty on their relative change) so that the generator
   reproduces the photo more exactly.

The adapted parameters live in a private copy of the generator that shares every unchanged
tensor with the original: the shared generator is never modified (not even temporarily), so
other users of it see no change. Edits (:class:`~gandissect.intervention.edit.Edit`) act on
``h`` exactly as on a sample's features, and :meth:`Inversion.composite` takes every pixel the
edit did not change from the photo itself.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..common.hooks import Trace, resolve_layer
from ..intervention.edit import Edit, intervene
from .photo import load_photo

#: A callback ``progress(stage, step, steps)`` for long inversions (e.g. a progress bar).
Progress = Callable[[str, int, int], None]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of two images in [-1, 1] (peak-to-peak 2)."""
    mse = float(((a.detach().float() - b.detach().float()) ** 2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(4.0 / mse)


class RandomFeatures(nn.Module):
    """A fixed, seeded, randomly initialised 3-level conv net: images ``[n, 3, H, W]`` ->
    a list of feature maps at 1, 1/2 and 1/4 resolution. The default perceptual feature space
    of :func:`invert` (no trained network is needed, and the generator never saw it)."""

    def __init__(self, seed: int = 0, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        convs = []
        cin = 3
        for w in widths:
            conv = nn.Conv2d(cin, w, 3, 1, 1, bias=False)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g)
                                  * math.sqrt(2.0 / (cin * 9)))
            convs.append(conv)
            cin = w
        self.convs = nn.ModuleList(convs)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for k, conv in enumerate(self.convs):
            if k:
                x = F.avg_pool2d(x, 2)
            x = F.relu(conv(x))
            out.append(x)
        return out


@dataclass(frozen=True)
class InversionSettings:
    """How :func:`invert` works; the defaults suit 64x64 generators on a CPU (well under a
    minute per image)."""

    layer: str = "layer4"
    #: Adam steps (and learning rate) of the feature optimisation.
    optimize_steps: int = 150
    optimize_lr: float = 0.1
    #: Adam steps (and learning rate) of the adaptation; 0 skips it.
    adapt_steps: int = 250
    adapt_lr: float = 5e-3
    #: Weight of the mean squared relative change of the adapted parameters. The lower, the
    #: closer the reconstruction and the more the adapted layers redraw what a brush removes
    #: (docs/inversion.md).
    adapt_penalty: float = 1.0
    #: Adapt only the parameters computed after this layer (None: after ``layer``). Set it to
    #: the layer edits act on, so the units they set are computed by the original generator
    #: and the adapted layers cannot relearn what a stroke removes (docs/inversion.md).
    adapt_after: str | None = None
    #: Weight of the perceptual term (mean L1 over the feature maps).
    perceptual_weight: float = 0.2
    #: Latents tried when no encoder is given (the best one by pixel loss starts stage 2).
    candidates: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("optimize_steps", "adapt_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")
        for name in ("optimize_lr", "adapt_lr", "adapt_penalty", "perceptual_weight"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")


@dataclass
class Inversion:
    """A photo inverted into a generator: render it (with or without edits) and composite.

    ``features`` ``[1, C, h, w]`` replace the output of ``layer`` in ``model`` (a private copy
    of the generator whose parameters after ``layer`` are adapted; the others are the shared
    generator's own tensors). ``psnr`` holds the reconstruction PSNR (dB) after each stage
    (``encoder``, ``optimize``, ``adapt``); ``seconds`` the time each took.
    """

    photo: torch.Tensor
    layer: str
    latent: torch.Tensor
    features: torch.Tensor
    model: nn.Module
    adapted: tuple[str, ...]
    psnr: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @torch.no_grad()
    def render(self, edits: Sequence[Edit] = ()) -> torch.Tensor:
        """The reconstruction ``[1, 3, R, R]`` in [-1, 1], with ``edits`` applied."""
        return _render(self.model, self.layer, self.latent, self.features, edits)

    @torch.no_grad()
    def composite(self, edited: torch.Tensor, tolerance: float = 2.0 / 255.0,
                  dilate: int = 1) -> torch.Tensor:
        """The photo with the edit's changes only: ``edited`` (``render(edits)``) where it
        differs from the unedited reconstruction by more than ``tolerance`` in some channel
        (in [0, 1] units; the change mask is dilated by ``dilate`` pixels and feathered by
        one), the photo elsewhere. Returns ``[1, 3, R, R]`` in [-1, 1]."""
        base = self.reconstruction
        change = ((edited - base).abs().amax(dim=1, keepdim=True) / 2.0 > tolerance).float()
        if dilate > 0:
            change = F.max_pool2d(change, 2 * dilate + 1, 1, dilate)
        soft = F.avg_pool2d(F.pad(change, (1, 1, 1, 1), mode="replicate"), 3, 1)
        soft = torch.maximum(soft, change)
        return self.photo[None] * (1 - soft) + edited * soft

    @cached_property
    def reconstruction(self) -> torch.Tensor:
        """``render()`` without edits, computed once (the inversion never changes)."""
        return self.render()

    def state_nbytes(self) -> int:
        """Bytes held by this inversion beyond the shared generator (adapted tensors)."""
        params = dict(self.model.named_parameters())
        own = sum(params[n].numel() * params[n].element_size() for n in self.adapted)
        return own + self.features.numel() * self.features.element_size()


def _render(model: nn.Module, layer: str, latent: torch.Tensor, features: torch.Tensor,
            edits: Sequence[Edit] = ()) -> torch.Tensor:
    def replace(name: str, output: torch.Tensor) -> torch.Tensor:
        return features.expand(output.shape[0], *features.shape[1:])

    with Trace(model, [layer], edit=replace, retain=False), intervene(model, *edits, check=False):
        out: torch.Tensor = model(latent)
    return out


def _private_copy(generator: nn.Module, adapt: Sequence[str]) -> nn.Module:
    """A copy of ``generator`` in eval mode whose parameters named in ``adapt`` are its own
    (cloned, trainable); its other parameters are frozen views of the original tensors (same
    storage, so no memory is spent, and the original's flags and gradients are untouched) and
    its buffers are the original buffers. The copy has no hooks."""
    memo: dict[int, Any] = {}
    for name, p in generator.named_parameters():
        memo[id(p)] = (nn.Parameter(p.detach().clone()) if name in adapt
                       else nn.Parameter(p.detach(), requires_grad=False))
    for b in generator.buffers():
        memo[id(b)] = b
    clone: nn.Module = copy.deepcopy(generator, memo)
    for module in clone.modules():  # hooks another thread had on the original stay there
        for name in _HOOK_DICTS:
            hooks = getattr(module, name, None)
            if hooks:
                hooks.clear()
    return clone.eval()


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
               "_backward_pre_hooks", "_forward_hooks_with_kwargs",
               "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


def adaptable_parameters(generator: nn.Module, layer: str) -> tuple[str, ...]:
    """Names of the parameters computed after ``layer``: every parameter except those of
    ``layer`` and of the layers before it in ``generator.layer_names`` (or, for a model
    without ``layer_names``, of the modules registered up to ``layer``)."""
    resolve_layer(generator, layer)
    names = list(getattr(generator, "layer_names", []) or
                 [n for n, _ in generator.named_children()])
    if layer not in names:
        raise ValueError(f"{layer!r} is not one of the generator's layers {names}")
    frozen = names[:names.index(layer) + 1]
    return tuple(n for n, _ in generator.named_parameters()
                 if not any(n == f or n.startswith(f + ".") for f in frozen))


class _Loss:
    """Pixel L1 + MSE + perceptual L1 against one photo."""

    def __init__(self, photo: torch.Tensor, features: nn.Module, weight: float) -> None:
        self.photo = photo[None]
        self.net = features
        self.weight = weight
        with torch.no_grad():
            self.target = features(self.photo) if weight else []

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        loss = (image - self.photo).abs().mean() + ((image - self.photo) ** 2).mean()
        if self.weight:
            feats = self.net(image)
            loss = loss + self.weight * sum(
                (a - b).abs().mean() for a, b in zip(feats, self.target, strict=True))
        return loss


def _check_photo(photo: torch.Tensor, resolution: int) -> torch.Tensor:
    if photo.ndim == 4 and photo.shape[0] == 1:
        photo = photo[0]
    if photo.ndim != 3 or photo.shape[0] != 3:
        raise ValueError(f"a photo tensor must be [3, H, W] (or [1, 3, H, W]), got shape "
                         f"{list(photo.shape)}; load files with load_photo()")
    if tuple(photo.shape[1:]) != (resolution, resolution):
        raise ValueError(f"the photo is {photo.shape[2]}x{photo.shape[1]} but the generator "
                         f"draws {resolution}x{resolution}; load it with "
                         f"load_photo(path, {resolution})")
    if not torch.isfinite(photo).all():
        raise ValueError("the photo holds NaN or infinite values")
    if photo.min() < -1.0 - 1e-4 or photo.max() > 1.0 + 1e-4:
        raise ValueError(f"photo values must lie in [-1, 1], got [{float(photo.min()):.3g}, "
                         f"{float(photo.max()):.3g}]")
    return photo.float()


def invert(generator: Any, photo: Any, encoder: nn.Module | None = None,
           settings: InversionSettings | None = None, features: nn.Module | None = None,
           progress: Progress | None = None,
           lock: AbstractContextManager[Any] | None = None) -> Inversion:
    """Invert ``photo`` (a ``[3, R, R]`` tensor in [-1, 1], or anything
    :func:`~gandissect.inversion.photo.load_photo` reads) into ``generator`` (a
    :class:`models.Generator`). ``encoder`` maps images ``[n, 3, R, R]`` to latents; without
    one the best of ``settings.candidates`` seeded latents starts the optimisation.
    ``features`` is the perceptual feature net (default :class:`RandomFeatures`).
    The shared ``generator`` is never modified. Deterministic for fixed inputs on one
    machine. ``lock`` (e.g. a painter's) is held while ``generator`` is copied, so that no
    other thread hooks it meanwhile; the rest of the inversion runs on the copy."""
    settings = settings or InversionSettings()
    resolution = int(generator.resolution)
    if not isinstance(photo, torch.Tensor):
        photo = load_photo(photo, resolution)
    device = next(generator.parameters()).device
    photo = _check_photo(photo, resolution).to(device)
    layer = settings.layer
    adapt = adaptable_parameters(generator, layer)
    if settings.adapt_after not in (None, layer):
        later = adaptable_parameters(generator, settings.adapt_after)
        if not set(later) <= set(adapt):
            raise ValueError(f"adapt_after={settings.adapt_after!r} comes before the inverted "
                             f"layer {layer!r}; give {layer!r} or a layer after it")
        adapt = later
    loss_fn = _Loss(photo, (features or RandomFeatures()).to(device), settings.perceptual_weight)
    timings: dict[str, float] = {}
    scores: dict[str, float] = {}

    with lock if lock is not None else contextlib.nullcontext():
        model = _private_copy(generator, adapt)
    t0 = time.perf_counter()
    with torch.no_grad():
        if encoder is not None:
            latent = encoder(photo[None]).reshape(1, *generator.latent_shape).to(device)
        else:
            cands = generator.sample_latents(settings.candidates, seed=settings.seed)
            losses = [float(loss_fn(model(cands[i:i + 1]))) for i in range(len(cands))]
            latent = cands[int(np.argmin(losses))][None]
        with Trace(model, [layer]) as trace:
            scores["encoder"] = psnr(model(latent)[0], photo)
            h0 = trace[layer].detach().clone()
    timings["encoder"] = time.perf_counter() - t0

    h = h0.clone().requires_grad_(True)
    t0 = time.perf_counter()
    if settings.optimize_steps:
        opt = torch.optim.Adam([h], lr=settings.optimize_lr)
        for step in range(settings.optimize_steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(_render(model, layer, latent, h))
            _check_loss(loss, "feature optimisation", step)
            loss.backward()
            opt.step()
            if progress:
                progress("optimize", step + 1, settings.optimize_steps)
    h = h.detach()
    with torch.no_grad():
        scores["optimize"] = psnr(_render(model, layer, latent, h)[0], photo)
    timings["optimize"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if settings.adapt_steps and adapt:
        params = dict(model.named_parameters())
        trainable = [params[n] for n in adapt]
        start = [p.detach().clone() for p in trainable]
        scale = [float(p.detach().pow(2).mean()) + 1e-8 for p in start]
        opt = torch.optim.Adam(trainable, lr=settings.adapt_lr)
        for step in range(settings.adapt_steps):
            opt.zero_grad(set_to_none=True)
            change = sum(((p - s) ** 2).mean() / c for p, s, c in zip(trainable, start, scale,
                                                                     strict=True))
            loss = loss_fn(_render(model, layer, latent, h)) + settings.adapt_penalty * change
            _check_loss(loss, "adaptation", step)
            loss.backward()
            opt.step()
            if progress:
                progress("adapt", step + 1, settings.adapt_steps)
        for p in trainable:
            p.requires_grad_(False)
    with torch.no_grad():
        scores["adapt"] = psnr(_render(model, layer, latent, h)[0], photo)
    timings["adapt"] = time.perf_counter() - t0
    return Inversion(photo=photo, layer=layer, latent=latent.detach(), features=h, model=model,
                     adapted=adapt if settings.adapt_steps else (), psnr=scores,
                     seconds=timings)


def _check_loss(loss: torch.Tensor, stage: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the {stage} diverged at step {step} (loss "
                                 f"{float(loss.detach())}); lower its learning rate")
