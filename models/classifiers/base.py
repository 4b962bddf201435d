"""The Classifier protocol: what every image classifier adapter in gandissect provides.

A classifier takes float RGB images ``[n, 3, H, W]`` in [0, 1], normalises them itself (its own
per-channel ``mean`` / ``std``) and returns logits ``[n, len(classes)]``. Its hookable layers are
named submodules, listed shallow to deep in :attr:`Classifier.layer_names`; each outputs a
feature map ``[n, units, h, w]``, which is what dissection reads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from models.base import module_device


class Classifier(nn.Module, ABC):
    """An image classifier behind one interface.

    Contract: ``forward(x)`` takes ``x`` float ``[n, 3, H, W]`` in [0, 1] (any ``H, W`` the
    architecture accepts; :attr:`input_size` is the nominal side) and returns logits
    ``[n, len(classes)]``; the normalisation ``(x - mean) / std`` happens inside. Input of the
    wrong rank or channel count, or holding NaN/inf, raises a ValueError. ``layer(name)`` is the
    submodule whose output ``[n, units, h, w]`` a hook reads; a wrong name raises a ValueError
    listing :attr:`layer_names`.
    """

    #: Class names, in logit order.
    classes: list[str]
    #: Nominal input side in pixels (the resolution it was trained at).
    input_size: int
    #: Per-channel normalisation applied inside :meth:`forward`.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    _mean: torch.Tensor
    _std: torch.Tensor

    def __init__(self, classes: Sequence[str], input_size: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(classes) < 1:
            raise ValueError("a classifier needs at least one class")
        if len(set(classes)) != len(classes):
            raise ValueError("class names must be distinct")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got {mean}, {std}")
        self.classes = [str(c) for c in classes]
        self.input_size = int(input_size)
        self.mean = (float(mean[0]), float(mean[1]), float(mean[2]))
        self.std = (float(std[0]), float(std[1]), float(std[2]))
        # buffers (not saved in state dicts) so they follow .to(device)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, len(classes)]`` for images ``x`` ``[n, 3, H, W]`` in [0, 1]."""
        x = self.check_images(x)
        return self.logits((x - self._mean) / self._std)

    @abstractmethod
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for already normalised images (subclasses implement the network here)."""

    @property
    @abstractmethod
    def layer_names(self) -> list[str]:
        """Names of the hookable layers, shallow to deep."""

    @property
    def layer_aliases(self) -> dict[str, str]:
        """Other names :meth:`layer` accepts (e.g. ``conv5_3``), mapped to a layer name."""
        return {}

    def layer(self, name: str) -> nn.Module:
        """The submodule called ``name`` (a layer name or an alias); a wrong name raises a
        ValueError listing valid ones."""
        target = self.layer_aliases.get(name, name)
        if target not in self.layer_names:
            aliases = self.layer_aliases
            more = f"; aliases: {', '.join(aliases)}" if aliases else ""
            raise ValueError(f"unknown layer {name!r} for {type(self).__name__}; "
                             f"valid layers: {', '.join(self.layer_names)}{more}")
        return self.get_submodule(target)

    @property
    def device(self) -> torch.device:
        return module_device(self)

    def check_images(self, x: torch.Tensor) -> torch.Tensor:
        """Validate an image batch (rank, channels, dtype, finiteness); on :attr:`device`."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects RGB images [n, 3, H, W] in [0, 1], "
                             f"got shape {list(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], got {x.dtype} (divide "
                             "uint8 images by 255)")
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or inf values")
        return x.to(self.device, self._mean.dtype)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted class indices ``[n]`` (argmax of the logits), without gradients."""
        with torch.no_grad():
            return self(x).argmax(dim=1)


def read_classes(classes: Sequence[str] | str | Path | None, n: int) -> list[str]:
    """``n`` class names: ``classes`` as a list, or a text file with one class per line (the
    first word of each non-empty line; a Places365 ``categories_places365.txt`` line
    ``/a/airfield 0`` gives ``airfield``-style names with the leading ``/x/`` removed), or
    ``class_0 .. class_{n-1}`` when None. A count other than ``n`` raises a ValueError.

    >>> read_classes(None, 3)
    ['class_0', 'class_1', 'class_2']
    """
    if classes is None:
        return [f"class_{i}" for i in range(n)]
    if isinstance(classes, (str, Path)):
        path = Path(classes)
        if not path.is_file():
            raise ValueError(f"class list {str(path)!r} does not exist (one class per line)")
        names = []
        for line in path.read_text().splitlines():
            if line.strip():
                word = line.split()[0]
                names.append(word[3:] if word[:1] == "/" and word[2:3] == "/" else word)
    else:
        names = [str(c) for c in classes]
    if len(names) != n:
        raise ValueError(f"expected {n} class names, got {len(names)}")
    return names


__all__ = ["Classifier", "read_classes"]
