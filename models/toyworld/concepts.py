"""The Toyworld concept vocabulary: leaf regions the renderer paints, and the concepts they carry.

Every pixel of a rendered scene belongs to exactly one *leaf* (the top-most thing painted there).
A leaf carries one or two *concepts*: a crown pixel is both ``tree`` (object) and ``crown`` (part),
a door pixel both ``house`` and ``door``. Masks are therefore multi-label.
"""

from __future__ import annotations

import numpy as np

#: Concept names, in mask-channel order.
CONCEPTS: tuple[str, ...] = (
    "sky", "cloud", "sun", "mountain", "grass", "tree", "house", "water", "road",
    "crown", "trunk", "wall", "roof", "door", "window",
)
#: Category of each concept (same order as :data:`CONCEPTS`).
CATEGORIES: tuple[str, ...] = ("object",) * 9 + ("part",) * 6

#: Leaf regions, in the order their integer ids are assigned.
LEAVES: tuple[str, ...] = (
    "sky", "cloud", "sun", "mountain", "grass", "water", "road",
    "crown", "trunk", "wall", "roof", "door", "window",
)
#: Which concepts each leaf carries.
LEAF_CONCEPTS: dict[str, tuple[str, ...]] = {
    "sky": ("sky",), "cloud": ("cloud",), "sun": ("sun",), "mountain": ("mountain",),
    "grass": ("grass",), "water": ("water",), "road": ("road",),
    "crown": ("tree", "crown"), "trunk": ("tree", "trunk"),
    "wall": ("house", "wall"), "roof": ("house", "roof"),
    "door": ("house", "door"), "window": ("house", "window"),
}
#: Parent object of each part concept.
PART_OF: dict[str, str] = {
    "crown": "tree", "trunk": "tree",
    "wall": "house", "roof": "house", "door": "house", "window": "house",
}

LEAF_ID: dict[str, int] = {name: i for i, name in enumerate(LEAVES)}
CONCEPT_ID: dict[str, int] = {name: i for i, name in enumerate(CONCEPTS)}


def leaf_concept_table() -> np.ndarray:
    """Boolean table ``T[leaf, concept]``: True where the leaf carries the concept."""
    table = np.zeros((len(LEAVES), len(CONCEPTS)), dtype=bool)
    for leaf, concepts in LEAF_CONCEPTS.items():
        for c in concepts:
            table[LEAF_ID[leaf], CONCEPT_ID[c]] = True
    return table


LEAF_CONCEPT_TABLE: np.ndarray = leaf_concept_table()


def leaves_to_masks(leaf_map: np.ndarray) -> np.ndarray:
    """Turn a leaf-id map ``[..., H, W]`` into boolean concept masks ``[..., C, H, W]``."""
    masks = LEAF_CONCEPT_TABLE[leaf_map]  # [..., H, W, C]
    return np.moveaxis(masks, -1, -3)
