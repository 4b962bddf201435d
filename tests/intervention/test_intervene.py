"""Edits as data: the one rule, validation, and no leaks (also after exceptions)."""


import numpy as np
import pytest
import torch

import models
import segmenters
from gandissect.intervention.edit import (
    Edit,
    ablation,
    active_edits,
    apply_edits,
    clear_edits,
    insertion,
    intervene,
    layer_shape,
)
from models.toyworld import CONCEPTS


def _no_hooks(gen: torch.nn.Module) -> bool:
    return all(not m._forward_hooks for m in gen.modules())


def test_rule_matches_brute_force() -> None:
    torch.manual_seed(0)  # only for the test data
    a = torch.randn(3, 6, 4, 5)
    mask = torch.rand(4, 5)
    alpha = torch.tensor([0.5, 1.0])
    r = torch.tensor([2.0, -1.0])
    out = Edit("x", [4, 1], alpha=alpha, replacement=r, mask=mask).apply(a)
    want = a.clone()
    for k, u in enumerate([4, 1]):
        want[:, u] = a[:, u] * (1 - alpha[k] * mask) + r[k] * alpha[k] * mask
    torch.testing.assert_close(out, want)
    assert not torch.equal(out, a) and out.data_ptr() != a.data_ptr()
    # scalar defaults: ablation everywhere
    z = Edit("x", (2,)).apply(a)
    assert (z[:, 2] == 0).all() and torch.equal(z[:, [0, 1, 3, 4, 5]], a[:, [0, 1, 3, 4, 5]])
    # per-sample masks
    masks = torch.zeros(3, 4, 5)
    masks[1] = 1
    y = Edit("x", [0], mask=masks).apply(a)
    assert torch.equal(y[[0, 2]], a[[0, 2]]) and (y[1, 0] == 0).all()


def test_mask_of_other_size_is_resized_by_the_documented_rule() -> None:
    a = torch.ones(1, 2, 4, 4)
    big = torch.zeros(8, 8)
    big[:4, :4] = 1  # top-left quarter
    out = Edit("x", [0], mask=big).apply(a)
    torch.testing.assert_close(out[0, 0, :2, :2], torch.zeros(2, 2))
    torch.testing.assert_close(out[0, 0, 2:, 2:], torch.ones(2, 2))
    assert (out[0, 1] == 1).all()
    # an odd size is resized bilinearly: the corners stay exact, values stay in [0, 1]
    odd = torch.zeros(5, 5)
    odd[:2, :2] = 1
    out = Edit("x", [0], mask=odd).apply(a)
    assert out[0, 0, 0, 0] < 0.5 and out[0, 0, 3, 3] == 1 and out.min() >= 0


def test_bad_edits_give_clear_errors(gen: models.Generator) -> None:
    with pytest.raises(ValueError, match="valid layers: layout"):
        with intervene(gen, Edit("nope", [0])):
            pass
    with pytest.raises(ValueError, match="has 20 units"):
        with intervene(gen, Edit("layout", [3, 25])):
            pass
    with pytest.raises(ValueError, match=r"\[h, w\] or \[n, h, w\]"):
        Edit("layout", [0], mask=torch.ones(1, 1, 32, 32))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        Edit("layout", [0], mask=torch.full((32, 32), 2.0))
    with pytest.raises(ValueError, match="one value per unit"):
        Edit("layout", [0, 1], alpha=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="duplicate"):
        Edit("layout", [1, 1])
    with pytest.raises(ValueError, match="batch has 2 samples"):
        with intervene(gen, Edit("layout", [0], mask=torch.ones(3, 32, 32))):
            gen(gen.sample_latents(2, seed=0))
    assert _no_hooks(gen)


def test_intervene_is_temporary_and_never_leaks(gen: models.Generator) -> None:
    z = gen.sample_latents(6, seed=1)
    before = gen(z)
    assert layer_shape(gen, "layout") == (20, 32, 32)
    sky = gen.planted_units["sky"]
    with intervene(gen, ablation("layout", [sky])):
        edited = gen(z)
        assert not _no_hooks(gen)
    assert not torch.equal(edited, before)
    assert torch.equal(gen(z), before) and _no_hooks(gen)
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(gen, ablation("layout", [sky]), insertion("layout", [0], 1.0)):
            gen(z)
            raise RuntimeError("boom")
    assert torch.equal(gen(z), before) and _no_hooks(gen)
    # an error raised inside the forward pass also leaves nothing behind
    with pytest.raises(ValueError):
        with intervene(gen, Edit("layout", [0], mask=torch.ones(5, 32, 32))):
            gen(z)
    assert torch.equal(gen(z), before) and _no_hooks(gen)


