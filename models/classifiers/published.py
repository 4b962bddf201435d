"""Published classifier architectures, with torchvision's exact parameter names.

ResNet-18, ResNet-50, VGG-16 and AlexNet are written here (torchvision cannot be imported with
the CPU torch wheel this project uses) so that torchvision state dicts, and the CSAIL Places365
release's PyTorch checkpoints, load without renaming: every key and shape equals torchvision's
(``tests/models/test_classifiers.py`` lists them all). BatchNorm's ``num_batches_tracked`` may be
absent (checkpoints saved before PyTorch 0.4.1 lack it). Input is RGB in [0, 1]; every model
normalises with the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), as the
Places365 models were trained too. ReLUs are not in-place, so a hook sees each layer's own output.

Hookable layers (outputs ``[n, units, h, w]``; sizes for 224×224 input):

- ResNets: ``conv1`` (64, 112×112; the raw convolution, before BN), ``layer1`` .. ``layer4``
  (ResNet-18: 64, 128, 256, 512 units; ResNet-50: 256, 512, 1024, 2048; 56 .. 7 px).
- VGG-16: the ReLU after each convolution, by torchvision index (``features.1`` .. ``features.29``),
  aliases ``conv1_1`` .. ``conv5_3`` (``features.29`` = ``conv5_3``: 512 units, 14×14).
- AlexNet: ``features.1, features.4, features.7, features.9, features.11``, aliases
  ``conv1`` .. ``conv5`` (64, 192, 384, 256, 256 units; 55, 27, 13, 13, 13 px).

Places365 (http://places2.csail.mit.edu/models_places365/): ``resnet18_places365.pth.tar``,
``resnet50_places365.pth.tar`` and ``alexnet_places365.pth.tar`` hold ``{"state_dict": ...,
"arch", "epoch", "best_prec1"}``, saved by Python 2.7 / PyTorch 0.2. ResNet keys start with
``module.`` (DataParallel); AlexNet's have ``features.module.`` (only its ``features`` was
wrapped). Both are undone on load, and Python 2 strings are read as latin-1 (still
``weights_only``). The release has no PyTorch VGG-16 (only Caffe): ``places365-vgg16`` reads the
PyTorch conversion of the PNAS 2020 code (``vgg16_places365-0bafbc55.pth`` from
https://dissect.csail.mit.edu/models/, layers named ``conv1_1`` .. ``conv5_3`` and ``fc6, fc7,
fc8a``), renamed to torchvision's indices; a torchvision-named VGG-16 state dict works too.
Not supported (different architectures): the PNAS code's Caffe-style AlexNet with grouped
convolutions and LRN (``alexnet_places365-92864cf6.pth``), NetDissect-Lite's
``wideresnet18_places365``, DenseNet-161, and the Torch7 ``.t7`` / Caffe ``.caffemodel`` files.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..safe_load import CheckpointError, UnsafeCheckpointError, load_checkpoint
from .base import Classifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- ResNet ------------------------------------------------------------------------------------

def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (ResNet-18/34); stride on the first."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision), 1x1 expand x4, with a shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, planes, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(Classifier):
    """torchvision's ResNet (``depth`` 18 or 50), ``num_classes`` outputs."""

    def __init__(self, depth: int = 18, num_classes: int = 1000,
                 classes: Sequence[str] | None = None) -> None:
        blocks: dict[int, tuple[type[_BasicBlock] | type[_Bottleneck], tuple[int, ...]]] = {
            18: (_BasicBlock, (2, 2, 2, 2)), 50: (_Bottleneck, (3, 4, 6, 3))}
        if depth not in blocks:
            raise ValueError(f"ResNet depth must be one of {sorted(blocks)}, got {depth}")
        super().__init__(_class_names(classes, num_classes), 224, IMAGENET_MEAN, IMAGENET_STD)
        block, counts = blocks[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
            stride = 1 if i == 0 else 2
            layers: list[nn.Module] = []
            for j in range(n):
                s = stride if j == 0 else 1
                down = None
                if j == 0 and (s != 1 or cin != planes * block.expansion):
                    down = nn.Sequential(_conv(cin, planes * block.expansion, 1, s),
                                         nn.BatchNorm2d(planes * block.expansion))
                layers.append(block(cin, planes, s, down))
                cin = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    @property
    def layer_names(self) -> list[str]:
        return ["conv1", "layer1", "layer2", "layer3", "layer4"]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- VGG-16 and AlexNet ------------------------------------------------------------------------

#: VGG-16 (configuration D): output channels per conv, "M" for a 2x2 max-pool.
VGG16_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512, "M")


