"""A generator with ground-truth units: the reference against which dissection and
intervention are tested.

Its layer ``layout`` (``[n, units, 32, 32]``) holds, for every Toyworld concept, one unit whose map
is that concept's mask in a sampled Toyworld layout (area fraction per cell, times a smooth
gain in [1, 1.2) so activations have no ties), plus
distractor units of smooth noise that carry no concept. The decoder paints the image from that
layer only, back to front, in flat palette colours (:data:`PALETTE`):

* a leaf concept (sky, grass, ...) is painted where its unit, upsampled bilinearly to the image,
  exceeds 0.5;
* a part (crown, trunk, wall, roof, door, window) is painted where its unit *and* its object's unit
  (tree or house) exceed 0.5: parts only appear inside their object, as doors appear on walls;
  inserting a tree therefore means inserting the tree unit together with a part unit;
* pixels no unit paints are left black (the void, which carries no concept).

So zeroing a concept's unit removes the concept from the output, raising a unit inside a region
paints the concept there, and distractors have no effect at all. The segmenter
``segmenters.load("planted")`` reads the palette back exactly.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Generator
from .toyworld.concepts import CONCEPT_ID, CONCEPTS, LEAVES, PART_OF, leaves_to_masks
from .toyworld.render import render_scene

#: Flat colour (RGB in [0, 1]) the decoder paints for each leaf.
PALETTE: dict[str, tuple[float, float, float]] = {
    "sky": (0.40, 0.62, 0.94), "cloud": (0.97, 0.97, 0.97), "sun": (1.00, 0.90, 0.40),
    "mountain": (0.50, 0.45, 0.55), "grass": (0.30, 0.65, 0.20), "water": (0.10, 0.30, 0.65),
    "road": (0.35, 0.35, 0.35), "crown": (0.05, 0.35, 0.05), "trunk": (0.40, 0.22, 0.05),
    "wall": (0.90, 0.85, 0.65), "roof": (0.70, 0.10, 0.10), "door": (0.30, 0.10, 0.40),
    "window": (0.60, 0.90, 1.00),
}
#: Back-to-front order in which the decoder paints leaves.
PAINT_ORDER: tuple[str, ...] = ("sky", "sun", "cloud", "mountain", "grass", "water", "road",
                                "trunk", "crown", "wall", "roof", "door", "window")


def _layout_seed(z: np.ndarray) -> int:
    """A 63-bit scene seed derived from the bytes of one latent (deterministic, platform-free)."""
    digest = hashlib.blake2b(np.ascontiguousarray(z, dtype="<f4").tobytes(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


class PlantedLayout(nn.Module):
    """Latents -> unit maps ``[n, units, grid, grid]`` (concept masks plus distractors)."""

    _anchor: torch.Tensor

    def __init__(self, unit_of_concept: dict[str, int], distractors: list[int], grid: int,
                 render_size: int) -> None:
        super().__init__()
        self.unit_of_concept = unit_of_concept
        self.distractors = distractors
        self.grid = grid
        self.render_size = render_size
        self.units = len(unit_of_concept) + len(distractors)
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    def maps_for(self, z: np.ndarray) -> np.ndarray:
        """Unit maps ``[units, grid, grid]`` (float32) for one latent."""
        seed = _layout_seed(z)
        leaf = render_scene(seed, 0, self.render_size).leaf
        masks = leaves_to_masks(leaf).astype(np.float32)  # [C, S, S]
        f = self.render_size // self.grid
        soft = masks.reshape(len(CONCEPTS), self.grid, f, self.grid, f).mean(axis=(2, 4))
        out = np.zeros((self.units, self.grid, self.grid), dtype=np.float32)
        rng = np.random.Generator(np.random.PCG64(seed))
        for unit in self.distractors:
            out[unit] = self._smooth(rng)
        for concept, unit in self.unit_of_concept.items():
            # a gentle smooth gain >= 1 keeps activations continuous (no ties at the top, so
            # quantile thresholds are well defined) without moving what the decoder paints much
            out[unit] = soft[CONCEPT_ID[concept]] * (1.0 + 0.2 * self._smooth(rng))
        return out

    def _smooth(self, rng: np.random.Generator) -> np.ndarray:
        """Smooth noise in [0, 1) at the grid's resolution (a bilinearly upsampled 4x4 field)."""
        coarse = rng.uniform(0.0, 1.0, size=(4, 4)).astype(np.float32)
        return cv2.resize(coarse, (self.grid, self.grid), interpolation=cv2.INTER_LINEAR)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        zs = z.detach().to("cpu", torch.float32).numpy()
        maps = np.stack([self.maps_for(zi) for zi in zs]) if len(zs) else np.zeros(
            (0, self.units, self.grid, self.grid), dtype=np.float32)
        return torch.from_numpy(maps).to(self._anchor.device)