def test_persistent_edits_only_when_asked(gen: models.Generator,
                                          seg: segmenters.Segmenter) -> None:
    z = gen.sample_latents(4, seed=3)
    before = gen(z)
    c = CONCEPTS.index("grass")
    h = apply_edits(gen, ablation("layout", [gen.planted_units["grass"]]))
    try:
        assert active_edits(gen) == list(h.edits)
        assert seg.segment(gen(z))[:, c].sum() == 0
        assert seg.segment(gen(z))[:, c].sum() == 0  # still there on the next call
    finally:
        h.remove()
    h.remove()  # idempotent
    assert torch.equal(gen(z), before) and _no_hooks(gen) and not active_edits(gen)
    apply_edits(gen, ablation("layout", [0]))
    apply_edits(gen, ablation("layout", [1]))
    assert clear_edits(gen) == 2 and _no_hooks(gen) and torch.equal(gen(z), before)


def test_edits_over_several_layers() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 1))
    x = torch.ones(1, 1, 2, 2)
    with intervene(net, Edit("0", [0, 1, 2]), Edit("2", [1], replacement=7.0)):
        out = net(x)
    bias = net[2].bias.detach()
    torch.testing.assert_close(out[0, 0], bias[0].expand(2, 2))
    assert (out[0, 1] == 7).all()
    assert _no_hooks(net)


def test_alpha_tensor_keeps_gradient(gen: models.Generator) -> None:
    alpha = torch.full((2,), 0.5, requires_grad=True)
    z = gen.sample_latents(2, seed=0)
    units = [gen.planted_units["sky"], gen.planted_units["grass"]]
    with intervene(gen, Edit("layout", units, alpha=alpha)):
        out = gen(z)
    out.sum().backward()
    assert alpha.grad is not None and alpha.grad.shape == (2,) and alpha.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": float("nan")}, "alpha must be finite"),
    ({"alpha": [1.0, float("nan")]}, "alpha must be finite"),
    ({"alpha": torch.tensor([0.5, float("nan")], requires_grad=True)}, "alpha must be finite"),
    ({"replacement": float("nan")}, "replacement must be finite"),
    ({"replacement": float("inf")}, "replacement must be finite"),
    ({"replacement": torch.tensor([1.0, -float("inf")])}, "replacement must be finite"),
])
def test_non_finite_alpha_or_replacement_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Edit("layout", [0, 1], **kwargs)
    with pytest.raises(ValueError, match=message):
        insertion("layout", [0, 1], kwargs.get("replacement", 1.0),
                  alpha=kwargs.get("alpha", 1.0))


@pytest.mark.parametrize("units", [1.7, [0, 1.7], [2.0], True, [0, True], [np.True_],
                                   [torch.tensor(True)], "12", ["3"], [torch.tensor(1.0)],
                                   np.float64(2.0), torch.tensor(True)])
def test_units_must_be_integers(units: object) -> None:
    with pytest.raises(TypeError, match="unit indices must be integers"):
        Edit("layout", units)  # type: ignore[arg-type]


def test_integer_unit_forms_still_work() -> None:
    want = (3, 1)
    for units in ([3, 1], (3, 1), np.array([3, 1]), np.array([3, 1], dtype=np.int32),
                  [np.int64(3), np.uint8(1)], torch.tensor([3, 1]), [torch.tensor(3), 1]):
        assert Edit("layout", units).units == want  # type: ignore[arg-type]
    assert Edit("layout", range(2)).units == (0, 1)
    assert Edit("layout", 4).units == (4,)  # type: ignore[arg-type]
    assert Edit("layout", np.int64(4)).units == (4,)  # type: ignore[arg-type]
    assert Edit("layout", torch.tensor(4)).units == (4,)  # type: ignore[arg-type]


def test_re_entering_one_intervene_is_refused_and_leaves_nothing(gen: models.Generator) -> None:
    z = gen.sample_latents(3, seed=2)
    before = gen(z)
    ctx = intervene(gen, ablation("layout", [gen.planted_units["sky"]]))
    with pytest.raises(RuntimeError, match=r"create a new intervene\(\.\.\.\) per `with`"):
        with ctx:
            edited = gen(z)
            with ctx:
                pass
    assert not torch.equal(edited, before)
    assert torch.equal(gen(z), before) and _no_hooks(gen)
    # the same misuse after an exception inside the inner block
    with pytest.raises(RuntimeError, match="already active"):
        with ctx:
            try:
                with ctx:
                    raise KeyError("never reached")
            finally:
                assert not _no_hooks(gen)  # the outer block is still editing here
    assert torch.equal(gen(z), before) and _no_hooks(gen)
    # one object may still serve blocks one after another
    for _ in range(2):
        with ctx:
            assert torch.equal(gen(z), edited)
        assert torch.equal(gen(z), before) and _no_hooks(gen)
    # an exception inside the block, then the object is reusable and nothing leaks
    with pytest.raises(ZeroDivisionError):
        with ctx:
            _ = 1 / 0
    assert torch.equal(gen(z), before) and _no_hooks(gen)
    with ctx:
        assert torch.equal(gen(z), edited)
    assert torch.equal(gen(z), before) and _no_hooks(gen)
