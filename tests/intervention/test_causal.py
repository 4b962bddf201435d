"""Causal effects on the planted generator, whose units are ground truth, and brute-force checks."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
import segmenters
from gandissect.intervention.causal import (
    EffectStats,
    ExactQuantile,
    causal_effect,
    measure,
    measure_concepts,
    random_units,
    unit_statistics,
)
from gandissect.intervention.edit import Edit, intervene
from gandissect.intervention.insertion import insertion_heatmap
from gandissect.intervention.ranking import (
    effect_sweep,
    optimize_alpha,
    plot_sweep,
    rank_by_iou,
    single_unit_ace,
    single_unit_ace_concepts,
)
from models.toyworld import CONCEPTS


@pytest.mark.parametrize("q", [0.0, 0.01, 0.3, 0.5, 0.9, 0.99, 1.0])
def test_exact_quantile_matches_torch(q: float) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1001, generator=g)
    x[1] = x[1].round()  # ties
    est = ExactQuantile(q, x.shape[1])
    for chunk in x.split([1, 500, 300, 200], dim=1):
        est.add(chunk)
    torch.testing.assert_close(est.result(), torch.quantile(x, q, dim=1))
    assert est.keep <= max(2, int(min(q, 1 - q) * 1001) + 2)


def test_unit_statistics_match_brute_force(gen: models.Generator,
                                           seg: segmenters.Segmenter) -> None:
    st = unit_statistics(gen, "layout", samples=7, seed=4, q=0.95, segmenter=seg,
                         concept="sky", batch_size=3)
    z = gen.sample_latents(7, seed=4)
    act = gen.layout(z)
    flat = act.transpose(0, 1).reshape(act.shape[1], -1)
    torch.testing.assert_close(st.quantile, torch.quantile(flat, 0.95, dim=1))
    sky = seg.segment(gen(z))[:, CONCEPTS.index("sky")].float()
    present = F.avg_pool2d(sky[:, None], 2)[:, 0] > 0.5
    want = (act * present[:, None]).sum(dim=(0, 2, 3)) / present.sum()
    torch.testing.assert_close(st.concept_mean, want)
    assert st.present_cells == int(present.sum())
    # the sky unit is (about) 1 where the sky is, distractors are not
    assert st.concept_mean[gen.planted_units["sky"]] > 0.95
    torch.testing.assert_close(st.values([2, 0]), st.quantile[[2, 0]])


def test_ablating_planted_units_removes_their_concepts(gen: models.Generator,
                                                       seg: segmenters.Segmenter) -> None:
    res = causal_effect(gen, seg, "tree", [gen.planted_units["tree"]], "layout", samples=24,
                        seed=3, random_baseline=False)
    assert res.effect.before > 0.02 and res.effect.relative <= -0.99
    z = gen.sample_latents(24, seed=3)
    base = seg.segment(gen(z))
    for c, concept in enumerate(CONCEPTS):  # every concept
        with intervene(gen, Edit("layout", [gen.planted_units[concept]])):
            after = seg.segment(gen(z))[:, c]
        assert base[:, c].sum() > 0, concept
        assert after.sum() <= 0.01 * base[:, c].sum(), concept


def test_random_baseline_and_distractors(gen: models.Generator,
                                         seg: segmenters.Segmenter) -> None:
    unit = gen.planted_units["grass"]
    res = causal_effect(gen, seg, "grass", [unit], "layout", samples=30, seed=1)
    assert res.random is not None and res.random.units[0] != unit
    assert res.random.before == res.effect.before  # same samples
    assert res.random.units == tuple(random_units(20, 1, [unit], 1))
    lo, hi = res.effect.ci95
    assert lo <= res.effect.absolute <= hi and hi < 0
    d = res.effect.changes
    half = 1.959963984540054 * d.std(ddof=1) / np.sqrt(len(d))
    assert np.isclose(hi - lo, 2 * half)
    sets = [[Edit("layout", [u])] for u in gen.distractor_units]
    before, after = measure(gen, seg, "grass", sets, samples=30, seed=1)
    assert np.abs(after.mean(1) - before.mean(1)).max() < 0.01 * before.mean()
    d5 = causal_effect(gen, seg, "sky", gen.distractor_units, "layout", mode="insert",
                       samples=20, seed=2, random_baseline=False)
    assert abs(d5.effect.relative) < 0.01


def test_random_units_are_local_and_exclusive() -> None:
    a = random_units(20, 5, [1, 2, 3], seed=7)
    assert a == random_units(20, 5, [1, 2, 3], seed=7) and not set(a) & {1, 2, 3}
    assert len(set(a)) == 5 and a != random_units(20, 5, [1, 2, 3], seed=8)
    with pytest.raises(ValueError, match="only 2 units"):
        random_units(4, 3, [0, 1], seed=0)


def test_insertion_in_a_mask_paints_inside_only(gen: models.Generator,
                                                seg: segmenters.Segmenter) -> None:
    mask = torch.zeros(32, 32)
    mask[4:14, 6:26] = 1
    units = [gen.planted_units["tree"], gen.planted_units["crown"]]
    res = causal_effect(gen, seg, "tree", units, "layout", mode="insert", samples=20, seed=5,
                        mask=mask)
    assert res.inside is not None and res.random_inside is not None
    assert res.inside.after > 0.8 and res.inside.absolute > 0.5
    assert abs(res.random_inside.absolute) < 0.01
    # outside the mask nothing changes
    stats = unit_statistics(gen, "layout", samples=20, seed=5)
    edit = Edit("layout", units, replacement=stats.values(units), mask=mask)
    grown = torch.zeros(32, 32)
    grown[3:15, 5:27] = 1  # bilinear upsampling bleeds one image pixel beyond the mask
    outside = F.interpolate(1 - grown[None, None], size=(64, 64))[0] > 0.5
    before, after = measure(gen, seg, "tree", [[edit]], 20, 5, [outside])
    np.testing.assert_array_equal(before, after)
    # per-sample masks: only sample 0 gets the tree
    per = torch.zeros(20, 32, 32)
    per[0] = mask
    b, a = measure(gen, seg, "tree", [[Edit("layout", units, replacement=1.0, mask=per)]],
                   20, 5, batch_size=8)
    assert a[0, 0] > b[0, 0] + 0.05 and np.array_equal(a[0, 1:], b[0, 1:])


def test_effect_stats_and_errors(gen: models.Generator, seg: segmenters.Segmenter) -> None:
    e = EffectStats.from_arrays([1], np.array([0.2, 0.4, np.nan]), np.array([0.1, 0.1, 0.5]))
    assert e.samples == 2 and np.isclose(e.absolute, -0.2) and np.isclose(e.relative, -0.2 / 0.3)
    with pytest.raises(ValueError, match="known concepts"):
        causal_effect(gen, seg, "dragon", [0], "layout", samples=2)
    with pytest.raises(ValueError, match="has 20 units"):
        causal_effect(gen, seg, "sky", [0, 40], "layout", samples=2)
    with pytest.raises(ValueError, match="valid layers"):
        causal_effect(gen, seg, "sky", [0], "conv9", samples=2)
    with pytest.raises(ValueError, match="one per sample"):
        causal_effect(gen, seg, "sky", [0], "layout", samples=4, mask=torch.ones(3, 32, 32))
    with pytest.raises(ValueError, match="never present"):
        unit_statistics(gen, "layout", samples=1, seed=0, segmenter=seg, concept="sun")


# ------------------------------------------------------------------ rankings, sweeps, insertion

class TinyGen(models.Generator):
    """Six constant unit maps; the image is red where units 0 and 1 together exceed 1."""

    resolution = 8
    latent_shape = (2,)

    def __init__(self) -> None:
        super().__init__()
        self.units = torch.nn.Identity()

    @property
    def layer_names(self) -> list[str]:
        return ["units"]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.check_latents(z)
        maps = torch.ones(len(z), 6, 8, 8) * (1.0 + 0.1 * z[:, :1, None, None].abs())
        a = self.units(maps)
        r = torch.tanh(2 * (a[:, 0] + a[:, 1] - 1.0))
        return torch.stack([r, -r, torch.zeros_like(r)], dim=1)


class TinySeg(segmenters.Segmenter):
    """Soft, differentiable 'red' vs 'other' scores from the red channel (times ``scale``: a
    small scale makes 'red' a rare concept with small gradients); a tiny weighted net."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.labels, self.categories = ["red", "other"], ["color", "color"]
        self.scale = scale
        self.net = torch.nn.Linear(1, 1)
        with torch.no_grad():
            self.net.weight.fill_(1.0)
            self.net.bias.fill_(0.0)

    def concept_probs(self, images: torch.Tensor) -> torch.Tensor:
        x = self.net(images[:, :1, ..., None])[..., 0][:, 0]
        p = self.scale * torch.sigmoid(8 * x)
        return torch.stack([p, 1 - p], dim=1)

    def _segment_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self.concept_probs(images) > 0.5


