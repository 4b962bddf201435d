"""Train the bundled Toyworld GAN on CPU; resumable, background friendly.

Usage::

    python -m models.train_toyworld_gan --seed 0 --iters 4000 --out runs/gan
    python -m models.train_toyworld_gan --out runs/gan --resume      # continue after a stop
    python -m models.train_toyworld_gan --out runs/gan --resume --iters 6000 --lr-decay-start 4000
    python -m models.train_toyworld_gan --out runs/gan --export      # write models/weights/

Training data: a pool of Toyworld scenes of ``--data-seed`` (0) rendered once at start.
Loss: non-saturating GAN loss with a lazy R1 penalty on real images (every ``--r1-every``
iterations, scaled by that interval). Optionally (``--lr-decay-start``) both learning rates
decay linearly to 0 up to ``--lr-decay-end`` (default ``--iters``). The generator keeps an EMA
copy (ramped decay), whose BatchNorm statistics are recalibrated at export. All randomness
comes from local ``torch.Generator`` streams seeded by ``--seed``, saved in checkpoints: the
same commands give the same weights up to CPU floating-point nondeterminism (thread count,
kernel choice).
The checkpoint ``<out>/checkpoint.pt`` is written atomically every ``--checkpoint-minutes`` and
loaded with ``weights_only=True``; a NaN/inf loss stops training, keeping the last good one.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
import torch.nn.functional as F
from torch import nn

from .pretrain_toyworld_gan import PosteriorEncoder
from .toyworld_gan import (
    DISCRIMINATOR_FILE,
    GENERATOR_FILE,
    METADATA_FILE,
    SEGMENTER_WEIGHTS,
    SEMANTIC_CHANNELS,
    UPSAMPLE_MODES,
    WEIGHTS_DIR,
    Z_DIM,
    ToyworldDiscriminator,
    ToyworldGenerator,
)
from .toyworld_training import recalibrate_batchnorm, render_pool, sample_grid, storable, to_float

CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"


@dataclass(frozen=True)
class Settings:
    """Everything that determines the trained weights (saved in checkpoints and metadata)."""

    seed: int = 0
    data_seed: int = 0
    pool: int = 30_000
    batch: int = 32
    lr_g: float = 4e-4
    lr_d: float = 4e-4
    beta1: float = 0.5
    beta2: float = 0.99
    r1_gamma: float = 0.1
    r1_every: int = 16
    ema_decay: float = 0.999
    mbstd_group: int = 0
    reuse_fake: bool = False
    upsample: str = "transpose"
    lr_decay_start: int = 0
    lr_decay_end: int = 0
    semantic_d: bool = False
    rate_weight: float = 0.0
    init_generator: str = ""
    recon_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.lr_decay_start < 0 or (self.lr_decay_start
                                       and self.lr_decay_end <= self.lr_decay_start):
            raise ValueError(f"learning-rate decay must satisfy 0 < start < end (or start = 0 "
                             f"for no decay), got start {self.lr_decay_start}, end "
                             f"{self.lr_decay_end}; pass --lr-decay-start below --iters / "
                             f"--lr-decay-end")
        if self.recon_weight and not self.init_generator:
            raise ValueError("--recon-weight anchors the generator to the encoder of a VAE "
                             "pretraining: pass --init-generator <pretraining>/checkpoint.pt")


def lr_factor(settings: Settings, iteration: int) -> float:
    """Learning-rate multiplier for the update after ``iteration`` completed iterations: 1
    until ``lr_decay_start``, then linear down to 0 at ``lr_decay_end`` (always 1 when
    ``lr_decay_start`` is 0). A function of the iteration alone, so resuming is exact.

    >>> [lr_factor(Settings(lr_decay_start=2, lr_decay_end=6), i) for i in (0, 2, 3, 6, 9)]
    [1.0, 1.0, 0.75, 0.0, 0.0]
    """
    start, end = settings.lr_decay_start, settings.lr_decay_end
    if not start or iteration <= start:
        return 1.0
    return max(0.0, (end - iteration) / (end - start))


def training_command(settings: Settings, iterations: int, out: str | Path) -> str:
    """The command line that trains ``iterations`` iterations with ``settings`` (flags only for
    settings that differ from the defaults).

    >>> training_command(Settings(mbstd_group=4, reuse_fake=True), 2000, "runs/x")[36:]
    '--seed 0 --iters 2000 --out runs/x --mbstd-group 4 --reuse-fake'
    """
    flags = [f"--seed {settings.seed} --iters {iterations} --out {out}"]
    for f in dataclasses.fields(Settings):
        value, default = getattr(settings, f.name), f.default
        if f.name == "seed" or value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        flags.append(flag if isinstance(value, bool) else f"{flag} {value}")
    return "python -m models.train_toyworld_gan " + " ".join(flags)


#: Real scenes whose mean leaf probabilities are the rate controller's target.
RATE_TARGET_IMAGES = 2048
#: EMA decay of the generator's running leaf rates (rate controller).
RATE_EMA = 0.99


def _frozen_segmenter() -> nn.Module:
    """The shipped Toyworld segmenter U-Net, frozen, in eval mode (images -> leaf logits)."""
    from segmenters.toyworld import load_weights

    net: nn.Module = load_weights(SEGMENTER_WEIGHTS).eval().requires_grad_(False)
    return net


@torch.no_grad()
def leaf_rates(net: nn.Module | None, pool: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """Mean leaf probabilities ``[13]`` of ``net`` over uint8 pool images."""
    assert net is not None
    total = torch.zeros(SEMANTIC_CHANNELS, dtype=torch.float64)
    for s in range(0, pool.shape[0], batch):
        probs = net(to_float(pool[s:s + batch])).softmax(dim=1)
        total += probs.sum(dim=(0, 2, 3)).double()
    return (total / (pool.shape[0] * pool.shape[2] * pool.shape[3])).float()


class TrainingDiverged(RuntimeError):
    """A loss became NaN or inf."""


class Trainer:
    """Holds networks, optimisers and RNG streams; one :meth:`step` is one D + one G update."""

    def __init__(self, settings: Settings, pool: torch.Tensor) -> None:
        self.s = settings
        self.pool = pool
        init = torch.Generator().manual_seed(settings.seed)
        with torch.random.fork_rng(devices=[]):  # module init uses the global RNG: isolate it
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=init)))
            self.g = ToyworldGenerator(upsample=settings.upsample)
            self.d = ToyworldDiscriminator(settings.mbstd_group, semantic=settings.semantic_d)
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        betas = (settings.beta1, settings.beta2)
        self.opt_g = torch.optim.Adam(self.g.parameters(), settings.lr_g, betas=betas)
        # Lazy R1: scale the D optimiser as in StyleGAN2 so the effective lr stays settings.lr_d.
        c = settings.r1_every / (settings.r1_every + 1)
        self.opt_d = torch.optim.Adam(self.d.parameters(), settings.lr_d * c,
                                      betas=(settings.beta1 ** c, settings.beta2 ** c))
        self.base_lrs = [(opt, [float(g["lr"]) for g in opt.param_groups])
                         for opt in (self.opt_g, self.opt_d)]
        self.rng = torch.Generator().manual_seed(settings.seed + 1)
        self.iteration = 0
        self.last: dict[str, float] = {}
        #: Frozen VAE encoder of the pretraining (``recon_weight`` > 0; loaded from it).
        self.e: PosteriorEncoder | None = None
        if settings.recon_weight:
            self.e = PosteriorEncoder().eval().requires_grad_(False)
        self.segnet: nn.Module | None = None
        if settings.semantic_d or settings.rate_weight:
            self.segnet = _frozen_segmenter()
            self.d.attach_segmenter(self.segnet)
        # Leaf-rate controller: target = the segmenter's mean leaf probabilities on real scenes,
        # running = an EMA of the generator's (part of the state, so resuming is exact).
        self.target_rates = torch.zeros(SEMANTIC_CHANNELS)
        self.running_rates = torch.zeros(SEMANTIC_CHANNELS)
        if settings.rate_weight and pool.shape[0]:
            self.target_rates = leaf_rates(self.segnet, pool[:RATE_TARGET_IMAGES])
            self.running_rates = self.target_rates.clone()

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, self.pool.shape[0], (self.s.batch,), generator=self.rng)
        real = to_float(self.pool[idx])
        z = torch.randn(self.s.batch, Z_DIM, generator=self.rng)
        return real, z

    def step(self) -> dict[str, float]:
        """One iteration; raises :class:`TrainingDiverged` on a non-finite loss."""
        s = self.s
        if s.lr_decay_start:  # off by default: the optimisers' lr is then never touched
            factor = lr_factor(s, self.iteration)
            for opt, bases in self.base_lrs:
                for group, base in zip(opt.param_groups, bases, strict=True):
                    group["lr"] = base * factor
        self.g.train()
        real, z = self._batch()
        semantic = self.segnet is not None and s.semantic_d
        # Discriminator.
        fake_probs: torch.Tensor | None = None
        if s.reuse_fake:  # the G step below reuses this batch (saves one generator forward)
            fake_g = self.g(z)
            fake = fake_g.detach()
            if self.segnet is not None:  # differentiable; reused by the G step
                fake_probs = self.segnet(fake_g).softmax(dim=1)
        else:
            with torch.no_grad():
                fake = self.g(z)
        real_probs = fake_probs_d = None
        if semantic:
            assert self.segnet is not None
            with torch.no_grad():
                real_probs = self.segnet(real).softmax(dim=1)
                fake_probs_d = (fake_probs.detach() if fake_probs is not None
                                else self.segnet(fake).softmax(dim=1))
        d_loss = (F.softplus(self.d(fake, fake_probs_d)).mean()
                  + F.softplus(-self.d(real, real_probs)).mean())
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        r1 = torch.zeros(())
        if s.r1_gamma > 0 and self.iteration % s.r1_every == 0:
            # R1 on the discriminator's whole input (image and, if semantic, leaf probabilities)
            real_r = real.detach().requires_grad_(True)
            inputs = [real_r]
            probs_r = None
            if real_probs is not None:
                probs_r = real_probs.detach().requires_grad_(True)
                inputs.append(probs_r)
            grads = torch.autograd.grad(self.d(real_r, probs_r).sum(), inputs, create_graph=True)
            r1 = sum(g.square().sum(dim=(1, 2, 3)) for g in grads).mean()  # type: ignore[union-attr]
            (0.5 * s.r1_gamma * s.r1_every * r1).backward()
        self._check({"d_loss": float(d_loss.detach()), "r1": float(r1.detach())})
        self.opt_d.step()
        # Generator (D frozen: only input gradients flow through it).
        if not s.reuse_fake:
            _, z2 = self._batch()
            fake_g = self.g(z2)
            if self.segnet is not None:
                fake_probs = self.segnet(fake_g).softmax(dim=1)
        self.d.requires_grad_(False)
        g_loss = F.softplus(-self.d(fake_g, fake_probs if semantic else None)).mean()
        if s.rate_weight:
            assert fake_probs is not None
            g_loss = g_loss + s.rate_weight * self._rate_loss(fake_probs)
        recon = torch.zeros(())
        if self.e is not None:
            recon = self._recon_loss(real[: max(1, s.batch // 2)])
            g_loss = g_loss + s.recon_weight * recon
        self._check({"g_loss": float(g_loss.detach())})
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.d.requires_grad_(True)
        self.opt_g.step()
        losses = {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach()),
                  "r1": float(r1.detach())}
        if self.e is not None:
            losses["recon"] = float(recon.detach())
        self._update_ema()
        self.iteration += 1
        self.last = losses
        return losses

    def _rate_loss(self, probs: torch.Tensor) -> torch.Tensor:
        """Leaf-rate controller: ``sum_l mean(p_l) * clip(log(running_l / target_l), +-2)``.

        Its gradient pushes every leaf's drawn rate (as the frozen segmenter sees it) towards
        the real scenes' rate, in proportion to the log ratio of a running average (EMA 0.99)
        of the generator's rates to the target: a coverage force against mode dropping."""
        batch_rates = probs.mean(dim=(0, 2, 3))
        with torch.no_grad():
            self.running_rates.mul_(RATE_EMA).add_(batch_rates.detach().float(),
                                                   alpha=1 - RATE_EMA)
            eps = 1e-4
            push = ((self.running_rates + eps) / (self.target_rates + eps)).log().clamp(-2, 2)
        return (batch_rates * push.to(batch_rates.dtype)).sum()

    def _recon_loss(self, real: torch.Tensor) -> torch.Tensor:
        """Mean L1 between ``real`` and the generator's drawing of a code sampled from the frozen
        VAE encoder's ``q(z|real)``: keeps every scene the pretraining could draw drawable (an
        anchor against mode dropping, as in VAE-GAN hybrids)."""
        assert self.e is not None
        with torch.no_grad():
            mean, logvar = self.e(real)
            code = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=self.rng)
        return (self.g(code) - real).abs().mean()

    def _check(self, losses: dict[str, float]) -> None:
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad:
            raise TrainingDiverged(f"non-finite {', '.join(bad)} at iteration {self.iteration}: "
                                   f"{losses}")

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.s.ema_decay, (1.0 + self.iteration) / (10.0 + self.iteration))
        for pe, p in zip(self.g_ema.parameters(), self.g.parameters(), strict=True):
            pe.lerp_(p, 1.0 - decay)
        for be, b in zip(self.g_ema.buffers(), self.g.buffers(), strict=True):
            be.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"settings": asdict(self.s), "iteration": self.iteration,
                "g": self.g.state_dict(), "d": self.d.state_dict(),
                "g_ema": self.g_ema.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "rng": self.rng.get_state(),
                "target_rates": self.target_rates, "running_rates": self.running_rates,
                **({} if self.e is None else {"e": self.e.state_dict()})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])
        self.g_ema.load_state_dict(state["g_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.rng.set_state(state["rng"])
        self.iteration = int(state["iteration"])
        if self.e is not None:
            self.e.load_state_dict(state["e"])
        if "running_rates" in state:
            self.target_rates.copy_(state["target_rates"])
            self.running_rates.copy_(state["running_rates"])


def save_checkpoint(trainer: Trainer, out: Path, elapsed: float) -> None:
    """Atomically write ``out/checkpoint.pt`` (tmp file + os.replace)."""
    state = trainer.state_dict()
    state["elapsed_seconds"] = elapsed
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT)


def load_checkpoint(out: Path) -> dict[str, Any]:
    """Read ``out/checkpoint.pt`` safely (``weights_only=True``) or raise a clear error."""
    path = out / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; start a run without --resume "
                                f"(or pass the --out directory of an earlier run)")
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"checkpoint {path} is unreadable ({e}); delete it and start again "
                         f"without --resume") from e
    need = {"settings", "iteration", "g", "d", "g_ema", "opt_g", "opt_d", "rng"}
    if not isinstance(state, dict) or not need <= set(state):
        have = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {path} is not a Toyworld GAN checkpoint: needs keys "
                         f"{sorted(need)}, has {have}")
    return state


