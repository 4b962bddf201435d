"""Dissection of a model on a probe set (Network Dissection of classifiers): the engine's
statistics fed by ground-truth masks, against brute force (plain and category-conditioned IoU),
bit-identical with workers and after a resume; the random-rotation baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import Interrupt, assert_identical
from torch import nn

from gandissect.common.hooks import Trace
from gandissect.dissection.engine import brute_force, dissect, dissect_probe
from gandissect.dissection.probe import ProbeModel, is_probe
from gandissect.dissection.rotation import Rotated, random_rotation

torch.set_num_threads(1)


class StripesProbe:
    """Deterministic probe set: image i has a bright vertical band (concept "band", category
    "object") at a position set by i, its left or right half is "left"/"right" ("part",
    labelled only in every third image), and "dark" marks pixels darker than 0.2."""

    labels = ["band", "left", "right", "dark"]
    categories = ["object", "part", "part", "object"]
    image_size = (16, 16)
    mask_size = (8, 8)

    def __init__(self, n: int = 48) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def describe(self) -> dict[str, Any]:
        return {"name": "stripes", "size": self.n}

    def _image(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 + i)
        img = torch.rand(3, 16, 16, generator=g) * 0.5
        x = (i * 5) % 13
        img[:, :, x:x + 3] = 0.9
        return img

    def images(self, start: int, n: int) -> torch.Tensor:
        if start < 0 or start + n > self.n:
            raise IndexError(start)
        return torch.stack([self._image(i) for i in range(start, start + n)])

    def masks(self, start: int, n: int) -> torch.Tensor:
        imgs = self.images(start, n)
        small = F.interpolate(imgs, size=(8, 8), mode="area").mean(1)      # [n, 8, 8]
        out = torch.zeros(n, 4, 8, 8, dtype=torch.bool)
        out[:, 0] = small > 0.6
        for k, i in enumerate(range(start, start + n)):
            if i % 3 == 0:
                out[k, 1, :, :4] = True
                out[k, 2, :, 4:] = True
        out[:, 3] = small < 0.2
        return out


class TinyCNN(nn.Module):
    """Three named conv layers and a linear head: a stand-in classifier."""

    layer_names = ["conv1", "conv2", "conv3"]

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(8, 5, 3, stride=2, padding=1)
        self.head = nn.Linear(5, 3)

    def layer(self, name: str) -> nn.Module:
        if name not in self.layer_names:
            raise ValueError(f"unknown layer {name!r}; valid layers: {self.layer_names}")
        return self.get_submodule(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.head(h.mean((2, 3)))


def brute(model: nn.Module, probe: StripesProbe, layer: str, quantile: float,
          conditioned: bool) -> np.ndarray:
    """IoU ``[U, C]`` by counting over every pixel (category-conditioned: the union only over
    images where some concept of the concept's category has a pixel)."""
    with torch.no_grad(), Trace(model, [layer]) as tr:
        model(probe.images(0, len(probe)))
    masks = probe.masks(0, len(probe))
    up = F.interpolate(tr[layer].float(), size=probe.mask_size, mode="bilinear",
                       align_corners=False)
    t, iou = brute_force(up, masks, quantile)
    if not conditioned:
        return iou
    on = up > torch.from_numpy(t).float()[None, :, None, None]
    out = np.zeros_like(iou)
    for c, cat in enumerate(probe.categories):
        same = [k for k, other in enumerate(probe.categories) if other == cat]
        present = masks[:, same].flatten(1).any(1)                          # [N]
        m = masks[present, c].double()
        a = on[present].double()
        inter = (a * m[:, None]).sum((0, 2, 3))
        union = a.sum((0, 2, 3)) + m.sum() - inter
        out[:, c] = torch.where(union > 0, inter / union.clamp(min=1), 0.0).numpy()
    return out


def test_a_probe_is_told_apart_from_a_segmenter() -> None:
    from tiny import TinySegmenter
    assert is_probe(StripesProbe()) and not is_probe(TinySegmenter())
    with pytest.raises(TypeError, match="not a probe set"):
        ProbeModel(TinyCNN(), TinySegmenter())
    with pytest.raises(TypeError, match="needs a probe set"):
        dissect_probe(TinyCNN(), TinySegmenter(), "conv2")


@pytest.mark.parametrize("conditioned", [False, True])
@pytest.mark.parametrize("layer", ["conv2", "conv3"])
def test_probe_dissection_equals_brute_force(layer: str, conditioned: bool) -> None:
    model, probe = TinyCNN(), StripesProbe()
    res = dissect_probe(model, probe, layer, quantile=0.05, batch_size=10,
                        category_conditioned=conditioned)[layer]
    ref = brute(model, probe, layer, 0.05, conditioned)
    assert res.iou.shape == ref.shape == (model.get_submodule(layer).out_channels, 4)
    assert np.abs(res.iou - ref).max() <= 1e-3
    assert ref.max() > 0.05
    assert res.labels == probe.labels and res.categories == probe.categories
    masks = probe.masks(0, len(probe))
    assert res.concept_pixels.tolist() == masks.sum((0, 2, 3)).tolist()


def test_conditioning_changes_part_scores_only() -> None:
    """Parts are labelled in a third of the images: conditioning shrinks their unions (IoU
    rises or stays), objects are present everywhere and keep their IoU exactly."""
    model, probe = TinyCNN(), StripesProbe()
    plain = dissect_probe(model, probe, "conv2", quantile=0.05, category_conditioned=False)
    cond = dissect_probe(model, probe, "conv2", quantile=0.05)           # the default
    a, b = plain["conv2"].iou, cond["conv2"].iou
    assert cond["conv2"].meta["category_conditioned"] is True
    assert np.array_equal(a[:, [0, 3]], b[:, [0, 3]])
    assert (b[:, [1, 2]] >= a[:, [1, 2]] - 1e-12).all() and (b[:, [1, 2]] > a[:, [1, 2]]).any()


def test_probe_dissection_workers_and_resume_are_bit_identical(tmp_path: Path) -> None:
    model, probe = TinyCNN(), StripesProbe()
    kw: dict[str, Any] = dict(quantile=0.05, batch_size=8)
    one = dissect_probe(model, probe, ["conv2", "conv3"], **kw)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as ex:
        assert_identical(one, dissect_probe(model, probe, ["conv2", "conv3"], executor=ex,
                                            workers=2, **kw))

    calls = []

    def stop(phase: int, done: int) -> None:
        calls.append(done)
        if phase == 2 and done >= 24:
            raise Interrupt
    with pytest.raises(Interrupt):
        dissect_probe(model, probe, ["conv2", "conv3"], out=tmp_path, on_batch=stop,
                      checkpoint_seconds=0, **kw)
    assert_identical(one, dissect_probe(model, probe, ["conv2", "conv3"], out=tmp_path, **kw))


def test_probe_bad_inputs_are_clear(tmp_path: Path) -> None:
    model, probe = TinyCNN(), StripesProbe(20)
    with pytest.raises(ValueError, match="probe set has 20 images"):
        dissect_probe(model, probe, "conv2", samples=30)
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        dissect_probe(model, probe, "conv9")

    class Broken(StripesProbe):
        def masks(self, start: int, n: int) -> torch.Tensor:
            return super().masks(start, n)[:, :3]
    with pytest.raises(ValueError, match=r"expected \[.*, 4, 8, 8\] bool"):
        dissect_probe(model, Broken(20), "conv2")

    other = StripesProbe(20)
    dissect_probe(model, other, "conv2", out=tmp_path)
    from gandissect.dissection.config import DissectMismatchError
    with pytest.raises(DissectMismatchError):          # other probe content, same folder
        dissect_probe(model, StripesProbe(21), "conv2", samples=20, out=tmp_path)


def test_random_rotation_is_orthogonal_and_seeded() -> None:
    q = random_rotation(7, seed=4)
    assert torch.allclose(q @ q.T, torch.eye(7), atol=1e-5)
    assert torch.equal(q, random_rotation(7, seed=4))
    assert not torch.allclose(q, random_rotation(7, seed=5))


def test_rotated_layer_dissects_the_rotated_basis() -> None:
    """Dissecting ``Rotated(model, layer, seed)`` equals brute force on ``Q @ a``; the
    wrapped model is left untouched, and other layers are unchanged."""
    model, probe = TinyCNN(), StripesProbe()
    rot = Rotated(model, "conv2", seed=1)
    assert rot.layer_names == model.layer_names and rot.rotation.shape == (8, 8)
    res = dissect_probe(rot, probe, ["conv2", "conv3"], quantile=0.05,
                        category_conditioned=False)
    with torch.no_grad(), Trace(model, ["conv2"]) as tr:
        model(probe.images(0, len(probe)))
    a = torch.einsum("uv,nvhw->nuhw", rot.rotation, tr["conv2"])
    up = F.interpolate(a, size=probe.mask_size, mode="bilinear", align_corners=False)
    _, ref = brute_force(up, probe.masks(0, len(probe)), 0.05)
    assert np.abs(res["conv2"].iou - ref).max() <= 1e-3
    plain = dissect_probe(model, probe, "conv2", quantile=0.05, category_conditioned=False)
    assert not np.allclose(plain["conv2"].iou, res["conv2"].iou)
    assert not model._forward_hooks and not model.conv2._forward_hooks   # nothing left behind
    with pytest.raises(ValueError, match="unknown layer"):
        Rotated(model, "nope", seed=0)


def test_several_layers_rotate_at_once() -> None:
    """Two rotated layers in one wrapper: each dissected layer is the rotation of the original
    network's layer (rotating conv2 does not change what conv3 computes), and the model's own
    output is unchanged."""
    model, probe = TinyCNN(), StripesProbe()
    rot = Rotated(model, ["conv2", "conv3"], seed=2)
    assert rot.rotation_of("conv3").shape == (5, 5) and torch.equal(
        rot.rotation, rot.rotation_of("conv2"))
    res = dissect_probe(rot, probe, ["conv2", "conv3"], quantile=0.05,
                        category_conditioned=False)
    with torch.no_grad(), Trace(model, ["conv2", "conv3"]) as tr:
        logits = model(probe.images(0, len(probe)))
    with torch.no_grad():
        assert torch.equal(rot(probe.images(0, len(probe))), logits)
    masks = probe.masks(0, len(probe))
    for layer in ("conv2", "conv3"):
        turned = torch.einsum("uv,nvhw->nuhw", rot.rotation_of(layer), tr[layer])
        up = F.interpolate(turned, size=probe.mask_size, mode="bilinear", align_corners=False)
        _, ref = brute_force(up, masks, 0.05)
        assert np.abs(res[layer].iou - ref).max() <= 1e-3
    with torch.no_grad(), Trace(model, ["conv2"]) as plain:
        model(probe.images(0, 4))
    with torch.no_grad(), Trace(rot, ["conv2"]) as turned:
        rot(probe.images(0, 4))
    assert torch.allclose(turned["conv2"], torch.einsum("uv,nvhw->nuhw", rot.rotation,
                                                        plain["conv2"]), atol=1e-5)
    with pytest.raises(ValueError, match="distinct layers"):
        Rotated(model, ["conv2", "conv2"], seed=0)
    with pytest.raises(ValueError, match="2 unit counts for 1 layers"):
        Rotated(model, "conv2", seed=0, units=[8, 8])


def test_generator_dissection_is_unchanged_by_the_probe_path() -> None:
    """A generator with a segmenter still runs the generator + segmenter path."""
    from tiny import TinyGenerator, TinySegmenter, check_against_brute_force
    gen, seg = TinyGenerator(), TinySegmenter()
    res = dissect(gen, seg, "a", samples=30, seed=2, batch_size=10)
    check_against_brute_force(gen, seg, "a", res["a"], 30, 2)


class PlantedProbe:
    """Images whose channel c *is* concept c's mask (each covering exactly 5% of all pixels:
    a 1x5 strip in a 10x10 image), at a random place per image."""

    labels, categories = ["a", "b", "c"], ["object", "object", "object"]
    image_size = mask_size = (10, 10)

    def __len__(self) -> int:
        return 40

    def masks(self, start: int, n: int) -> torch.Tensor:
        out = torch.zeros(n, 3, 10, 10, dtype=torch.bool)
        for k, i in enumerate(range(start, start + n)):
            g = torch.Generator().manual_seed(i)
            for c in range(3):
                r, col = torch.randint(0, 10, (1,), generator=g), torch.randint(0, 6, (1,),
                                                                                generator=g)
                out[k, c, int(r), int(col):int(col) + 5] = True
        return out

    def images(self, start: int, n: int) -> torch.Tensor:
        return self.masks(start, n).float()


@pytest.mark.parametrize("threshold", ["quantile", "iqr"])
def test_planted_units_are_recovered_on_a_probe_set(threshold: str) -> None:
    """A model whose unit c is concept c's mask of its input: each unit gets its own concept
    with IoU 1 under both thresholding rules."""
    model = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3)[:, :, None, None])
    holder = nn.Sequential()
    holder.add_module("units", model)
    res = dissect_probe(holder, PlantedProbe(), "units", quantile=0.05, threshold=threshold,
                        category_conditioned=False)["units"]
    assert res.unit_labels == ["a", "b", "c"]
    assert np.allclose(res.best_iou, 1.0)