def test_optimized_alpha_finds_the_causal_units() -> None:
    gen, seg = TinyGen(), TinySeg()
    rank = optimize_alpha(gen, seg, "red", "units", samples=8, seed=0, steps=60, lr=0.1,
                          l1=0.01, batch_size=8)
    assert set(rank.top(2)) == {0, 1}
    assert (rank.scores[2:] == 0).all() and (rank.scores[:2] > 0.4).all()
    with pytest.raises(TypeError, match="concept_probs"):
        optimize_alpha(gen, segmenters.load("planted"), "sky", "units", samples=2)


def test_optimized_alpha_is_scale_free_and_leaves_weights_alone() -> None:
    """A rare concept (soft scores x 0.01) gets the same units: the objective is relative to
    the unedited score, so its small gradients are not drowned by the l1 price (with the raw
    score every alpha collapsed to 0 on the bundled GAN). Weights get no gradients and keep
    their requires_grad flags."""
    gen, seg = TinyGen(), TinySeg(scale=0.01)
    rank = optimize_alpha(gen, seg, "red", "units", samples=8, seed=0, steps=60, lr=0.1,
                          l1=0.01, batch_size=8)
    assert set(rank.top(2)) == {0, 1} and (rank.scores[:2] > 0.4).all()
    assert (rank.scores[2:] == 0).all()
    assert all(p.requires_grad and p.grad is None for p in seg.net.parameters())
    losses: list[float] = []
    optimize_alpha(gen, seg, "red", "units", samples=8, seed=0, steps=1, init=0.0, l1=0.01,
                   batch_size=8, progress=lambda step, loss: losses.append(loss))
    assert losses == [pytest.approx(1.0)]  # unedited: after / before = 1, no l1 at alpha = 0
    with pytest.raises(ValueError, match="steps must be >= 1"):
        optimize_alpha(gen, seg, "red", "units", samples=2, steps=0)
    absent = TinySeg(scale=0.0)
    with pytest.raises(ValueError, match="absent"):
        optimize_alpha(gen, absent, "red", "units", samples=2, steps=1)


