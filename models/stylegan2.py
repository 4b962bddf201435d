"""StyleGAN2 generator in the layout of rosinality/stylegan2-pytorch's ``Generator`` (``g_ema``).

Module tree and state_dict keys match that code: ``style.1 .. style.M`` (EqualLinear mapping
after a PixelNorm), ``input.input``, ``conv1``, ``to_rgb1``, ``convs.N`` (StyledConv:
``conv.weight`` [1, out, in, 3, 3], ``conv.modulation.{weight,bias}``, ``conv.blur.kernel`` when
upsampling, ``noise.weight``, ``activate.bias``), ``to_rgbs.N`` (``upsample.kernel``, ``conv.*``,
``bias``) and ``noises.noise_N`` buffers. Modulated convolution with demodulation; upsampling
is a stride-2 transposed conv followed by a [1,3,3,1] blur, and ``upfirdn2d`` is written in
plain torch with the same semantics as rosinality's native (CPU) reference, so no custom CUDA
op is needed. Deviations: noise is never drawn from the global RNG (see ``noise_mode``), there
is no style mixing, and images are clamped to [-1, 1].
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Generator
from .safe_load import CheckpointError, load_into, unwrap_state_dict

_SQRT2 = math.sqrt(2.0)
NOISE_MODES = ("const", "random", "none")


def make_kernel(k: Sequence[float]) -> torch.Tensor:
    """Separable 2-D FIR kernel from 1-D taps, normalised to sum 1."""
    t = torch.tensor(k, dtype=torch.float32)
    t = t[None, :] * t[:, None]
    return t / t.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative pads crop), FIR-filter, downsample.

    Same contract as rosinality's ``upfirdn2d(input, kernel, up, down, pad)`` with equal
    padding on x and y: output side ``(H*up + pad0 + pad1 - k + 1) // down`` (rounded up).
    """
    n, c, h, w = x.shape
    if up > 1:
        y = x.new_zeros(n, c, h * up, w * up)
        y[:, :, ::up, ::up] = x
        x = y
    p0, p1 = pad
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    x = x[:, :, max(-p0, 0): x.shape[2] - max(-p1, 0), max(-p0, 0): x.shape[3] - max(-p1, 0)]
    kh, kw = kernel.shape
    weight = torch.flip(kernel, [0, 1]).to(x).expand(c, 1, kh, kw)
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down, ::down]


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``leaky_relu(x + bias, 0.2) * sqrt(2)``, bias broadcast over channel dim 1."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return F.leaky_relu(x + bias.view(shape), 0.2) * _SQRT2


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (``weight * lr_mul / sqrt(in)``)."""

    def __init__(self, d_in: int, d_out: int, gen: torch.Generator, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in, generator=gen) / lr_mul)
        self.bias = nn.Parameter(torch.full((d_out,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(d_in)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class Blur(nn.Module):
    kernel: torch.Tensor

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * factor ** 2)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    kernel: torch.Tensor

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * factor ** 2)
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Per-sample modulated (and optionally demodulated) conv, as one grouped convolution."""

    def __init__(self, c_in: int, c_out: int, k: int, style_dim: int, gen: torch.Generator,
                 demodulate: bool = True, upsample: bool = False,
                 blur: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.c_in, self.c_out, self.k = c_in, c_out, k
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            p = (len(blur) - 2) - (k - 1)
            self.blur = Blur(blur, pad=((p + 1) // 2 + 1, p // 2 + 1), factor=2)
        self.scale = 1 / math.sqrt(c_in * k * k)
        self.weight = nn.Parameter(torch.randn(1, c_out, c_in, k, k, generator=gen))
        self.modulation = EqualLinear(style_dim, c_in, gen, bias_init=1.0)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.modulation(style).view(b, 1, c, 1, 1)
        weight = self.scale * self.weight * s
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(b, self.c_out, 1, 1, 1)
        x = x.reshape(1, b * c, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * c, self.c_out, self.k, self.k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=b)
            return self.blur(out.view(b, self.c_out, out.shape[2], out.shape[3]))
        weight = weight.reshape(b * self.c_out, c, self.k, self.k)
        out = F.conv2d(x, weight, padding=self.k // 2, groups=b)
        return out.view(b, self.c_out, h, w)


class NoiseInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return x if noise is None else x + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channels: int, gen: torch.Generator, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size, generator=gen))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated conv -> noise injection -> fused leaky ReLU (bias ``activate.bias``).
    Its output ``[n, c, h, w]`` is the hookable feature map."""

    def __init__(self, c_in: int, c_out: int, style_dim: int, gen: torch.Generator,
                 upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(c_in, c_out, 3, style_dim, gen, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = _BiasLeaky(c_out)

    def forward(self, x: torch.Tensor, style: torch.Tensor,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class _BiasLeaky(nn.Module):
    """rosinality's ``FusedLeakyReLU``: learned ``bias`` then leaky ReLU(0.2) times sqrt(2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class ToRGB(nn.Module):
    def __init__(self, c_in: int, style_dim: int, gen: torch.Generator,
                 upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample((1, 3, 3, 1))
        self.conv = ModulatedConv2d(c_in, 3, 1, style_dim, gen, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor,
                skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        return out if skip is None else out + self.upsample(skip)


def _latent_seed(z: torch.Tensor, noise_seed: int) -> int:
    data = z.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()
    digest = hashlib.blake2b(data, digest_size=8, key=str(noise_seed).encode()).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class StyleGAN2(Generator):
    """StyleGAN2 generator; ``channels[i]`` is the width at resolution ``4 * 2**i``.

    ``truncation`` < 1 pulls ``w`` toward ``mean_latent`` (the checkpoint's ``latent_avg`` if
    given, else the mean of ``style(z)`` over 4096 z drawn from a local generator).
    ``noise_mode``: ``"const"`` uses the fixed ``noises.noise_N`` buffers (rosinality's
    ``randomize_noise=False``), ``"random"`` draws per-sample noise seeded by a hash of that
    sample's latent and ``noise_seed`` (reproducible, independent of batching), ``"none"`` adds
    no noise. Layer names: ``conv1, convs.0, ...``.
    """

    mean_latent: torch.Tensor

    def __init__(self, size: int, style_dim: int, n_mlp: int, channels: Sequence[int],
                 lr_mlp: float = 0.01, truncation: float = 1.0, noise_mode: str = "const",
                 noise_seed: int = 0, seed: int = 0) -> None:
        super().__init__()
        log_size = int(math.log2(size))
        if size < 8 or 2 ** log_size != size:
            raise ValueError(f"size must be a power of two >= 8, got {size}")
        if len(channels) != log_size - 1:
            raise ValueError(f"need {log_size - 1} channel widths for 4..{size}, got {channels}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        g = torch.Generator().manual_seed(seed)
        self.resolution, self.style_dim = size, style_dim
        self.latent_shape = (style_dim,)
        self.channels = [int(c) for c in channels]
        self.noise_mode, self.noise_seed = noise_mode, noise_seed
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, g, lr_mul=lr_mlp, activate=True)
            for _ in range(n_mlp)])
        self.input = ConstantInput(self.channels[0], g)
        self.conv1 = StyledConv(self.channels[0], self.channels[0], style_dim, g)
        self.to_rgb1 = ToRGB(self.channels[0], style_dim, g, upsample=False)
        self.num_layers = (log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty, kept for layout parity
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res, generator=g))
        c_in = self.channels[0]
        for c_out in self.channels[1:]:
            self.convs.append(StyledConv(c_in, c_out, style_dim, g, upsample=True))
            self.convs.append(StyledConv(c_out, c_out, style_dim, g))
            self.to_rgbs.append(ToRGB(c_out, style_dim, g))
            c_in = c_out
        self.n_latent = log_size * 2 - 2
        self.register_buffer("mean_latent", torch.zeros(style_dim), persistent=False)
        self._has_mean = False
        self.truncation = 1.0
        self.set_truncation(truncation)

    @property
    def layer_names(self) -> list[str]:
        return ["conv1"] + [f"convs.{i}" for i in range(len(self.convs))]

    def set_mean_latent(self, w: torch.Tensor) -> None:
        """Use ``w`` (``[style_dim]`` or ``[1, style_dim]``) as the truncation centre."""
        w = w.detach().reshape(-1)
        if w.numel() != self.style_dim:
            raise ValueError(f"mean latent has {w.numel()} values, expected {self.style_dim}")
        self.mean_latent.copy_(w.to(self.mean_latent))
        self._has_mean = True

    @torch.no_grad()
    def compute_mean_latent(self, n: int = 4096, seed: int = 0) -> torch.Tensor:
        """Mean of ``style(z)`` over ``n`` latents from a local generator seeded by ``seed``."""
        z = torch.randn(n, self.style_dim, generator=torch.Generator().manual_seed(seed))
        return self.style(z.to(self.mean_latent.device)).mean(0)

    def set_truncation(self, truncation: float) -> None:
        """Set the truncation psi in (0, 1]; computes the mean latent if none is known yet."""
        if not 0.0 < truncation <= 1.0:
            raise ValueError(f"truncation must be in (0, 1], got {truncation}")
        self.truncation = float(truncation)
        if truncation < 1.0 and not self._has_mean:
            self.set_mean_latent(self.compute_mean_latent())

    def _noise(self, z: torch.Tensor) -> list[torch.Tensor | None]:
        if self.noise_mode == "none":
            return [None] * self.num_layers
        bufs = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if self.noise_mode == "const":
            return list(bufs)
        gens = [torch.Generator().manual_seed(_latent_seed(zi, self.noise_seed)) for zi in z]
        return [torch.stack([torch.randn(b.shape[1:], generator=gi) for gi in gens]).to(b)
                for b in bufs]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.check_latents(z)
        w = self.style(z)
        if self.truncation < 1.0:
            w = self.mean_latent + self.truncation * (w - self.mean_latent)
        noise = self._noise(z)
        out = self.conv1(self.input(z.shape[0]), w, noise[0])
        skip = self.to_rgb1(out, w)
        for j, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * j](out, w, noise[2 * j + 1])
            out = self.convs[2 * j + 1](out, w, noise[2 * j + 2])
            skip = to_rgb(out, w, skip)
        return skip.clamp(-1, 1)


