"""Tests for the bundled Toyworld GAN: architecture, latents, loading checks, training script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import models
from models import train_toyworld_gan as tr
from models.toyworld_gan import (
    G_LAYERS,
    UPSAMPLE_MODES,
    WEIGHTS_DIR,
    ToyworldDiscriminator,
    ToyworldGenerator,
    load_discriminator,
    load_generator,
)
from models.toyworld_training import render_pool

EXPECTED = {"layer1": (256, 4), "layer2": (256, 4), "layer3": (256, 8), "layer4": (256, 8),
            "layer5": (128, 16), "layer6": (128, 16), "layer7": (64, 32), "layer8": (32, 64)}


@pytest.fixture(scope="module", params=UPSAMPLE_MODES)
def gen(request: pytest.FixtureRequest) -> ToyworldGenerator:
    torch.manual_seed(0)
    return ToyworldGenerator(upsample=request.param).eval()


def test_layer_names_and_shapes(gen: ToyworldGenerator) -> None:
    assert gen.layer_names == list(EXPECTED) == [name for name, *_ in G_LAYERS]
    transposed = [m for m in gen.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(transposed) == (4 if gen.upsample == "transpose" else 0)
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


#: Generated pixel fractions of the shipped weights documented in models/TRAINING.md
#: ("Quality (shipped weights)", 2,000 samples of seed 0, the toyworld segmenter).
DOCUMENTED_RATES = {"sky": 0.3731, "cloud": 0.0356, "mountain": 0.0561, "grass": 0.3666,
                    "tree": 0.0647, "house": 0.0379, "water": 0.0196, "road": 0.0433,
                    "wall": 0.0177, "roof": 0.0160, "door": 0.0029, "trunk": 0.0041}


def test_shipped_weights_draw_the_documented_rates() -> None:
    """The shipped generator still draws what TRAINING.md says (rates of 400 of the same 2,000
    samples within sampling error), and its FSD against rendered scenes is far below an
    untrained generator's (0.958) and near the documented 0.0027."""
    import segmenters
    from gandissect.artifacts.quality import fsd_of, generated_fractions, rendered_fractions

    g, seg = models.load("toyworld"), segmenters.load("toyworld")
    gen = generated_fractions(g, seg, 400, 0, batch_size=100, progress=False)
    ref, _ = rendered_fractions(seg, 400, progress=False)
    for c, documented in DOCUMENTED_RATES.items():
        got = float(gen[:, seg.labels.index(c)].mean())
        assert abs(got - documented) <= 0.2 * documented + 0.004, (c, got, documented)
    assert 0.0005 < fsd_of(gen, ref) < 0.01


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


DECAY = ("--lr-decay-start", "1", "--lr-decay-end", "3")


@pytest.mark.parametrize(("extra", "first", "resumed"), [
    ((), (), ()),
    (DECAY, DECAY, ()),  # decay from the start
    (DECAY, (), DECAY[:2]),  # decay added when resuming at its start (end = --iters)
])
def test_resume_is_same_as_uninterrupted(tmp_path: Path, extra: tuple[str, ...],
                                         first: tuple[str, ...],
                                         resumed: tuple[str, ...]) -> None:
    assert tr.main(_args(tmp_path / "a", "--iters", "3", *extra)) == 0
    assert tr.main(_args(tmp_path / "b", "--iters", "1", *first)) == 0
    assert tr.main(_args(tmp_path / "b", "--iters", "3", "--resume", *resumed)) == 0
    sa = torch.load(tmp_path / "a" / tr.CHECKPOINT, weights_only=True)
    sb = torch.load(tmp_path / "b" / tr.CHECKPOINT, weights_only=True)
    for k in sa["g_ema"]:
        torch.testing.assert_close(sa["g_ema"][k], sb["g_ema"][k], rtol=1e-4, atol=1e-5)
    # Decay from iteration 1 to --iters 3: the third update used half the learning rate.
    want = 2e-4 if extra else 4e-4
    for s in (sa, sb):
        assert s["opt_g"]["param_groups"][0]["lr"] == pytest.approx(want)
        assert s["settings"]["lr_decay_end"] == (3 if extra else 0)


