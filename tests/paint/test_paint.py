"""GANPaint API on the planted generator (exact): brushes, strokes, history, masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import segmenters
from gandissect.common.fingerprint import fingerprint
from gandissect.dissection.engine import dissect
from gandissect.intervention.ranking import rank_by_iou, single_unit_ace
from gandissect.paint import brushes
from gandissect.paint.brushes import BrushSet
from gandissect.paint.painter import (
    EmptyStrokeError,
    History,
    Painter,
    fit_mask,
    mask_from_editor,
    open_painter,
    parse_units,
)

BUILD: dict[str, Any] = {"samples": 100, "candidates": 8, "ace_samples": 8}


@pytest.fixture(scope="module")
def painter(tmp_path_factory: pytest.TempPathFactory) -> Painter:
    return open_painter("planted", "planted", "layout",
                        folder=tmp_path_factory.mktemp("brushes"), **BUILD)


def fraction(seg: segmenters.Segmenter, image: torch.Tensor, concept: str,
             region: np.ndarray) -> float:
    masks = seg.segment(image)[0, seg.label_index(concept)].numpy()
    return float(masks[region].mean())


def tree_seed(seg: segmenters.Segmenter, painter: Painter) -> tuple[int, np.ndarray]:
    """A seed whose image has many tree pixels, and its tree mask (64 x 64)."""
    for seed in range(40):
        trees = seg.segment(painter.render_tensor(seed))[0, seg.label_index("tree")].numpy()
        if trees.mean() > 0.08:
            return seed, trees
    raise AssertionError("no seed with trees")


def test_brushes_are_causal_and_cached(painter: Painter, tmp_path: Path) -> None:
    gen = painter.generator
    assert painter.brushes.brushes["tree"].units[0] in (gen.planted_units["tree"],
                                                         gen.planted_units["crown"])
    assert painter.brushes.brushes["door"].units[0] == gen.planted_units["door"]
    for brush in painter.brushes.brushes.values():
        assert brush.units and all(s > 0 for s in brush.scores)
        assert all(u not in gen.distractor_units for u in brush.units)
    again = BrushSet.from_json(painter.brushes.to_json())
    assert again.brushes["tree"] == painter.brushes.brushes["tree"]


def test_brush_cache_key_names_the_weights(tmp_path: Path) -> None:
    """The cache file is keyed by both networks' weights: other weights, other brushes."""
    p = open_painter("planted", "planted", "layout", folder=tmp_path, **BUILD)
    key = fingerprint(p.generator, segmenters.load("planted"))
    (cached,) = tmp_path.glob("*.json")
    assert cached.name.startswith(f"planted-planted-layout-{key}-")



