"""The bundled Toyworld encoder: 64x64 images -> latents of the bundled Toyworld generator.

It starts photo inversion (:func:`gandissect.inversion.invert`): four stride-2 4x4 convolutions
(32, 64, 128, 256 channels; 64 -> 4 pixels) with LeakyReLU(0.2), then a linear map to the
generator's 128-d latent. Trained by ``python -m models.train_toyworld_encoder`` (see
``models/TRAINING.md``) on generated samples (latent regression) and on rendered scenes
(reconstruction through the frozen generator). An encoder belongs to one generator: the
metadata beside the weights records the generator weights' SHA-256, and :func:`load_encoder`
refuses an encoder trained for other generator weights unless ``check_generator=False``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from .base import check_device, weights_path
from .safe_load import load_checkpoint, load_into
from .toyworld_gan import GENERATOR_FILE, WEIGHTS_DIR, Z_DIM

ENCODER_FILE = "toyworld_encoder.safetensors"
ENCODER_METADATA = "toyworld_encoder.json"
#: Channels of the stride-2 convolutions.
WIDTHS: tuple[int, ...] = (32, 64, 128, 256)


class ToyworldEncoder(nn.Module):
    """Images ``[n, 3, 64, 64]`` in [-1, 1] -> latents ``[n, 128]``."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for w in WIDTHS:
            layers += [nn.Conv2d(cin, w, 4, 2, 1), nn.LeakyReLU(0.2)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin * 16, Z_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, 64, 64):
            raise ValueError(f"the Toyworld encoder takes images [n, 3, 64, 64], got "
                             f"{list(x.shape)}")
        out: torch.Tensor = self.head(self.features(x).flatten(1))
        return out


def sha256_of(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_encoder(device: str = "cpu", weights: str | Path | None = None,
                 generator_weights: str | Path | None = None,
                 check_generator: bool = True) -> ToyworldEncoder:
    """The shipped encoder (or ``weights``: a safetensors file of this architecture, or a
    folder holding ``toyworld_encoder.safetensors``) in eval mode on ``device``.

    With ``check_generator`` the metadata beside the weights must name the SHA-256 of
    ``generator_weights`` (default: the shipped generator); a mismatch is a ValueError saying
    to retrain the encoder for those weights."""
    dev = check_device(device)
    file = weights_path(weights, None, WEIGHTS_DIR / ENCODER_FILE)
    if check_generator:
        gen_file = Path(generator_weights) if generator_weights else WEIGHTS_DIR / GENERATOR_FILE
        if gen_file.is_dir():
            gen_file = gen_file / GENERATOR_FILE
        meta = file.parent / ENCODER_METADATA
        trained_for = json.loads(meta.read_text()).get("generator_sha256") \
            if meta.is_file() else None
        if trained_for != sha256_of(gen_file):
            raise ValueError(
                f"the encoder {file} was trained for other generator weights than {gen_file} "
                f"({meta} {'names ' + str(trained_for)[:12] if trained_for else 'is missing'}); "
                "retrain it with `python -m models.train_toyworld_encoder --export`, or invert "
                "without an encoder")
    net = ToyworldEncoder()
    load_into(net, load_checkpoint(file), "the Toyworld encoder", path=file,
              hint="retrain it with `python -m models.train_toyworld_encoder --export`")
    return net.to(dev).eval()


__all__ = ["ToyworldEncoder", "load_encoder"]
