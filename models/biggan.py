"""BigGAN-deep generator in the exact layout of the ``pytorch-pretrained-biggan`` checkpoints.

Module tree and state_dict keys match huggingface/pytorch-pretrained-BigGAN's ``BigGAN``
(all its published checkpoints, ``biggan-deep-128/256/512``, are BigGAN-*deep*):

* ``embeddings.weight`` [z_dim, num_classes]: class one-hot -> embedding (Linear, no bias);
* ``generator.gen_z``: spectral-norm Linear 2*z_dim -> 4*4*16*ch (with bias), output read as
  TF-ordered [n, 4, 4, 16ch] and permuted to [n, 16ch, 4, 4];
* ``generator.layers.N``: GenBlocks (``bn_0..bn_3`` conditional batch norms, each with
  spectral-norm ``scale`` / ``offset`` Linears from the condition vector and
  ``running_means`` / ``running_vars`` [n_stats, c] buffers; ``conv_0..conv_3`` spectral-norm
  convs 1x1, 3x3, 3x3, 1x1 with a 4x bottleneck, nearest 2x upsampling before ``conv_1`` in
  every second block, residual that keeps the first ``out`` channels), and one self-attention
  block (``snconv1x1_theta/phi/g/o_conv``, ``gamma``) at ``attention_layer_position``;
* ``generator.bn`` (unconditional: ``weight``, ``bias``, ``running_means``, ``running_vars``),
  ReLU, ``generator.conv_to_rgb`` (spectral-norm 3x3, ch -> ch; the first 3 channels), tanh.

Every spectral-norm module stores ``weight_orig``, ``weight_u``, ``weight_v`` (and ``bias`` if
any), as ``torch.nn.utils.spectral_norm`` does; the weight used is
``weight_orig / (u . (W v))`` with the stored ``u``, ``v`` (PyTorch's eval-mode rule; no power
iteration ever runs here, also not in train mode). Batch-norm statistics are the stored
per-truncation ones, interpolated exactly as upstream does (including its ``math.modf`` rule).

Latent layout (:meth:`BigGAN.sample_latents`): ``z = [noise (z_dim) | class vector
(num_classes)]``, shape ``[n, z_dim + num_classes]``. ``noise`` is a standard normal truncated
to [-2, 2] (resampled) times ``truncation``, as upstream's ``truncated_noise_sample``; the class
vector is a one-hot of ``class_index`` (fixed) or of a class drawn per sample. Both depend only
on ``(seed, start + i)``. ``forward`` accepts any class vector (soft mixes too).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Generator
from .safe_load import CheckpointError, load_into, unwrap_state_dict

#: One GenBlock of a config: (upsample, in multiplier, out multiplier) of ``channel_width``.
LayerSpec = tuple[bool, int, int]

#: ``layers`` of the upstream configs, by output resolution (channel_width 128, attention at 8).
CONFIG_LAYERS: dict[int, list[LayerSpec]] = {
    128: [(False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8),
          (True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1)],
    256: [(False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8),
          (True, 8, 8), (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2),
          (False, 2, 2), (True, 2, 1)],
    512: [(False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8),
          (True, 8, 8), (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2),
          (False, 2, 2), (True, 2, 1), (False, 1, 1), (True, 1, 1)],
}


class _SpectralNorm(nn.Module):
    """Shared state of a spectral-norm layer: ``weight_orig``, ``weight_u``, ``weight_v``."""

    weight_u: torch.Tensor
    weight_v: torch.Tensor

    def _setup(self, shape: tuple[int, ...], bias: bool) -> None:
        self.weight_orig = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(shape[0])) if bias else None
        self.register_buffer("weight_u", torch.empty(shape[0]))
        self.register_buffer("weight_v", torch.empty(math.prod(shape[1:])))

    def sn_weight(self) -> torch.Tensor:
        """``weight_orig / sigma`` with ``sigma = u . (W v)``, ``W`` = weight_orig as [out, -1]."""
        w = self.weight_orig
        sigma = torch.dot(self.weight_u, torch.mv(w.reshape(w.shape[0], -1), self.weight_v))
        return w / sigma

    @torch.no_grad()
    def init_(self, gen: torch.Generator, iters: int = 20) -> None:
        """Random ``weight_orig`` and converged ``u``, ``v`` (power iteration), zero bias."""
        w = torch.randn(self.weight_orig.shape, generator=gen)
        mat = w.reshape(w.shape[0], -1)
        u = F.normalize(torch.randn(mat.shape[0], generator=gen), dim=0)
        v = F.normalize(mat.t() @ u, dim=0)
        for _ in range(iters):
            u = F.normalize(mat @ v, dim=0)
            v = F.normalize(mat.t() @ u, dim=0)
        self.weight_orig.copy_(w)
        self.weight_u.copy_(u)
        self.weight_v.copy_(v)
        if self.bias is not None:
            self.bias.zero_()


class SNLinear(_SpectralNorm):
    """Spectral-norm ``nn.Linear`` (keys ``weight_orig``, ``weight_u``, ``weight_v``, ``bias``)."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True) -> None:
        super().__init__()
        self._setup((d_out, d_in), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.sn_weight(), self.bias)


