"""Unit ablation on a classifier's accuracy: single-unit drops equal an independent computation
(the unit's weights zeroed in a copy), a class whose evidence sits in known units collapses when
they are zeroed while the others keep their accuracy, and random units do less."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gandissect.intervention.accuracy import (
    ablation_curves,
    class_logits,
    per_class_accuracy,
    plot_ablation_curves,
    unit_concepts,
    unit_importance,
)

torch.set_num_threads(1)


class ColourNet(nn.Module):
    """Class k = the image's dominant colour channel. Unit u of ``feat`` reads channel u % 3
    (units 0..5 carry the evidence, two per class), units 6..9 read noise; the head sums each
    class's two units."""

    classes = ["red", "green", "blue"]

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv2d(3, 10, 1)
        self.head = nn.Linear(10, 3)
        with torch.no_grad():
            self.feat.weight.zero_()
            self.feat.bias.zero_()
            for u in range(6):
                self.feat.weight[u, u % 3] = 1.0 + 0.1 * u
            g = torch.Generator().manual_seed(0)
            self.feat.weight[6:] = 0.05 * torch.randn(4, 3, 1, 1, generator=g)
            self.head.weight.zero_()
            self.head.bias.zero_()
            for u in range(6):
                self.head.weight[u % 3, u] = 1.0
            self.head.weight[:, 6:] = 0.01

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.feat(x)).mean((2, 3)))


def colour_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = 0.3 * torch.rand(n, 3, 6, 6, generator=g)
    images[torch.arange(n), labels] += 0.5
    return images, labels


def test_single_unit_drops_equal_zeroed_weights() -> None:
    model = ColourNet()
    images, labels = colour_data(60, 1)
    imp = unit_importance(model, "feat", images, labels)
    assert imp.classes == ["red", "green", "blue"] and imp.drop.shape == (3, 10)
    base = per_class_accuracy(class_logits(model, images), labels, 3)
    assert np.allclose(imp.base_accuracy, base) and np.allclose(base, 1.0)
    for u in (0, 4, 7):
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.feat.weight[u] = 0
            other.feat.bias[u] = 0
        logits = class_logits(other, images)
        assert np.allclose(imp.drop[:, u], base - per_class_accuracy(logits, labels, 3))
        own = logits.gather(1, labels[:, None])[:, 0]
        ref = [(class_logits(model, images).gather(1, labels[:, None])[:, 0] - own)[labels == k]
               .double().mean().item() for k in range(3)]
        assert np.allclose(imp.logit_drop[:, u], ref, atol=1e-6)
    # evidence units first, in order of their weight (logit drop breaks accuracy ties)
    assert imp.ranking("red")[:2].tolist() == [3, 0]
    assert imp.ranking(2)[:2].tolist() == [5, 2]


def test_top_units_destroy_their_class_only_and_beat_random() -> None:
    model = ColourNet()
    rank_imgs, rank_labels = colour_data(60, 1)
    imp = unit_importance(model, "feat", rank_imgs, rank_labels)
    images, labels = colour_data(90, 2)                      # measured on other images
    curves = ablation_curves(model, imp, images, labels, ks=(1, 2, 4), draws=6, seed=3)
    assert set(curves) == {"red", "green", "blue"}
    for c in curves.values():
        assert c.ks == [1, 2, 4] and c.base_accuracy == 1.0
        assert c.accuracy[1] == 0.0                          # both evidence units off
        assert c.others[1] == 1.0                            # the other classes untouched
        assert c.random_accuracy.shape == (6, 3)
        assert c.random_accuracy[:, 1].mean() > c.accuracy[1] + 0.3
    again = ablation_curves(model, imp, images, labels, ks=(1, 2, 4), draws=6, seed=3)
    assert np.array_equal(again["red"].random_accuracy, curves["red"].random_accuracy)


