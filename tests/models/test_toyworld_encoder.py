"""The bundled Toyworld encoder: shapes, the generator check, and that it beats a blind start."""

import json

import numpy as np
import pytest
import torch

import models
from models.toyworld.render import render_batch
from models.toyworld_encoder import ENCODER_METADATA, ToyworldEncoder, load_encoder
from models.toyworld_gan import WEIGHTS_DIR


def test_shapes_are_checked():
    enc = ToyworldEncoder()
    assert enc(torch.zeros(2, 3, 64, 64)).shape == (2, 128)
    with pytest.raises(ValueError, match=r"\[n, 3, 64, 64\]"):
        enc(torch.zeros(2, 3, 32, 32))


def test_an_encoder_for_other_generator_weights_is_refused(tmp_path):
    other = tmp_path / "toyworld_gan_g.safetensors"
    other.write_bytes(b"not the shipped generator")
    with pytest.raises(ValueError, match="trained for other generator weights"):
        load_encoder(generator_weights=other)
    assert isinstance(load_encoder(generator_weights=other, check_generator=False),
                      ToyworldEncoder)
    meta = json.loads((WEIGHTS_DIR / ENCODER_METADATA).read_text())
    assert len(meta["generator_sha256"]) == 64 and "train_toyworld_encoder" in meta["command"]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / ((a - b) ** 2).mean(dim=(1, 2, 3))).mean())


def test_the_shipped_encoder_starts_closer_than_seeded_latents():
    gen, enc = models.load("toyworld"), load_encoder()
    images, _ = render_batch(4242, 100, 8)  # held out: neither the GAN's nor the encoder's
    x = torch.from_numpy(images)
    with torch.no_grad():
        encoded = _psnr(gen(enc(x)), x)
        seeded = _psnr(gen(gen.sample_latents(8, seed=0)), x)
    assert np.isfinite(encoded) and encoded > seeded + 1.0


def test_the_encoder_can_start_from_a_vae_pretraining(tmp_path):
    from models.pretrain_toyworld_gan import PosteriorEncoder
    from models.pretrain_toyworld_gan import main as pretrain
    from models.safe_load import load_checkpoint
    from models.train_toyworld_encoder import init_from_vae

    quick = ["--iters", "1", "--batch", "2", "--preview", "2"]
    assert pretrain(["--out", str(tmp_path / "vae"), *quick, "--objective", "vae"]) == 0
    assert pretrain(["--out", str(tmp_path / "reg"), *quick]) == 0
    path = tmp_path / "vae" / "checkpoint.pt"
    vae = PosteriorEncoder()
    vae.load_state_dict(load_checkpoint(path)["e"])
    enc = ToyworldEncoder()
    init_from_vae(enc, path)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(enc(x), vae(x)[0])
    with pytest.raises(ValueError, match="holds no VAE encoder"):
        init_from_vae(enc, tmp_path / "reg" / "checkpoint.pt")
