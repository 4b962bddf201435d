"""Unified Perceptual Parsing segmenter (UPerNet on a ResNet-50), as GAN Dissection used it.

Layout of CSAILVision/unifiedparsing's ``upp-resnet50-upernet`` files (the ones GAN Dissection
downloads to ``upp-resnet50-upernet/``): ``encoder_epoch_40.pth`` holds the encoder
state_dict (deep-stem ResNet: ``conv1``/``bn1`` 3->64 stride 2, ``conv2``/``bn2`` 64->64,
``conv3``/``bn3`` 64->128, max-pool, ``layer1..layer4`` Bottlenecks with 3/4/6/3 blocks,
``conv1..conv3``, ``bn1..bn3``, ``downsample.0/1``), ``decoder_epoch_40.pth`` the UPerNet
decoder (``ppm_conv.i.{0,1}``, ``ppm_last_conv.{0,1}``, ``fpn_in.i.{0,1}``, ``fpn_out.i.0.{0,1}``,
``conv_fusion.{0,1}``, ``scene_head.{0.0,0.1,2}``, ``object_head.{0.0,0.1,1}``, ``part_head``,
``material_head`` likewise), ``labels.json`` the label lists (``object``, ``material``,
``scene``, ``part``, ``object_part``: owner -> its part names, in part-head channel order
over the owners sorted by object index). Widths and block counts are read from the shapes.

Segmentation (GAN Dissection's ``UnifiedParsingSegmenter``): images in [-1, 1] go to 0..255,
BGR, minus the Caffe means (``normalization="caffe_bgr"``, what this checkpoint was fed;
``"imagenet"`` = RGB ImageNet mean/std on 0..1), are average-pooled to each of ``sizes``, and
the softmax predictions (bilinearly resized to the output size) are summed over sizes. Per
pixel: the object argmax, the material argmax (index 0 = none, no label), and for every owner
object with parts (or only ``part_objects``), the part argmax where that object won. A part
named like an object counts as that object (GAN Dissection merges e.g. ``door``). Channels:
objects, materials, parts; a name used by two categories gets a ``-material`` / ``-part``
suffix. The pyramid pooling module pools with PrRoIPool over the whole map, as GAN Dissection
and unifiedparsing do (:mod:`segmenters.prroi_pool`, exact, in plain torch; it is *not* average
pooling: bins reaching past the last feature cell blend with zeros, so an 8x8 map of ones pools
to ~0.88); ``ppm_pooling="average"`` selects adaptive average pooling instead (the
semantic-segmentation-pytorch variant). The scene head is loaded but not run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.safe_load import CheckpointError, load_checkpoint, load_into, unwrap_state_dict

from .base import Segmenter
from .prroi_pool import prroi_pool_whole

CAFFE_BGR_MEAN = (102.9801, 115.9465, 122.7717)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("caffe_bgr", "imagenet")
#: Pyramid pooling: the reference's PrRoIPool, or adaptive average pooling.
PPM_POOLINGS = ("prroi", "average")


def _cbr(c_in: int, c_out: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    """conv (no bias) -> batch norm -> ReLU, keys ``0.weight`` and ``1.*``."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3), expansion 4."""

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetEncoder(nn.Module):
    """Deep-stem ResNet returning the four stage outputs (strides 4, 8, 16, 32)."""

    def __init__(self, stem: int = 64, blocks: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem)
        self.conv2, self.bn2 = nn.Conv2d(stem, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem)
        self.conv3 = nn.Conv2d(stem, 2 * stem, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * stem)
        c_in = 2 * stem
        self.widths: list[int] = []
        for i, n in enumerate(blocks):
            planes = stem * 2 ** i
            layer = [Bottleneck(c_in if j == 0 else planes * 4, planes,
                                2 if (i > 0 and j == 0) else 1) for j in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            c_in = planes * 4
            self.widths.append(c_in)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 3, 2, 1)
        feats = []
        for i in range(1, 5):
            x = self.get_submodule(f"layer{i}")(x)
            feats.append(x)
        return feats