def test_lr_decay_schedule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = tr.Settings(lr_decay_start=2, lr_decay_end=6)
    assert [tr.lr_factor(s, i) for i in range(8)] == [1, 1, 1, 0.75, 0.5, 0.25, 0, 0]
    assert all(tr.lr_factor(tr.Settings(), i) == 1 for i in (0, 10**6))
    assert tr.training_command(s, 6, "x").endswith("--lr-decay-start 2 --lr-decay-end 6")
    trainer = tr.Trainer(tr.Settings(pool=4, batch=2, lr_decay_start=1, lr_decay_end=3),
                         render_pool(0, 4))
    for _ in range(3):
        trainer.step()
    c = 16 / 17  # lazy-R1 scaling of the discriminator's learning rate
    assert trainer.opt_g.param_groups[0]["lr"] == pytest.approx(4e-4 * 0.5)
    assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(4e-4 * c * 0.5)
    with pytest.raises(ValueError, match="0 < start < end"):
        tr.Settings(lr_decay_start=5, lr_decay_end=5)
    assert tr.main(_args(tmp_path / "bad", "--iters", "4", "--lr-decay-start", "4")) == 1
    assert "0 < start < end" in capsys.readouterr().err
    assert tr.main(_args(tmp_path / "run", "--iters", "2")) == 0
    assert tr.main(_args(tmp_path / "run", "--iters", "4", "--resume",
                         "--lr-decay-start", "1")) == 1
    assert "before the checkpoint's iteration 2" in capsys.readouterr().err


def test_resume_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tr.main(_args(tmp_path / "none", "--resume")) == 1
    assert "no checkpoint" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    torch.save({"iteration": 1}, tmp_path / "bad" / tr.CHECKPOINT)
    assert tr.main(_args(tmp_path / "bad", "--resume")) == 1
    assert "not a Toyworld GAN checkpoint" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    trainer = tr.Trainer(tr.Settings(pool=4, batch=2), render_pool(0, 4))
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


