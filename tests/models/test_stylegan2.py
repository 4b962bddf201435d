"""StyleGAN2 adapter: rosinality g_ema key layout, upfirdn2d and modulated conv against brute
force, truncation, noise modes, checkpoint formats and clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tiny import check_against_brute_force

from gandissect import Trace
from models.safe_load import CheckpointError
from models.stylegan2 import ModulatedConv2d, StyleGAN2, from_state_dict, make_kernel, upfirdn2d
from models.zoo import load_zoo_model


def _tiny(seed: int = 0, **kw: object) -> StyleGAN2:
    """size 32, style_dim 16, 2 mapping layers, widths 8/8/8/4; non-zero noise weights/biases."""
    g = StyleGAN2(32, 16, 2, [8, 8, 8, 4], seed=seed, **kw)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith(("noise.weight", "activate.bias", "rgb1.bias")) or \
                    (name.startswith("to_rgbs") and name.endswith(".bias")):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return g.eval()


def test_real_256_config_f_layout() -> None:
    """Keys and shapes of rosinality's Generator(256, 512, 8, channel_multiplier=2)."""
    ch = [512, 512, 512, 512, 512, 256, 128]  # 4 .. 256
    g = StyleGAN2(256, 512, 8, ch)
    sd = g.state_dict()
    expected = {f"style.{i}.{p}" for i in range(1, 9) for p in ("weight", "bias")}
    expected |= {"input.input", "to_rgb1.bias"}
    conv = ("conv.weight", "conv.modulation.weight", "conv.modulation.bias", "noise.weight",
            "activate.bias")
    expected |= {f"conv1.{p}" for p in conv}
    expected |= {f"to_rgb1.{p}" for p in conv[:3]}
    for i in range(12):
        expected |= {f"convs.{i}.{p}" for p in conv}
        if i % 2 == 0:
            expected.add(f"convs.{i}.conv.blur.kernel")
    for j in range(6):
        expected |= {f"to_rgbs.{j}.{p}" for p in conv[:3] + ("bias", "upsample.kernel")}
    expected |= {f"noises.noise_{i}" for i in range(13)}
    assert set(sd) == expected and len(sd) == 135
    assert sd["input.input"].shape == (1, 512, 4, 4)
    assert sd["convs.8.conv.weight"].shape == (1, 256, 512, 3, 3)
    assert sd["convs.10.conv.weight"].shape == (1, 128, 256, 3, 3)
    assert sd["to_rgbs.5.conv.weight"].shape == (1, 3, 128, 1, 1)
    assert sd["to_rgbs.5.bias"].shape == (1, 3, 1, 1)
    assert sd["noises.noise_12"].shape == (1, 1, 256, 256)
    assert sd["convs.0.conv.modulation.weight"].shape == (512, 512)
    torch.testing.assert_close(sd["convs.0.conv.blur.kernel"], make_kernel([1, 3, 3, 1]) * 4)
    assert g.layer_names == ["conv1"] + [f"convs.{i}" for i in range(12)]
    h = from_state_dict({"g_ema": sd})
    assert (h.resolution, h.style_dim, len(h.style) - 1, h.channels) == (256, 512, 8, ch)


def _upfirdn_brute(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple[int, int]
                   ) -> np.ndarray:
    n, c, h, w = x.shape
    u = np.zeros((n, c, h * up, w * up))
    u[:, :, ::up, ::up] = x
    p0, p1 = pad
    big = np.zeros((n, c, h * up + max(p0, 0) + max(p1, 0), w * up + max(p0, 0) + max(p1, 0)))
    big[:, :, max(p0, 0): max(p0, 0) + h * up, max(p0, 0): max(p0, 0) + w * up] = u
    lo, hi = max(-p0, 0), max(-p1, 0)
    big = big[:, :, lo: big.shape[2] - hi, lo: big.shape[3] - hi]
    kh, kw = k.shape
    oh, ow = big.shape[2] - kh + 1, big.shape[3] - kw + 1
    out = np.zeros((n, c, oh, ow))
    for yy in range(oh):
        for xx in range(ow):  # true convolution: kernel flipped
            out[:, :, yy, xx] = (big[:, :, yy:yy + kh, xx:xx + kw] * k[::-1, ::-1]).sum((2, 3))
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 1, (1, 1)), (1, 2, (1, 1)),
                                         (2, 1, (-1, 2))])