class UPerNetDecoder(nn.Module):
    """PPM on the last stage + FPN; object/part heads on the fused map, material on P2.
    ``forward`` returns raw logits ``{"object", "part", "material"}`` at stride 4."""

    def __init__(self, widths: Sequence[int], n_object: int, n_part: int, n_material: int,
                 n_scene: int, fpn_dim: int = 512, ppm_dim: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        #: ``"prroi"`` (the reference's PrRoIPool) or ``"average"`` (adaptive average pooling).
        self.ppm_pooling = "prroi"
        fc = widths[-1]
        self.ppm_conv = nn.ModuleList(_cbr(fc, ppm_dim, 1) for _ in pool_scales)
        self.ppm_last_conv = _cbr(fc + len(pool_scales) * ppm_dim, fpn_dim)
        self.fpn_in = nn.ModuleList(_cbr(w, fpn_dim, 1) for w in widths[:-1])
        self.fpn_out = nn.ModuleList(nn.Sequential(_cbr(fpn_dim, fpn_dim))
                                     for _ in widths[:-1])
        self.conv_fusion = _cbr(len(widths) * fpn_dim, fpn_dim)
        self.scene_head = nn.Sequential(_cbr(fpn_dim, fpn_dim), nn.AdaptiveAvgPool2d(1),
                                        nn.Conv2d(fpn_dim, n_scene, 1))
        self.object_head = nn.Sequential(_cbr(fpn_dim, fpn_dim), nn.Conv2d(fpn_dim, n_object, 1))
        self.part_head = nn.Sequential(_cbr(fpn_dim, fpn_dim), nn.Conv2d(fpn_dim, n_part, 1))
        self.material_head = nn.Sequential(_cbr(fpn_dim, fpn_dim),
                                           nn.Conv2d(fpn_dim, n_material, 1))

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        c5 = feats[-1]
        size = c5.shape[2:]
        pool = ((lambda x, s: prroi_pool_whole(x, s, s)) if self.ppm_pooling == "prroi"
                else F.adaptive_avg_pool2d)
        ppm = [c5] + [conv(F.interpolate(pool(c5, s), size, mode="bilinear",
                                         align_corners=False))
                      for s, conv in zip(self.pool_scales, self.ppm_conv, strict=True)]
        f = self.ppm_last_conv(torch.cat(ppm, 1))
        pyramid = [f]
        for i in reversed(range(len(feats) - 1)):
            lateral = self.fpn_in[i](feats[i])
            f = lateral + F.interpolate(f, lateral.shape[2:], mode="bilinear",
                                        align_corners=False)
            pyramid.append(self.fpn_out[i](f))
        pyramid.reverse()
        p2 = pyramid[0]
        fused = torch.cat([p2] + [F.interpolate(p, p2.shape[2:], mode="bilinear",
                                                align_corners=False) for p in pyramid[1:]], 1)
        x = self.conv_fusion(fused)
        return {"object": self.object_head(x), "part": self.part_head(x),
                "material": self.material_head(p2)}


class UPerNet(nn.Module):
    """``encoder`` + ``decoder``; state_dicts are the two checkpoint files' contents."""

    def __init__(self, n_object: int, n_part: int, n_material: int, n_scene: int,
                 stem: int = 64, blocks: Sequence[int] = (3, 4, 6, 3), fpn_dim: int = 512,
                 ppm_dim: int = 512, pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(stem, blocks)
        self.decoder = UPerNetDecoder(self.encoder.widths, n_object, n_part, n_material,
                                      n_scene, fpn_dim, ppm_dim, pool_scales)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.decoder(self.encoder(x))

    @classmethod
    def empty(cls, *args: Any, **kwargs: Any) -> UPerNet:
        """Build without touching any RNG (meta device), then allocate uninitialised on CPU."""
        with torch.device("meta"):
            model = cls(*args, **kwargs)
        return model.to_empty(device="cpu")

    @torch.no_grad()
    def init_weights_(self, seed: int) -> UPerNet:
        """He-normal convs, unit BN from a local generator (for tests and demos)."""
        g = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
        return self


def _check_labeldata(labeldata: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("object", "material", "object_part"):
        if key not in labeldata:
            raise ValueError(f"labels.json lacks {key!r}; it needs 'object', 'material', "
                             "'object_part' (and 'scene' to size the scene head)")
    objects = list(labeldata["object"])
    parts = labeldata["object_part"]
    if not isinstance(parts, Mapping):
        raise ValueError("labels.json 'object_part' must map object names to part-name lists")
    unknown = [k for k in parts if k not in objects]
    if unknown:
        raise ValueError(f"labels.json object_part owners {unknown[:5]} are not in 'object'")
    return {"object": objects, "material": list(labeldata["material"]),
            "scene": list(labeldata.get("scene", [])),
            "object_part": {k: list(v) for k, v in parts.items()}}


class UPerNetSegmenter(Segmenter):
    """Multi-label object / part / material segmenter over a :class:`UPerNet` (see module doc).

    ``sizes``: square input sizes whose predictions are summed (GAN Dissection: ``(256,)``);
    ``part_objects``: owners whose parts are predicted (None = all; GAN Dissection used
    ``("sky", "building", "person")``; parts only excluded owners have are not labels);
    ``downsample``: output size is the input's // this; ``ppm_pooling``: ``"prroi"`` (the
    reference's PrRoIPool, default) or ``"average"``.
    """

    def __init__(self, model: UPerNet, labeldata: Mapping[str, Any],
                 device: str | torch.device = "cpu", batch_size: int = 16,
                 sizes: Sequence[int] = (256,), part_objects: Sequence[str] | None = None,
                 normalization: str = "caffe_bgr", downsample: int = 1,
                 ppm_pooling: str = "prroi") -> None:
        super().__init__(device, batch_size)
        if ppm_pooling not in PPM_POOLINGS:
            raise ValueError(f"ppm_pooling must be one of {PPM_POOLINGS}, got {ppm_pooling!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got "
                             f"{normalization!r}")
        if not sizes or any(int(s) < 32 for s in sizes) or int(downsample) < 1:
            raise ValueError(f"sizes must be non-empty with entries >= 32 and downsample >= 1; "
                             f"got {list(sizes)}, {downsample}")
        lab = _check_labeldata(labeldata)
        self.model = model.eval().to(self.device)
        self.model.decoder.ppm_pooling = ppm_pooling
        self.sizes, self.normalization = [int(s) for s in sizes], normalization
        self.downsample = int(downsample)
        objects, materials = lab["object"], lab["material"]
        obj_num = {name: i for i, name in enumerate(objects)}
        # part-head channel order: owners sorted by object index (upstream object_with_part)
        owners = sorted(lab["object_part"], key=lambda name: obj_num[name])
        self._part_counts = [len(lab["object_part"][o]) for o in owners]
        n_part = sum(self._part_counts)
        head = self.model.decoder
        counts = {"object": (head.object_head[1], len(objects)),
                  "material": (head.material_head[1], len(materials)),
                  "part": (head.part_head[1], n_part)}
        for what, (conv, n) in counts.items():
            if not isinstance(conv, nn.Conv2d) or conv.out_channels != n:
                got = conv.out_channels if isinstance(conv, nn.Conv2d) else "?"
                raise ValueError(f"{what} head has {got} channels but labels.json gives {n} "
                                 f"{what} classes; labels.json and weights do not match")
        if part_objects is not None:
            bad = [o for o in part_objects if o not in lab["object_part"]]
            if bad:
                raise ValueError(f"part_objects {bad} have no parts; objects with parts: "
                                 f"{', '.join(owners)}")
        labels = [str(o) for o in objects[1:]]
        cats = ["object"] * len(labels)
        self._mat_offset = len(labels)
        for m in materials[1:]:
            labels.append(f"{m}-material" if m in labels else str(m))
            cats.append("material")
        part_channel: dict[str, int] = {}
        self._owners: list[tuple[int, int, int, torch.Tensor]] = []  # obj, start, n, map
        start = 0
        for owner in owners:
            names = lab["object_part"][owner]
            if part_objects is not None and owner not in part_objects:
                start += len(names)  # never predicted: its parts get no label channel
                continue
            mapping = []
            for p in names:
                if p in ("-", "") or p is None:
                    mapping.append(-1)
                elif p in obj_num and obj_num[p] > 0:
                    mapping.append(obj_num[p] - 1)  # merged into the object channel
                else:
                    if p not in part_channel:
                        part_channel[p] = len(labels)
                        labels.append(f"{p}-part" if p in labels else str(p))
                        cats.append("part")
                    mapping.append(part_channel[p])
            self._owners.append((obj_num[owner], start, len(names), torch.tensor(mapping)))
            start += len(names)
        self.labels, self.categories = labels, cats

    def to(self, device: str | torch.device) -> UPerNetSegmenter:
        super().to(device)
        self.model.to(self.device)
        return self

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.downsample, width // self.downsample

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = (images + 1) / 2
        if self.normalization == "caffe_bgr":
            mean = torch.tensor(CAFFE_BGR_MEAN, device=x.device, dtype=x.dtype)
            return torch.flip(x * 255, (1,)) - mean[None, :, None, None]
        mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype)
        std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype)
        return (x - mean[None, :, None, None]) / std[None, :, None, None]

    def probabilities(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Summed-over-sizes softmax maps: ``object`` [N, O, H', W'], ``material``, and
        ``part`` (softmax within each owner's slice, all owners concatenated)."""
        x = self._normalize(images)
        out_hw = self.output_size(x.shape[2], x.shape[3])
        total: dict[str, torch.Tensor] = {}
        for s in self.sizes:
            inp = x if tuple(x.shape[2:]) == (s, s) else F.adaptive_avg_pool2d(x, (s, s))
            logits = self.model(inp)
            probs = {k: F.interpolate(v, out_hw, mode="bilinear", align_corners=False)
                     for k, v in logits.items()}
            probs["object"] = probs["object"].softmax(1)
            probs["material"] = probs["material"].softmax(1)
            part, start = probs["part"], 0
            pieces = []
            for n in self._part_counts:
                pieces.append(part[:, start:start + n].softmax(1))
                start += n
            probs["part"] = torch.cat(pieces, 1) if pieces else part
            for k, v in probs.items():
                total[k] = total[k] + v if k in total else v
        return total

    def _segment_batch(self, images: torch.Tensor) -> torch.Tensor:
        p = self.probabilities(images)
        obj = p["object"].argmax(1)
        mat = p["material"].argmax(1)
        n, h, w = obj.shape
        out = torch.zeros(n, len(self.labels), h, w, dtype=torch.bool, device=obj.device)
        out[:, : self._mat_offset] = F.one_hot(obj, self._mat_offset + 1)[..., 1:].permute(
            0, 3, 1, 2).bool()
        n_mat = p["material"].shape[1]
        out[:, self._mat_offset: self._mat_offset + n_mat - 1] = F.one_hot(
            mat, n_mat)[..., 1:].permute(0, 3, 1, 2).bool()
        for obj_index, start, count, mapping in self._owners:
            local = p["part"][:, start:start + count].argmax(1)
            channel = mapping.to(local.device)[local]
            keep = (obj == obj_index) & (channel >= 0)
            idx = keep.nonzero(as_tuple=True)
            out[idx[0], channel[idx], idx[1], idx[2]] = True
        return out


def _pick_epoch(folder: Path, epoch: int | None) -> int:
    if epoch is not None:
        return epoch
    found = [int(m.group(1)) for f in folder.glob("encoder_epoch_*.pth")
             if (m := re.fullmatch(r"encoder_epoch_(\d+)\.pth", f.name))]
    if not found:
        raise FileNotFoundError(f"no encoder_epoch_N.pth in {str(folder)!r}; expected the "
                                "upp-resnet50-upernet files (encoder_epoch_40.pth, "
                                "decoder_epoch_40.pth, labels.json)")
    return max(found)


def _count(sd: Mapping[str, torch.Tensor], fmt: str) -> int:
    n = 0
    while any(k.startswith(fmt.format(n)) for k in sd):
        n += 1
    return n


def from_state_dicts(encoder: Mapping[str, torch.Tensor], decoder: Mapping[str, torch.Tensor],
                     labeldata: Mapping[str, Any]) -> UPerNet:
    """A :class:`UPerNet` with widths, block counts and class counts read from the two
    state dicts; keys and shapes are checked (``num_batches_tracked`` is optional)."""
    lab = _check_labeldata(labeldata)
    for sd, key, what in ((encoder, "conv1.weight", "encoder"),
                          (decoder, "ppm_last_conv.0.weight", "decoder")):
        if key not in sd:
            raise CheckpointError(f"not a unifiedparsing UPerNet {what} state_dict: missing "
                                  f"{key}; keys start with {sorted(sd)[:5]}")
    blocks = [_count(encoder, f"layer{i}.{{}}.") for i in range(1, 5)]
    if min(blocks) == 0:
        raise CheckpointError(f"encoder has block counts {blocks} for layer1..layer4")
    n_part = sum(len(v) for v in lab["object_part"].values())
    n_scene = len(lab["scene"]) or (int(decoder["scene_head.2.weight"].shape[0])
                                    if "scene_head.2.weight" in decoder else 1)
    model = UPerNet.empty(
        len(lab["object"]), n_part, len(lab["material"]), n_scene,
        stem=int(encoder["conv1.weight"].shape[0]), blocks=blocks,
        fpn_dim=int(decoder["ppm_last_conv.0.weight"].shape[0]),
        ppm_dim=int(decoder["ppm_conv.0.0.weight"].shape[0]) if "ppm_conv.0.0.weight" in decoder
        else 512,
        pool_scales=(1, 2, 3, 6)[: max(_count(decoder, "ppm_conv.{}."), 1)])
    for part, sd in (("encoder", encoder), ("decoder", decoder)):
        module = model.get_submodule(part)
        tracked = [k for k in module.state_dict() if k.endswith("num_batches_tracked")]
        load_into(module, sd, f"UPerNet {part} (blocks {blocks})", optional=tracked)
    return model


def load_segmenter(device: str | torch.device = "cpu", path: str | Path | None = None,
                   epoch: int | None = None, trust_pickle: bool = False,
                   **kwargs: Any) -> UPerNetSegmenter:
    """The UPP segmenter from a folder ``path`` holding ``encoder_epoch_N.pth``,
    ``decoder_epoch_N.pth`` and ``labels.json`` (``epoch`` None = the highest N);
    ``kwargs`` go to :class:`UPerNetSegmenter` (``sizes``, ``part_objects``, ...)."""
    if path is None:
        raise ValueError("the upernet segmenter needs path= to a folder with encoder_epoch_N.pth, "
                         "decoder_epoch_N.pth and labels.json (GAN Dissection's "
                         "upp-resnet50-upernet download)")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder")
    ep = _pick_epoch(folder, epoch)
    try:
        labeldata = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"cannot read {str(folder / 'labels.json')!r}: {exc}") from exc
    enc = unwrap_state_dict(load_checkpoint(folder / f"encoder_epoch_{ep}.pth",
                                            trust_pickle=trust_pickle))
    dec = unwrap_state_dict(load_checkpoint(folder / f"decoder_epoch_{ep}.pth",
                                            trust_pickle=trust_pickle))
    try:
        model = from_state_dicts(enc, dec, labeldata)
    except CheckpointError as exc:
        raise CheckpointError(f"{str(folder)!r} (encoder_epoch_{ep}.pth, decoder_epoch_{ep}.pth, "
                              f"labels.json): {exc}") from None
    return UPerNetSegmenter(model, labeldata, device=device, **kwargs)


__all__ = ["NORMALIZATIONS", "PPM_POOLINGS", "UPerNet", "UPerNetSegmenter", "from_state_dicts",
           "load_segmenter"]
