"""The bundled Toyworld segmenter: a compact U-Net that labels every pixel with one Toyworld leaf.

The network scores the 13 :data:`~models.toyworld.concepts.LEAVES` per pixel (a softmax over
leaves: every rendered pixel has exactly one leaf). Leaves become the 15 multi-label
:data:`~models.toyworld.concepts.CONCEPTS` through ``LEAF_CONCEPT_TABLE``, so object masks are
exactly the union of their parts (``tree == crown | trunk``).

Weights ship as ``segmenters/weights/toyworld.safetensors`` (safetensors only, never pickle);
they are produced by ``python -m segmenters.train_toyworld`` (see ``segmenters/TRAINING.md``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn

from models.base import weights_path
from models.safe_load import load_into
from models.toyworld.concepts import CATEGORIES, CONCEPTS, LEAF_CONCEPT_TABLE, LEAVES

from .base import Segmenter

#: Where the shipped weights live.
DEFAULT_WEIGHTS: Path = Path(__file__).resolve().parent / "weights" / "toyworld.safetensors"
#: Channel widths of the shipped network, one per resolution level (full, 1/2, 1/4, 1/8).
DEFAULT_WIDTHS: tuple[int, ...] = (16, 32, 64, 96)
#: ``format`` entry of the safetensors metadata, checked on load.
WEIGHTS_FORMAT = "gandissect-toyworld-segmenter-v1"
#: The command that regenerates the shipped weights.
TRAIN_COMMAND = ("python -m segmenters.train_toyworld --seed 0 "
                 "--out segmenters/weights/toyworld.safetensors")


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3×3 conv + BatchNorm + ReLU layers."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ToyworldUNet(nn.Module):
    """U-Net mapping images ``[N, 3, H, W]`` to leaf logits ``[N, 13, H, W]``.

    ``widths[k]`` channels at resolution ``1/2**k``; skip connections at every level, including
    full resolution (thin trunks and doors are two pixels wide). ``H`` and ``W`` must be
    divisible by :attr:`stride` ``= 2 ** (len(widths) - 1)``.
    """

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise ValueError(f"widths must list >= 2 positive channel counts, got {widths}")
        self.widths = tuple(int(w) for w in widths)
        self.stride = 2 ** (len(widths) - 1)
        self.down = nn.ModuleList(
            [_double_conv(3 if k == 0 else widths[k - 1], widths[k]) for k in range(len(widths))])
        self.up = nn.ModuleList(
            [_double_conv(widths[k + 1] + widths[k], widths[k]) for k in range(len(widths) - 1)])
        self.head = nn.Conv2d(widths[0], len(LEAVES), 1)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-initialise all weights from ``generator`` (never the global RNG)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu", generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.weight, std=0.01, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Leaf logits ``[N, 13, H, W]`` for images ``[N, 3, H, W]``."""
        skips = []
        for k, block in enumerate(self.down):
            if k:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for k in reversed(range(len(self.up))):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = self.up[k](torch.cat([x, skips[k]], dim=1))
        return self.head(x)