def make_trainer_from_checkpoint(state: dict[str, Any], pool: torch.Tensor) -> Trainer:
    """A trainer restored from ``state``; mismatched networks raise a clear error."""
    trainer = Trainer(Settings(**state["settings"]), pool)
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"checkpoint does not match the current ToyworldGenerator/"
                         f"Discriminator architecture ({e}); start a fresh run") from e
    return trainer


def export(out: Path, weights_dir: Path, bn_batches: int = 50,
           half: bool = True) -> dict[str, Any]:
    """Write the EMA generator, the discriminator and metadata from ``out``'s checkpoint.

    ``half`` stores weights as float16 (half the file size; loaders compute in float32)."""
    from safetensors.torch import save_file

    state = load_checkpoint(out)
    trainer = make_trainer_from_checkpoint(state, torch.empty(0, 3, 64, 64, dtype=torch.uint8))
    gen = trainer.g_ema
    recalibrate_batchnorm(gen, seed=trainer.s.seed + 2, batches=bn_batches)
    weights_dir.mkdir(parents=True, exist_ok=True)
    save_file(storable(gen.state_dict(), half), str(weights_dir / GENERATOR_FILE))
    save_file(storable(trainer.d.state_dict(), half), str(weights_dir / DISCRIMINATOR_FILE))
    meta = {"seed": trainer.s.seed, "iterations": trainer.iteration,
            "settings": asdict(trainer.s),
            "training_seconds": round(float(state.get("elapsed_seconds", 0.0)), 1),
            "generator_params": sum(p.numel() for p in gen.parameters()),
            "discriminator_params": sum(p.numel() for p in trainer.d.parameters()),
            "generator_weights": f"EMA, BatchNorm statistics recalibrated over {bn_batches}x64 "
                                 "samples",
            "stored_dtype": "float16" if half else "float32",
            "torch": torch.__version__,
            "command": training_command(trainer.s, trainer.iteration, out)}
    with open(weights_dir / METADATA_FILE, "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def init_from_pretraining(trainer: Trainer, path: Path) -> None:
    """Start ``trainer``'s generator and its EMA copy from the EMA generator of a
    ``models.pretrain_toyworld_gan`` checkpoint (same ``upsample``, else a clear error), and
    with ``recon_weight`` its frozen encoder from that checkpoint's VAE encoder."""
    from .pretrain_toyworld_gan import load_checkpoint as load_pretraining

    state = load_pretraining(path)
    if state["settings"]["upsample"] != trainer.s.upsample:
        raise ValueError(f"{path} was pretrained with --upsample "
                         f"{state['settings']['upsample']}, this run uses {trainer.s.upsample}; "
                         "pass the same --upsample")
    if trainer.e is not None:
        if "e" not in state:
            raise ValueError(f"--recon-weight needs the encoder of a VAE pretraining, and {path} "
                             "has none: pretrain with --objective vae, or drop --recon-weight")
        trainer.e.load_state_dict(state["e"])
    trainer.g.load_state_dict(state["g_ema"])
    trainer.g_ema.load_state_dict(state["g_ema"])
    print(f"generator initialised from {path} (pretraining iteration {state['iteration']})",
          flush=True)


def train(args: argparse.Namespace) -> int:
    """Run (or resume) training as configured by ``args``; returns a process exit code."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    state = load_checkpoint(out) if args.resume else None
    settings = (Settings(**state["settings"]) if state is not None else
                Settings(seed=args.seed, data_seed=args.data_seed, pool=args.pool,
                         batch=args.batch, lr_g=args.lr_g, lr_d=args.lr_d, beta1=args.beta1,
                         beta2=args.beta2, r1_gamma=args.r1_gamma, r1_every=args.r1_every,
                         ema_decay=args.ema_decay, mbstd_group=args.mbstd_group,
                         reuse_fake=args.reuse_fake, upsample=args.upsample,
                         lr_decay_start=args.lr_decay_start,
                         semantic_d=args.semantic_d, rate_weight=args.rate_weight,
                         init_generator=args.init_generator, recon_weight=args.recon_weight,
                         lr_decay_end=((args.lr_decay_end or args.iters)
                                       if args.lr_decay_start else 0)))
    if state is not None and args.lr_decay_start and not settings.lr_decay_start:
        # Adding a decay that starts at or after the checkpoint's iteration gives exactly the
        # run that had it from the beginning, so the settings (and metadata command) say so.
        if args.lr_decay_start < int(state["iteration"]):
            raise ValueError(f"--lr-decay-start {args.lr_decay_start} is before the "
                             f"checkpoint's iteration {state['iteration']}; pass a start at or "
                             "after it")
        settings = dataclasses.replace(settings, lr_decay_start=args.lr_decay_start,
                                       lr_decay_end=args.lr_decay_end or args.iters)
        state["settings"] = asdict(settings)
        print(f"learning rates decay linearly to 0 from iteration {settings.lr_decay_start} "
              f"to {settings.lr_decay_end}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pool = render_pool(settings.data_seed, settings.pool)
    print(f"rendered {settings.pool} training scenes in {time.time() - t0:.1f}s", flush=True)
    if state is not None:
        trainer = make_trainer_from_checkpoint(state, pool)
        elapsed0 = float(state.get("elapsed_seconds", 0.0))
        print(f"resumed from {out / CHECKPOINT} at iteration {trainer.iteration}", flush=True)
    else:
        trainer = Trainer(settings, pool)
        if settings.init_generator:
            init_from_pretraining(trainer, Path(settings.init_generator))
        elapsed0 = 0.0
        with open(out / LOG, "w") as f:
            f.write("iteration,seconds,d_loss,g_loss,r1\n")
    start = time.time()
    last_ckpt = start

    def elapsed() -> float:
        return elapsed0 + time.time() - start

    deadline = start + args.max_minutes * 60 if args.max_minutes else math.inf
    with open(out / LOG, "a") as log:
        while trainer.iteration < args.iters:
            try:
                losses = trainer.step()
            except TrainingDiverged as e:
                print(f"STOPPED: {e}. The last good checkpoint ({out / CHECKPOINT}) is kept; "
                      "resume from it with a lower learning rate or a larger --r1-gamma.",
                      file=sys.stderr, flush=True)
                return 2
            it = trainer.iteration
            if it % args.log_every == 0 or it == args.iters:
                log.write(f"{it},{elapsed():.1f},{losses['d_loss']:.4f},"
                          f"{losses['g_loss']:.4f},{losses['r1']:.4f}\n")
                log.flush()
            now = time.time()
            done = it >= args.iters or now >= deadline
            snapshot = bool(args.snapshot_every) and it % args.snapshot_every == 0
            if done or snapshot or now - last_ckpt >= args.checkpoint_minutes * 60:
                save_checkpoint(trainer, out, elapsed())
                if snapshot:  # a kept copy, for choosing among iterations afterwards
                    snap = out / "snapshots" / f"iter_{it:06d}"
                    snap.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(out / CHECKPOINT, snap / CHECKPOINT)
                sample_grid(trainer.g_ema, out / "samples.png")
                last_ckpt = now
                print(f"iteration {it}: checkpoint saved ({elapsed():.0f}s, {losses})",
                      flush=True)
            if now >= deadline:
                print(f"time limit of {args.max_minutes} min reached at iteration {it}; "
                      "resume with --resume", flush=True)
                break
    if args.iters == 0 or trainer.iteration == 0:
        save_checkpoint(trainer, out, elapsed())
    print(f"done: iteration {trainer.iteration}, {elapsed():.0f}s", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(prog="python -m models.train_toyworld_gan",
                                description="Train (or export) the bundled Toyworld GAN on CPU.")
    p.add_argument("--out", default="runs/gan", help="run directory (checkpoint, log, samples)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--iters", type=int, default=4000, help="total iterations to reach")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--export", action="store_true",
                   help="write safetensors + json from <out>/checkpoint.pt and exit")
    p.add_argument("--weights-dir", default=str(WEIGHTS_DIR), help="where --export writes")
    p.add_argument("--bn-batches", type=int, default=50,
                   help="batches of 64 used by --export to recalibrate BatchNorm statistics")
    p.add_argument("--float32", action="store_true",
                   help="--export stores float32 weights (default float16: half the size)")
    p.add_argument("--data-seed", type=int, default=d.data_seed)
    p.add_argument("--pool", type=int, default=d.pool, help="training scenes rendered at start")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr-g", type=float, default=d.lr_g)
    p.add_argument("--lr-d", type=float, default=d.lr_d)
    p.add_argument("--beta1", type=float, default=d.beta1)
    p.add_argument("--beta2", type=float, default=d.beta2)
    p.add_argument("--r1-gamma", type=float, default=d.r1_gamma)
    p.add_argument("--r1-every", type=int, default=d.r1_every)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--mbstd-group", type=int, default=d.mbstd_group,
                   help="discriminator minibatch-stddev group size (0 = off)")
    p.add_argument("--reuse-fake", action="store_true",
                   help="G step reuses the D step's fake batch (one generator forward less)")
    p.add_argument("--upsample", choices=UPSAMPLE_MODES, default=d.upsample,
                   help="generator 2x upsampling: 4x4/2 transposed conv, or nearest-neighbour "
                        "+ 3x3 conv (no checkerboard texture)")
    p.add_argument("--lr-decay-start", type=int, default=d.lr_decay_start,
                   help="decay both learning rates linearly to 0 from this iteration (0 = off; "
                        "with --resume it may be added to a run without decay if it starts at "
                        "or after the checkpoint's iteration)")
    p.add_argument("--lr-decay-end", type=int, default=d.lr_decay_end,
                   help="iteration where the decayed learning rates reach 0 (default: --iters)")
    p.add_argument("--semantic-d", action="store_true",
                   help="the discriminator also sees the frozen Toyworld segmenter's leaf "
                        "probabilities of each image (judges what is drawn where)")
    p.add_argument("--rate-weight", type=float, default=d.rate_weight,
                   help="weight of the leaf-rate controller: pushes each leaf's drawn rate "
                        "(as the frozen segmenter sees it) towards the real scenes' rate "
                        "(0 = off)")
    p.add_argument("--init-generator", default=d.init_generator,
                   help="start the generator from a models.pretrain_toyworld_gan checkpoint")
    p.add_argument("--recon-weight", type=float, default=d.recon_weight,
                   help="with --init-generator of a VAE pretraining: weight of the L1 between "
                        "real scenes and the generator's drawing of their (frozen) encoder "
                        "codes, an anchor against mode dropping (0 = off)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (keep 1 when sharing)")
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop (with a checkpoint) after this many minutes; 0 = no limit")
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="also keep a copy of the checkpoint every N iterations in "
                        "<out>/snapshots/iter_N/ (export one with --out that folder)")
    p.add_argument("--log-every", type=int, default=10)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.export:
            meta = export(Path(args.out), Path(args.weights_dir), args.bn_batches,
                          half=not args.float32)
            print(f"exported iteration {meta['iterations']} to {args.weights_dir}")
            return 0
        return train(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
