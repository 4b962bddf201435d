"""A segmenter with no weights: names each pixel's colour with one of 11 basic colour terms.

The rule, on RGB in [0, 1] converted to HSV (hue ``H`` in degrees, saturation ``S`` = (max-min)/max,
value ``V`` = max), first match wins:

1. ``black``   if V < 0.20
2. ``white``   if S < 0.15 and V >= 0.80
3. ``gray``    if S < 0.15 (0.20 <= V < 0.80) — also S < 0.25 with V < 0.45 (dark, dull)
4. ``pink``    if H in [300, 345), or a light, soft red: H in [345, 360) U [0, 15) with S < 0.5
               and V >= 0.70
5. ``brown``   if H in [0, 45) U [345, 360) with V < 0.60 and S >= 0.25 (dark reds and oranges)
6. ``red``     if H in [345, 360) U [0, 15)
7. ``orange``  if H in [15, 45)
8. ``yellow``  if H in [45, 70)
9. ``green``   if H in [70, 170)
10. ``blue``   if H in [170, 260)
11. ``purple`` if H in [260, 300)

Every pixel gets exactly one colour, so the masks partition the image.
"""

from __future__ import annotations

import torch

from .base import Segmenter

COLOR_NAMES: tuple[str, ...] = ("black", "blue", "brown", "gray", "green", "orange", "pink",
                                "purple", "red", "white", "yellow")


def rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in degrees [0, 360), saturation and value in [0, 1] of RGB ``[N, 3, H, W]`` in [0, 1]."""
    r, g, b = rgb.unbind(dim=1)
    v, _ = rgb.max(dim=1)
    mn, _ = rgb.min(dim=1)
    delta = v - mn
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    safe = delta.clamp_min(1e-12)
    h = torch.where(v == r, ((g - b) / safe) % 6.0,
                    torch.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h = torch.where(delta > 0, h * 60.0, torch.zeros_like(h)) % 360.0
    return h, s, v


def color_index(rgb: torch.Tensor) -> torch.Tensor:
    """Index into :data:`COLOR_NAMES` per pixel (``[N, H, W]``, int64) by the module's rule."""
    h, s, v = rgb_to_hsv(rgb)
    idx = {name: i for i, name in enumerate(COLOR_NAMES)}
    reddish = (h >= 345) | (h < 15)
    orangish = (h >= 15) & (h < 45)
    rules: list[tuple[torch.Tensor, str]] = [
        (v < 0.20, "black"),
        ((s < 0.15) & (v >= 0.80), "white"),
        ((s < 0.15) | ((s < 0.25) & (v < 0.45)), "gray"),
        (((h >= 300) & (h < 345)) | (reddish & (s < 0.5) & (v >= 0.70)), "pink"),
        ((reddish | orangish) & (v < 0.60) & (s >= 0.25), "brown"),
        (reddish, "red"),
        (orangish, "orange"),
        ((h >= 45) & (h < 70), "yellow"),
        ((h >= 70) & (h < 170), "green"),
        ((h >= 170) & (h < 260), "blue"),
    ]
    out = torch.full(h.shape, idx["purple"], dtype=torch.long, device=rgb.device)
    for cond, name in reversed(rules):  # earlier rules win: apply them last
        out = torch.where(cond, torch.full_like(out, idx[name]), out)
    return out


class ColorSegmenter(Segmenter):
    """Rule-based colour naming (see module docstring); works on images of any size."""

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 256) -> None:
        super().__init__(device, batch_size)
        self.labels = list(COLOR_NAMES)
        self.categories = ["color"] * len(COLOR_NAMES)

    def _segment_batch(self, images: torch.Tensor) -> torch.Tensor:
        idx = color_index((images.float() + 1.0) / 2.0)
        classes = torch.arange(len(COLOR_NAMES), device=images.device).view(1, -1, 1, 1)
        return idx[:, None] == classes
