"""Token sequences of the bracket language as a probe set: sequence ``i`` is a ``1 x T``
"image" whose masks are the language's exact token annotations.

The dissection engine reads it like any probe set (see :mod:`gandissect.dissection.probe`):
``inputs(start, n)`` gives token ids ``[n, T]`` for the model, whose layers output ``[n, units,
1, T]``; ``masks(start, n)`` gives ``[n, len(labels), 1, T]``. Layer and mask sizes are equal,
so the engine's upsampling is the identity and every statistic is over token positions.

>>> probe = SequenceProbe(size=4, length=8)
>>> tuple(probe.inputs(0, 2).shape), tuple(probe.masks(0, 2).shape)
((2, 8), (2, 20, 1, 8))
>>> bool((probe.inputs(1, 1)[0] == probe.inputs(0, 2)[1]).all())
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models.sequence import language

from ..probes.base import check_range


class SequenceProbe:
    """``size`` sequences of ``length`` tokens (sequence ``i`` of ``seed``), with the language's
    concepts (:data:`models.sequence.language.CONCEPTS`) as masks; ranges are checked as for
    image probe sets (``IndexError`` / ``TypeError`` / ``ValueError``)."""

    def __init__(self, seed: int = language.PROBE_SEED, size: int = 1000,
                 length: int = 64) -> None:
        if size < 1 or length < 2:
            raise ValueError(f"size must be >= 1 and length >= 2, got {size} and {length}")
        self.seed, self.size, self.length = int(seed), int(size), int(length)
        self.labels = list(language.CONCEPTS)
        self.categories = list(language.CATEGORIES)
        self.image_size = (1, self.length)
        self.mask_size = (1, self.length)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"SequenceProbe(seed={self.seed}, size={self.size}, length={self.length})"

    def describe(self) -> dict[str, Any]:
        """Identity (recorded with results and part of the resume key)."""
        first = language.decode(language.sequence(self.seed, 0, self.length))
        return {"name": "brackets", "seed": self.seed, "size": self.size,
                "length": self.length, "labels": len(self.labels), "sequence0": first}

    def tokens(self, start: int, n: int) -> np.ndarray:
        """Token ids ``[n, T]`` (int64 numpy) of sequences ``start .. start+n-1``."""
        start, n = check_range(start, n, self.size)
        return language.batch(self.seed, start, n, self.length)

    def inputs(self, start: int, n: int) -> torch.Tensor:
        """The model's input: token ids ``[n, T]`` (int64)."""
        return torch.from_numpy(self.tokens(start, n))

    def masks(self, start: int, n: int) -> torch.Tensor:
        """Concept masks ``[n, len(labels), 1, T]`` (bool)."""
        ann = language.annotate(self.tokens(start, n))                   # [n, C, T]
        return torch.from_numpy(ann)[:, :, None]

    def text(self, i: int) -> str:
        """The text of sequence ``i``."""
        return language.decode(self.tokens(i, 1)[0])


__all__ = ["SequenceProbe"]
