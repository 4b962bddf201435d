"""Train the bundled Toyworld segmenter (see ``segmenters/TRAINING.md``).

    python -m segmenters.train_toyworld --seed 0 --out segmenters/weights/toyworld.safetensors

Every step renders fresh scenes on the fly: step ``s`` trains on scenes
``s*B .. s*B+B-1`` of the training seed, so the data never repeats and depends only on the seed.
The images (never the masks) are augmented by default (:class:`Augmentation`: Gaussian blur of a
random fraction of the batch, contrast/brightness/colour jitter, pixel noise) so the segmenter
also labels blurry generated images well; the augmentation of step ``s`` comes from a local
``torch.Generator`` seeded by ``(seed, s)`` (:func:`augmentation_generator`). ``--no-augment``
trains on clean renders only, as the first shipped weights were.
Loss: class-weighted cross-entropy over the 13 leaves (weights ``freq**-power``) plus a
soft-Jaccard loss on the 15 concept probabilities (what the IoU metric measures). AdamW with
linear warm-up and cosine decay; the learning rate is a function of the step only.

Deterministic given the seed (single-threaded CPU): weights are initialised from a local
``torch.Generator``. A checkpoint (``torch.save``, loaded back with ``weights_only=True``) is
written every ``--checkpoint-every`` steps to ``--workdir``; re-running the same command resumes
from it and gives the same weights as an uninterrupted run. At the end the weights are written as
safetensors to ``--out``, with a JSON of metadata (settings, time, held-out IoU) beside them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.toyworld.concepts import CONCEPTS, LEAF_CONCEPT_TABLE, LEAVES
from models.toyworld.render import render_scene

from .evaluate import HELDOUT_SEED, format_robustness, gaussian_blur, robustness
from .toyworld import ToyworldSegmenter, ToyworldUNet, save_weights

#: Seed of the scenes used for validation during training (model monitoring only).
VALIDATION_SEED = 777_777
#: Number of training scenes used to estimate leaf frequencies for the class weights.
_FREQ_SCENES = 512
#: Blur sigmas (pixels) of the final held-out robustness evaluation.
EVAL_BLURS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5)
#: Tag mixed into the augmentation seeds so they differ from any other use of the seed.
_AUG_TAG = 0x5E6A


@dataclass(frozen=True)
class Augmentation:
    """Random image degradations applied to training images (the masks stay exact).

    Per image, in this order: with probability ``blur_prob`` a Gaussian blur of sigma uniform in
    ``[0, blur_max]`` px; contrast ``x -> m + c (x - m)`` about the image mean ``m`` with ``c``
    uniform in ``[1 - contrast, 1 + contrast]``, a brightness offset uniform in
    ``[-brightness, brightness]`` and per-channel colour gains uniform in ``[1 - color,
    1 + color]``; additive Gaussian pixel noise of std uniform in ``[0, noise_max]``; finally
    clamped to [-1, 1]. All zeros is the identity.
    """

    blur_prob: float = 0.6
    blur_max: float = 1.5
    contrast: float = 0.15
    brightness: float = 0.1
    color: float = 0.05
    noise_max: float = 0.05

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"augmentation {name} must be finite and >= 0, got {v}")
        if self.blur_prob > 1 or self.contrast >= 1 or self.color >= 1:
            raise ValueError(f"augmentation blur_prob must be <= 1 and contrast, color < 1, "
                             f"got {self}")

    @property
    def active(self) -> bool:
        """False when every setting is 0 (the identity)."""
        return any(v > 0 for v in asdict(self).values())


#: No augmentation (``--no-augment``).
NO_AUGMENTATION = Augmentation(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def augmentation_generator(seed: int, step: int) -> torch.Generator:
    """The local generator of step ``step``'s augmentation: a function of ``(seed, step)`` only,
    so resumed runs and uninterrupted runs augment identically."""
    state = np.random.SeedSequence([seed, step, _AUG_TAG]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def augment(images: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Augmented copy of images ``[N, 3, H, W]`` in [-1, 1], as :class:`Augmentation` describes.

    Draws all random numbers from ``generator`` in a fixed order (a fixed number per image), so
    the result depends only on the images, ``aug`` and the generator's state.
    """
    n = images.shape[0]
    u = torch.rand(n, 8, generator=generator, dtype=torch.float64)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    if not aug.active:
        return images.clone()
    blur = torch.where(u[:, 0] < aug.blur_prob, u[:, 1] * aug.blur_max, 0.0)
    x = gaussian_blur(images, blur) if aug.blur_max > 0 else images.clone()
    contrast = (1.0 + aug.contrast * (2 * u[:, 2] - 1)).to(x.dtype)[:, None, None, None]
    offset = (aug.brightness * (2 * u[:, 3] - 1)).to(x.dtype)[:, None, None, None]
    gains = (1.0 + aug.color * (2 * u[:, 4:7] - 1)).to(x.dtype)[:, :, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + contrast * (x - mean)) * gains + offset
    x = x + (aug.noise_max * u[:, 7]).to(x.dtype)[:, None, None, None] * noise
    return x.clamp_(-1.0, 1.0)


