"""Toyworld: procedural outdoor scenes with pixel-exact multi-label masks."""

from .concepts import CATEGORIES, CONCEPTS, LEAVES, PART_OF, leaves_to_masks
from .render import Scene, render_batch, render_leaves, render_scene

__all__ = ["CATEGORIES", "CONCEPTS", "LEAVES", "PART_OF", "Scene", "leaves_to_masks",
           "render_batch", "render_leaves", "render_scene"]
