"""The Segmenter protocol: label what an image shows, pixel by pixel, possibly multi-label."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

#: The categories a concept may belong to.
KNOWN_CATEGORIES = ("object", "part", "material", "color")


class Segmenter(ABC):
    """Maps images to boolean concept masks.

    Contract: ``segment(images)`` takes float images ``[N, 3, H, W]`` in [-1, 1] and returns
    boolean masks ``[N, C, H', W']`` with ``C == len(labels)``; a pixel may carry several labels
    (object and part, say). ``categories[c]`` is the category of ``labels[c]``.
    """

    labels: list[str]
    categories: list[str]

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size

    def to(self, device: str | torch.device) -> Segmenter:
        """Move the segmenter to ``device`` (in place); returns self."""
        self.device = torch.device(device)
        return self

    def label_index(self, concept: str) -> int:
        """Channel of ``concept``; an unknown name raises a ValueError listing the known ones."""
        try:
            return self.labels.index(concept)
        except ValueError:
            raise ValueError(f"{type(self).__name__} does not know concept {concept!r}; "
                             f"known concepts: {', '.join(self.labels)}") from None

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Mask size for an input of ``height`` × ``width`` (default: the same)."""
        return height, width

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """Validate an image batch: a float ``[N, 3, H, W]`` tensor, finite, within [-1, 1]."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [N, 3, H, W], got {list(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floats in [-1, 1], got dtype {images.dtype}")
        if images.numel() and not torch.isfinite(images).all():
            raise ValueError("images contain NaN or inf values")
        if images.numel() and (images.min() < -1.01 or images.max() > 1.01):
            raise ValueError(f"images must lie in [-1, 1], got values in "
                             f"[{images.min().item():.3g}, {images.max().item():.3g}]; "
                             "rescale e.g. with x / 127.5 - 1 for uint8 images")
        return images.clamp(-1.0, 1.0)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Boolean masks ``[N, C, H', W']`` for images ``[N, 3, H, W]`` in [-1, 1], batched."""
        images = self.check_images(images)
        if images.shape[0] == 0:
            h, w = self.output_size(images.shape[2], images.shape[3])
            return torch.zeros(0, len(self.labels), h, w, dtype=torch.bool, device=images.device)
        outs = [self._segment_batch(images[i:i + self.batch_size].to(self.device))
                for i in range(0, images.shape[0], self.batch_size)]
        return torch.cat(outs)

    @abstractmethod
    def _segment_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Segment one validated batch already on :attr:`device`."""
