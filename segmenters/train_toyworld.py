"""Train the bundled Toyworld segmenter (see ``segmenters/TRAINING.md``).

    python -m segmenters.train_toyworld --seed 0 --out segmenters/weights/toyworld.safetensors

Every step renders fresh scenes on the fly: step ``s`` trains on scenes
``s*B .. s*B+B-1`` of the training seed, so the data never repeats and depends only on the seed.
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.toyworld.concepts import CONCEPTS, LEAF_CONCEPT_TABLE, LEAVES
from models.toyworld.render import render_scene

from .evaluate import HELDOUT_SEED, evaluate, format_table
from .toyworld import ToyworldSegmenter, ToyworldUNet, save_weights

#: Seed of the scenes used for validation during training (model monitoring only).
VALIDATION_SEED = 777_777
#: Number of training scenes used to estimate leaf frequencies for the class weights.
_FREQ_SCENES = 512


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


def _config(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("seed", "steps", "batch_size", "lr", "weight_decay", "warmup", "widths",
            "class_weight_power", "jaccard_weight", "size")
    return {k: getattr(args, k) for k in keys}


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
            res = evaluate(ToyworldSegmenter(net), samples=args.val_samples,
                           seed=VALIDATION_SEED, size=args.size)
            net.train()
            history.append({"step": done, "miou": res["miou"], "per_class": res["per_class"]})
            worst = sorted(res["per_class"].items(), key=lambda kv: kv[1])[:3]
            log(f"val step {done} mIoU {res['miou']:.4f} worst " +
                ", ".join(f"{c} {v:.3f}" for c, v in worst))
        if done % args.checkpoint_every == 0 or done == args.steps:
            now = time.perf_counter()
            elapsed += now - t_last
            t_last = now
            _atomic_save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                          "step": done, "elapsed": elapsed, "history": history,
                          "config": config}, ckpt_path)

    elapsed += time.perf_counter() - t_last
    net.eval()
    save_weights(net, args.out, extra={"train_seed": str(args.seed), "steps": str(args.steps)})
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    log(f"wrote {args.out} (sha256 {digest[:16]}...) after {elapsed / 60:.1f} min of training")
    meta: dict[str, Any] = {
        "command": command,
        "config": config, "parameters": n_params, "train_seconds": round(elapsed, 1),
        "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
        "sha256": digest, "leaves": list(LEAVES), "concepts": list(CONCEPTS),
        "validation_seed": VALIDATION_SEED, "validation_history": history,
    }
    if args.eval_samples > 0:
        res = evaluate(ToyworldSegmenter(net), samples=args.eval_samples, seed=HELDOUT_SEED,
                       size=args.size)
        meta["heldout"] = res
        log("held-out evaluation:\n" + format_table(res))
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
