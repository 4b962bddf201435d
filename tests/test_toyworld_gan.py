"""Tests for the bundled Toyworld GAN: architecture, latents, loading checks, training script."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import models
from models import train_toyworld_gan as tr
from models.toyworld_gan import (
    G_LAYERS,
    WEIGHTS_DIR,
    ToyworldDiscriminator,
    ToyworldGenerator,
    load_discriminator,
    load_generator,
)

EXPECTED = {"layer1": (256, 4), "layer2": (256, 4), "layer3": (256, 8), "layer4": (256, 8),
            "layer5": (128, 16), "layer6": (128, 16), "layer7": (64, 32), "layer8": (32, 64)}


@pytest.fixture(scope="module")
def gen() -> ToyworldGenerator:
    torch.manual_seed(0)
    return ToyworldGenerator().eval()


def test_layer_names_and_shapes(gen: ToyworldGenerator) -> None:
    assert gen.layer_names == list(EXPECTED) == [name for name, *_ in G_LAYERS]
    seen: dict[str, tuple[int, ...]] = {}
    handles = [gen.layer(name).register_forward_hook(
        lambda _m, _i, out, name=name: seen.__setitem__(name, tuple(out.shape)))
        for name in gen.layer_names]
    try:
        with torch.no_grad():
            gen(gen.sample_latents(3, seed=0))
    finally:
        for h in handles:
            h.remove()
    assert seen == {name: (3, u, r, r) for name, (u, r) in EXPECTED.items()}
    with pytest.raises(ValueError, match="valid layers: layer1"):
        gen.layer("output")


def test_latents_deterministic_and_batch_independent(gen: ToyworldGenerator) -> None:
    a = gen.sample_latents(6, seed=5)
    b = torch.cat([gen.sample_latents(2, seed=5), gen.sample_latents(4, seed=5, start=2)])
    assert a.shape == (6, 128)
    assert torch.equal(a, b)
    assert not torch.equal(a, gen.sample_latents(6, seed=6))


def test_output_range_and_latent_checks(gen: ToyworldGenerator) -> None:
    with torch.no_grad():
        x = gen(torch.randn(4, 128, generator=torch.Generator().manual_seed(0)) * 3)
    assert x.shape == (4, 3, 64, 64)
    assert x.min() >= -1 and x.max() <= 1
    with pytest.raises(ValueError, match="expects latents of shape"):
        gen(torch.zeros(2, 64))


def test_discriminator_logit_per_image() -> None:
    d = ToyworldDiscriminator().eval()
    x = torch.rand(5, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        full, part = d(x), d(x[2:4])
    assert full.shape == (5,)
    torch.testing.assert_close(full[2:4], part)  # no batch dependence
    with pytest.raises(ValueError, match="expects images"):
        d(torch.zeros(1, 3, 32, 32))


def test_minibatch_stddev_discriminator() -> None:
    d = ToyworldDiscriminator(mbstd_group=4).eval()
    x = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        full = d(x)
        # Groups are {i, i+2, i+4, i+6}: the same groups give the same logits ...
        torch.testing.assert_close(d(x[[0, 2, 4, 6]]), full[[0, 2, 4, 6]])
        # ... identical images have zero spread, which the feature shows to the head.
        same = d(x[:1].expand(4, -1, -1, -1))
        single = d(x[:1])  # a batch of one is its own group: spread 0 as well
    torch.testing.assert_close(same, single.expand(4))
    assert not torch.allclose(full[0], single[0])
    with torch.no_grad():  # brute force: the head sees each group's mean feature spread
        h = d.features(x)
        std = [torch.stack([h[j] for j in range(i, 8, 2)]).var(0, unbiased=False).add(1e-8)
               .sqrt().mean() for i in range(2)]
        feat = torch.stack([torch.full((1, 4, 4), float(std[i % 2])) for i in range(8)])
        manual = d.head(torch.cat([h, feat], 1).flatten(1)).squeeze(1)
    torch.testing.assert_close(full, manual)
    with pytest.raises(ValueError, match="mbstd_group"):
        ToyworldDiscriminator(mbstd_group=-1)


def test_mbstd_discriminator_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert tr.main(_args(out, "--iters", "2", "--mbstd-group", "2", "--reuse-fake",
                         "--snapshot-every", "1")) == 0
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["iter_000001",
                                                                     "iter_000002"]
    weights = tmp_path / "weights"
    assert tr.main(["--out", str(out / "snapshots" / "iter_000001"), "--export",
                    "--weights-dir", str(weights), "--bn-batches", "1"]) == 0
    d = load_discriminator(weights=weights / "toyworld_gan_d.safetensors")
    assert d.mbstd_group == 2 and d(torch.zeros(2, 3, 64, 64)).shape == (2,)
    assert '"iterations": 1' in (weights / "toyworld_gan.json").read_text()
    from safetensors.torch import load_file
    stored = load_file(str(weights / "toyworld_gan_d.safetensors"))
    assert stored["head.weight"].dtype == torch.float16  # half-size files, float32 compute
    assert d.head.weight.dtype == torch.float32
    torch.testing.assert_close(d.head.weight, stored["head.weight"].float())


def test_loading_errors(tmp_path: Path) -> None:
    """Keys, shapes and NaN: tests/test_safe_load.py (one check and message for every loader)."""
    with pytest.raises(FileNotFoundError, match="not found"):
        load_generator(weights=tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage, not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_generator(weights=corrupt)
    d_state = ToyworldDiscriminator().state_dict()
    d_state["head.weight"] = torch.zeros(1, 7)
    bad_shape = tmp_path / "shape.safetensors"
    save_file(d_state, str(bad_shape))
    with pytest.raises(ValueError, match="Toyworld discriminator: mismatched shapes: head.weight"):
        load_discriminator(weights=bad_shape)


@pytest.mark.skipif(not (WEIGHTS_DIR / "toyworld_gan_g.safetensors").is_file(),
                    reason="shipped weights not exported yet")
def test_shipped_weights_load() -> None:
    g = models.load("toyworld")
    assert isinstance(g, ToyworldGenerator) and not g.training
    with torch.no_grad():
        x = g(g.sample_latents(4, seed=0))
    assert x.shape == (4, 3, 64, 64) and x.std() > 0.05  # not collapsed to a constant
    d = load_discriminator()
    assert d(x).shape == (4,)


def _args(out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--pool", "8", "--batch", "4", "--log-every", "1",
            "--r1-every", "2", *extra]


def test_training_smoke_resume_export(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert tr.main(_args(out, "--iters", "2")) == 0
    assert torch.load(out / tr.CHECKPOINT, weights_only=True)["iteration"] == 2
    assert tr.main(_args(out, "--iters", "3", "--resume")) == 0
    assert torch.load(out / tr.CHECKPOINT, weights_only=True)["iteration"] == 3
    log = (out / tr.LOG).read_text().splitlines()
    assert log[0].startswith("iteration,") and [r.split(",")[0] for r in log[1:]] == ["1", "2",
                                                                                       "3"]
    weights = tmp_path / "weights"
    assert tr.main(["--out", str(out), "--export", "--weights-dir", str(weights),
                    "--bn-batches", "2"]) == 0
    g = load_generator(weights=weights / "toyworld_gan_g.safetensors")
    load_discriminator(weights=weights / "toyworld_gan_d.safetensors")
    assert g(g.sample_latents(2, 0)).shape == (2, 3, 64, 64)
    assert '"iterations": 3' in (weights / "toyworld_gan.json").read_text()


def test_resume_is_same_as_uninterrupted(tmp_path: Path) -> None:
    tr.main(_args(tmp_path / "a", "--iters", "3"))
    tr.main(_args(tmp_path / "b", "--iters", "1"))
    tr.main(_args(tmp_path / "b", "--iters", "3", "--resume"))
    a = torch.load(tmp_path / "a" / tr.CHECKPOINT, weights_only=True)["g_ema"]
    b = torch.load(tmp_path / "b" / tr.CHECKPOINT, weights_only=True)["g_ema"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_resume_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tr.main(_args(tmp_path / "none", "--resume")) == 1
    assert "no checkpoint" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    torch.save({"iteration": 1}, tmp_path / "bad" / tr.CHECKPOINT)
    assert tr.main(_args(tmp_path / "bad", "--resume")) == 1
    assert "not a Toyworld GAN checkpoint" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    trainer = tr.Trainer(tr.Settings(pool=4, batch=2), tr.render_pool(0, 4))
    with torch.no_grad():
        trainer.d.head.bias.fill_(float("nan"))
    with pytest.raises(tr.TrainingDiverged, match="non-finite d_loss"):
        trainer.step()
    out = tmp_path / "run"
    assert tr.main(_args(out, "--iters", "1")) == 0
    # A forced divergence: poison the discriminator through the checkpoint and resume.
    state = torch.load(out / tr.CHECKPOINT, weights_only=True)
    state["d"]["head.bias"].fill_(float("nan"))
    torch.save(state, out / tr.CHECKPOINT)
    poisoned = (out / tr.CHECKPOINT).read_bytes()
    assert tr.main(_args(out, "--iters", "5", "--resume")) == 2
    assert "STOPPED" in capsys.readouterr().err
    assert (out / tr.CHECKPOINT).read_bytes() == poisoned  # untouched
