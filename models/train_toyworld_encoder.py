"""Train the Toyworld encoder (``models/toyworld_encoder.py``) for the bundled generator.

Two fixed pools are made at the start: ``--fake-pool`` generator samples ``G(z)`` with their
latents (latents of seed ``seed + 1``, images rounded to 8 bits like photos) and ``--pool``
rendered scenes of ``--data-seed`` (disjoint from the held-out scenes that measure inversion).
Each iteration draws ``batch`` samples and ``real_batch`` scenes (stream ``(seed, iteration)``)
and minimises, with Adam,

    mean (E(G(z)) - z)^2  +  rec_weight * mean |G(E(x)) - x|

(latent regression on samples; reconstruction of real scenes through the frozen generator,
which costs a generator forward and backward pass per scene, hence the small real batch).
Batches depend only on (seed, iteration), so ``--resume`` after an interruption ends with the
same weights up to floating-point nondeterminism.

    python -m models.train_toyworld_encoder --seed 0 --iters 1500 --out runs/encoder --export

``--init-from`` starts the encoder from the VAE encoder of a generator pretraining
(``models.pretrain_toyworld_gan --objective vae``, whitened or not) or of an adversarial run
started from one (``train_toyworld_gan --recon-weight``): its convolutions and the mean rows of
its head, which already map scenes to codes of that generator's lineage.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .safe_load import load_checkpoint
from .toyworld_encoder import ENCODER_FILE, ENCODER_METADATA, ToyworldEncoder, sha256_of
from .toyworld_gan import GENERATOR_FILE, WEIGHTS_DIR, load_generator
from .toyworld_training import render_pool, to_float


def fake_pool(gen: torch.nn.Module, seed: int, n: int, chunk: int = 250
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` latents of ``seed`` and the generator's images of them as uint8."""
    z = torch.randn(n, 128, generator=torch.Generator().manual_seed(seed))
    images = torch.empty(n, 3, 64, 64, dtype=torch.uint8)
    with torch.no_grad():
        for s in range(0, n, chunk):
            images[s:s + chunk] = ((gen(z[s:s + chunk]) + 1.0) * 127.5).round().to(torch.uint8)
    return z, images


def init_from_vae(enc: ToyworldEncoder, path: str | Path) -> None:
    """Copy the convolutions and mean head of the VAE encoder stored under ``"e"`` in the
    checkpoint ``path`` into ``enc``; a clear error when the file holds no such encoder."""
    state = load_checkpoint(path)
    e = state.get("e") if isinstance(state, dict) else None
    if not isinstance(e, dict) or "head.weight" not in e:
        raise ValueError(f"{path} holds no VAE encoder (key 'e'): pass a checkpoint of "
                         "models.pretrain_toyworld_gan --objective vae, or of "
                         "models.train_toyworld_gan run with --recon-weight")
    z_dim = enc.head.out_features
    own = {k: v for k, v in e.items() if k.startswith("features.")}
    own["head.weight"] = e["head.weight"][:z_dim]
    own["head.bias"] = e["head.bias"][:z_dim]
    enc.load_state_dict(own)


def _batch(fakes: tuple[torch.Tensor, torch.Tensor], pool: torch.Tensor, seed: int,
           iteration: int, n: int, n_real: int) -> tuple[torch.Tensor, torch.Tensor,
                                                         torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + iteration)
    i = torch.randint(0, len(fakes[0]), (n,), generator=g)
    j = torch.randint(0, len(pool), (n_real,), generator=g)
    return fakes[0][i], to_float(fakes[1][i]), to_float(pool[j])