def test_plot_and_concepts(tmp_path: Path) -> None:
    from tiny import TinyGenerator, TinySegmenter

    from gandissect.dissection.engine import dissect
    model = ColourNet()
    images, labels = colour_data(30, 1)
    imp = unit_importance(model, "feat", images, labels)
    curves = ablation_curves(model, imp, images, labels, ks=(1, 2), draws=2)
    p = plot_ablation_curves(curves, tmp_path / "curves.png", title="t")
    assert p.stat().st_size > 5000
    res = dissect(TinyGenerator(), TinySegmenter(), "a", samples=20, seed=0)["a"]
    rows = unit_concepts(res, [0, 1])
    assert [r["unit"] for r in rows] == [0, 1]
    assert rows[0]["label"] == res.unit_labels[0]
    with pytest.raises(ValueError, match="not in layer"):
        unit_concepts(res, [res.units])


def test_bad_inputs_are_clear() -> None:
    model = ColourNet()
    images, labels = colour_data(12, 1)
    with pytest.raises(ValueError, match="labels must be"):
        unit_importance(model, "feat", images, labels[:5])
    with pytest.raises(ValueError, match="class indices in 0..2"):
        unit_importance(model, "feat", images, labels + 5)
    with pytest.raises(ValueError, match="unknown layer"):
        unit_importance(model, "nope", images, labels)
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        unit_importance(model, "feat", bad, labels)
    imp = unit_importance(model, "feat", images, labels)
    with pytest.raises(ValueError, match="unknown class 'purple'"):
        imp.ranking("purple")
    with pytest.raises(ValueError, match="ks must hold"):
        ablation_curves(model, imp, images, labels, ks=(0, 50))


class ColourProbe:
    """The colour images above with a mask per colour: where that channel is the pixel's
    largest."""

    labels, categories = ["red-c", "green-c", "blue-c"], ["color"] * 3
    image_size = mask_size = (6, 6)

    def __init__(self) -> None:
        self.x, _ = colour_data(30, 4)

    def __len__(self) -> int:
        return 30

    def images(self, start: int, n: int) -> torch.Tensor:
        return self.x[start:start + n]

    def masks(self, start: int, n: int) -> torch.Tensor:
        top = self.x[start:start + n].argmax(1)
        return torch.stack([top == c for c in range(3)], 1)


def test_explanation_is_weight_times_mean_activation() -> None:
    """For a pooled linear head, gradient x activation of a unit is its head weight times its
    mean (post-ReLU) activation; the best units of a red image are the red evidence units,
    labelled red by a probe dissection, and the model keeps no gradients."""
    from gandissect.dissection.engine import dissect_probe
    from gandissect.intervention.accuracy import explain_prediction, plot_explanation

    model = ColourNet()
    images, labels = colour_data(6, 9)
    res = dissect_probe(model, ColourProbe(), "feat", quantile=0.1)["feat"]
    exp = explain_prediction(model, "feat", images[0], res, top=3)
    assert exp.cls == "red" and labels[0] == 0 and 0 < exp.probability <= 1
    with torch.no_grad():
        feat = torch.relu(model.feat(images[:1]))[0].mean((1, 2))
        ref = model.head.weight[0] * feat
    assert np.allclose(exp.contributions, ref[exp.units].numpy(), atol=1e-6)
    assert exp.units[:2] == [3, 0] and exp.contributions == sorted(exp.contributions)[::-1]
    assert exp.labels[:2] == ["red-c", "red-c"] and exp.masks.shape == (3, 6, 6)
    assert exp.masks[0].any()
    assert all(p.grad is None for p in model.parameters())
    assert not model.feat._forward_hooks
    blue = explain_prediction(model, "feat", images[0], top=2, cls=2)
    assert blue.cls == "blue" and set(blue.units) == {5, 2}
    assert blue.labels == [] and blue.masks.shape == (0, 6, 6)
    with pytest.raises(ValueError, match="out of range"):
        explain_prediction(model, "feat", images[0], cls=7)
    with pytest.raises(ValueError, match="tensor \\[3, H, W\\]"):
        explain_prediction(model, "feat", images[:2])
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        assert plot_explanation(images[0], exp, Path(d) / "e.png").stat().st_size > 3000