def _vgg_features() -> tuple[nn.Sequential, dict[str, str]]:
    """torchvision's VGG-16 ``features``, and aliases ``convB_K`` -> ``features.<its ReLU>``."""
    layers: list[nn.Module] = []
    aliases: dict[str, str] = {}
    cin, block, k = 3, 1, 1
    for v in VGG16_CONFIG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            block, k = block + 1, 1
            continue
        assert isinstance(v, int)
        layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
        aliases[f"conv{block}_{k}"] = f"features.{len(layers) - 1}"
        cin, k = v, k + 1
    return nn.Sequential(*layers), aliases


class VGG16(Classifier):
    """torchvision's VGG-16 (no batch norm), ``num_classes`` outputs."""

    def __init__(self, num_classes: int = 1000, classes: Sequence[str] | None = None) -> None:
        super().__init__(_class_names(classes, num_classes), 224, IMAGENET_MEAN, IMAGENET_STD)
        self.features, self._aliases = _vgg_features()
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, num_classes))

    @property
    def layer_names(self) -> list[str]:
        return list(self._aliases.values())

    @property
    def layer_aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class AlexNet(Classifier):
    """torchvision's AlexNet (the "one weird trick" variant: 64-192-384-256-256 channels)."""

    def __init__(self, num_classes: int = 1000, classes: Sequence[str] | None = None) -> None:
        super().__init__(_class_names(classes, num_classes), 224, IMAGENET_MEAN, IMAGENET_STD)
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, num_classes))

    @property
    def layer_names(self) -> list[str]:
        return ["features.1", "features.4", "features.7", "features.9", "features.11"]

    @property
    def layer_aliases(self) -> dict[str, str]:
        return {f"conv{i + 1}": name for i, name in enumerate(self.layer_names)}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _class_names(classes: Sequence[str] | None, n: int) -> list[str]:
    if classes is None:
        return [f"class_{i}" for i in range(n)]
    if len(classes) != n:
        raise ValueError(f"expected {n} class names, got {len(classes)}")
    return list(classes)


# --- reading published checkpoints -------------------------------------------------------------

def _pnas_vgg_names() -> dict[str, str]:
    """The PNAS 2020 code's VGG-16 module names -> torchvision's (``features.conv5_3`` ->
    ``features.28``, ``classifier.fc8a`` -> ``classifier.6``)."""
    _, aliases = _vgg_features()
    names = {f"features.{alias}": f"features.{int(relu.split('.')[1]) - 1}"  # conv before ReLU
             for alias, relu in aliases.items()}
    names.update({"classifier.fc6": "classifier.0", "classifier.fc7": "classifier.3",
                  "classifier.fc8a": "classifier.6", "classifier.fc8": "classifier.6"})
    return names


def torchvision_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the published variants of torchvision's names undone: a leading
    ``module.`` (DataParallel), ``features.module.`` (Places365 AlexNet/VGG, whose ``features``
    alone was wrapped) and the PNAS code's VGG-16 names (``features.conv1_1``, ``classifier.fc6``).
    Other keys are kept as they are (so :func:`~models.safe_load.load_into` reports them)."""
    pnas = _pnas_vgg_names()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key[len("module."):] if key.startswith("module.") else key
        k = k.replace("features.module.", "features.", 1) if k.startswith("features.module.") \
            else k
        head, _, leaf = k.rpartition(".")
        out[f"{pnas[head]}.{leaf}" if head in pnas else k] = value
    return out


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> Any:
    """The object in ``path``, loaded safely (see :mod:`models.safe_load`). A Python 2 pickle
    (the Places365 ``.pth.tar`` files) whose byte strings are not UTF-8 is read again with
    latin-1 strings, still without running code unless ``trust_pickle``."""
    try:
        return load_checkpoint(path, trust_pickle=trust_pickle)
    except CheckpointError as exc:
        if isinstance(exc, UnsafeCheckpointError) or not isinstance(exc.__cause__,
                                                                    UnicodeDecodeError):
            raise
    try:
        with warnings.catch_warnings():  # torch warns that encoding needs weights_only=False,
            # but its weights-only unpickler does apply it (tests/models/test_classifiers.py)
            warnings.filterwarnings("ignore", message="pickle_load_args only works")
            return torch.load(path, map_location="cpu", weights_only=True, encoding="latin1")
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"checkpoint {str(path)!r} (a Python 2 pickle) contains pickled Python objects "
                "whose loading can execute arbitrary code, so it was refused; pass "
                "trust_pickle=True (CLI: --trust-pickle) only if you trust its source") from exc
        warnings.warn(f"loading {str(path)!r} with full pickle (trust_pickle=True)", UserWarning,
                      stacklevel=2)
        return torch.load(path, map_location="cpu", weights_only=False, encoding="latin1")
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a corrupt file
        raise CheckpointError(f"cannot read checkpoint {str(path)!r} (a Python 2 pickle?): "
                              f"{exc}") from exc


__all__ = ["AlexNet", "IMAGENET_MEAN", "IMAGENET_STD", "ResNet", "VGG16", "read_checkpoint",
           "torchvision_names"]