class ToyworldSegmenter(Segmenter):
    """Segments Toyworld images into the 15 multi-label Toyworld concepts.

    Contract: images ``[N, 3, H, W]`` in [-1, 1] with ``H`` and ``W`` divisible by
    :attr:`stride` (8 for the shipped net); ``segment`` returns bool ``[N, 15, H, W]`` masks in
    :data:`CONCEPTS` order, where each pixel carries the concepts of its most likely leaf.
    """

    def __init__(self, net: ToyworldUNet, device: str | torch.device = "cpu",
                 batch_size: int = 64) -> None:
        super().__init__(device=device, batch_size=batch_size)
        self.labels = list(CONCEPTS)
        self.categories = list(CATEGORIES)
        self.net = net.eval().to(self.device)
        self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._table = torch.from_numpy(LEAF_CONCEPT_TABLE).to(self.device)  # bool [13, 15]

    @property
    def stride(self) -> int:
        """Image height and width must be multiples of this."""
        return self.net.stride

    def to(self, device: str | torch.device) -> ToyworldSegmenter:
        """Move the network to ``device`` (in place); returns self."""
        super().to(device)
        self.net.to(self.device)
        self._table = self._table.to(self.device)
        return self

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """Base checks (float ``[N, 3, H, W]``, finite, in [-1, 1]) plus H, W % stride == 0."""
        images = super().check_images(images)
        h, w = images.shape[2], images.shape[3]
        if h % self.stride or w % self.stride or h == 0 or w == 0:
            raise ValueError(
                f"ToyworldSegmenter needs image height and width that are positive multiples of "
                f"{self.stride}, got {h}x{w}; resize or pad the images (Toyworld scenes are 64x64)")
        return images

    def leaf_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Leaf logits ``[N, 13, H, W]`` (differentiable) for validated images."""
        x = images.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        return self.net(x).contiguous()

    def concept_probs(self, images: torch.Tensor) -> torch.Tensor:
        """Soft concept probabilities ``float [N, 15, H, W]`` for images in [-1, 1].

        ``P(concept) = sum of P(leaf)`` over the leaves carrying it. Differentiable with respect
        to ``images`` and the network weights (no ``no_grad``); input is validated as in
        :meth:`segment` but not batched.
        """
        images = self.check_images(images)
        leaf_p = self.leaf_logits(images).softmax(dim=1)
        return torch.einsum("nlhw,lc->nchw", leaf_p, self._table.to(leaf_p.dtype))

    def _segment_batch(self, images: torch.Tensor) -> torch.Tensor:
        leaf = self.leaf_logits(images).argmax(dim=1)  # [N, H, W]
        return self._table[leaf].permute(0, 3, 1, 2).contiguous()  # [N, 15, H, W]


def save_weights(net: ToyworldUNet, path: str | Path, extra: dict[str, str] | None = None) -> None:
    """Write ``net``'s state dict to ``path`` as safetensors, with the metadata :func:`load_weights`
    checks (format, widths, leaves) plus ``extra`` string entries."""
    from safetensors.torch import save_file

    meta = {"format": WEIGHTS_FORMAT, "widths": ",".join(map(str, net.widths)),
            "leaves": ",".join(LEAVES), **(extra or {})}
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata=meta)


def load_weights(path: str | Path) -> ToyworldUNet:
    """Build a :class:`ToyworldUNet` from a safetensors file, verifying its format metadata and
    its tensors (keys, shapes, dtypes, finiteness: :func:`models.safe_load.load_into`).

    Raises FileNotFoundError if ``path`` is missing and ValueError if it is not a valid Toyworld
    segmenter file (:class:`~models.safe_load.CheckpointError`, a ValueError, when its tensors
    do not fit); all messages name the file and how to regenerate it.
    """
    path = Path(path)
    fix = f"re-run the training command `{TRAIN_COMMAND}` or pass weights=<path to a valid file>"
    if not path.is_file():
        raise FileNotFoundError(f"Toyworld segmenter weights not found at {path}; {fix}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}); {fix}") from e
    if meta.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a Toyworld segmenter weights file (metadata format "
                         f"{meta.get('format')!r}, expected {WEIGHTS_FORMAT!r}); {fix}")
    if meta.get("leaves") != ",".join(LEAVES):
        raise ValueError(f"{path} was trained for leaves {meta.get('leaves')!r}, but this version "
                         f"of Toyworld has {','.join(LEAVES)!r}; {fix}")
    try:
        widths = tuple(int(w) for w in meta["widths"].split(","))
        net = ToyworldUNet(widths)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path} has invalid 'widths' metadata {meta.get('widths')!r}; "
                         f"{fix}") from e
    load_into(net, state, f"the Toyworld segmenter U-Net (widths {widths})", path=path,
              hint=fix, exact_dtypes=True)
    return net


def load_segmenter(device: str | torch.device = "cpu", weights: str | Path | None = None,
                   batch_size: int = 64, path: str | Path | None = None) -> ToyworldSegmenter:
    """The Toyworld segmenter with the shipped weights (or ``weights``, or its synonym ``path``
    as ``--segmenter toyworld:PATH`` gives it; a folder means its ``toyworld.safetensors``),
    on ``device``."""
    net = load_weights(weights_path(weights, path, DEFAULT_WEIGHTS))
    return ToyworldSegmenter(net, device=device, batch_size=batch_size)


__all__ = ["DEFAULT_WEIGHTS", "ToyworldSegmenter", "ToyworldUNet", "load_segmenter",
           "load_weights", "save_weights"]