def test_upfirdn2d_matches_brute_force(up: int, down: int, pad: tuple[int, int]) -> None:
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    k = torch.tensor([[1.0, 2, 0.5, 0], [0, 1, 3, 1], [2, 0, 1, 1], [1, 1, 0, 2]])
    got = upfirdn2d(x, k, up=up, down=down, pad=pad)
    ref = _upfirdn_brute(x.double().numpy(), k.double().numpy(), up, down, pad)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("upsample,demodulate", [(False, True), (True, True), (False, False)])
def test_modulated_conv_matches_per_sample_loop(upsample: bool, demodulate: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    m = ModulatedConv2d(4, 6, 3, 8, gen, demodulate=demodulate, upsample=upsample)
    x = torch.randn(3, 4, 5, 5, generator=gen)
    s = torch.randn(3, 8, generator=gen)
    got = m(x, s)
    outs = []
    for b in range(3):  # rosinality's unfused path, one sample at a time
        style = F.linear(s[b:b + 1], m.modulation.weight * m.modulation.scale,
                         m.modulation.bias * m.modulation.lr_mul)
        w = m.scale * m.weight[0] * style.view(1, 4, 1, 1)
        if demodulate:
            w = w / torch.sqrt(w.pow(2).sum((1, 2, 3), keepdim=True) + 1e-8)
        if upsample:
            o = F.conv_transpose2d(x[b:b + 1], w.transpose(0, 1), stride=2)
            o = upfirdn2d(o, make_kernel([1, 3, 3, 1]) * 4, pad=(1, 1))
        else:
            o = F.conv2d(x[b:b + 1], w, padding=1 if m.k == 3 else 0)
        outs.append(o)
    torch.testing.assert_close(got, torch.cat(outs), rtol=1e-4, atol=1e-5)
    assert got.shape == (3, 6, 10 if upsample else 5, 10 if upsample else 5)


def test_forward_shapes_hooks_and_batch_independence() -> None:
    g = _tiny()
    z = g.sample_latents(4, seed=3)
    names = ["conv1", "convs.0", "convs.5"]
    with Trace(g, names) as tr:
        x = g(z)
    assert x.shape == (4, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert [tuple(tr[n].shape) for n in names] == [(4, 8, 4, 4), (4, 8, 8, 8), (4, 4, 32, 32)]
    torch.testing.assert_close(g(z[1:3]), x[1:3], rtol=1e-4, atol=1e-5)
    assert 0.0 < (x.abs() < 1).float().mean()


def test_noise_modes() -> None:
    z = _tiny().sample_latents(3, seed=0)
    const, rand, none = (_tiny(noise_mode=m) for m in ("const", "random", "none"))
    a, b, c = const(z), rand(z), none(z)
    assert not torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(b, c)
    torch.testing.assert_close(rand(z[2:]), b[2:], rtol=1e-4, atol=1e-5)  # noise follows z
    assert torch.equal(rand(z), b)
    other = _tiny(noise_mode="random", noise_seed=1)
    assert not torch.equal(other(z), b)
    with pytest.raises(ValueError, match="noise_mode"):
        _tiny(noise_mode="global")


def test_truncation_uses_latent_avg_or_local_mean(tmp_path: Path) -> None:
    g = _tiny()
    state = torch.random.get_rng_state()
    mean = g.compute_mean_latent(256, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # local generator only
    torch.testing.assert_close(mean, g.compute_mean_latent(256, seed=0))
    torch.save({"g_ema": g.state_dict(), "latent_avg": mean}, tmp_path / "g.pt")
    h = load_zoo_model("stylegan2", path=tmp_path / "g.pt", truncation=1e-6)
    assert isinstance(h, StyleGAN2)
    torch.testing.assert_close(h.mean_latent, mean)
    x = h(h.sample_latents(3, seed=1))
    torch.testing.assert_close(x[0], x[1], rtol=1e-3, atol=1e-3)  # all pulled to the mean
    with pytest.raises(ValueError, match="truncation"):
        h.set_truncation(1.5)
    k = from_state_dict({"g_ema": g.state_dict()}, truncation=0.5)  # no latent_avg: computed
    torch.testing.assert_close(k.mean_latent, k.compute_mean_latent())


@pytest.mark.parametrize("fmt", ["converted", "training", "flat_safetensors"])
def test_checkpoint_formats(tmp_path: Path, fmt: str) -> None:
    g = _tiny(seed=4)
    sd = g.state_dict()
    if fmt == "converted":
        path = tmp_path / "g.pt"
        torch.save({"g_ema": sd, "latent_avg": torch.zeros(16)}, path)
    elif fmt == "training":
        path = tmp_path / "g.pt"
        torch.save({"g": sd, "d": {"x": torch.zeros(1)}, "g_ema": sd,
                    "args": argparse.Namespace(size=32)}, path)
    else:
        path = tmp_path / "g.safetensors"
        save_file(dict(sd, latent_avg=torch.zeros(16)), str(path))
    h = load_zoo_model("stylegan2", path=path)
    z = g.sample_latents(2, seed=0)
    assert torch.equal(h(z), g(z))


def test_clear_errors() -> None:
    sd = _tiny().state_dict()
    with pytest.raises(CheckpointError, match=r"unexpected keys: convs\.0\.bias"):
        from_state_dict(dict(sd, **{"convs.0.bias": torch.zeros(8)}))
    bad = dict(sd, **{"convs.1.conv.weight": torch.zeros(1, 8, 8, 1, 1)})
    with pytest.raises(CheckpointError, match=r"convs\.1\.conv\.weight: checkpoint"):
        from_state_dict(bad)
    with pytest.raises(CheckpointError, match="not a rosinality StyleGAN2"):
        from_state_dict({"layer1.conv.weight": torch.zeros(1)})
    no_kernels = {k: v for k, v in sd.items() if not k.endswith(".kernel")}
    z = _tiny().sample_latents(1, seed=0)
    assert torch.equal(from_state_dict(no_kernels)(z), _tiny()(z))  # constant blur kernels


def test_missing_noise_buffers_regenerated_with_warning() -> None:
    """rosinality checkpoints without noises.noise_N load (as other loaders accept them):
    the missing buffers come from a documented seed, the rest from the file."""
    from models.stylegan2 import MISSING_NOISE_SEED

    sd = _tiny(seed=2).state_dict()
    partial = {k: v for k, v in sd.items() if k != "noises.noise_3"}
    with pytest.warns(UserWarning, match=r"no noises\.noise_3 buffers.*seed 0"):
        g = from_state_dict(partial)
    want = torch.randn(sd["noises.noise_3"].shape,
                       generator=torch.Generator().manual_seed(MISSING_NOISE_SEED + 3))
    assert torch.equal(g.noises.noise_3, want)
    assert torch.equal(g.noises.noise_2, sd["noises.noise_2"])
    none = {k: v for k, v in sd.items() if not k.startswith("noises.")}
    with pytest.warns(UserWarning, match="regenerated"):
        a, b = from_state_dict(none), from_state_dict(none)
    assert torch.equal(a.noises.noise_3, want)
    z = a.sample_latents(2, seed=0)
    assert torch.equal(a(z), b(z)) and torch.isfinite(a(z)).all()  # deterministic


def test_tiny_dissection_and_ablation_end_to_end() -> None:
    """A dissection and an ablation run through a tiny StyleGAN2 with the colour segmenter; the
    ablation changes the output and reaches the next layer, and is gone after its block."""
    import segmenters
    from gandissect import ablation, dissect, intervene

    g = _tiny(seed=4)
    seg = segmenters.load("color")
    res = dissect(g, seg, "convs.2", samples=24, seed=0, batch_size=8)["convs.2"]
    assert res.iou.shape == (8, len(seg.labels)) and res.thresholds.shape == (8,)
    check_against_brute_force(g, seg, "convs.2", res, 24, 0)
    z = g.sample_latents(4, seed=0)
    before = g(z)
    with Trace(g, "convs.3") as tr0:
        g(z)
    with intervene(g, ablation("convs.2", list(range(8)))), Trace(g, "convs.3") as tr:
        after = g(z)
    assert not torch.equal(before, after)
    assert not torch.equal(tr["convs.3"], tr0["convs.3"])
    assert torch.equal(g(z), before)
