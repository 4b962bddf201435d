"""The bundled Toyworld GAN: a small DCGAN/ProGAN-style generator and discriminator (64x64).

Generator layers (each a hookable module whose output is a feature map ``[n, units, h, w]``):

========  =======  =====  ==========================================
layer     units    size   op
========  =======  =====  ==========================================
layer1    256      4x4    linear from z (128-d) + BN + LeakyReLU
layer2    256      4x4    conv 3x3 + BN + LeakyReLU
layer3    256      8x8    transposed conv 4x4/2 + BN + LeakyReLU
layer4    256      8x8    conv 3x3 + BN + LeakyReLU
layer5    128      16x16  transposed conv 4x4/2 + BN + LeakyReLU
layer6    128      16x16  conv 3x3 + BN + LeakyReLU
layer7    64       32x32  transposed conv 4x4/2 + BN + LeakyReLU
layer8    32       64x64  transposed conv 4x4/2 + BN + LeakyReLU
output    3        64x64  conv 3x3 + tanh (not a dissection layer)
========  =======  =====  ==========================================

``upsample="nearest"`` (an option for training new generators; the shipped weights use the
default ``"transpose"``) replaces each transposed convolution by nearest-neighbour 2x upsampling
followed by a 3x3 convolution, which avoids the checkerboard texture of 4x4/2 transposed
convolutions; layer names, units and sizes stay the same.

Weights ship as safetensors in ``models/weights/`` (the generator holds the EMA weights);
:func:`load_generator` and :func:`load_discriminator` verify keys and shapes before loading.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import Generator, weights_path
from .safe_load import load_into

#: Directory of the shipped weights.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
GENERATOR_FILE = "toyworld_gan_g.safetensors"
#: The segmenter a semantic discriminator was trained with (the shipped Toyworld U-Net).
SEGMENTER_WEIGHTS = Path(__file__).resolve().parent.parent / "segmenters" / "weights" / \
    "toyworld.safetensors"
DISCRIMINATOR_FILE = "toyworld_gan_d.safetensors"
METADATA_FILE = "toyworld_gan.json"

#: (name, units, resolution, kind) of each generator layer.
G_LAYERS: tuple[tuple[str, int, int, str], ...] = (
    ("layer1", 256, 4, "input"),
    ("layer2", 256, 4, "conv"),
    ("layer3", 256, 8, "up"),
    ("layer4", 256, 8, "conv"),
    ("layer5", 128, 16, "up"),
    ("layer6", 128, 16, "conv"),
    ("layer7", 64, 32, "up"),
    ("layer8", 32, 64, "up"),
)
#: Channels of the discriminator's stride-2 convolutions (64 -> 32 -> 16 -> 8 -> 4 pixels).
D_WIDTHS: tuple[int, ...] = (64, 128, 256, 256)
Z_DIM = 128
#: Generator upsampling ops: 4x4 stride-2 transposed conv, or nearest 2x + 3x3 conv.
UPSAMPLE_MODES: tuple[str, ...] = ("transpose", "nearest")
#: Extra input channels of a semantic discriminator: the Toyworld segmenter's leaf probabilities.
SEMANTIC_CHANNELS = 13


class _NearestConv(nn.Conv2d):
    """Nearest-neighbour 2x upsampling, then a 3x3 convolution (``[n, cin, h, w]`` ->
    ``[n, cout, 2h, 2w]``). A Conv2d subclass, so its parameters are ``weight`` alone."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Block(nn.Sequential):
    """conv 3x3 (or a 2x upsampling op, see ``UPSAMPLE_MODES``) + BatchNorm + LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int, up: bool, upsample: str = "transpose") -> None:
        conv: nn.Module
        if not up:
            conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        elif upsample == "transpose":
            conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)
        else:
            conv = _NearestConv(cin, cout)
        super().__init__(conv, nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


class _Input(nn.Module):
    """z ``[n, z_dim]`` -> ``[n, units, 4, 4]`` (linear + BN + LeakyReLU)."""

    def __init__(self, z_dim: int, units: int) -> None:
        super().__init__()
        self.units = units
        self.linear = nn.Linear(z_dim, units * 16, bias=False)
        self.norm = nn.BatchNorm2d(units)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.linear(z).view(z.shape[0], self.units, 4, 4)
        return self.act(self.norm(x))


class _Output(nn.Module):
    """Feature map -> RGB in [-1, 1] (conv 3x3 + tanh)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x))