def test_multi_concept_measure_and_ace_match_single_concept(
        gen: models.Generator, seg: segmenters.Segmenter) -> None:
    sets = [[Edit("layout", [gen.planted_units["tree"]])], [Edit("layout", [0, 5])]]
    concepts = ["tree", "sky", "crown"]
    before, after = measure_concepts(gen, seg, sets, samples=10, seed=2, concepts=concepts,
                                     batch_size=4)
    assert before.shape == (10, 3) and after.shape == (2, 10, 3)
    for j, c in enumerate(concepts):
        b, a = measure(gen, seg, c, sets, samples=10, seed=2, batch_size=3)
        np.testing.assert_allclose(before[:, j], b[0])
        np.testing.assert_allclose(after[:, :, j], a)
    multi = single_unit_ace_concepts(gen, seg, concepts, "layout", samples=6, seed=1)
    for c in concepts:
        one = single_unit_ace(gen, seg, c, "layout", samples=6, seed=1)
        np.testing.assert_allclose(multi[c].scores, one.scores)
        assert multi[c].order == one.order


def test_ace_and_iou_rankings(gen: models.Generator, seg: segmenters.Segmenter) -> None:
    rank = single_unit_ace(gen, seg, "tree", "layout", samples=16, seed=0)
    p = gen.planted_units
    assert rank.top(2) == [p["tree"], p["crown"]] or rank.top(2) == [p["crown"], p["tree"]]
    assert rank.scores[p["tree"]] > 0.02 and all(rank.scores[u] == 0
                                                 for u in gen.distractor_units)
    fake = SimpleNamespace(layer="layout", labels=list(CONCEPTS),
                           score=np.eye(20, len(CONCEPTS))[:, :])
    assert rank_by_iou(fake, "sky").order[0] == 0  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no concept 'dragon'"):
        rank_by_iou(fake, "dragon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be in 1..20"):
        rank.top(21)


def test_sweep_is_monotone_for_ranked_units_and_flat_for_random(
        gen: models.Generator, seg: segmenters.Segmenter, tmp_path: Path) -> None:
    p = gen.planted_units
    order = [p["crown"], p["trunk"], p["tree"]]
    sweep = effect_sweep(gen, seg, "tree", "layout", {"given": order}, [1, 2, 3], samples=10)
    rel = [e.relative for e in sweep["given"]]
    assert rel[0] < -0.5 and rel[2] <= -0.99 and rel[0] >= rel[1] >= rel[2]
    assert all(not set(e.units) & set(order[:k]) for k, e in zip([1, 2, 3], sweep["random"],
                                                                strict=True))
    assert plot_sweep(sweep, [1, 2, 3], tmp_path / "s.png").stat().st_size > 0


def test_insertion_heatmap_follows_context(gen: models.Generator,
                                          seg: segmenters.Segmenter) -> None:
    """A door unit alone paints doors only on houses; with the house unit, everywhere."""
    door = insertion_heatmap(gen, seg, "door", [gen.planted_units["door"]], "layout",
                             samples=6, seed=0, size=8, replacement=1.0)
    z = gen.sample_latents(6, seed=0)
    house = seg.segment(gen(z))[:, CONCEPTS.index("house")].float()
    cover = F.avg_pool2d(house[:, None], 16)[:, 0].mean(0).numpy()
    assert door.success.shape == (4, 4)
    assert (door.success[cover == 0] == 0).all()
    assert np.corrcoef(cover.ravel(), door.success.ravel())[0, 1] > 0.9
    both = insertion_heatmap(gen, seg, "door", [gen.planted_units["house"],
                                                gen.planted_units["door"]], "layout",
                             samples=6, seed=0, size=8, replacement=1.0)
    assert both.success.min() > 0.5