def train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen_file = Path(args.generator)
    gen = load_generator(weights=gen_file)
    gen.requires_grad_(False)
    torch.manual_seed(args.seed)
    enc = ToyworldEncoder()
    if args.init_from and not args.resume:
        init_from_vae(enc, args.init_from)
        print(f"encoder initialised from the VAE encoder in {args.init_from}", flush=True)
    opt = torch.optim.Adam(enc.parameters(), lr=args.lr, betas=(0.5, 0.99))
    start, elapsed0 = 0, 0.0
    ckpt = out / "checkpoint.pt"
    if args.resume:
        state = load_checkpoint(ckpt, trust_pickle=True)  # our own file
        enc.load_state_dict(state["encoder"])
        opt.load_state_dict(state["optimizer"])
        start, elapsed0 = int(state["iteration"]), float(state["elapsed"])
        print(f"resumed from {ckpt} at iteration {start}", flush=True)
    t = time.time()
    pool = render_pool(args.data_seed, args.pool)
    fakes = fake_pool(gen, args.seed + 1, args.fake_pool)
    print(f"rendered {len(pool)} scenes and generated {len(fakes[0])} samples in "
          f"{time.time() - t:.1f}s", flush=True)
    t0, last_save = time.time(), time.time()
    log = open(out / "log.csv", "a", newline="")
    writer = csv.writer(log)
    if start == 0:
        writer.writerow(["iteration", "seconds", "latent_mse", "rec_l1"])

    def save(iteration: int) -> None:
        torch.save({"encoder": enc.state_dict(), "optimizer": opt.state_dict(),
                    "iteration": iteration, "elapsed": elapsed0 + time.time() - t0,
                    "args": vars(args)}, ckpt)

    it = start
    for it in range(start, args.iters):
        z, fake, real = _batch(fakes, pool, args.seed, it, args.batch, args.real_batch)
        latent_loss = ((enc(fake) - z) ** 2).mean()
        rec_loss = (gen(enc(real)) - real).abs().mean() if args.real_batch else torch.zeros(())
        loss = latent_loss + args.rec_weight * rec_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at iteration {it}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (it + 1) % args.log_every == 0:
            writer.writerow([it + 1, round(elapsed0 + time.time() - t0, 1),
                             round(float(latent_loss.detach()), 5),
                             round(float(rec_loss.detach()), 5)])
            log.flush()
            print(f"iteration {it + 1}: latent mse {float(latent_loss.detach()):.4f}, "
                  f"reconstruction L1 {float(rec_loss.detach()):.4f}", flush=True)
        if time.time() - last_save > args.checkpoint_minutes * 60:
            save(it + 1)
            last_save = time.time()
        if args.max_minutes and time.time() - t0 > args.max_minutes * 60:
            save(it + 1)
            print(f"stopped after {args.max_minutes} minutes at iteration {it + 1}; "
                  "continue with --resume", flush=True)
            return 0
    save(args.iters)
    log.close()
    if args.export:
        export(enc, Path(args.weights_dir), gen_file, args, elapsed0 + time.time() - t0)
    return 0


def export(enc: ToyworldEncoder, weights_dir: Path, gen_file: Path, args: argparse.Namespace,
           seconds: float) -> dict[str, Any]:
    """Write float16 safetensors and metadata (with the generator's SHA-256)."""
    from safetensors.torch import save_file

    weights_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in enc.state_dict().items()},
              str(weights_dir / ENCODER_FILE))
    meta = {"generator_sha256": sha256_of(gen_file), "generator_file": gen_file.name,
            "seed": args.seed, "iterations": args.iters, "batch": args.batch, "lr": args.lr,
            "rec_weight": args.rec_weight, "real_batch": args.real_batch,
            "data_seed": args.data_seed, "pool": args.pool, "fake_pool": args.fake_pool,
            "training_seconds": round(seconds, 1), "stored_dtype": "float16",
            "parameters": sum(p.numel() for p in enc.parameters()),
            "torch": torch.__version__,
            "command": f"python -m models.train_toyworld_encoder --seed {args.seed} "
                       f"--iters {args.iters} --batch {args.batch} --lr {args.lr} "
                       f"--rec-weight {args.rec_weight} --real-batch {args.real_batch} "
                       f"--data-seed {args.data_seed} --pool {args.pool} "
                       f"--fake-pool {args.fake_pool}"
                       + (f" --init-from {args.init_from}" if args.init_from else "")
                       + " --export"}
    (weights_dir / ENCODER_METADATA).write_text(json.dumps(meta, indent=2))
    return meta


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m models.train_toyworld_encoder",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/encoder", help="run folder (checkpoint, log)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32, help="generator samples per iteration")
    p.add_argument("--real-batch", type=int, default=8,
                   help="rendered scenes per iteration (0: latent regression only)")
    p.add_argument("--fake-pool", type=int, default=8000, help="generator samples made")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--rec-weight", type=float, default=1.0)
    p.add_argument("--data-seed", type=int, default=11,
                   help="seed of the rendered training scenes (held-out scenes use others)")
    p.add_argument("--pool", type=int, default=4000, help="rendered scenes in the pool")
    p.add_argument("--generator", default=str(WEIGHTS_DIR / GENERATOR_FILE),
                   help="generator weights the encoder is for")
    p.add_argument("--init-from", default="",
                   help="start from the VAE encoder in this pretraining or GAN checkpoint")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", action="store_true", help="write models/weights/ at the end")
    p.add_argument("--weights-dir", default=str(WEIGHTS_DIR))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--max-minutes", type=float, default=0.0)
    p.add_argument("--log-every", type=int, default=50)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("iters", "batch", "pool", "fake_pool", "threads", "log_every"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    np.seterr(all="ignore")
    try:
        return train(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