def render_leaf_batch(seed: int, start: int, n: int, size: int = 64
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes ``start .. start+n-1`` of ``seed``: images float ``[n,3,S,S]``, leaf ids long
    ``[n,S,S]``."""
    scenes = [render_scene(seed, start + i, size) for i in range(n)]
    images = torch.from_numpy(np.stack([s.image for s in scenes]).astype(np.float32))
    leaves = torch.from_numpy(np.stack([s.leaf for s in scenes]).astype(np.int64))
    return images, leaves


def class_weights(seed: int, power: float, size: int = 64) -> torch.Tensor:
    """Per-leaf loss weights ``freq ** -power``, normalised to pixel-weighted mean 1."""
    _, leaves = render_leaf_batch(seed, 0, _FREQ_SCENES, size)
    freq = torch.bincount(leaves.flatten(), minlength=len(LEAVES)).double()
    freq = (freq / freq.sum()).clamp_min(1e-4)
    w = freq ** -power
    return (w / (freq * w).sum()).float()


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def segmentation_loss(logits: torch.Tensor, leaves: torch.Tensor, weights: torch.Tensor,
                      table: torch.Tensor, jaccard: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted leaf cross-entropy + ``jaccard`` × soft-Jaccard concept loss (batch-pooled)."""
    ce = F.cross_entropy(logits, leaves, weight=weights)
    probs = torch.einsum("nlhw,lc->nchw", logits.softmax(dim=1), table)
    truth = table[leaves].permute(0, 3, 1, 2)
    inter = (probs * truth).sum(dim=(0, 2, 3))
    union = (probs + truth - probs * truth).sum(dim=(0, 2, 3))
    soft_j = (1.0 - (inter + 1.0) / (union + 1.0)).mean()
    return ce + jaccard * soft_j, {"ce": ce.item(), "jaccard": soft_j.item()}


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def augmentation_from_args(args: argparse.Namespace) -> Augmentation:
    """The :class:`Augmentation` the command line asks for (all zeros with ``--no-augment``)."""
    if not args.augment:
        return NO_AUGMENTATION
    return Augmentation(blur_prob=args.blur_prob, blur_max=args.blur_max,
                        contrast=args.contrast, brightness=args.brightness, color=args.color,
                        noise_max=args.noise_max)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("seed", "steps", "batch_size", "lr", "weight_decay", "warmup", "widths",
            "class_weight_power", "jaccard_weight", "size")
    return {**{k: getattr(args, k) for k in keys},
            "augmentation": asdict(augmentation_from_args(args))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m segmenters.train_toyworld", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="training scene seed and init seed")
    p.add_argument("--out", type=Path, default=Path("segmenters/weights/toyworld.safetensors"))
    p.add_argument("--workdir", type=Path, default=Path("runs/train_toyworld"),
                   help="checkpoint and log directory (resumed from if it holds a checkpoint)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--widths", type=str, default="16,32,64,96",
                   help="channels per resolution level (full, 1/2, 1/4, ...)")
    p.add_argument("--class-weight-power", type=float, default=0.5)
    p.add_argument("--jaccard-weight", type=float, default=1.0)
    p.add_argument("--size", type=int, default=64, help="scene side length in pixels")
    d = Augmentation()
    g = p.add_argument_group("augmentation of the training images (masks stay exact)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="augment the training images (--no-augment: clean renders only, as the "
                        "first shipped weights)")
    g.add_argument("--blur-prob", type=float, default=d.blur_prob,
                   help="fraction of images blurred")
    g.add_argument("--blur-max", type=float, default=d.blur_max,
                   help="blur sigma is uniform in [0, this] pixels")
    g.add_argument("--contrast", type=float, default=d.contrast,
                   help="contrast factor uniform in [1-x, 1+x]")
    g.add_argument("--brightness", type=float, default=d.brightness,
                   help="brightness offset uniform in [-x, x] (images in [-1, 1])")
    g.add_argument("--color", type=float, default=d.color,
                   help="per-channel gain uniform in [1-x, 1+x]")
    g.add_argument("--noise-max", type=float, default=d.noise_max,
                   help="pixel noise std uniform in [0, x] (images in [-1, 1])")
    p.add_argument("--val-blur", type=float, default=1.0,
                   help="validation also scores images blurred with this sigma (0: clean only)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--val-samples", type=int, default=200)
    p.add_argument("--eval-samples", type=int, default=1000,
                   help="held-out scenes scored at the end (0 to skip)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    args = p.parse_args(argv)
    if args.seed in (HELDOUT_SEED, VALIDATION_SEED):
        p.error(f"--seed {args.seed} is reserved for evaluation; pick another training seed")
    try:
        augmentation_from_args(args)
    except ValueError as e:
        p.error(str(e))
    if args.val_blur < 0:
        p.error(f"--val-blur must be >= 0, got {args.val_blur}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Train (or resume) as the command line says; writes weights, metadata JSON and a log."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m segmenters.train_toyworld " + " ".join(
        sys.argv[1:] if argv is None else argv)
    with open(args.workdir / "train.log", "a", buffering=1) as log_file:

        def log(msg: str) -> None:
            line = f"[{time.strftime('%H:%M:%S')}] {msg}"
            print(line, flush=True)
            log_file.write(line + "\n")

        train(args, log, command)
    return 0


def train(args: argparse.Namespace, log: Callable[[str], None], command: str) -> None:
    """The training loop of :func:`main`, logging through ``log``."""
    widths = tuple(int(w) for w in args.widths.split(","))
    ckpt_path = args.workdir / "checkpoint.pt"
    config = _config(args)
    aug = augmentation_from_args(args)
    gen = torch.Generator().manual_seed(args.seed)
    net = ToyworldUNet(widths)
    net.reset_parameters(gen)
    net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    start, elapsed, history = 0, 0.0, []
    if ckpt_path.exists() and not args.fresh:
        ckpt = torch.load(ckpt_path, weights_only=True)
        if ckpt["config"] != config:
            raise SystemExit(f"{ckpt_path} was written with settings {ckpt['config']}, not "
                             f"{config}; pass --fresh or another --workdir")
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, elapsed, history = ckpt["step"], ckpt["elapsed"], ckpt["history"]
        log(f"resumed from {ckpt_path} at step {start}")
    n_params = sum(p.numel() for p in net.parameters())
    log(f"config {json.dumps(config)} params {n_params} threads {torch.get_num_threads()}")
    weights = class_weights(args.seed, args.class_weight_power, args.size)
    log("class weights " + ", ".join(
        f"{n}={w:.2f}" for n, w in zip(LEAVES, weights.tolist(), strict=True)))
    table = torch.from_numpy(LEAF_CONCEPT_TABLE).float()

    t_last = time.perf_counter()
    stats: dict[str, float] = {"loss": 0.0, "ce": 0.0, "jaccard": 0.0}
    net.train()
    for step in range(start, args.steps):
        lr = learning_rate(step, args.steps, args.lr, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        images, leaves = render_leaf_batch(args.seed, step * args.batch_size, args.batch_size,
                                           args.size)
        if aug.active:
            images = augment(images, aug, augmentation_generator(args.seed, step))
        logits = net(images.contiguous(memory_format=torch.channels_last))
        loss, parts = segmentation_loss(logits, leaves, weights, table, args.jaccard_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stats["loss"] += loss.item()
        for k, v in parts.items():
            stats[k] += v
        done = step + 1
        if done % 50 == 0:
            now = time.perf_counter()
            elapsed += now - t_last
            t_last = now
            log(f"step {done}/{args.steps} lr {lr:.2e} " + " ".join(
                f"{k} {v / 50:.4f}" for k, v in stats.items()) + f" elapsed {elapsed:.0f}s")
            stats = dict.fromkeys(stats, 0.0)
        if done % args.val_every == 0 or done == args.steps:
            sigmas = (0.0, args.val_blur) if args.val_blur > 0 else (0.0,)
            results = robustness(ToyworldSegmenter(net), sigmas, samples=args.val_samples,
                                 seed=VALIDATION_SEED, size=args.size)
            net.train()
            res = results[0]
            entry: dict[str, Any] = {"step": done, "miou": res["miou"],
                                     "per_class": res["per_class"]}
            worst = sorted(res["per_class"].items(), key=lambda kv: kv[1])[:3]
            msg = (f"val step {done} mIoU {res['miou']:.4f} worst " +
                   ", ".join(f"{c} {v:.3f}" for c, v in worst))
            if len(results) > 1:
                entry.update(blur_sigma=args.val_blur, miou_blur=results[1]["miou"])
                msg += f" | blur {args.val_blur:g}: mIoU {results[1]['miou']:.4f}"
            history.append(entry)
            log(msg)
        if done % args.checkpoint_every == 0 or done == args.steps:
            now = time.perf_counter()
            elapsed += now - t_last
            t_last = now
            _atomic_save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                          "step": done, "elapsed": elapsed, "history": history,
                          "config": config}, ckpt_path)

    elapsed += time.perf_counter() - t_last
    net.eval()
    save_weights(net, args.out, extra={"train_seed": str(args.seed), "steps": str(args.steps),
                                       "augmentation": json.dumps(asdict(aug))})
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    log(f"wrote {args.out} (sha256 {digest[:16]}...) after {elapsed / 60:.1f} min of training")
    meta: dict[str, Any] = {
        "command": command,
        "config": config, "augmentation": asdict(aug), "parameters": n_params,
        "train_seconds": round(elapsed, 1),
        "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
        "sha256": digest, "leaves": list(LEAVES), "concepts": list(CONCEPTS),
        "validation_seed": VALIDATION_SEED, "validation_history": history,
    }
    if args.eval_samples > 0:
        results = robustness(ToyworldSegmenter(net), EVAL_BLURS, samples=args.eval_samples,
                             seed=HELDOUT_SEED, size=args.size)
        meta["heldout"] = results[0]
        meta["heldout_blur"] = results[1:]
        log("held-out evaluation (columns: Gaussian blur sigma of the images):\n" +
            format_robustness(results))
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