def test_shared_ablations_match_per_concept_ace(painter: Painter, seg: segmenters.Segmenter,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Brushes (units, order and scores) equal single_unit_ace run per concept on its own
    IoU candidates, also when the shared ablations come in several chunks."""
    monkeypatch.setattr(brushes, "ABLATION_CHUNK", 3)
    gen = painter.generator
    built = brushes.build_brushes(gen, seg, "layout", **BUILD)
    assert built.to_json() == painter.brushes.to_json()
    result = dissect(gen, seg, "layout", samples=BUILD["samples"], seed=0)["layout"]
    for concept, brush in built.brushes.items():
        cand = rank_by_iou(result, concept).top(BUILD["candidates"])
        ace = single_unit_ace(gen, seg, concept, "layout", samples=BUILD["ace_samples"], seed=1,
                              units=cand)
        units = [u for u in ace.order if np.isfinite(ace.scores[u]) and ace.scores[u] > 0]
        assert brush.units == tuple(units)
        assert brush.scores == tuple(float(ace.scores[u]) for u in units)

def test_remove_trees_inside_stroke(painter: Painter, seg: segmenters.Segmenter) -> None:
    seed, trees = tree_seed(seg, painter)
    stroke_mask = np.zeros((64, 64), bool)
    ys, xs = np.nonzero(trees)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    stroke_mask[max(cy - 12, 0):cy + 12, max(cx - 12, 0):cx + 12] = True
    stroke = painter.stroke("tree", "remove", stroke_mask, strength=4)
    before, after = painter.render_tensor(seed), painter.render_tensor(seed, [stroke])
    assert fraction(seg, before, "tree", stroke_mask) > 0.2
    assert fraction(seg, after, "tree", stroke_mask) < 0.3 * fraction(seg, before, "tree",
                                                                       stroke_mask)
    far = np.ones((64, 64), bool)
    far[max(cy - 20, 0):cy + 20, max(cx - 20, 0):cx + 20] = False
    changed = (before != after).any(dim=1)[0].numpy()
    assert changed[far].mean() < 0.02


def test_draw_tree_inside_stroke(painter: Painter, seg: segmenters.Segmenter) -> None:
    region = np.zeros((64, 64), bool)
    region[20:44, 20:44] = True
    seed = next(s for s in range(40)
                if fraction(seg, painter.render_tensor(s), "tree", region) < 0.2)
    stroke = painter.stroke("tree", "draw", region, strength=4, alpha=1.0)
    after = painter.render_tensor(seed, [stroke])
    assert fraction(seg, after, "tree", region) > 0.7
    outside = painter.render_tensor(seed) != after
    assert outside.any(dim=1)[0].numpy()[~region].mean() < 0.05


def test_history_undo_redo_reset(painter: Painter) -> None:
    mask = np.ones((8, 8), bool)
    a = painter.stroke("tree", "remove", mask)
    b = painter.stroke("sky", "remove", mask, strength=10)
    h = History().push(a).push(b)
    assert h.active == (a, b) and h.can_undo and not h.can_redo
    u = h.undo()
    assert u.active == (a,) and u.can_redo and u.redo().active == (a, b)
    assert u.push(b).strokes == (a, b) and u.undo().undo().active == ()
    assert h.reset().active == () and History().undo().position == 0
    assert History().redo().position == 0
    rows = h.rows()
    assert rows[1][1] == "sky" and rows[1][2] == "remove"
    assert rows[1][5] == ", ".join(map(str, b.units))
    img0 = painter.render(0, scale=4)
    assert img0.shape == (256, 256, 3) and img0.dtype == np.uint8
    assert np.array_equal(painter.render(0, h.undo().undo().active), painter.render(0))


def test_empty_stroke_and_bad_input(painter: Painter) -> None:
    for empty in (None, np.zeros((64, 64), bool), np.zeros((3, 5))):
        with pytest.raises(EmptyStrokeError):
            painter.stroke("tree", "remove", empty)
    with pytest.raises(ValueError, match="no brush"):
        painter.stroke("dragon", "remove", np.ones((4, 4)))
    with pytest.raises(ValueError, match="mode"):
        painter.stroke("tree", "paint", np.ones((4, 4)))
    with pytest.raises(ValueError, match="units 0"):
        painter.unit_stroke("layout", "3, 999", "remove", np.ones((4, 4)))
    with pytest.raises(ValueError, match="whole numbers"):
        parse_units("3, x")
    assert parse_units("3, 17 3") == (3, 17)


def test_mask_resizing(painter: Painter) -> None:
    # odd, huge and tiny sizes all map to the layer grid; area coverage is preserved
    odd = np.zeros((97, 131), bool)
    odd[:, :65] = True
    grid = painter.layer_mask(odd)
    assert grid.shape == (32, 32) and 0.45 < grid.mean() < 0.55
    assert grid[:, :10].min() > 0.999 and grid[:, -10:].max() == 0.0
    huge = np.zeros((5000, 5000), np.uint8)
    huge[:2500] = 255
    assert abs(painter.layer_mask(huge).mean() - 0.5) < 0.02
    assert painter.layer_mask(np.ones((1, 1))).min() == 1.0
    block = np.zeros((256, 256), bool)
    block[:128, :128] = True  # integer factors: exact area averaging
    expected = np.zeros((32, 32), np.float32)
    expected[:16, :16] = 1.0
    assert np.array_equal(painter.layer_mask(block), expected)
    assert fit_mask(np.full((4, 4), np.nan), (2, 2)).max() == 0.0
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[2:4, 2:4, 3] = 255
    m = mask_from_editor({"background": None, "layers": [rgba], "composite": None})
    assert m is not None and m.sum() == 4
    assert mask_from_editor(None) is None and mask_from_editor({"layers": []}) is None


def test_feature_map_and_expert_stroke(painter: Painter) -> None:
    unit = painter.generator.planted_units["sky"]
    heat = painter.feature_map(0, unit, scale=2)
    assert heat.shape == (128, 128, 3) and heat.dtype == np.uint8
    s = painter.unit_stroke("layout", str(unit), "remove", np.ones((64, 64)))
    assert s.units == (unit,) and s.replacement == (0.0,)
    assert not np.array_equal(painter.render(0, [s]), painter.render(0))


def test_open_painter_takes_name_path_specs(tmp_path: Path) -> None:
    """``NAME:PATH`` loads a local checkpoint (here a tiny ProGAN with the colour segmenter);
    a pickled one needs ``trust_pickle``."""
    import datetime

    from models.progan import ProGAN

    g = ProGAN([16, 8, 8, 4, 4], seed=0)
    plain, pickled = tmp_path / "g.pth", tmp_path / "pickled.pth"
    torch.save(g.state_dict(), plain)
    torch.save({"state_dict": g.state_dict(), "date": datetime.date(2020, 1, 1)}, pickled)
    build = {"samples": 20, "candidates": 4, "ace_samples": 4}
    p = open_painter(f"progan:{plain}", "color", "layer4", folder=tmp_path / "c", **build)
    assert p.name == "progan" and p.layer == "layer4"
    z = g.sample_latents(1, 0)
    assert torch.equal(p.generator(z), g.eval()(z))
    with pytest.raises(ValueError, match="trust_pickle"):
        open_painter(f"progan:{pickled}", "color", "layer4", folder=tmp_path / "c", **build)
    with pytest.warns(UserWarning, match="trust_pickle=True"):
        open_painter(f"progan:{pickled}", "color", "layer4", folder=tmp_path / "c",
                     trust_pickle=True, **build)