class PlantedDecoder(nn.Module):
    """Unit maps -> image in [-1, 1], painting flat palette colours back to front."""

    colors: torch.Tensor

    def __init__(self, unit_of_concept: dict[str, int], resolution: int,
                 sharpness: float = 20.0) -> None:
        super().__init__()
        self.unit_of_concept = unit_of_concept
        self.resolution = resolution
        self.sharpness = sharpness
        colors = torch.tensor([PALETTE[leaf] for leaf in PAINT_ORDER], dtype=torch.float32)
        self.register_buffer("colors", colors * 2.0 - 1.0)

    def _alpha(self, up: torch.Tensor, concept: str) -> torch.Tensor:
        """Hard 0/1 coverage in the forward pass, a sigmoid's gradient in the backward pass."""
        v = up[:, self.unit_of_concept[concept]]
        soft = torch.sigmoid((v - 0.5) * self.sharpness)
        hard = (v > 0.5).to(v.dtype)
        return hard + soft - soft.detach()

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        n = maps.shape[0]
        up = F.interpolate(maps, size=(self.resolution, self.resolution), mode="bilinear",
                           align_corners=False)
        img = torch.full((n, 3, self.resolution, self.resolution), -1.0, device=maps.device,
                         dtype=maps.dtype)
        for k, leaf in enumerate(PAINT_ORDER):
            alpha = self._alpha(up, leaf)
            if leaf in PART_OF:
                alpha = alpha * self._alpha(up, PART_OF[leaf])
            img = img + alpha[:, None] * (self.colors[k].view(1, 3, 1, 1) - img)
        return img


class PlantedGenerator(Generator):
    """Toyworld generator with one planted ground-truth unit per concept (see module docs).

    ``planted_units[concept]`` is the unit drawing ``concept`` in layer ``layout``;
    ``distractor_units`` carry no concept.
    """

    def __init__(self, resolution: int = 64, grid: int = 32, distractors: int = 5,
                 latent_dim: int = 8, device: str | torch.device = "cpu") -> None:
        super().__init__()
        if resolution % grid or resolution < 16:
            raise ValueError(f"resolution ({resolution}) must be >= 16 and a multiple of the "
                             f"grid ({grid})")
        self.resolution = resolution
        self.latent_shape = (latent_dim,)
        units = len(CONCEPTS) + distractors
        order = np.random.Generator(np.random.PCG64(12345)).permutation(units)
        self.planted_units: dict[str, int] = {c: int(order[i]) for i, c in enumerate(CONCEPTS)}
        self.distractor_units: list[int] = sorted(int(u) for u in order[len(CONCEPTS):])
        unit_of = dict(self.planted_units)
        self.layout = PlantedLayout(unit_of, self.distractor_units, grid, resolution)
        self.decoder = PlantedDecoder(unit_of, resolution)
        self.to(device)

    @property
    def layer_names(self) -> list[str]:
        return ["layout"]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.check_latents(z)
        return self.decoder(self.layout(z))


assert set(PAINT_ORDER) == set(LEAVES) == set(PALETTE)
