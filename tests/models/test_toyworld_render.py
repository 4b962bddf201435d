"""Toyworld renderer: determinism, mask exactness and the label hierarchy."""

import numpy as np
import pytest

from models.toyworld import CONCEPTS, LEAVES, PART_OF, render_batch, render_scene
from models.toyworld.concepts import LEAF_CONCEPT_TABLE, leaves_to_masks


def test_scene_depends_only_on_seed_and_index() -> None:
    a_img, a_masks = render_batch(7, 0, 6)
    b_img, b_masks = render_batch(7, 3, 3)
    np.testing.assert_array_equal(a_img[3:], b_img)
    np.testing.assert_array_equal(a_masks[3:], b_masks)
    single = render_scene(7, 4)
    np.testing.assert_array_equal(single.image, a_img[4])
    assert not np.array_equal(render_scene(8, 4).image, single.image)


def test_shapes_ranges_and_size_parameter() -> None:
    for size in (32, 64, 96):
        s = render_scene(0, 1, size)
        assert s.image.shape == (3, size, size) and s.image.dtype == np.float32
        assert s.masks.shape == (len(CONCEPTS), size, size) and s.masks.dtype == bool
        assert -1.0 <= s.image.min() and s.image.max() <= 1.0


def test_every_pixel_has_exactly_one_leaf_and_masks_follow_it() -> None:
    for i in range(20):
        s = render_scene(3, i)
        assert s.leaf.max() < len(LEAVES)
        np.testing.assert_array_equal(s.masks, leaves_to_masks(s.leaf))
        # leaf-level concepts partition the image: exactly one leaf concept per pixel
        leaf_concepts = [CONCEPTS.index(c) for c in CONCEPTS if c not in ("tree", "house")]
        assert (s.masks[leaf_concepts].sum(axis=0) == 1).all()


def test_objects_are_unions_of_their_parts() -> None:
    _, masks = render_batch(5, 0, 30)
    for obj in ("tree", "house"):
        parts = [CONCEPTS.index(p) for p, o in PART_OF.items() if o == obj]
        union = masks[:, parts].any(axis=1)
        np.testing.assert_array_equal(masks[:, CONCEPTS.index(obj)], union)


def test_masks_are_pixel_exact_against_flat_colours() -> None:
    """Each leaf region is painted from its own primitives: the mean colour of a leaf region
    differs between leaves that are drawn in very different colours (sky vs grass)."""
    s = render_scene(11, 2)
    sky, grass = s.masks[CONCEPTS.index("sky")], s.masks[CONCEPTS.index("grass")]
    assert sky.any() and grass.any()
    assert s.image[1][grass].mean() > s.image[0][grass].mean()  # grass is green
    assert s.image[2][sky].mean() > s.image[0][sky].mean() or s.image[0][sky].mean() > 0.2


def test_all_concepts_occur_over_many_scenes() -> None:
    _, masks = render_batch(1, 0, 300)
    coverage = masks.mean(axis=(0, 2, 3))
    assert (coverage > 0).all(), dict(zip(CONCEPTS, coverage, strict=True))
    assert LEAF_CONCEPT_TABLE.sum(axis=1).min() >= 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size"):
        render_scene(0, 0, size=8)
    with pytest.raises(ValueError, match="non-negative"):
        render_scene(-1, 0)
