"""Supervised start for the bundled Toyworld generator: regression onto ``render_latent(z)``, or a
variational autoencoder whose decoder is the generator.

``models.toyworld.latent.render_latent`` draws a Toyworld scene as a function of a 128-d normal
latent. Training the generator to reproduce it from the same latent teaches it where every house,
door, window and tree goes with a dense per-pixel signal, which an adversarial loss alone did not
manage in the CPU budget (models/TRAINING.md). The adversarial stage then starts from these
weights (``python -m models.train_toyworld_gan --init-generator <out>/checkpoint.pt``) to add
texture and sharpness.

Loss: L1 between ``G(z)`` and the texture-free render, per pixel weighted ``1 + edge_weight`` on
pixels whose leaf differs from a 4-neighbour's and ``1 + part_weight`` on door, window and trunk
pixels (small parts that an unweighted L1 nearly ignores). Fresh scenes every step (no fixed
training set), Adam, EMA generator, checkpoints every few minutes with ``--resume``.

``--objective vae`` trains the generator as the decoder of a VAE instead: an encoder
(:class:`PosteriorEncoder`) maps each texture-free render ``x`` to ``q(z|x)``, the generator
draws ``x`` back from ``z ~ q(z|x)``, and the loss per image is the same weighted L1 divided by
``--recon-scale`` (a Laplace likelihood of that scale) plus ``--kl-weight`` times
``KL(q(z|x) || N(0, I))``. The encoder picks a code the generator can draw from, which the fixed
slots of ``render_latent`` are not (regression drew no house in 8,000 iterations, TRAINING.md),
and ``G(z)`` for ``z ~ N(0, I)`` samples the scene distribution::

    python -m models.pretrain_toyworld_gan --seed 0 --iters 20000 --out runs/p1
    python -m models.pretrain_toyworld_gan --out runs/p1 --resume --iters 40000
    python -m models.pretrain_toyworld_gan --out runs/p1 --export-to runs/p1/weights
    python -m models.pretrain_toyworld_gan --objective vae --seed 0 --iters 20000 --out runs/v1
    python -m models.pretrain_toyworld_gan --out runs/v1 --whiten-to runs/v1/whitened.pt

A VAE's codes do not fill ``N(0, I)``: some directions carry almost no variance, others more
than 1, so ``G(z)`` for ``z ~ N(0, I)`` draws incoherent scenes where reconstructions are good.
``--whiten-to`` (see :func:`whiten`) folds a Gaussian fit of the codes into the generator's
first linear map, so ``N(0, I)`` latents land where codes are; the adversarial stage starts from
that file.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.toyworld.concepts import LEAF_ID
from models.toyworld.latent import render_latent_batch
from models.toyworld_encoder import ToyworldEncoder
from models.toyworld_gan import GENERATOR_FILE, METADATA_FILE, Z_DIM, ToyworldGenerator
from models.toyworld_training import recalibrate_batchnorm, sample_grid, storable

CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"
_PARTS = [LEAF_ID[n] for n in ("door", "window", "trunk")]


@dataclass(frozen=True)
class Settings:
    """Everything that determines a pretraining run (stored in its checkpoint)."""

    seed: int = 0
    batch: int = 32
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.99
    ema_decay: float = 0.999
    edge_weight: float = 2.0
    part_weight: float = 4.0
    upsample: str = "transpose"
    lr_decay_start: int = 0
    lr_decay_end: int = 0
    objective: str = "regression"
    kl_weight: float = 1.0
    recon_scale: float = 0.1


OBJECTIVES = ("regression", "vae")


class PosteriorEncoder(nn.Module):
    """Images ``[n, 3, 64, 64]`` -> mean and log-variance ``[n, 128]`` each of ``q(z|x)``: the
    bundled encoder's convolutions (:class:`~models.toyworld_encoder.ToyworldEncoder`) with a
    head twice as wide."""

    def __init__(self) -> None:
        super().__init__()
        base = ToyworldEncoder()
        self.features = base.features
        self.head = nn.Linear(base.head.in_features, 2 * Z_DIM)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.head(self.features(x).flatten(1)).chunk(2, dim=1)
        return mean, logvar.clamp(-12.0, 6.0)


def pixel_weights(leaf: torch.Tensor, edge_weight: float, part_weight: float) -> torch.Tensor:
    """Per-pixel loss weights ``[n, 1, S, S]`` for leaf maps ``[n, S, S]`` (module docstring)."""
    lf = leaf.long()
    edge = torch.zeros_like(lf, dtype=torch.bool)
    edge[:, 1:, :] |= lf[:, 1:, :] != lf[:, :-1, :]
    edge[:, :-1, :] |= lf[:, 1:, :] != lf[:, :-1, :]
    edge[:, :, 1:] |= lf[:, :, 1:] != lf[:, :, :-1]
    edge[:, :, :-1] |= lf[:, :, 1:] != lf[:, :, :-1]
    part = torch.isin(lf, torch.tensor(_PARTS))
    return (1.0 + edge_weight * edge.float() + part_weight * part.float()).unsqueeze(1)


class Pretrainer:
    """Generator, EMA copy, optimiser and latent stream; one :meth:`step` is one regression
    update on a fresh batch."""

    def __init__(self, settings: Settings) -> None:
        if settings.objective not in OBJECTIVES:
            raise ValueError(f"unknown pretraining objective {settings.objective!r}; "
                             f"use one of {', '.join(OBJECTIVES)}")
        self.s = settings
        init = torch.Generator().manual_seed(settings.seed)
        with torch.random.fork_rng(devices=[]):  # module init uses the global RNG: isolate it
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=init)))
            self.g = ToyworldGenerator(upsample=settings.upsample)
            self.e = PosteriorEncoder() if settings.objective == "vae" else None
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        params = list(self.g.parameters()) + ([] if self.e is None else list(self.e.parameters()))
        self.opt = torch.optim.Adam(params, settings.lr, betas=(settings.beta1, settings.beta2))
        self.rng = torch.Generator().manual_seed(settings.seed + 1)
        self.iteration = 0
        #: Terms of the last step's loss (``l1``; with the VAE also ``kl`` in nats per image).
        self.terms: dict[str, float] = {}

    def lr_factor(self) -> float:
        s, i = self.s, self.iteration
        if not s.lr_decay_start or i < s.lr_decay_start:
            return 1.0
        return max(0.0, 1.0 - (i - s.lr_decay_start) / max(s.lr_decay_end - s.lr_decay_start, 1))

    def step(self) -> float:
        """One update; returns the weighted L1 loss. Raises ``FloatingPointError`` on NaN."""
        s = self.s
        for group in self.opt.param_groups:
            group["lr"] = s.lr * self.lr_factor()
        z = torch.randn(s.batch, Z_DIM, generator=self.rng)
        images, leaves = render_latent_batch(z.double().numpy())
        target = torch.from_numpy(images)
        weight = pixel_weights(torch.from_numpy(leaves), s.edge_weight, s.part_weight)
        self.g.train()
        if self.e is None:
            error = (self.g(z) - target).abs()
            loss = (weight * error).mean()
        else:  # z above only chose the scenes; the generator draws them from the encoder's code
            mean, logvar = self.e(target)
            noise = torch.randn(mean.shape, generator=self.rng)
            error = (self.g(mean + (0.5 * logvar).exp() * noise) - target).abs()
            recon = (weight * error).flatten(1).sum(1) / s.recon_scale
            kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(1)
            loss = (recon + s.kl_weight * kl).mean() / target[0].numel()
            self.terms["kl"] = float(kl.detach().mean())
        self.terms["l1"] = float(error.detach().mean())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at iteration {self.iteration}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.iteration += 1
        with torch.no_grad():
            decay = min(s.ema_decay, (1.0 + self.iteration) / (10.0 + self.iteration))
            for pe, p in zip(self.g_ema.parameters(), self.g.parameters(), strict=True):
                pe.lerp_(p, 1.0 - decay)
            for be, b in zip(self.g_ema.buffers(), self.g.buffers(), strict=True):
                be.copy_(b)
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        state = {"kind": "toyworld-pretrain", "settings": asdict(self.s),
                 "iteration": self.iteration, "g": self.g.state_dict(),
                 "g_ema": self.g_ema.state_dict(), "opt": self.opt.state_dict(),
                 "rng": self.rng.get_state()}
        if self.e is not None:
            state["e"] = self.e.state_dict()
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Pretrainer:
        """A pretrainer restored from a checkpoint's ``state`` (its settings and weights)."""
        trainer = cls(Settings(**state["settings"]))
        trainer.load_state_dict(state)
        return trainer

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["g"])
        if self.e is not None:
            self.e.load_state_dict(state["e"])
        self.g_ema.load_state_dict(state["g_ema"])
        if "opt" in state:  # absent in whitened checkpoints (see whiten)
            self.opt.load_state_dict(state["opt"])
        self.rng.set_state(state["rng"])
        self.iteration = int(state["iteration"])


