"""The bundled Toyworld scene classifier: a small CNN that tells the six Toyworld scene types apart.

Layers (each a hookable module whose output is a post-ReLU feature map ``[n, units, h, w]``,
for 64×64 input):

=====  =====  =====  ==============================================
layer  units  size   op
=====  =====  =====  ==============================================
conv1  32     64x64  conv 3x3 + BN + ReLU
conv2  64     32x32  max-pool 2, conv 3x3 + BN + ReLU
conv3  128    16x16  max-pool 2, conv 3x3 + BN + ReLU
conv4  128    8x8    max-pool 2, conv 3x3 + BN + ReLU
conv5  128    8x8    conv 3x3 + BN + ReLU
fc     6             global average pool, linear (the logits)
=====  =====  =====  ==============================================

Classes are :data:`models.toyworld.render.SCENE_TYPES` (village, forest, lake, road, mountains,
open_field), defined from scene content by :func:`models.toyworld.render.scene_type_of`. Input is
RGB in [0, 1] (a rendered scene ``s.image`` is in [-1, 1]: pass ``(s.image + 1) / 2``); the
normalisation to [-1, 1] happens inside. Because the head is a global average pool followed by
one linear layer, unit ``u`` of ``conv5`` adds ``fc.weight[c, u]`` times its mean activation to
class ``c``'s logit. Weights ship as float16 safetensors in ``models/weights/`` (trained by
``python -m models.classifiers.train``; see ``models/classifiers/TRAINING.md``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..base import check_device, weights_path
from ..safe_load import load_checkpoint, load_into
from ..toyworld.render import SCENE_TYPES
from .base import Classifier

#: Directory and names of the shipped weights.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
WEIGHTS_FILE = "toyworld_classifier.safetensors"
METADATA_FILE = "toyworld_classifier.json"

#: (name, input channels, output channels, max-pool before the conv) of each layer.
LAYERS: tuple[tuple[str, int, int, bool], ...] = (
    ("conv1", 3, 32, False),
    ("conv2", 32, 64, True),
    ("conv3", 64, 128, True),
    ("conv4", 128, 128, True),
    ("conv5", 128, 128, False),
)


class _ConvBlock(nn.Module):
    """Optional 2x2 max-pool, then conv 3x3 (no bias) + BatchNorm + ReLU."""

    def __init__(self, cin: int, cout: int, pool: bool) -> None:
        super().__init__()
        self.pool = pool
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool:
            x = F.max_pool2d(x, 2)
        return F.relu(self.bn(self.conv(x)))


class ToyworldClassifier(Classifier):
    """Scene classifier for 64×64 Toyworld scenes (see the module docstring for its layers)."""

    def __init__(self) -> None:
        super().__init__(SCENE_TYPES, 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        for name, cin, cout, pool in LAYERS:
            self.add_module(name, _ConvBlock(cin, cout, pool))
        self.fc = nn.Linear(LAYERS[-1][2], len(self.classes))

    @property
    def layer_names(self) -> list[str]:
        return [name for name, *_ in LAYERS]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return self.fc(x.mean(dim=(2, 3)))


def load_toyworld_classifier(path: str | Path | None = None, device: str = "cpu",
                             weights: str | Path | None = None) -> ToyworldClassifier:
    """The bundled classifier (``path``/``weights``: another safetensors file of the same
    architecture, or a folder holding ``toyworld_classifier.safetensors``), float32, in eval
    mode on ``device``. Keys, shapes and finiteness are checked before loading."""
    dev = check_device(device)
    file = weights_path(weights, path, WEIGHTS_DIR / WEIGHTS_FILE)
    net = ToyworldClassifier()
    state = load_checkpoint(file)
    load_into(net, state, "the Toyworld scene classifier", path=file,
              hint="retrain it with `python -m models.classifiers.train --export` or use the "
                   "shipped models/weights/toyworld_classifier.safetensors")
    return net.to(dev).eval()


__all__ = ["LAYERS", "ToyworldClassifier", "load_toyworld_classifier"]
