"""BigGAN adapter: exact pytorch-pretrained-biggan key layout (at the real 128px config, built on
the meta device), spectral norm == torch's, forward vs a direct re-computation, latents,
loading through models.load, hooks, and clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import models
from gandissect import Trace
from models import zoo
from models.biggan import CONFIG_LAYERS, BigGAN, SNConv2d, biggan_layers, from_state_dict
from models.safe_load import CheckpointError

# ch=4, z=8, 10 classes; GenBlocks 64->32, 32->16 (up), [attention 16], 16->8, 8->4 (up): 16px
TINY = [(False, 16, 8), (True, 8, 4), (False, 4, 2), (True, 2, 1)]


def _tiny(seed: int = 0, truncation: float = 1.0) -> BigGAN:
    g = BigGAN(TINY, channel_width=4, z_dim=8, num_classes=10, attention=2, seed=seed,
               truncation=truncation)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial statistics, gamma and final bn so every path matters
        for name, b in g.named_buffers():
            if name.endswith("running_means"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_vars"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
        g.state_dict()["generator.layers.2.gamma"].fill_(0.7)
        g.generator.bn.weight.copy_(1 + 0.1 * torch.randn(4, generator=gen))
        for name, p in g.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return g.eval()


def _expected_shapes(ch: int, z: int, classes: int, layers: list[tuple[bool, int, int]],
                     attention: int, n_stats: int = 51) -> dict[str, tuple[int, ...]]:
    """The state_dict of upstream ``BigGAN(config)``, written out from its definition."""
    def sn(prefix: str, shape: tuple[int, ...], bias: bool) -> dict[str, tuple[int, ...]]:
        out = {f"{prefix}.weight_orig": shape, f"{prefix}.weight_u": (shape[0],),
               f"{prefix}.weight_v": (math.prod(shape[1:]),)}
        if bias:
            out[f"{prefix}.bias"] = (shape[0],)
        return out

    cond = 2 * z
    exp: dict[str, tuple[int, ...]] = {"embeddings.weight": (z, classes)}
    exp |= sn("generator.gen_z", (16 * 16 * ch, cond), True)
    j = 0
    for i, (_, a, b) in enumerate(layers):
        c_in, c_out = ch * a, ch * b
        if i == attention:
            p = f"generator.layers.{j}"
            exp |= sn(f"{p}.snconv1x1_theta", (c_in // 8, c_in, 1, 1), False)
            exp |= sn(f"{p}.snconv1x1_phi", (c_in // 8, c_in, 1, 1), False)
            exp |= sn(f"{p}.snconv1x1_g", (c_in // 2, c_in, 1, 1), False)
            exp |= sn(f"{p}.snconv1x1_o_conv", (c_in, c_in // 2, 1, 1), False)
            exp[f"{p}.gamma"] = (1,)
            j += 1
        p, mid = f"generator.layers.{j}", c_in // 4
        for k, c in enumerate([c_in, mid, mid, mid]):
            exp[f"{p}.bn_{k}.running_means"] = (n_stats, c)
            exp[f"{p}.bn_{k}.running_vars"] = (n_stats, c)
            exp |= sn(f"{p}.bn_{k}.scale", (c, cond), False)
            exp |= sn(f"{p}.bn_{k}.offset", (c, cond), False)
        for k, (o, i_, ks) in enumerate([(mid, c_in, 1), (mid, mid, 3), (mid, mid, 3),
                                         (c_out, mid, 1)]):
            exp |= sn(f"{p}.conv_{k}", (o, i_, ks, ks), True)
        j += 1
    exp |= {"generator.bn.running_means": (n_stats, ch), "generator.bn.running_vars": (n_stats, ch),
            "generator.bn.weight": (ch,), "generator.bn.bias": (ch,)}
    exp |= sn("generator.conv_to_rgb", (ch, ch, 3, 3), True)
    return exp


@pytest.mark.parametrize("res", [128, 256, 512])
def test_real_config_key_layout(res: int) -> None:
    with torch.device("meta"):
        g = BigGAN(CONFIG_LAYERS[res])
    got = {k: tuple(v.shape) for k, v in g.state_dict().items()}
    assert got == _expected_shapes(128, 128, 1000, CONFIG_LAYERS[res], 8)
    assert got["generator.gen_z.weight_orig"] == (32768, 256)
    c_att = 128 * CONFIG_LAYERS[res][8][1]  # attention width: 256 at 128px, 512 at 256/512px
    assert got["generator.layers.8.snconv1x1_theta.weight_orig"] == (c_att // 8, c_att, 1, 1)
    assert g.resolution == res and g.latent_shape == (1128,)
    assert tuple(g.layer_names) == biggan_layers(res) == zoo.ZOO[f"biggan-deep-{res}"].layers
    assert isinstance(g.layer("generator.layers.8"), nn.Module)


def test_tiny_layout_and_spectral_norm_matches_torch() -> None:
    g = _tiny()
    got = {k: tuple(v.shape) for k, v in g.state_dict().items()}
    assert got == _expected_shapes(4, 8, 10, TINY, 2)
    assert g.resolution == 16
    sd = g.state_dict()
    for prefix in ["generator.conv_to_rgb", "generator.layers.1.conv_1"]:
        mine = g.get_submodule(prefix)
        assert isinstance(mine, SNConv2d)
        w = sd[prefix + ".weight_orig"]
        ref = nn.utils.spectral_norm(nn.Conv2d(w.shape[1], w.shape[0], w.shape[2],
                                               padding=w.shape[2] // 2), eps=1e-4)
        ref.load_state_dict({k[len(prefix) + 1:]: v for k, v in sd.items()
                             if k.startswith(prefix + ".")})
        ref.eval()
        x = torch.randn(2, w.shape[1], 6, 6, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(mine(x), ref(x), rtol=1e-5, atol=1e-6)


def _reference(sd: dict[str, torch.Tensor], z: torch.Tensor, t: float, zd: int,
               ups: list[bool], att: int) -> torch.Tensor:
    """Direct re-computation of upstream's forward from the state dict (no adapter code)."""
    def w(p: str) -> torch.Tensor:
        wo, u, v = sd[p + ".weight_orig"], sd[p + ".weight_u"], sd[p + ".weight_v"]
        return wo / (u @ (wo.reshape(wo.shape[0], -1) @ v))

    def stat(p: str) -> tuple[torch.Tensor, torch.Tensor]:
        m, s = sd[p + ".running_means"], sd[p + ".running_vars"]
        c, i = math.modf(t * (m.shape[0] - 1))
        i = int(i)
        if c == 0:
            return m[i], s[i]
        return m[i] * c + m[i + 1] * (1 - c), s[i] * c + s[i + 1] * (1 - c)

    def cbn(p: str, x: torch.Tensor) -> torch.Tensor:
        m, v = stat(p)
        gain = 1 + cond @ w(p + ".scale").t()
        bias = cond @ w(p + ".offset").t()
        x = (x - m[None, :, None, None]) / torch.sqrt(v[None, :, None, None] + 1e-4)
        return x * gain[:, :, None, None] + bias[:, :, None, None]

    def conv(p: str, x: torch.Tensor) -> torch.Tensor:
        k = sd[p + ".weight_orig"].shape[-1]
        return F.conv2d(x, w(p), sd.get(p + ".bias"), padding=k // 2)

    cond = torch.cat([z[:, :zd], z[:, zd:] @ sd["embeddings.weight"].t()], 1)
    lin = cond @ w("generator.gen_z").t() + sd["generator.gen_z.bias"]
    x = lin.view(z.shape[0], 4, 4, -1).permute(0, 3, 1, 2)
    j = 0
    for up in ups:
        p = f"generator.layers.{j}"
        if j == att:
            n, c, hh, ww = x.shape
            th = conv(p + ".snconv1x1_theta", x).flatten(2)
            ph = F.max_pool2d(conv(p + ".snconv1x1_phi", x), 2).flatten(2)
            gg = F.max_pool2d(conv(p + ".snconv1x1_g", x), 2).flatten(2)
            a = torch.softmax(th.transpose(1, 2) @ ph, -1)
            o = (gg @ a.transpose(1, 2)).view(n, c // 2, hh, ww)
            x = x + sd[p + ".gamma"] * conv(p + ".snconv1x1_o_conv", o)
            j += 1
            p = f"generator.layers.{j}"
        h = conv(p + ".conv_0", F.relu(cbn(p + ".bn_0", x)))
        h = F.relu(cbn(p + ".bn_1", h))
        if up:
            h = h.repeat_interleave(2, 2).repeat_interleave(2, 3)
        h = conv(p + ".conv_1", h)
        h = conv(p + ".conv_2", F.relu(cbn(p + ".bn_2", h)))
        h = conv(p + ".conv_3", F.relu(cbn(p + ".bn_3", h)))
        skip = x[:, : h.shape[1]]
        if up:
            skip = skip.repeat_interleave(2, 2).repeat_interleave(2, 3)
        x = h + skip
        j += 1
    m, v = stat("generator.bn")
    x = F.batch_norm(x, m, v, sd["generator.bn.weight"], sd["generator.bn.bias"], eps=1e-4)
    return torch.tanh(conv("generator.conv_to_rgb", F.relu(x))[:, :3])


@pytest.mark.parametrize("truncation", [1.0, 0.4, 0.5])
def test_forward_matches_reference(truncation: float) -> None:
    g = _tiny(seed=3, truncation=truncation)
    z = g.sample_latents(4, seed=1)
    x = g(z)
    assert x.shape == (4, 3, 16, 16) and x.abs().max() <= 1
    ref = _reference(g.state_dict(), z, truncation, 8, [u for u, _, _ in TINY], 2)
    torch.testing.assert_close(x, ref, rtol=1e-4, atol=1e-5)
    assert x.std() > 0.05 and 0 < (x.abs() < 0.99).float().mean()  # neither flat nor saturated
    torch.testing.assert_close(g(z[1:3]), x[1:3], rtol=1e-5, atol=1e-6)  # batch independent


def test_latents_truncated_one_hot_and_per_index() -> None:
    g = _tiny(truncation=0.5)
    z = g.sample_latents(50, seed=7)
    noise, onehot = z[:, :8], z[:, 8:]
    assert noise.abs().max() <= 1.0 and noise.abs().max() > 0.5  # |n| <= 2 * truncation
    assert torch.equal(onehot.sum(1), torch.ones(50)) and set(onehot.unique().tolist()) == {0, 1}
    assert len(set(onehot.argmax(1).tolist())) > 3  # random classes by default
    assert torch.equal(g.sample_latents(5, seed=7, start=20), z[20:25])
    assert not torch.equal(g.sample_latents(5, seed=8), z[:5])
    g.set_class(3)
    fixed = g.sample_latents(10, seed=7)
    assert (fixed[:, 8:].argmax(1) == 3).all() and torch.equal(fixed[:, :8], noise[:10])
    g.set_truncation(1.0)
    assert torch.allclose(g.sample_latents(10, seed=7)[:, :8], 2 * noise[:10])
    big = BigGAN(TINY, 4, 8, 10, 2, truncation=1.0).sample_latents(200, seed=0)[:, :8]
    assert big.abs().max() <= 2.0 and 0.6 < big.std() < 0.95  # truncnorm(-2, 2) std ~ 0.88


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_load_through_models_load_and_hook(tmp_path: Path, fmt: str) -> None:
    g = _tiny(seed=5)
    path = tmp_path / f"pytorch_model.{fmt}"
    if fmt == "bin":
        torch.save(g.state_dict(), path)
    else:
        save_file(g.state_dict(), str(path))
    h = models.load("biggan", path=path, truncation=1.0, class_index=4)
    assert not h.training and h.layer_names == [f"generator.layers.{i}" for i in range(5)]
    z = h.sample_latents(3, seed=0)
    assert (z[:, 8:].argmax(1) == 4).all()
    with Trace(h, ["generator.layers.1", "generator.layers.2", "generator.layers.4"]) as tr:
        x = h(z)
    assert torch.equal(x, g(z))
    assert tr["generator.layers.1"].shape == (3, 16, 8, 8)
    assert tr["generator.layers.2"].shape == (3, 16, 8, 8)  # attention
    assert tr["generator.layers.4"].shape == (3, 4, 16, 16)


def test_config_json_overrides(tmp_path: Path) -> None:
    g = _tiny(seed=6)
    cfg = {"layers": [list(x) for x in TINY], "attention_layer_position": 2, "eps": 1e-4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    h = from_state_dict(g.state_dict(), config=tmp_path / "config.json")
    z = g.sample_latents(2, seed=0)
    assert torch.equal(h(z), g(z))
    flat = dict(cfg, layers=[[False, a, b] for _, a, b in TINY])  # no upsampling: other model
    assert from_state_dict(g.state_dict(), config=flat).resolution == 4


def test_clear_errors() -> None:
    sd = _tiny().state_dict()
    with pytest.raises(CheckpointError, match=r"missing keys: generator\.layers\.3\.bn_2\.scale"):
        from_state_dict({k: v for k, v in sd.items() if "layers.3.bn_2.scale.weight_v" not in k})
    with pytest.raises(CheckpointError, match=r"unexpected keys: generator\.layers\.0\.extra"):
        from_state_dict(dict(sd, **{"generator.layers.0.extra": torch.zeros(1)}))
    bad = dict(sd)
    bad["generator.layers.1.conv_1.weight_orig"] = torch.zeros(4, 4, 5, 5)
    with pytest.raises(CheckpointError, match=r"conv_1\.weight_orig: checkpoint \[4, 4, 5, 5\]"):
        from_state_dict(bad)
    with pytest.raises(CheckpointError, match="not a pytorch-pretrained-biggan"):
        from_state_dict({"weight": torch.zeros(1)})
    g = _tiny()
    with pytest.raises(ValueError, match=r"\[n, 18\]"):
        g(torch.zeros(2, 128))
    with pytest.raises(ValueError, match="valid layers: generator.layers.0"):
        g.layer("layers.0")
    with pytest.raises(ValueError, match="truncation"):
        g.set_truncation(0.0)
    with pytest.raises(ValueError, match="class_index"):
        g.set_class(10)
    with pytest.raises(ValueError, match="needs path"):
        models.load("biggan")
