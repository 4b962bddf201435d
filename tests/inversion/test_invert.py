"""Photo inversion on the bundled Toyworld generator: stages improve the reconstruction, the
shared generator is never touched, edits act on the inverted features, composites keep the
photo outside the change."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import models
from gandissect.common.hooks import Trace
from gandissect.intervention.edit import ablation
from gandissect.inversion.invert import (
    Inversion,
    InversionSettings,
    _render,
    adaptable_parameters,
    invert,
    psnr,
)
from gandissect.inversion.photo import load_photo
from models.toyworld.render import render_batch

FAST = InversionSettings(optimize_steps=25, adapt_steps=25, candidates=4)


@pytest.fixture(scope="module")
def gen() -> models.Generator:
    return models.load("toyworld")


@pytest.fixture(scope="module")
def scene() -> torch.Tensor:
    images, _ = render_batch(4242, 0, 1)  # a held-out rendered scene plays the photo
    return torch.from_numpy(images[0])


@pytest.fixture(scope="module")
def inverted(gen, scene) -> tuple[Inversion, dict, dict]:
    params = {n: p.detach().clone() for n, p in gen.named_parameters()}
    flags = {n: p.requires_grad for n, p in gen.named_parameters()}
    return invert(gen, scene, settings=FAST), params, flags


def test_stages_improve_the_reconstruction(inverted):
    inv, _, _ = inverted
    assert set(inv.psnr) == {"encoder", "optimize", "adapt"}
    assert inv.psnr["optimize"] > inv.psnr["encoder"] + 3
    assert inv.psnr["adapt"] > inv.psnr["optimize"]
    assert math.isclose(psnr(inv.render()[0], inv.photo), inv.psnr["adapt"], rel_tol=1e-5)
    assert all(s >= 0 for s in inv.seconds.values())


def test_the_shared_generator_is_never_modified(gen, inverted):
    inv, params, flags = inverted
    inv.render([ablation("layer4", list(range(10)))])
    for n, p in gen.named_parameters():
        assert torch.equal(p, params[n]), n
        assert p.requires_grad == flags[n] and p.grad is None, n
    assert not any(m._forward_hooks for m in gen.modules())
    # frozen parameters share the original storage; adapted ones are private
    own = dict(inv.model.named_parameters())
    for n, p in gen.named_parameters():
        same = own[n].data_ptr() == p.data_ptr()
        assert same == (n not in inv.adapted), n
    assert inv.state_nbytes() == sum(own[n].numel() * 4 for n in inv.adapted) + \
        inv.features.numel() * 4


def test_adapted_parameters_are_the_ones_after_the_layer(gen):
    names = adaptable_parameters(gen, "layer4")
    assert names and all(n.split(".")[0] in {"layer5", "layer6", "layer7", "layer8", "output"}
                         for n in names)
    assert len(adaptable_parameters(gen, "layer8")) < len(names)
    with pytest.raises(ValueError, match="layer"):
        adaptable_parameters(gen, "layer99")


def test_adapt_after_leaves_the_layers_up_to_it_original(gen, scene):
    settings = replace(FAST, layer="layer3", adapt_after="layer5", optimize_steps=5,
                       adapt_steps=5)
    inv = invert(gen, scene, settings=settings)
    assert inv.layer == "layer3"
    assert inv.adapted == adaptable_parameters(gen, "layer5")
    assert not any(n.startswith(("layer4.", "layer5.")) for n in inv.adapted)
    own = dict(inv.model.named_parameters())
    for n, p in gen.named_parameters():
        changed = not torch.equal(own[n], p)
        assert changed <= (n in inv.adapted), f"{n} changed but was not to be adapted"
    assert any(not torch.equal(own[n], dict(gen.named_parameters())[n]) for n in inv.adapted)
    # the edited layer's features are what the original generator computes from the
    # optimised ones, while the adapted layers after it render a different image
    original = replace(inv, model=gen, adapted=())
    with Trace(inv.model, ["layer5"]) as ours, Trace(gen, ["layer5"]) as theirs:
        mine, plain = inv.render(), original.render()
    assert torch.equal(ours["layer5"], theirs["layer5"])
    assert not torch.equal(mine, plain)
    with pytest.raises(ValueError, match="comes before the inverted layer"):
        invert(gen, scene, settings=replace(settings, layer="layer4", adapt_after="layer2"))
    with pytest.raises(ValueError, match="layer99"):
        invert(gen, scene, settings=replace(settings, adapt_after="layer99"))


def test_a_generated_image_with_its_latent_is_recovered_exactly(gen):
    z = gen.sample_latents(1, seed=5)
    with torch.no_grad():
        photo = gen(z)[0]
    inv = invert(gen, photo, encoder=lambda x: z,
                 settings=InversionSettings(optimize_steps=0, adapt_steps=0))
    assert inv.psnr["encoder"] == math.inf and inv.psnr["adapt"] == math.inf
    assert torch.equal(inv.render(), photo[None])


def test_edits_act_on_the_inverted_features(inverted):
    inv, _, _ = inverted
    units = list(range(0, 256, 2))
    edited = inv.render([ablation("layer4", units)])
    zeroed = inv.features.clone()
    zeroed[:, units] = 0
    with torch.no_grad():
        expected = _render(inv.model, inv.layer, inv.latent, zeroed)
    assert torch.allclose(edited, expected, atol=1e-6)
    assert (edited - inv.render()).abs().mean() > 0.01


def test_composite_keeps_the_photo_outside_the_change(inverted):
    inv, _, _ = inverted
    assert torch.equal(inv.composite(inv.render()), inv.photo[None])
    mask = torch.zeros(8, 8)
    mask[:3, :3] = 1  # top-left corner of the 8x8 layer only
    edited = inv.render([ablation("layer4", list(range(256)), mask=mask)])
    out = inv.composite(edited)
    far = np.s_[..., 40:, 40:]  # far from the edited corner
    assert torch.equal(out[far], inv.photo[None][far])
    changed = (out - inv.photo[None]).abs().amax(dim=1)[0] > 0
    assert changed[:24, :24].any() and not changed[40:, 40:].any()


def test_bad_inputs_are_refused(gen, scene):
    with pytest.raises(ValueError, match="64x64"):
        invert(gen, torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        invert(gen, torch.full((3, 64, 64), float("nan")))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        invert(gen, torch.full((3, 64, 64), 3.0))
    with pytest.raises(ValueError, match="\\[3, H, W\\]"):
        invert(gen, torch.zeros(64, 64))
    with pytest.raises(ValueError, match="optimize_steps"):
        InversionSettings(optimize_steps=-1)
    with pytest.raises(ValueError, match="layer"):
        invert(gen, scene, settings=InversionSettings(layer="nope", optimize_steps=0))


def test_a_diverging_optimisation_says_so(gen, scene):
    class Broken(torch.nn.Module):  # a perceptual net gone wrong: the loss is NaN
        def forward(self, x):
            return [x * float("nan")]

    with pytest.raises(FloatingPointError, match="learning rate"):
        invert(gen, scene, features=Broken(), settings=InversionSettings(
            optimize_steps=3, adapt_steps=0, candidates=1))


def test_photos_are_read_from_files(gen, tmp_path, scene):
    from PIL import Image

    a = np.rint((scene.numpy().transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
    Image.fromarray(a).resize((128, 128), Image.Resampling.NEAREST).save(tmp_path / "p.png")
    inv = invert(gen, tmp_path / "p.png", settings=InversionSettings(
        optimize_steps=1, adapt_steps=0, candidates=1))
    assert torch.allclose(inv.photo, load_photo(tmp_path / "p.png", 64))
    assert (inv.photo - scene).abs().max() < 1 / 127.5 + 1e-6