def _count(sd: Mapping[str, torch.Tensor], fmt: str, start: int) -> int:
    n = start
    while fmt.format(n) in sd:
        n += 1
    return n - start


#: Seed of the ``noises.noise_N`` buffers regenerated for checkpoints that lack them.
MISSING_NOISE_SEED = 0


def regenerate_noise(gen: StyleGAN2, keys: Sequence[str]) -> None:
    """Refill the ``noises.noise_N`` buffers named in ``keys`` deterministically: buffer N is
    standard normal from ``torch.Generator().manual_seed(MISSING_NOISE_SEED + N)`` (independent
    of which others are missing)."""
    for key in keys:
        i = int(key.rsplit("_", 1)[1])
        buf = getattr(gen.noises, f"noise_{i}")
        g = torch.Generator().manual_seed(MISSING_NOISE_SEED + i)
        buf.copy_(torch.randn(buf.shape, generator=g))


def from_state_dict(obj: Any, **kwargs: Any) -> StyleGAN2:
    """A :class:`StyleGAN2` from a loaded rosinality checkpoint ``obj``: a ``g_ema``
    state_dict, or a dict holding one under ``"g_ema"`` (optionally with ``"latent_avg"``;
    a flat dict may also carry a ``latent_avg`` tensor). Architecture is read from the shapes;
    ``kwargs`` (``lr_mlp``, ``truncation``, ``noise_mode``, ``noise_seed``) go to the model.
    Missing ``noises.noise_N`` buffers (some converters drop them) are regenerated with
    :func:`regenerate_noise` and a warning."""
    latent_avg = obj.get("latent_avg") if isinstance(obj, Mapping) else None
    sd = dict(unwrap_state_dict(
        {k: v for k, v in obj.items() if k != "latent_avg"} if isinstance(obj, Mapping) else obj,
        prefer=("g_ema",)))
    if "style.1.weight" not in sd or "input.input" not in sd:
        raise CheckpointError("not a rosinality StyleGAN2 g_ema state_dict: missing "
                              f"style.1.weight / input.input; keys start with {sorted(sd)[:5]}")
    style_dim = int(sd["style.1.weight"].shape[1])
    n_mlp = _count(sd, "style.{}.weight", 1)
    n_rgb = _count(sd, "to_rgbs.{}.conv.weight", 0)
    channels = [int(sd["input.input"].shape[1])]
    for j in range(n_rgb):
        key = f"convs.{2 * j}.conv.weight"
        if key not in sd:
            raise CheckpointError(f"checkpoint has to_rgbs.{j} but no {key}")
        channels.append(int(sd[key].shape[1]))
    truncation = float(kwargs.pop("truncation", 1.0))
    gen = StyleGAN2(2 ** (n_rgb + 2), style_dim, n_mlp, channels, **kwargs)
    kernels = [k for k in gen.state_dict() if k.endswith(".kernel")]
    noises = [k for k in gen.state_dict() if k.startswith("noises.noise_")]
    missing_noise = [k for k in noises if k not in sd]
    load_into(gen, sd, f"StyleGAN2 {gen.resolution}px (style_dim {style_dim}, n_mlp {n_mlp}, "
              f"channels {channels})", optional=kernels + noises)
    if missing_noise:
        regenerate_noise(gen, missing_noise)
        warnings.warn(f"the checkpoint has no {', '.join(missing_noise)} buffers (used by "
                      f"noise_mode='const'); they were regenerated from seed "
                      f"{MISSING_NOISE_SEED} (standard normal, torch.Generator), so const-noise "
                      "images differ in fine detail from the original run's", stacklevel=2)
    if isinstance(latent_avg, torch.Tensor):
        gen.set_mean_latent(latent_avg)
    gen.set_truncation(truncation)
    return gen


__all__ = ["MISSING_NOISE_SEED", "NOISE_MODES", "StyleGAN2", "from_state_dict",
           "regenerate_noise", "upfirdn2d"]
