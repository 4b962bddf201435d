"""ProGAN adapter: exact GAN Dissection key layout, numerics against a direct re-computation,
loading from .pth/.safetensors, clear errors, hooks, and a tiny end-to-end dissection."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tiny import check_against_brute_force

from gandissect import Trace
from models.progan import ProGAN, from_state_dict, sizes_from_state_dict
from models.safe_load import CheckpointError
from models.zoo import load_zoo_model

TINY = [16, 8, 8, 4, 4]  # z=16, 4x4..32x32: layer1..layer8, output_32x32


def _randomized(sizes: list[int], seed: int = 0) -> ProGAN:
    g = ProGAN(sizes, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("wscale.b"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return g


def test_real_256_layout_keys_and_shapes() -> None:
    """The LSUN checkpoints: sizes [512,512,512,512,256,128,64,32] -> these exact keys."""
    g = ProGAN([512, 512, 512, 512, 256, 128, 64, 32])
    sd = g.state_dict()
    expected = [f"layer{i}.{k}" for i in range(1, 15) for k in ("conv.weight", "wscale.b")]
    expected += ["output_256x256.conv.weight", "output_256x256.wscale.b"]
    assert list(sd) == expected
    widths = {1: 512, 3: 512, 5: 512, 7: 256, 9: 128, 11: 64, 13: 32}
    assert sd["layer1.conv.weight"].shape == (512, 512, 4, 4)
    for first, c in widths.items():
        c_in = 512 if first == 1 else widths[first - 2]
        if first > 1:
            assert sd[f"layer{first}.conv.weight"].shape == (c, c_in, 3, 3)
        assert sd[f"layer{first + 1}.conv.weight"].shape == (c, c, 3, 3)
    assert sd["output_256x256.conv.weight"].shape == (3, 32, 1, 1)
    assert g.resolution == 256 and g.latent_shape == (512,)
    assert g.layer_names == [f"layer{i}" for i in range(1, 15)]
    assert sizes_from_state_dict(sd) == [512, 512, 512, 512, 256, 128, 64, 32]


def _reference_forward(sd: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """Direct re-computation of proggan.py's forward from the state dict (no adapter code)."""
    def pn(x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x ** 2).mean(1, keepdim=True) + 1e-8)

    x = z.view(z.shape[0], -1, 1, 1)
    i = 1
    while f"layer{i}.conv.weight" in sd:
        w, b = sd[f"layer{i}.conv.weight"], sd[f"layer{i}.wscale.b"]
        k = w.shape[-1]
        x = pn(x)
        if i >= 3 and i % 2 == 1:
            x = x.repeat_interleave(2, 2).repeat_interleave(2, 3)
        x = F.conv2d(x, w, padding=3 if i == 1 else 1)
        x = x * (math.sqrt(2) / k / math.sqrt(w.shape[1])) + b.view(1, -1, 1, 1)
        x = torch.where(x > 0, x, 0.2 * x)
        i += 1
    out = [k for k in sd if k.startswith("output_") and k.endswith("conv.weight")][0][:-12]
    w, b = sd[out + ".conv.weight"], sd[out + ".wscale.b"]
    x = F.conv2d(pn(x), w) / math.sqrt(w.shape[1]) + b.view(1, -1, 1, 1)
    return x.clamp(-1, 1)