class ToyworldGenerator(Generator):
    """64x64 Toyworld generator; latents are 128-d standard normal (see module docstring).

    ``upsample`` is one of ``UPSAMPLE_MODES``: ``"transpose"`` (default, the shipped weights) or
    ``"nearest"``; both have the same layers, units and feature-map sizes.
    """

    resolution = 64
    latent_shape = (Z_DIM,)

    def __init__(self, upsample: str = "transpose") -> None:
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {list(UPSAMPLE_MODES)}, got {upsample!r}")
        self.upsample = upsample
        cin = Z_DIM
        for name, units, _, kind in G_LAYERS:
            block: nn.Module = (_Input(cin, units) if kind == "input"
                                else _Block(cin, units, up=kind == "up", upsample=upsample))
            self.add_module(name, block)
            cin = units
        self.output = _Output(cin)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)

    @property
    def layer_names(self) -> list[str]:
        return [name for name, *_ in G_LAYERS]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.check_latents(z)
        for name in self.layer_names:
            x = getattr(self, name)(x)
        out: torch.Tensor = self.output(x)
        return out


def _group_size(n: int, group: int) -> int:
    """The largest divisor of ``n`` that is at most ``group`` (1 when ``n`` is 1)."""
    return max(g for g in range(1, min(group, n) + 1) if n % g == 0)