@torch.no_grad()
def whiten(state: dict[str, Any], n: int = 4096, seed: int = 4242,
           ridge: float = 1e-4) -> dict[str, Any]:
    """A VAE pretraining state whose generator takes whitened codes.

    Encodes ``n`` texture-free renders, fits ``C = cov(means) + diag(mean posterior variance)
    + ridge * I`` (the codes' own mean, ~0.2 per dimension, is left out: a per-position shift
    before BatchNorm cannot be folded without a bias) and its Cholesky factor ``L``. Then the
    generators' ``layer1.linear.weight`` becomes ``W @ L`` (so ``G'(u) = G(L u)``) and the
    encoder's mean head is premultiplied by ``L^-1`` (so its codes are in ``u`` coordinates);
    its log-variance head is replaced by a constant, the average posterior variance in those
    coordinates. The optimiser state is dropped: the result starts the adversarial stage
    (``train_toyworld_gan --init-generator``) and cannot resume the VAE. ``state["whitened"]``
    records ``n``, ``seed``, ``L`` (``cholesky``) and the spectrum of ``C``.
    """
    if state["settings"].get("objective") != "vae" or "e" not in state:
        raise ValueError("whitening needs a VAE pretraining checkpoint (--objective vae)")
    if "whitened" in state:
        raise ValueError("this checkpoint is already whitened")
    trainer = Pretrainer.from_state(state)
    assert trainer.e is not None
    means, variances = [], []
    z = torch.randn(n, Z_DIM, generator=torch.Generator().manual_seed(seed))
    for s in range(0, n, 256):
        images, _ = render_latent_batch(z[s:s + 256].double().numpy())
        mean, logvar = trainer.e(torch.from_numpy(images))
        means.append(mean.double())
        variances.append(logvar.double().exp())
    m, v = torch.cat(means), torch.cat(variances)
    cov = torch.cov(m.T) + torch.diag(v.mean(0)) + ridge * torch.eye(Z_DIM, dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    inv = torch.linalg.solve_triangular(chol, torch.eye(Z_DIM, dtype=torch.float64), upper=False)
    out = {k: state[k] for k in ("kind", "settings", "iteration", "rng")}
    out["elapsed_seconds"] = state.get("elapsed_seconds", 0.0)
    for key in ("g", "g_ema"):
        g = dict(state[key])
        w = g["layer1.linear.weight"]
        g["layer1.linear.weight"] = (w.double() @ chol).to(w.dtype)
        out[key] = g
    e = dict(state["e"])
    hw, hb = e["head.weight"], e["head.bias"]
    post_var = ((inv.square() @ v.mean(0)).clamp_min(1e-12)).log()
    e["head.weight"] = torch.cat([(inv @ hw[:Z_DIM].double()).to(hw.dtype),
                                  torch.zeros_like(hw[Z_DIM:])])
    e["head.bias"] = torch.cat([(inv @ hb[:Z_DIM].double()).to(hb.dtype),
                                post_var.to(hb.dtype)])
    out["e"] = e
    spectrum = torch.linalg.eigvalsh(cov)
    out["whitened"] = {"samples": n, "seed": seed, "ridge": ridge, "cholesky": chol.float(),
                       "eigenvalues_min_median_max": [float(spectrum[0]),
                                                      float(spectrum.median()),
                                                      float(spectrum[-1])]}
    return out


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a pretraining checkpoint safely (``weights_only=True``) or raise a clear error."""
    if not path.is_file():
        raise FileNotFoundError(f"no pretraining checkpoint at {path}")
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"checkpoint {path} is unreadable ({e})") from e
    if not isinstance(state, dict) or state.get("kind") != "toyworld-pretrain":
        raise ValueError(f"{path} is not a checkpoint of models.pretrain_toyworld_gan")
    return state


@torch.no_grad()
def held_out_l1(gen: ToyworldGenerator, n: int = 256, seed: int = 999,
                encoder: PosteriorEncoder | None = None) -> float:
    """Unweighted L1 of ``gen`` (eval mode) against texture-free renders of ``n`` fixed latents:
    drawn from those latents, or with ``encoder`` from the means of their codes (reconstruction)."""
    z = torch.randn(n, Z_DIM, generator=torch.Generator().manual_seed(seed))
    images, _ = render_latent_batch(z.double().numpy())
    target = torch.from_numpy(images)
    if encoder is not None:
        z = encoder(target)[0]
    was = gen.training
    gen.eval()
    out = gen(z)
    gen.train(was)
    return float((out - target).abs().mean())


def export(state: dict[str, Any], weights_dir: Path, command: str, bn_batches: int = 50) -> None:
    """Write the EMA generator (float16, BatchNorm recalibrated) and its metadata."""
    from safetensors.torch import save_file

    trainer = Pretrainer.from_state(state)
    gen = trainer.g_ema
    recalibrate_batchnorm(gen, seed=trainer.s.seed + 2, batches=bn_batches)
    weights_dir.mkdir(parents=True, exist_ok=True)
    save_file(storable(gen.state_dict(), True), str(weights_dir / GENERATOR_FILE))
    meta = {"stage": "pretrain (regression onto render_latent)", "seed": trainer.s.seed,
            "iterations": trainer.iteration, "settings": asdict(trainer.s),
            "training_seconds": round(float(state.get("elapsed_seconds", 0.0)), 1),
            "held_out_l1": round(held_out_l1(gen, encoder=trainer.e), 5),
            "stored_dtype": "float16",
            "torch": torch.__version__, "command": command}
    with open(weights_dir / METADATA_FILE, "w") as f:
        json.dump(meta, f, indent=2)


def train(args: argparse.Namespace) -> int:
    """Run or resume pretraining as configured by ``args``; returns an exit code."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        state = load_checkpoint(out / CHECKPOINT)
        if "whitened" in state or "opt" not in state:
            raise ValueError(f"{out / CHECKPOINT} is a whitened checkpoint (no optimiser state): "
                             "it starts the adversarial stage, resume the VAE run it came from")
        trainer = Pretrainer.from_state(state)
        elapsed0 = float(state.get("elapsed_seconds", 0.0))
        print(f"resumed at iteration {trainer.iteration}", flush=True)
    else:
        trainer = Pretrainer(Settings(seed=args.seed, batch=args.batch, lr=args.lr,
                                      edge_weight=args.edge_weight, part_weight=args.part_weight,
                                      upsample=args.upsample, lr_decay_start=args.lr_decay_start,
                                      lr_decay_end=args.lr_decay_end or args.iters,
                                      objective=args.objective, kl_weight=args.kl_weight,
                                      recon_scale=args.recon_scale))
        elapsed0 = 0.0
        with open(out / LOG, "w") as f:
            f.write("iteration,seconds,loss,held_out_l1\n")
    start = last = time.time()
    deadline = start + args.max_minutes * 60 if args.max_minutes else math.inf
    running = math.nan
    with open(out / LOG, "a") as log:
        while trainer.iteration < args.iters:
            try:
                loss = trainer.step()
            except FloatingPointError as e:
                print(f"STOPPED: {e}; the last checkpoint is kept", file=sys.stderr, flush=True)
                return 2
            running = loss if math.isnan(running) else 0.98 * running + 0.02 * loss
            it, now = trainer.iteration, time.time()
            done = it >= args.iters or now >= deadline
            snapshot = bool(args.snapshot_every) and it % args.snapshot_every == 0
            if done or snapshot or now - last >= args.checkpoint_minutes * 60:
                elapsed = elapsed0 + now - start
                state = trainer.state_dict()
                state["elapsed_seconds"] = elapsed
                torch.save(state, out / (CHECKPOINT + ".tmp"))
                os.replace(out / (CHECKPOINT + ".tmp"), out / CHECKPOINT)
                if snapshot:
                    snap = out / "snapshots" / f"iter_{it:06d}"
                    snap.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(out / CHECKPOINT, snap / CHECKPOINT)
                held = held_out_l1(trainer.g_ema, n=args.preview, encoder=trainer.e)
                log.write(f"{it},{elapsed:.1f},{running:.5f},{held:.5f}\n")
                log.flush()
                sample_grid(trainer.g_ema, out / "samples.png", n=args.preview)
                kl = f", KL {trainer.terms['kl']:.1f} nats" if "kl" in trainer.terms else ""
                print(f"iteration {it}: loss {running:.4f}{kl}, held-out L1 (EMA, "
                      f"{args.preview}) {held:.4f}, {elapsed:.0f}s", flush=True)
                last = now
    return 0


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(prog="python -m models.pretrain_toyworld_gan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/pretrain")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--iters", type=int, default=20000)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--edge-weight", type=float, default=d.edge_weight)
    p.add_argument("--part-weight", type=float, default=d.part_weight)
    p.add_argument("--upsample", choices=("transpose", "nearest"), default=d.upsample)
    p.add_argument("--objective", choices=OBJECTIVES, default=d.objective,
                   help="regression onto render_latent(z), or a VAE with the generator as "
                        "decoder (module docstring)")
    p.add_argument("--kl-weight", type=float, default=d.kl_weight, help="VAE only")
    p.add_argument("--recon-scale", type=float, default=d.recon_scale,
                   help="VAE only: the Laplace scale dividing the weighted L1")
    p.add_argument("--lr-decay-start", type=int, default=0)
    p.add_argument("--lr-decay-end", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=0.0)
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--snapshot-every", type=int, default=0)
    p.add_argument("--preview", type=int, default=64,
                   help="latents for the held-out L1 and the sample grid at each checkpoint")
    p.add_argument("--bn-batches", type=int, default=50,
                   help="batches of 64 for BatchNorm recalibration at --export-to")
    p.add_argument("--whiten-to", default=None,
                   help="write a whitened copy of the VAE checkpoint <out>/checkpoint.pt to "
                        "this file and exit (module docstring)")
    p.add_argument("--whiten-samples", type=int, default=4096,
                   help="renders encoded for --whiten-to's Gaussian fit")
    p.add_argument("--export-to", default=None,
                   help="write the EMA generator of <out>/checkpoint.pt to this folder and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args, argv)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    if args.whiten_to:
        torch.set_num_threads(args.threads)
        state = load_checkpoint(Path(args.out) / CHECKPOINT)
        white = whiten(state, n=args.whiten_samples)
        Path(args.whiten_to).parent.mkdir(parents=True, exist_ok=True)
        torch.save(white, args.whiten_to)
        print(f"whitened iteration {white['iteration']} into {args.whiten_to}: code covariance "
              f"eigenvalues (min, median, max) {white['whitened']['eigenvalues_min_median_max']}")
        return 0
    if args.export_to:
        state = load_checkpoint(Path(args.out) / CHECKPOINT)
        export(state, Path(args.export_to), "python -m models.pretrain_toyworld_gan "
               + " ".join(sys.argv[1:] if argv is None else argv), args.bn_batches)
        return 0
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
