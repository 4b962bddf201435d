"""The Toyworld probe set: the renderer's scenes and exact masks, index-addressable."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from gandissect.artifacts.quality import HELD_OUT_SEED
from gandissect.probes.base import check_range
from gandissect.probes.toyworld import COLOR_LABELS, PROBE_SEED, SCENE_LABELS, ToyworldProbe
from models.toyworld import CONCEPTS, PART_OF, render_batch, render_leaves
from models.toyworld.concepts import CATEGORIES, CONCEPT_ID
from models.toyworld.render import SCENE_TYPES, render_typed_batch, scene_type_of
from segmenters.color import COLOR_NAMES, color_index
from segmenters.evaluate import HELDOUT_SEED
from segmenters.train_toyworld import VALIDATION_SEED


def test_contract_shapes_dtypes_and_ranges() -> None:
    probe = ToyworldProbe(size=8, resolution=32)
    assert len(probe) == 8
    assert probe.labels == list(CONCEPTS) and probe.categories == list(CATEGORIES)
    assert probe.image_size == probe.mask_size == (32, 32)
    images, masks = probe.images(2, 3), probe.masks(2, 3)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert masks.shape == (3, len(CONCEPTS), 32, 32) and masks.dtype == torch.bool
    assert probe.images(8, 0).shape == (0, 3, 32, 32)


def test_samples_are_the_renderers_scenes() -> None:
    probe = ToyworldProbe(seed=5, size=6, resolution=32)
    img, masks = render_batch(5, 1, 4, 32)
    torch.testing.assert_close(probe.images(1, 4), torch.from_numpy((img + 1) / 2), atol=1e-6,
                               rtol=0)
    assert torch.equal(probe.masks(1, 4), torch.from_numpy(masks))


def test_sample_i_does_not_depend_on_batching() -> None:
    probe = ToyworldProbe(size=7, resolution=32, scene_labels=True)
    whole_i, whole_m = probe.images(0, 7), probe.masks(0, 7)
    for start, n in ((0, 1), (2, 3), (6, 1), (3, 4)):
        assert torch.equal(probe.images(start, n), whole_i[start:start + n])
        assert torch.equal(probe.masks(start, n), whole_m[start:start + n])
    other = ToyworldProbe(size=100, resolution=32, scene_labels=True)   # size is only a bound
    assert torch.equal(other.masks(3, 2), whole_m[3:5])


def test_parts_lie_inside_their_objects() -> None:
    masks = ToyworldProbe(size=30, resolution=32).masks(0, 30)
    for part, obj in PART_OF.items():
        inside = masks[:, CONCEPT_ID[part]] & ~masks[:, CONCEPT_ID[obj]]
        assert not inside.any(), part


def test_out_of_range_and_bad_arguments() -> None:
    probe = ToyworldProbe(size=5, resolution=16)
    with pytest.raises(IndexError, match=r"samples 4..5 requested from a probe set of 5"):
        probe.images(4, 2)
    with pytest.raises(IndexError):
        probe.masks(-1, 1)
    with pytest.raises(ValueError, match="n must be >= 0"):
        probe.masks(0, -1)
    with pytest.raises(TypeError, match="start must be an integer"):
        probe.images(1.0, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        check_range(True, 1, 5)
    assert check_range(np.int64(2), torch.tensor(3).item(), 5) == (2, 3)
    with pytest.raises(ValueError, match="resolution >= 16"):
        ToyworldProbe(resolution=8)
    with pytest.raises(ValueError, match="size"):
        ToyworldProbe(size=0)
    with pytest.raises(ValueError, match="seed"):
        ToyworldProbe(seed=-1)
    with pytest.raises(TypeError, match="size must be an int"):
        ToyworldProbe(size=2.5)  # type: ignore[arg-type]


def test_default_seed_differs_from_training_and_evaluation_seeds() -> None:
    assert ToyworldProbe().seed == PROBE_SEED
    assert PROBE_SEED not in (0, 1, HELD_OUT_SEED, HELDOUT_SEED, VALIDATION_SEED)  # 1: classifier
    assert len(ToyworldProbe()) == 10_000 and ToyworldProbe().image_size == (64, 64)


def test_describe_is_json_and_follows_the_content() -> None:
    base = ToyworldProbe(size=4, resolution=32)
    d = base.describe()
    assert json.loads(json.dumps(d)) == d
    assert d["name"] == "toyworld" and d["seed"] == PROBE_SEED and d["size"] == 4
    assert d["labels"] == len(CONCEPTS)
    assert ToyworldProbe(size=4, resolution=32).describe() == d
    for other in (ToyworldProbe(seed=1, size=4, resolution=32),
                  ToyworldProbe(size=5, resolution=32), ToyworldProbe(size=4, resolution=48),
                  ToyworldProbe(size=4, resolution=32, scene_labels=True),
                  ToyworldProbe(size=4, resolution=32, typed=True)):
        assert other.describe() != d


def test_scene_labels_are_whole_image_and_the_renderers_type() -> None:
    probe = ToyworldProbe(size=40, resolution=32, scene_labels=True)
    assert probe.labels[len(CONCEPTS):] == [f"{t}-s" for t in SCENE_TYPES] == list(SCENE_LABELS)
    assert probe.categories[len(CONCEPTS):] == ["scene"] * len(SCENE_TYPES)
    assert len(set(probe.labels)) == len(probe.labels)               # road-s is not road
    masks = probe.masks(0, 40)
    scene = masks[:, len(CONCEPTS):].flatten(2)
    assert (scene.all(dim=2) == scene.any(dim=2)).all()              # all or nothing
    assert (scene.all(dim=2).sum(dim=1) == 1).all()                  # exactly one
    kinds = [SCENE_TYPES[int(k)] for k in scene.all(dim=2).int().argmax(dim=1)]
    leaves = render_leaves(PROBE_SEED, 0, 40, 32)
    assert kinds == [scene_type_of(leaf) for leaf in leaves]
    assert kinds == [probe.scene_type(i) for i in range(40)]
    assert len(set(kinds)) >= 3
    assert torch.equal(masks[:, :len(CONCEPTS)], ToyworldProbe(size=40, resolution=32).masks(0, 40))


def test_typed_scenes_are_the_renderers_balanced_typed_scenes() -> None:
    probe = ToyworldProbe(seed=9, size=8, resolution=32, typed=True, scene_labels=True)
    images, masks, kinds = render_typed_batch(9, 2, 6, 32)
    torch.testing.assert_close(probe.images(2, 6), torch.from_numpy((images + 1) / 2),
                               atol=1e-6, rtol=0)
    ours = probe.masks(2, 6)
    assert torch.equal(ours[:, :len(CONCEPTS)], torch.from_numpy(masks))
    assert ours[:, len(CONCEPTS):].flatten(2).all(dim=2).int().argmax(dim=1).tolist() == \
        kinds.tolist() == [(2 + k) % len(SCENE_TYPES) for k in range(6)]
    assert probe.describe() != ToyworldProbe(seed=9, size=8, resolution=32,
                                             scene_labels=True).describe()


def test_pickles_without_its_cache() -> None:
    probe = ToyworldProbe(size=4, resolution=16)
    masks = probe.masks(0, 4)
    assert probe._cache is not None
    copy = pickle.loads(pickle.dumps(probe))
    assert copy._cache is None
    assert torch.equal(copy.masks(0, 4), masks)
    assert copy.describe() == probe.describe()


def test_color_category_is_one_term_per_pixel_from_the_image() -> None:
    plain = ToyworldProbe(size=6, resolution=32, typed=True, scene_labels=True)
    probe = ToyworldProbe(size=6, resolution=32, typed=True, scene_labels=True, colors=True)
    n_base = len(plain.labels)
    assert probe.labels[:n_base] == plain.labels and probe.categories[:n_base] == plain.categories
    assert probe.labels[n_base:] == list(COLOR_LABELS) == [f"{c}-c" for c in COLOR_NAMES]
    assert probe.categories[n_base:] == ["color"] * 11
    images, masks = probe.images(0, 6), probe.masks(0, 6)
    assert torch.equal(images, plain.images(0, 6))
    assert torch.equal(masks[:, :n_base], plain.masks(0, 6))          # other labels unchanged
    colors = masks[:, n_base:]
    assert (colors.sum(dim=1) == 1).all()                             # exactly one term a pixel
    assert torch.equal(colors.int().argmax(dim=1), color_index(images))
    grass = masks[:, plain.labels.index("grass")]
    assert colors[:, COLOR_NAMES.index("green")][grass].float().mean() > 0.9
    assert colors.flatten(2).any(dim=2).any(dim=0).sum() >= 5         # several terms occur
    d = probe.describe()
    assert d["colors"] is True and d["labels"] == n_base + 11
    assert "colors" not in plain.describe() and d != plain.describe()
    colored = ToyworldProbe(size=6, resolution=32, colors=True)       # without scene labels
    assert torch.equal(colored.masks(0, 6)[:, len(CONCEPTS):].int().argmax(dim=1),
                       color_index(colored.images(0, 6)))