class ToyworldDiscriminator(nn.Module):
    """64x64 discriminator: images ``[n, 3, 64, 64]`` in [-1, 1] -> realism logits ``[n]``.

    With ``mbstd_group=0`` there are no batch-dependent layers, so each image's logit depends
    only on that image. With ``mbstd_group=g > 0`` (ProGAN's minibatch standard deviation, which
    lets D see a lack of variety), consecutive groups of up to ``g`` images share one extra
    feature: the mean over features of their standard deviation at 4x4, so a logit depends on
    its group (score images in batches whose size is a multiple of ``g``).

    With ``semantic=True`` the first convolution also sees the 13 leaf probabilities of a frozen
    Toyworld segmenter U-Net (``[n, 3 + 13, 64, 64]``), so it can judge what is drawn where
    (a door on a wall). The U-Net is attached with :meth:`attach_segmenter` (never part of
    this module's state dict); ``forward(x, leaf_probs)`` may be given precomputed
    probabilities instead.
    """

    def __init__(self, mbstd_group: int = 0, semantic: bool = False) -> None:
        super().__init__()
        if mbstd_group < 0:
            raise ValueError(f"mbstd_group must be >= 0, got {mbstd_group}")
        self.mbstd_group = mbstd_group
        self.semantic = semantic
        self._segnet: list[nn.Module] = []  # a list keeps it out of state_dict / parameters
        layers: list[nn.Module] = []
        cin = 3 + (SEMANTIC_CHANNELS if semantic else 0)
        for w in D_WIDTHS:
            layers += [nn.Conv2d(cin, w, 4, 2, 1), nn.LeakyReLU(0.2)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear((cin + (1 if mbstd_group else 0)) * 16, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def attach_segmenter(self, net: nn.Module) -> ToyworldDiscriminator:
        """Use ``net`` (images -> 13 leaf logits, frozen here) for the semantic input."""
        self._segnet[:] = [net.eval().requires_grad_(False)]
        return self

    def leaf_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Leaf probabilities ``[n, 13, 64, 64]`` of the attached segmenter (differentiable in
        ``x``)."""
        if not self._segnet:
            raise ValueError("this semantic discriminator has no segmenter attached; load it "
                             "with models.toyworld_gan.load_discriminator() or call "
                             "attach_segmenter(segmenters.toyworld.load_weights(...))")
        logits: torch.Tensor = self._segnet[0](x)
        return logits.softmax(dim=1)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)  # .to(device) / .half() also move the attached segmenter
        for net in self._segnet:
            net._apply(fn, recurse)
        return self

    def forward(self, x: torch.Tensor, leaf_probs: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, 64, 64):
            raise ValueError(f"ToyworldDiscriminator expects images [n, 3, 64, 64], "
                             f"got {list(x.shape)}")
        if self.semantic:
            probs = self.leaf_probs(x) if leaf_probs is None else leaf_probs
            x = torch.cat([x, probs.to(x.dtype)], dim=1)
        h = self.features(x)
        if self.mbstd_group:
            n, c, hh, ww = h.shape
            g = _group_size(n, self.mbstd_group)
            grouped = h.view(g, n // g, c, hh, ww)  # image i is in group i % (n // g)
            std = (grouped.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
            feat = std.view(1, n // g, 1, 1, 1).expand(g, n // g, 1, hh, ww).reshape(n, 1, hh, ww)
            h = torch.cat([h, feat], dim=1)
        out: torch.Tensor = self.head(h.flatten(1)).squeeze(1)
        return out


def _load_state(module: nn.Module, path: Path, what: str, note: str = "") -> None:
    """Load safetensors ``path`` into ``module``, verifying keys, shapes and finiteness
    (:func:`models.safe_load.load_into`; float16 files are cast to the model's float32).
    ``note`` is prepended to the fix suggested by errors (e.g. where the architecture came from)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    hint = (note + "re-export it with `python -m models.train_toyworld_gan --out runs/gan "
            "--export` or restore it with `git checkout models/weights/`")
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found at {path}; {hint}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{what} weights at {path} are not a readable safetensors file "
                         f"({e}); {hint}") from e
    load_into(module, state, what, path=path, hint=hint)


def load_generator(device: str | torch.device = "cpu", weights: str | Path | None = None,
                   path: str | Path | None = None) -> ToyworldGenerator:
    """The trained Toyworld generator (EMA weights) in eval mode on ``device``.

    ``weights`` (or its synonym ``path``, as ``--model toyworld:PATH`` gives it; a folder means
    its ``toyworld_gan_g.safetensors``) defaults to the shipped
    ``models/weights/toyworld_gan_g.safetensors``. Its
    upsampling op is read from the training metadata beside the weights (``toyworld_gan.json``
    ``settings.upsample``; ``"transpose"`` when the file or the field is absent).
    """
    path = weights_path(weights, path, WEIGHTS_DIR / GENERATOR_FILE)
    upsample = str(_settings_beside(path).get("upsample", "transpose"))
    meta_path = path.parent / METADATA_FILE
    try:
        gen = ToyworldGenerator(upsample=upsample)
    except ValueError as e:
        raise ValueError(f"{meta_path}: {e}; fix settings.upsample there or re-export the "
                         "weights") from None
    note = (f"the architecture (upsample={upsample!r}) comes from {meta_path}, which must "
            "belong to these weights; " if meta_path.is_file() else "")
    _load_state(gen, path, "Toyworld generator", note)
    return gen.to(device).eval()


def load_discriminator(device: str | torch.device = "cpu", weights: str | Path | None = None,
                       path: str | Path | None = None) -> ToyworldDiscriminator:
    """The trained Toyworld discriminator in eval mode on ``device``.

    Its minibatch-stddev group size and whether it is semantic (sees the shipped Toyworld
    segmenter's leaf probabilities, which are then loaded and attached) are read from the
    training metadata beside the weights (``toyworld_gan.json``; absent = 0 and no).
    """
    path = weights_path(weights, path, WEIGHTS_DIR / DISCRIMINATOR_FILE)
    settings = _settings_beside(path)
    disc = ToyworldDiscriminator(mbstd_group=int(settings.get("mbstd_group", 0)),
                                 semantic=bool(settings.get("semantic_d", False)))
    _load_state(disc, path, "Toyworld discriminator")
    if disc.semantic:
        from segmenters.toyworld import load_weights as load_segmenter_net

        disc.attach_segmenter(load_segmenter_net(SEGMENTER_WEIGHTS))
    return disc.to(device).eval()


def _settings_beside(weights: Path) -> dict:
    """``settings`` of the training metadata next to ``weights`` ({} when there is none)."""
    meta_path = weights.parent / METADATA_FILE
    if not meta_path.is_file():
        return {}
    settings = load_metadata(meta_path).get("settings", {})
    return settings if isinstance(settings, dict) else {}


def load_metadata(path: str | Path | None = None) -> dict:
    """The training metadata shipped beside the weights (seed, iterations, settings, time)."""
    p = Path(path) if path is not None else WEIGHTS_DIR / METADATA_FILE
    with open(p) as f:
        data: dict = json.load(f)
    return data


__all__ = ["G_LAYERS", "UPSAMPLE_MODES", "ToyworldDiscriminator", "ToyworldGenerator",
           "load_discriminator", "load_generator", "load_metadata"]
