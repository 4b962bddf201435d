"""The planted generator: its units are ground truth for dissection and intervention."""

import torch
import torch.nn.functional as F

import models
import segmenters
from models.planted import PAINT_ORDER
from models.toyworld import CONCEPTS


def _edit(gen: models.Generator, z: torch.Tensor, fn) -> torch.Tensor:  # type: ignore[no-untyped-def]
    handle = gen.layer("layout").register_forward_hook(lambda m, i, o: fn(o.clone()))
    try:
        return gen(z)
    finally:
        handle.remove()


def test_planted_units_are_concept_masks_and_segmenter_reads_them() -> None:
    gen, seg = models.load("planted"), segmenters.load("planted")
    z = gen.sample_latents(40, seed=2)
    maps = gen.layout(z)
    masks = seg.segment(gen(z))
    up = F.interpolate(maps, size=(64, 64), mode="bilinear", align_corners=False) > 0.5
    for concept, unit in gen.planted_units.items():
        c = CONCEPTS.index(concept)
        painted = masks[:, c]
        if concept in ("sky", "grass", "mountain", "cloud", "water", "road"):
            # painted wherever the unit says, except where something in front covers it
            assert (painted <= up[:, unit]).all()
        if painted.sum() > 50:
            inter = (painted & up[:, unit]).sum().item()
            assert inter / painted.sum().item() > 0.95, concept


def test_ablating_a_unit_removes_its_concept_and_distractors_do_nothing() -> None:
    gen, seg = models.load("planted"), segmenters.load("planted")
    z = gen.sample_latents(30, seed=5)
    base = seg.segment(gen(z))
    for concept in CONCEPTS:
        unit = gen.planted_units[concept]
        c = CONCEPTS.index(concept)

        def ablate(o: torch.Tensor, unit: int = unit) -> torch.Tensor:
            o[:, unit] = 0
            return o

        after = seg.segment(_edit(gen, z, ablate))
        before_px = base[:, c].sum().item()
        assert before_px > 0, concept
        assert after[:, c].sum().item() <= 0.01 * before_px, concept
    img = gen(z)

    def noise(o: torch.Tensor) -> torch.Tensor:
        o[:, gen.distractor_units] = torch.rand_like(o[:, gen.distractor_units]) * 3
        return o

    torch.testing.assert_close(_edit(gen, z, noise), img)


def test_insertion_paints_the_concept_inside_the_region() -> None:
    gen, seg = models.load("planted"), segmenters.load("planted")
    z = gen.sample_latents(8, seed=9)
    region = torch.zeros(32, 32)
    region[4:12, 20:30] = 1.0
    pix = F.interpolate(region[None, None], size=(64, 64), mode="nearest")[0, 0] > 0
    for units, concept in ((["sky"], "sky"), (["water"], "water"), (["tree", "crown"], "tree"),
                           (["house", "door"], "door")):

        def insert(o: torch.Tensor, units: list[str] = units) -> torch.Tensor:
            for name in units:
                u = gen.planted_units[name]
                o[:, u] = o[:, u] * (1 - region) + 1.0 * region
            return o

        masks = seg.segment(_edit(gen, z, insert))
        c = CONCEPTS.index(concept)
        # inside the region the concept shows wherever nothing painted in front of it covers it
        leaf = "crown" if concept == "tree" else concept
        front = [CONCEPTS.index(x) for x in PAINT_ORDER[PAINT_ORDER.index(leaf) + 1:]]
        visible = ~masks[:, front].any(dim=1) & pix
        assert visible.sum() > 0.3 * pix.sum() * len(z), concept
        assert masks[:, c][visible].all(), concept


def test_latents_determine_layouts() -> None:
    gen = models.load("planted")
    a = gen(gen.sample_latents(5, seed=1))
    b = gen(gen.sample_latents(2, seed=1, start=3))
    torch.testing.assert_close(a[3:], b)
    assert a.min() >= -1 and a.max() <= 1
