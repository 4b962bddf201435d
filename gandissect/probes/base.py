"""The probe-set contract: index-addressable images with multi-label ground-truth masks.

A probe set is a fixed, ordered list of samples. Sample ``i`` depends only on the probe set's
parameters and ``i``, never on how it is batched, so ``images(0, 4)[2]`` equals
``images(2, 1)[0]``. The dissection engine duck-types this contract (it does not import this
module); subclasses only need :meth:`ProbeSet.describe`, :meth:`ProbeSet._images` and
:meth:`ProbeSet._masks`.

>>> import torch
>>> class Ones(ProbeSet):
...     labels, categories = ["all"], ["scene"]
...     image_size = mask_size = (2, 2)
...     def __len__(self): return 3
...     def describe(self): return {"name": "ones", "size": 3, "labels": 1}
...     def _images(self, start, n): return torch.ones(n, 3, 2, 2)
...     def _masks(self, start, n): return torch.ones(n, 1, 2, 2, dtype=torch.bool)
>>> Ones().masks(1, 2).shape
torch.Size([2, 1, 2, 2])
>>> Ones().images(2, 2)
Traceback (most recent call last):
...
IndexError: samples 2..3 requested from a probe set of 3 samples (valid: 0..2)
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from typing import Any

import torch

#: Categories whose labels apply to whole images in the Broden layout (the others are per pixel).
SCALAR_CATEGORIES: tuple[str, ...] = ("scene", "texture")


def check_range(start: Any, n: Any, length: int) -> tuple[int, int]:
    """``(start, n)`` as ints, checked: ``TypeError`` for non-integers (bools too),
    ``ValueError`` for ``n < 0``, ``IndexError`` when ``start .. start+n-1`` leaves ``0 ..
    length-1``. ``n == 0`` is valid for any ``0 <= start <= length``."""
    for name, v in (("start", start), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {type(v).__name__} {v!r}")
    start, n = int(start), int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if start < 0 or start + n > length:
        raise IndexError(f"samples {start}..{start + n - 1} requested from a probe set of "
                         f"{length} samples (valid: 0..{length - 1})")
    return start, n


class ProbeSet(ABC):
    """Images with exact concept masks, addressed by sample index.

    ``labels[c]`` names mask channel ``c``; ``categories[c]`` is its category (``"object"``,
    ``"part"``, ``"material"``, ``"color"``, ``"scene"``, ``"texture"``, ...). ``images(start,
    n)`` is float32 ``[n, 3, *image_size]``, RGB in [0, 1]; ``masks(start, n)`` is bool ``[n,
    len(labels), *mask_size]``, whole-image (scalar) labels as full masks. ``describe()`` is a
    JSON-able identity (name, size, source, label count) that changes whenever the content does.
    """

    labels: list[str]
    categories: list[str]
    image_size: tuple[int, int]
    mask_size: tuple[int, int]

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able identity: ``name``, ``size``, source (path or seed), ``labels`` (count)."""

    @abstractmethod
    def _images(self, start: int, n: int) -> torch.Tensor:
        """Images of samples ``start .. start+n-1`` (range already checked)."""

    @abstractmethod
    def _masks(self, start: int, n: int) -> torch.Tensor:
        """Masks of samples ``start .. start+n-1`` (range already checked)."""

    def images(self, start: int, n: int) -> torch.Tensor:
        """float32 ``[n, 3, H, W]`` RGB in [0, 1] of samples ``start .. start+n-1``."""
        start, n = check_range(start, n, len(self))
        return self._images(start, n)

    def masks(self, start: int, n: int) -> torch.Tensor:
        """bool ``[n, len(labels), h, w]`` of samples ``start .. start+n-1``."""
        start, n = check_range(start, n, len(self))
        return self._masks(start, n)

    def category_names(self) -> list[str]:
        """The distinct categories of :attr:`labels`, in order of first appearance."""
        return list(dict.fromkeys(self.categories))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} samples, {len(self.labels)} labels, "
                f"image {self.image_size[0]}x{self.image_size[1]}, "
                f"masks {self.mask_size[0]}x{self.mask_size[1]})")


__all__ = ["SCALAR_CATEGORIES", "ProbeSet", "check_range"]