class SNConv2d(_SpectralNorm):
    """Spectral-norm ``nn.Conv2d`` with 'same' padding for odd ``k``."""

    def __init__(self, c_in: int, c_out: int, k: int, bias: bool = True) -> None:
        super().__init__()
        self._setup((c_out, c_in, k, k), bias)
        self.padding = k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.sn_weight(), self.bias, padding=self.padding)


def _stats(running: torch.Tensor, truncation: float) -> torch.Tensor:
    """Upstream's stored-statistics lookup: ``coef, i = modf(t / step)``; if ``coef != 0``
    the result is ``s[i] * coef + s[i + 1] * (1 - coef)`` (sic), else ``s[i]``."""
    step = 1.0 / (running.shape[0] - 1)
    coef, start = math.modf(truncation / step)
    i = int(start)
    if coef != 0.0:
        return running[i] * coef + running[i + 1] * (1 - coef)
    return running[i]


class CondBatchNorm(nn.Module):
    """Class-conditional batch norm with stored per-truncation statistics (eval only):
    ``(x - mean_t) / sqrt(var_t + eps) * (1 + scale(c)) + offset(c)``."""

    running_means: torch.Tensor
    running_vars: torch.Tensor

    def __init__(self, channels: int, cond_dim: int, n_stats: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("running_means", torch.zeros(n_stats, channels))
        self.register_buffer("running_vars", torch.ones(n_stats, channels))
        self.scale = SNLinear(cond_dim, channels, bias=False)
        self.offset = SNLinear(cond_dim, channels, bias=False)

    def forward(self, x: torch.Tensor, truncation: float, cond: torch.Tensor) -> torch.Tensor:
        mean = _stats(self.running_means, truncation)[None, :, None, None]
        var = _stats(self.running_vars, truncation)[None, :, None, None]
        weight = 1 + self.scale(cond)[:, :, None, None]
        bias = self.offset(cond)[:, :, None, None]
        return (x - mean) / torch.sqrt(var + self.eps) * weight + bias


class OutBatchNorm(nn.Module):
    """The final, unconditional batch norm (``weight``, ``bias`` and stored statistics)."""

    running_means: torch.Tensor
    running_vars: torch.Tensor

    def __init__(self, channels: int, n_stats: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("running_means", torch.zeros(n_stats, channels))
        self.register_buffer("running_vars", torch.ones(n_stats, channels))
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, truncation: float) -> torch.Tensor:
        return F.batch_norm(x, _stats(self.running_means, truncation),
                            _stats(self.running_vars, truncation), self.weight, self.bias,
                            training=False, momentum=0.0, eps=self.eps)


class GenBlock(nn.Module):
    """BigGAN-deep residual block; its output ``[n, out, h, w]`` is the hookable feature map."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, upsample: bool, n_stats: int,
                 eps: float, reduction: int = 4) -> None:
        super().__init__()
        if c_out > c_in:
            raise ValueError(f"GenBlock cannot widen channels ({c_in} -> {c_out})")
        mid = c_in // reduction
        self.upsample, self.c_out = upsample, c_out
        self.bn_0 = CondBatchNorm(c_in, cond_dim, n_stats, eps)
        self.conv_0 = SNConv2d(c_in, mid, 1)
        self.bn_1 = CondBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_1 = SNConv2d(mid, mid, 3)
        self.bn_2 = CondBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_2 = SNConv2d(mid, mid, 3)
        self.bn_3 = CondBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_3 = SNConv2d(mid, c_out, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, truncation: float) -> torch.Tensor:
        h = self.conv_0(F.relu(self.bn_0(x, truncation, cond)))
        h = F.relu(self.bn_1(h, truncation, cond))
        if self.upsample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv_1(h)
        h = self.conv_2(F.relu(self.bn_2(h, truncation, cond)))
        h = self.conv_3(F.relu(self.bn_3(h, truncation, cond)))
        skip = x[:, : self.c_out]
        if self.upsample:
            skip = F.interpolate(skip, scale_factor=2, mode="nearest")
        return h + skip


class SelfAttn(nn.Module):
    """SAGAN self-attention (keys ``snconv1x1_{theta,phi,g,o_conv}``, ``gamma``);
    phi and g are 2x2 max-pooled; output ``x + gamma * o(attention)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 8:
            raise ValueError(f"self-attention needs channels divisible by 8, got {channels}")
        self.snconv1x1_theta = SNConv2d(channels, channels // 8, 1, bias=False)
        self.snconv1x1_phi = SNConv2d(channels, channels // 8, 1, bias=False)
        self.snconv1x1_g = SNConv2d(channels, channels // 2, 1, bias=False)
        self.snconv1x1_o_conv = SNConv2d(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        theta = self.snconv1x1_theta(x).view(n, c // 8, h * w)
        phi = F.max_pool2d(self.snconv1x1_phi(x), 2).view(n, c // 8, h * w // 4)
        attn = torch.softmax(torch.bmm(theta.permute(0, 2, 1), phi), dim=-1)
        g = F.max_pool2d(self.snconv1x1_g(x), 2).view(n, c // 2, h * w // 4)
        out = torch.bmm(g, attn.permute(0, 2, 1)).view(n, c // 2, h, w)
        return x + self.gamma * self.snconv1x1_o_conv(out)


class _Trunk(nn.Module):
    """The ``generator`` submodule: gen_z, layers, bn, conv_to_rgb."""

    def __init__(self, ch: int, z_dim: int, layers: Sequence[LayerSpec], attention: int,
                 n_stats: int, eps: float) -> None:
        super().__init__()
        cond_dim = 2 * z_dim
        self.ch = ch
        self.gen_z = SNLinear(cond_dim, 4 * 4 * 16 * ch)
        blocks: list[nn.Module] = []
        for i, (up, m_in, m_out) in enumerate(layers):
            if i == attention:
                blocks.append(SelfAttn(ch * m_in))
            blocks.append(GenBlock(ch * m_in, ch * m_out, cond_dim, up, n_stats, eps))
        self.layers = nn.ModuleList(blocks)
        self.bn = OutBatchNorm(ch, n_stats, eps)
        self.conv_to_rgb = SNConv2d(ch, ch, 3)


class BigGAN(Generator):
    """Class-conditional BigGAN-deep generator (see the module docstring for layout and latents).

    ``layers`` is the upstream config's list of ``(upsample, in_mult, out_mult)``; the
    attention block goes before GenBlock ``attention``. ``truncation`` in (0, 1] scales the
    sampled noise and picks the batch-norm statistics. ``class_index`` fixes the class of
    sampled latents; None draws one class per sample. Layer names: ``generator.layers.N``.
    """

    def __init__(self, layers: Sequence[LayerSpec], channel_width: int = 128, z_dim: int = 128,
                 num_classes: int = 1000, attention: int = 8, n_stats: int = 51,
                 eps: float = 1e-4, truncation: float = 1.0, class_index: int | None = None,
                 seed: int | None = 0) -> None:
        super().__init__()
        if not layers or int(channel_width) < 1 or int(z_dim) < 1 or int(num_classes) < 1:
            raise ValueError("need at least one layer and positive channel_width, z_dim, "
                             f"num_classes; got {len(layers)} layers, {channel_width}, {z_dim}, "
                             f"{num_classes}")
        if int(channel_width) < 3 or layers[0][1] != 16 or layers[-1][2] != 1:
            raise ValueError("BigGAN-deep needs channel_width >= 3, a first GenBlock with in "
                             "multiplier 16 (gen_z makes 16*ch channels) and a last one with out "
                             f"multiplier 1 (conv_to_rgb reads ch); got {channel_width}, "
                             f"{list(layers)}")
        if n_stats < 2:
            raise ValueError(f"n_stats must be >= 2, got {n_stats}")
        self.layer_specs = [(bool(u), int(a), int(b)) for u, a, b in layers]
        self.z_dim, self.num_classes = int(z_dim), int(num_classes)
        self.resolution = 4 * 2 ** sum(u for u, _, _ in self.layer_specs)
        self.latent_shape = (self.z_dim + self.num_classes,)
        self.embeddings = nn.Linear(self.num_classes, self.z_dim, bias=False)
        self.generator = _Trunk(int(channel_width), self.z_dim, self.layer_specs, attention,
                                n_stats, eps)
        self.truncation = 1.0
        self.set_truncation(truncation)
        self.class_index: int | None = None
        self.set_class(class_index)
        if seed is not None and self.embeddings.weight.device.type != "meta":
            self.init_weights_(seed)

    @property
    def layer_names(self) -> list[str]:
        return [f"generator.layers.{i}" for i in range(len(self.generator.layers))]

    def set_truncation(self, truncation: float) -> None:
        """Truncation in (0, 1]: noise scale and batch-norm statistics (as upstream)."""
        if not 0.0 < truncation <= 1.0:
            raise ValueError(f"truncation must be in (0, 1], got {truncation}")
        self.truncation = float(truncation)

    def set_class(self, class_index: int | None) -> None:
        """Fix the class of sampled latents (0 <= index < num_classes), or None for random."""
        if class_index is not None and not 0 <= int(class_index) < self.num_classes:
            raise ValueError(f"class_index must be in [0, {self.num_classes}), got "
                             f"{class_index}")
        self.class_index = None if class_index is None else int(class_index)

    @torch.no_grad()
    def init_weights_(self, seed: int) -> None:
        """Random weights from a local generator (spectral norms with converged u, v)."""
        g = torch.Generator().manual_seed(seed)
        self.embeddings.weight.copy_(0.1 * torch.randn(self.embeddings.weight.shape,
                                                       generator=g))
        for m in self.modules():
            if isinstance(m, _SpectralNorm):
                m.init_(g)

    def sample_latents(self, n: int, seed: int, start: int = 0) -> torch.Tensor:
        """``[noise * truncation | one-hot class]`` for samples ``start .. start+n-1``;
        sample ``k`` depends only on ``(seed, start + k)`` (and the fixed class, if any)."""
        if n < 0 or start < 0 or seed < 0:
            raise ValueError(f"n, start and seed must be non-negative, got n={n}, "
                             f"start={start}, seed={seed}")
        out = np.zeros((n, self.z_dim + self.num_classes), dtype=np.float32)
        for k in range(n):
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, start + k])))
            out[k, : self.z_dim] = truncated_normal(rng, self.z_dim) * self.truncation
            cls = self.class_index
            if cls is None:
                crng = np.random.Generator(np.random.PCG64(
                    np.random.SeedSequence([seed, start + k, 1])))
                cls = int(crng.integers(self.num_classes))
            out[k, self.z_dim + cls] = 1.0
        return torch.from_numpy(out).to(self.device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.check_latents(z)
        t, gen = self.truncation, self.generator
        cond = torch.cat([z[:, : self.z_dim], self.embeddings(z[:, self.z_dim:])], dim=1)
        x = gen.gen_z(cond).view(-1, 4, 4, 16 * gen.ch).permute(0, 3, 1, 2).contiguous()
        for layer in gen.layers:
            x = layer(x, cond, t) if isinstance(layer, GenBlock) else layer(x)
        x = gen.conv_to_rgb(F.relu(gen.bn(x, t)))
        return torch.tanh(x[:, :3])


def truncated_normal(rng: np.random.Generator, size: int, bound: float = 2.0) -> np.ndarray:
    """Standard normals restricted to [-bound, bound] by resampling the ones outside."""
    x = rng.standard_normal(size, dtype=np.float32)
    while True:
        bad = np.abs(x) > bound
        if not bad.any():
            return x
        x[bad] = rng.standard_normal(int(bad.sum()), dtype=np.float32)


def biggan_layers(resolution: int) -> tuple[str, ...]:
    """``generator.layers.0 .. N`` of the upstream config for ``resolution`` (with attention)."""
    if resolution not in CONFIG_LAYERS:
        raise ValueError(f"no upstream BigGAN config for {resolution}px; known: "
                         f"{sorted(CONFIG_LAYERS)}")
    return tuple(f"generator.layers.{i}" for i in range(len(CONFIG_LAYERS[resolution]) + 1))


def _read_config(config: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    try:
        out = json.loads(Path(config).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read BigGAN config {str(config)!r}: {exc}") from exc
    if not isinstance(out, dict):
        raise CheckpointError(f"BigGAN config {str(config)!r} is not a JSON object")
    return out


def _infer(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture from shapes; upsampling is not stored, so every second GenBlock
    (GenBlock index 1, 3, 5, ...) upsamples, as in all upstream configs."""
    for key in ("embeddings.weight", "generator.conv_to_rgb.weight_orig",
                "generator.bn.running_means"):
        if key not in sd:
            raise CheckpointError(f"not a pytorch-pretrained-biggan state_dict: missing {key}; "
                                  f"keys start with {sorted(sd)[:5]}")
    ch = int(sd["generator.conv_to_rgb.weight_orig"].shape[0])
    layers: list[LayerSpec] = []
    attention, j = -1, 0
    while any(k.startswith(f"generator.layers.{j}.") for k in sd):
        if f"generator.layers.{j}.gamma" in sd:
            attention = len(layers)
        else:
            w0 = sd.get(f"generator.layers.{j}.conv_0.weight_orig")
            w3 = sd.get(f"generator.layers.{j}.conv_3.weight_orig")
            if w0 is None or w3 is None:
                raise CheckpointError(f"generator.layers.{j} is neither a GenBlock (conv_0, "
                                      "conv_3) nor a self-attention block (gamma)")
            c_in, c_out = int(w0.shape[1]), int(w3.shape[0])
            if c_in % ch or c_out % ch:
                raise CheckpointError(f"generator.layers.{j} has {c_in}->{c_out} channels, "
                                      f"not multiples of channel_width {ch}")
            layers.append((len(layers) % 2 == 1, c_in // ch, c_out // ch))
        j += 1
    if not layers:
        raise CheckpointError("checkpoint has no generator.layers.N GenBlocks")
    emb = sd["embeddings.weight"]
    return {"layers": layers, "channel_width": ch, "z_dim": int(emb.shape[0]),
            "num_classes": int(emb.shape[1]), "attention": attention,
            "n_stats": int(sd["generator.bn.running_means"].shape[0])}


def from_state_dict(obj: Any, *, config: str | Path | Mapping[str, Any] | None = None,
                    truncation: float = 1.0, class_index: int | None = None) -> BigGAN:
    """A :class:`BigGAN` with the weights of a loaded ``pytorch_model.bin`` (keys and shapes
    checked). The architecture is read from the shapes; ``config`` (upstream ``config.json``
    path or dict) overrides ``layers`` / ``attention_layer_position`` / ``eps`` if given."""
    sd = unwrap_state_dict(obj, prefer=("state_dict",))
    arch = _infer(sd)
    eps = 1e-4
    if config is not None:
        cfg = _read_config(config)
        if "layers" in cfg:
            arch["layers"] = [tuple(x) for x in cfg["layers"]]
        arch["attention"] = int(cfg.get("attention_layer_position", arch["attention"]))
        eps = float(cfg.get("eps", eps))
    gen = BigGAN(arch["layers"], arch["channel_width"], arch["z_dim"], arch["num_classes"],
                 arch["attention"], arch["n_stats"], eps, truncation, class_index, seed=None)
    load_into(gen, sd, f"BigGAN-deep {gen.resolution}px (channel_width {arch['channel_width']}, "
              f"{len(arch['layers'])} GenBlocks)")
    return gen


__all__ = ["CONFIG_LAYERS", "BigGAN", "biggan_layers", "from_state_dict", "truncated_normal"]
