"""Exact segmenter for the planted generator: reads its flat palette colours back to labels."""

from __future__ import annotations

import torch

from models.planted import PALETTE
from models.toyworld.concepts import CATEGORIES, CONCEPTS, LEAF_CONCEPT_TABLE, LEAF_ID

from .base import Segmenter


class PaletteSegmenter(Segmenter):
    """Labels a pixel with the concepts of the palette colour it equals (within ``tolerance``
    per channel, in [0, 1] units); other pixels, such as the planted generator's black void,
    carry no concept. Exact on :class:`models.planted.PlantedGenerator` output."""

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 256,
                 tolerance: float = 0.02) -> None:
        super().__init__(device, batch_size)
        self.labels = list(CONCEPTS)
        self.categories = list(CATEGORIES)
        self.tolerance = tolerance
        leaves = sorted(PALETTE, key=lambda name: LEAF_ID[name])
        self._colors = torch.tensor([PALETTE[name] for name in leaves], dtype=torch.float32)
        self._table = torch.from_numpy(LEAF_CONCEPT_TABLE[[LEAF_ID[n] for n in leaves]])

    def _segment_batch(self, images: torch.Tensor) -> torch.Tensor:
        rgb = (images.float() + 1.0) / 2.0  # [N, 3, H, W]
        colors = self._colors.to(images.device)
        diff = (rgb[:, None] - colors[None, :, :, None, None]).abs().amax(dim=2)  # [N, L, H, W]
        match = diff <= self.tolerance
        table = self._table.to(images.device).float()  # [L, C]
        return torch.einsum("nlhw,lc->nchw", match.float(), table) > 0
