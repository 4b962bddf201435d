"""The pretraining comparison figure of ``models/TRAINING.md``.

Draws five rows of eight 64x64 images: texture-free renders of latent seed 5, the regression
generator on those latents, the VAE's reconstructions of the renders, VAE samples of latent seed
7, and the whitened VAE generator on the same latents::

    python -m models.pretrain_figure --regression /tmp/runs/p1/checkpoint.pt \\
        --vae /tmp/runs/v1/checkpoint.pt --whitened /tmp/runs/v1/whitened.pt \\
        --out docs/training/pretraining_regression_vs_vae.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from models.pretrain_toyworld_gan import Pretrainer, load_checkpoint
from models.toyworld.latent import render_latent_batch


def _trainer(path: str) -> Pretrainer:
    trainer = Pretrainer.from_state(load_checkpoint(Path(path)))
    trainer.g_ema.eval()
    return trainer


@torch.no_grad()
def figure(regression: str, vae: str, whitened: str, out: Path, n: int = 8) -> None:
    """Write the five-row figure (module docstring) to ``out`` (PNG, 2x nearest upscaling)."""
    from PIL import Image

    reg, auto, white = _trainer(regression), _trainer(vae), _trainer(whitened)
    if auto.e is None:
        raise ValueError(f"{vae} is not a VAE pretraining checkpoint (--objective vae)")
    z = torch.randn(n, 128, generator=torch.Generator().manual_seed(5))
    x = torch.from_numpy(render_latent_batch(z.double().numpy())[0])
    u = torch.randn(n, 128, generator=torch.Generator().manual_seed(7))
    rows = [x, reg.g_ema(z), auto.g_ema(auto.e(x)[0]), auto.g_ema(u), white.g_ema(u)]
    images = torch.cat(rows).clamp(-1, 1).reshape(len(rows), n, 3, 64, 64)
    framed = torch.ones(len(rows), n, 3, 66, 66)
    framed[..., 1:65, 1:65] = images
    grid = framed.permute(0, 3, 1, 4, 2).reshape(len(rows) * 66, n * 66, 3)
    img = Image.fromarray(((grid.numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8))
    out.parent.mkdir(parents=True, exist_ok=True)
    img.resize((img.width * 2, img.height * 2), Image.Resampling.NEAREST).save(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.pretrain_figure", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--regression", required=True)
    p.add_argument("--vae", required=True)
    p.add_argument("--whitened", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        figure(args.regression, args.vae, args.whitened, Path(args.out))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