def _tiny_weights(tmp_path: Path, upsample: str, meta: dict | None) -> Path:
    """Weights of a fresh ``upsample`` generator in ``tmp_path``, with ``meta`` as json beside."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "toyworld_gan_g.safetensors"
    save_file(ToyworldGenerator(upsample=upsample).state_dict(), str(path))
    if meta is not None:
        (tmp_path / "toyworld_gan.json").write_text(json.dumps(meta))
    return path


def test_nearest_upsampling_is_nearest_then_conv() -> None:
    g = ToyworldGenerator(upsample="nearest").eval()
    conv = g.get_submodule("layer3.0")
    assert isinstance(conv, torch.nn.Conv2d) and tuple(conv.weight.shape) == (256, 256, 3, 3)
    x = torch.randn(2, 256, 4, 4, generator=torch.Generator().manual_seed(0))
    up = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # brute-force nearest 2x
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(up, conv.weight, padding=1))
    # Fewer parameters than transposed 4x4 kernels, same names for everything else.
    t_keys = set(ToyworldGenerator().state_dict())
    assert set(g.state_dict()) == t_keys
    with pytest.raises(ValueError, match="upsample must be one of"):
        ToyworldGenerator(upsample="bilinear")


def test_upsample_option_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert tr.main(_args(out, "--iters", "2", "--upsample", "nearest", "--reuse-fake")) == 0
    state = torch.load(out / tr.CHECKPOINT, weights_only=True)
    assert state["settings"]["upsample"] == "nearest"
    assert tuple(state["g_ema"]["layer8.0.weight"].shape) == (32, 64, 3, 3)
    assert tr.main(_args(out, "--iters", "3", "--resume")) == 0  # resume keeps the option
    weights = tmp_path / "weights"
    assert tr.main(["--out", str(out), "--export", "--weights-dir", str(weights),
                    "--bn-batches", "1"]) == 0
    meta = json.loads((weights / "toyworld_gan.json").read_text())
    assert meta["settings"]["upsample"] == "nearest" and meta["iterations"] == 3
    assert "--upsample nearest" in meta["command"]
    g = load_generator(weights=weights / "toyworld_gan_g.safetensors")
    assert g.upsample == "nearest"
    with torch.no_grad():
        assert g(g.sample_latents(2, 0)).shape == (2, 3, 64, 64)
    assert tr.training_command(tr.Settings(upsample="nearest"), 5, "x").endswith(
        "--out x --upsample nearest")
    assert "--upsample" not in tr.training_command(tr.Settings(), 5, "x")


def test_metadata_without_upsample_loads_transpose(tmp_path: Path) -> None:
    old = {"seed": 0, "iterations": 1, "settings": {"seed": 0, "mbstd_group": 4}}
    g = load_generator(weights=_tiny_weights(tmp_path / "old", "transpose", old))
    assert g.upsample == "transpose"
    assert load_generator(weights=_tiny_weights(tmp_path / "bare", "transpose", None)
                          ).upsample == "transpose"
    # Weights and metadata that disagree: the error says where the architecture came from.
    wrong = _tiny_weights(tmp_path / "wrong", "nearest", old)
    with pytest.raises(ValueError, match="mismatched shapes.*upsample='transpose'"):
        load_generator(weights=wrong)
    bad = {"settings": {"upsample": "bicubic"}}
    with pytest.raises(ValueError, match="upsample must be one of"):
        load_generator(weights=_tiny_weights(tmp_path / "bad", "transpose", bad))


SEMANTIC = ("--semantic-d", "--rate-weight", "2", "--reuse-fake", "--mbstd-group", "2")


def test_semantic_discriminator_and_rate_controller(tmp_path: Path) -> None:
    """--semantic-d: D also sees the frozen segmenter's leaf probabilities (13 more input
    channels; the segmenter is not in D's state dict and is attached again on load);
    --rate-weight: the leaf-rate controller's target is the segmenter's mean leaf probability
    on real scenes and its running rates resume exactly."""
    from models.toyworld_gan import SEMANTIC_CHANNELS

    assert tr.main(_args(tmp_path / "a", "--iters", "3", *SEMANTIC)) == 0
    assert tr.main(_args(tmp_path / "b", "--iters", "1", *SEMANTIC)) == 0
    assert tr.main(_args(tmp_path / "b", "--iters", "3", "--resume")) == 0
    sa = torch.load(tmp_path / "a" / tr.CHECKPOINT, weights_only=True)
    sb = torch.load(tmp_path / "b" / tr.CHECKPOINT, weights_only=True)
    assert sa["settings"]["semantic_d"] and sa["settings"]["rate_weight"] == 2
    assert sa["d"]["features.0.weight"].shape[1] == 3 + SEMANTIC_CHANNELS
    assert not any(k.startswith("_segnet") for k in sa["d"])
    torch.testing.assert_close(sa["running_rates"], sb["running_rates"], rtol=1e-4, atol=1e-6)
    # the target: mean leaf probabilities of the segmenter on the (8) real training scenes
    pool = render_pool(0, 8)
    target = tr.leaf_rates(tr._frozen_segmenter(), pool)
    torch.testing.assert_close(sa["target_rates"], target)
    assert abs(float(target.sum()) - 1.0) < 1e-4 and float(target[0]) > 0.2  # sky
    for k in sa["g_ema"]:
        torch.testing.assert_close(sa["g_ema"][k], sb["g_ema"][k], rtol=1e-4, atol=1e-5)
    weights = tmp_path / "w"
    assert tr.main(["--out", str(tmp_path / "a"), "--export", "--weights-dir", str(weights),
                    "--bn-batches", "1"]) == 0
    d = load_discriminator(weights=weights / "toyworld_gan_d.safetensors")
    assert d.semantic and d.mbstd_group == 2
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        logits = d(x)
        manual = d(x, d.leaf_probs(x))
    assert logits.shape == (2,) and torch.equal(logits, manual)
    bare = ToyworldDiscriminator(semantic=True)
    with pytest.raises(ValueError, match="no segmenter attached"):
        bare(x)


def test_rate_loss_pushes_towards_the_target() -> None:
    """The controller's gradient raises a leaf drawn below its target rate and lowers one
    drawn above it (through the probabilities)."""
    trainer = tr.Trainer(tr.Settings(rate_weight=1.0), torch.empty(0, 3, 64, 64,
                                                                   dtype=torch.uint8))
    trainer.target_rates = torch.full((13,), 1 / 13)
    trainer.running_rates = trainer.target_rates.clone()
    trainer.running_rates[0] *= 3.0   # sky drawn too often
    trainer.running_rates[11] /= 3.0  # door too rarely
    probs = torch.full((2, 13, 4, 4), 1 / 13, requires_grad=True)
    trainer._rate_loss(probs).backward()
    assert probs.grad is not None
    # gradient descent lowers sky (positive gradient) and raises door (negative)
    assert float(probs.grad[:, 0].sum()) > 0 > float(probs.grad[:, 11].sum())