def test_forward_matches_reference_computation() -> None:
    g = _randomized(TINY, seed=1)
    z = g.sample_latents(5, seed=4)
    x = g(z)
    assert x.shape == (5, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    ref = _reference_forward(g.state_dict(), z)
    torch.testing.assert_close(x, ref, rtol=1e-4, atol=1e-5)
    assert 0.0 < (x.abs() < 1).float().mean() < 1.0  # not saturated: the check means something
    torch.testing.assert_close(g(z[2:]), x[2:], rtol=1e-5, atol=1e-6)  # batch independent


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped"])
def test_roundtrip_through_zoo_path(tmp_path: Path, fmt: str) -> None:
    g = _randomized(TINY, seed=2)
    path = tmp_path / f"g.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file(g.state_dict(), str(path))
    elif fmt == "pth":
        torch.save(g.state_dict(), path)
    else:
        torch.save({"state_dict": g.state_dict()}, path)
    h = load_zoo_model("progan", path=path)
    z = g.sample_latents(3, seed=0)
    assert torch.equal(h(z), g(z)) and not h.training
    with Trace(h, ["layer1", "layer8"]) as tr:
        h(z)
    assert tr["layer1"].shape == (3, 8, 4, 4) and tr["layer8"].shape == (3, 4, 32, 32)


def test_old_feature_names_and_stored_scale() -> None:
    g = _randomized(TINY, seed=3)
    sd = g.state_dict()
    old = {(f"features.{int(k.split('.')[0][5:]) - 1}." + k.split(".", 1)[1]
            if k.startswith("layer") else "output." + k.split(".", 1)[1]): v
           for k, v in sd.items()}
    z = g.sample_latents(2, seed=0)
    assert torch.equal(from_state_dict(old)(z), g(z))
    legacy = dict(sd)
    legacy["layer2.wscale.scale"] = torch.tensor(0.0)  # an old checkpoint's stored scale is used
    h = from_state_dict(legacy)
    with Trace(h, "layer2") as tr:
        h(z)
    expected = F.leaky_relu(sd["layer2.wscale.b"], 0.2).view(1, -1, 1, 1).expand(2, -1, 4, 4)
    torch.testing.assert_close(tr["layer2"], expected)


def test_clear_errors_for_bad_checkpoints() -> None:
    sd = _randomized(TINY).state_dict()
    missing = {k: v for k, v in sd.items() if k != "layer3.wscale.b"}
    with pytest.raises(CheckpointError, match=r"missing keys: layer3\.wscale\.b"):
        from_state_dict(missing)
    extra = dict(sd, **{"layer3.conv.bias": torch.zeros(8)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: layer3\.conv\.bias"):
        from_state_dict(extra)
    renamed = {k.replace("output_32x32", "output_64x64"): v for k, v in sd.items()}
    with pytest.raises(CheckpointError, match="output_32x32.*output_64x64|missing.*unexpected"):
        from_state_dict(renamed)
    odd = {k: v for k, v in sd.items() if not k.startswith(("layer8", "output"))}
    with pytest.raises(CheckpointError, match="even number"):
        from_state_dict(odd)
    bad = dict(sd)
    bad["layer4.conv.weight"] = torch.zeros(8, 8, 5, 5)
    with pytest.raises(CheckpointError, match=r"layer4\.conv\.weight: checkpoint \[8, 8, 5, 5\]"):
        from_state_dict(bad)
    with pytest.raises(CheckpointError, match="not a GAN Dissection ProGAN"):
        from_state_dict({"weight": torch.zeros(1)})


def test_wrong_latents_and_layer_names() -> None:
    g = ProGAN(TINY)
    with pytest.raises(ValueError, match=r"\[n, 16\]"):
        g(torch.zeros(2, 512))
    with pytest.raises(ValueError, match="valid layers: layer1"):
        g.layer("layer9")


def test_tiny_dissection_and_ablation_end_to_end() -> None:
    import segmenters
    from gandissect import ablation, dissect, intervene

    g = _randomized(TINY, seed=5).eval()
    seg = segmenters.load("color")
    res = dissect(g, seg, "layer4", samples=24, seed=0, batch_size=8)["layer4"]
    assert res.iou.shape == (8, len(seg.labels))
    assert res.thresholds.shape == (8,)
    check_against_brute_force(g, seg, "layer4", res, 24, 0)
    z = g.sample_latents(4, seed=0)
    before = g(z)
    with intervene(g, ablation("layer4", list(range(8)))):
        after = g(z)
    assert not torch.equal(before, after)
    with intervene(g, ablation("layer4", [0, 1])), Trace(g, "layer5") as tr:
        g(z)
    with Trace(g, "layer5") as tr0:
        g(z)
    assert not torch.equal(tr["layer5"], tr0["layer5"])  # the ablation reaches the next layer
    assert torch.equal(g(z), before)  # edits are temporary
