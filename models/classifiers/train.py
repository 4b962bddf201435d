"""Train the Toyworld scene classifier on rendered, typed scenes (CPU, resumable).

    python -m models.classifiers.train --seed 0 --out runs/cls2 [--iters N] [--threads 1] \\
        [--aux-weight 1] [--act-l1 W] [--resume] [--export [--head-l1 1e-4]]

Data: a pool of ``--pool`` typed scenes of ``--data-seed`` (scene ``i`` has type
``SCENE_TYPES[i % 6]``, so the pool is balanced), rendered once and cached in ``<out>`` as uint8.
Held-out accuracy is measured on ``--eval-samples`` typed scenes of ``--eval-seed`` (refused when
equal to ``--data-seed``). Batch ``k`` (indices and flips) depends only on ``(seed, k)``, so a run
resumed from its checkpoint (``<out>/checkpoint.pt``, written atomically every
``--checkpoint-minutes`` and at the end) continues exactly as an uninterrupted one would.
``--export`` stores the weights as float16 safetensors plus a JSON of how they were made (command,
seeds, held-out accuracy overall and per class, measured on the stored float16 weights) in
``--weights-dir`` (default ``models/weights/``). ``--aux-weight`` adds a training-only loss: a
1x1 conv on ``conv5`` predicts each Toyworld concept's share of every 8x8 cell (:class:`Trainer`),
so ``conv5`` must encode where every concept is, not only those that decide the scene type.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..safe_load import CheckpointError, load_checkpoint
from ..toyworld.concepts import CONCEPTS
from ..toyworld.render import (
    SCENE_TYPES,
    render_batch,
    render_leaves,
    render_typed_batch,
    scene_type_of,
)
from .toyworld import (
    METADATA_FILE,
    WEIGHTS_DIR,
    WEIGHTS_FILE,
    ToyworldClassifier,
    load_toyworld_classifier,
)

CHECKPOINT = "checkpoint.pt"
#: Pixels per side of a cell of the auxiliary target (64 / 8 = conv5's 8x8 grid).
AUX_CELL = 8
LOG = "log.jsonl"


@dataclass(frozen=True)
class Settings:
    """Everything that determines a run (saved in its checkpoint)."""

    seed: int = 0
    data_seed: int = 0
    eval_seed: int = 1
    pool: int = 12000
    eval_samples: int = 1200
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup: int = 50
    iters: int = 700
    aux_weight: float = 0.0
    act_l1: float = 0.0

    def __post_init__(self) -> None:
        if self.data_seed == self.eval_seed:
            raise ValueError(f"--eval-seed must differ from --data-seed (both {self.data_seed}): "
                             "held-out accuracy needs scenes the classifier never saw")
        for name in ("pool", "eval_samples", "batch", "iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.aux_weight < 0 or self.act_l1 < 0:
            raise ValueError(f"aux_weight and act_l1 must be >= 0, got {self.aux_weight} and "
                             f"{self.act_l1}")


def lr_at(s: Settings, iteration: int) -> float:
    """Linear warm-up over ``s.warmup`` iterations, then cosine decay to 0 at ``s.iters``."""
    if iteration < s.warmup:
        return s.lr * (iteration + 1) / s.warmup
    t = (iteration - s.warmup) / max(s.iters - s.warmup, 1)
    return s.lr * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Rendered images in [-1, 1] as uint8 [0, 255] (what the pool caches)."""
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float in [0, 1], the classifier's input range."""
    return images.float() / 255.0


def typed_pool(seed: int, n: int, cache: Path | None = None,
               chunk: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    """Typed scenes ``0 .. n-1`` of ``seed`` as uint8 images ``[n,3,64,64]`` and labels ``[n]``,
    read from / written to ``cache`` (an ``.npz``) when given."""
    if cache is not None and cache.is_file():
        with np.load(cache) as f:
            return torch.from_numpy(f["images"]), torch.from_numpy(f["labels"])
    images, labels = [], []
    for start in range(0, n, chunk):
        img, _, lab = render_typed_batch(seed, start, min(chunk, n - start))
        images.append(to_uint8(img))
        labels.append(lab)
    out_i, out_l = np.concatenate(images), np.concatenate(labels)
    if cache is not None:
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, images=out_i, labels=out_l)
        os.replace(tmp, cache)
    return torch.from_numpy(out_i), torch.from_numpy(out_l)


def typed_cells(seed: int, n: int, cache: Path | None = None, chunk: int = 600) -> torch.Tensor:
    """Per-cell concept fractions of typed scenes ``0 .. n-1`` of ``seed``: float16
    ``[n, len(CONCEPTS), 8, 8]``, the fraction of each 8x8-pixel cell of the 64x64 scene that
    carries each concept (the auxiliary target of ``--aux-weight``); cached in ``cache``."""
    if cache is not None and cache.is_file():
        with np.load(cache) as f:
            return torch.from_numpy(f["cells"])
    out = []
    for start in range(0, n, chunk):
        _, masks, _ = render_typed_batch(seed, start, min(chunk, n - start))
        m = torch.from_numpy(masks).float()
        out.append(F.avg_pool2d(m, AUX_CELL).half().numpy())
    cells = np.concatenate(out)
    if cache is not None:
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, cells=cells)
        os.replace(tmp, cache)
    return torch.from_numpy(cells)


def batch_indices(s: Settings, iteration: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool indices ``[batch]`` and horizontal-flip flags of batch ``iteration``: a function of
    ``(s.seed, iteration)`` only."""
    g = torch.Generator().manual_seed(s.seed * 1_000_003 + iteration)
    return torch.randint(n, (s.batch,), generator=g), torch.rand(s.batch, generator=g) < 0.5


@torch.no_grad()
def evaluate(net: ToyworldClassifier, images: torch.Tensor, labels: torch.Tensor,
             batch: int = 200) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix (rows: true, columns: predicted) of
    ``net`` on uint8 ``images`` with integer ``labels``; ``net`` is left as it was found."""
    was_training = net.training
    net.eval()
    preds = torch.cat([net(to_unit(images[i:i + batch])).argmax(1)
                       for i in range(0, len(images), batch)])
    net.train(was_training)
    k = len(SCENE_TYPES)
    confusion = torch.bincount(labels * k + preds, minlength=k * k).view(k, k)
    per_class = {c: round(float(confusion[i, i]) / max(int(confusion[i].sum()), 1), 4)
                 for i, c in enumerate(SCENE_TYPES)}
    return {"accuracy": round(float((preds == labels).float().mean()), 4),
            "per_class_accuracy": per_class, "confusion": confusion.tolist(),
            "samples": len(labels)}


def untyped_set(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Untyped (default-prior) scenes ``0 .. n-1`` of ``seed``, labelled by ``scene_type_of``."""
    images, _ = render_batch(seed, 0, n)
    labels = [SCENE_TYPES.index(scene_type_of(leaf)) for leaf in render_leaves(seed, 0, n)]
    return torch.from_numpy(to_uint8(images)), torch.tensor(labels, dtype=torch.int64)


class Trainer:
    """Model, optimiser and iteration counter; one :meth:`step` per batch.

    With ``s.aux_weight > 0`` (and ``cells``, :func:`typed_cells` of the pool) a 1x1 conv
    ``aux`` on ``conv5`` predicts, per 8x8 cell, the fraction of the cell each Toyworld concept
    covers (binary cross-entropy with soft targets), added to the scene loss with that weight.
    The head is for training only: the exported classifier is ``conv1..conv5`` + ``fc``.
    ``s.act_l1 > 0`` adds that weight times the mean ``conv5`` activation (an L1 penalty: the
    activations are non-negative)."""

    def __init__(self, s: Settings, pool: tuple[torch.Tensor, torch.Tensor],
                 cells: torch.Tensor | None = None) -> None:
        self.s = s
        self.images, self.labels = pool
        if s.aux_weight > 0 and (cells is None or len(cells) != len(self.images)):
            raise ValueError("aux_weight > 0 needs the per-cell concept fractions of the pool")
        self.cells = cells
        torch.manual_seed(s.seed)  # initial weights only; batches use their own generators
        self.net = ToyworldClassifier().train()
        params = list(self.net.parameters())
        self.aux: torch.nn.Conv2d | None = None
        if s.aux_weight > 0:
            self.aux = torch.nn.Conv2d(self.net.fc.in_features, len(CONCEPTS), 1)
            params += list(self.aux.parameters())
        self.opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        self.iteration = 0

    def step(self) -> dict[str, float]:
        idx, flip = batch_indices(self.s, self.iteration, len(self.images))
        x = to_unit(self.images[idx])
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        y = self.labels[idx]
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.s, self.iteration)
        h = (self.net.check_images(x) - self.net._mean) / self.net._std
        for name in self.net.layer_names:
            h = getattr(self.net, name)(h)
        logits = self.net.fc(h.mean(dim=(2, 3)))           # = self.net(x)
        loss = F.cross_entropy(logits, y)
        aux_loss = torch.zeros(())
        if self.aux is not None:
            assert self.cells is not None
            target = self.cells[idx].float()
            target = torch.where(flip[:, None, None, None], target.flip(3), target)
            aux_loss = F.binary_cross_entropy_with_logits(self.aux(h), target)
            loss = loss + self.s.aux_weight * aux_loss
        if self.s.act_l1 > 0:
            loss = loss + self.s.act_l1 * h.mean()          # activations are >= 0 (ReLU)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at iteration {self.iteration}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.iteration += 1
        acc = (logits.argmax(1) == y).float().mean()
        out = {"loss": float(loss.detach()), "batch_acc": float(acc),
               "lr": self.opt.param_groups[0]["lr"]}
        if self.aux is not None:
            out["aux_loss"] = float(aux_loss.detach())
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {"settings": asdict(self.s), "iteration": self.iteration,
                 "net": self.net.state_dict(), "opt": self.opt.state_dict()}
        if self.aux is not None:
            state["aux"] = self.aux.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        if self.aux is not None:
            self.aux.load_state_dict(state["aux"])
        self.opt.load_state_dict(state["opt"])
        self.iteration = int(state["iteration"])


def save_checkpoint(trainer: Trainer, out: Path, elapsed: float) -> None:
    """Atomically write ``out/checkpoint.pt`` (a plain dict: loads with ``weights_only``)."""
    state = trainer.state_dict()
    state["elapsed_seconds"] = elapsed
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT)


def read_checkpoint(out: Path) -> dict[str, Any]:
    """``out/checkpoint.pt`` read safely, or a clear error saying what to do."""
    path = out / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; start without --resume (or pass the "
                                "--out of an earlier run)")
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        raise ValueError(f"{exc}; delete {path} and start again without --resume") from exc
    need = {"settings", "iteration", "net", "opt"}
    if not isinstance(state, dict) or not need <= set(state):
        raise ValueError(f"{path} is not a classifier checkpoint (needs keys {sorted(need)})")
    return state


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})


def training_command(s: Settings, out: Path) -> str:
    """The command line that reproduces a run with settings ``s``."""
    d = Settings()
    parts = ["python -m models.classifiers.train", f"--seed {s.seed}",
             f"--out {shlex.quote(str(out))}", f"--iters {s.iters}"]
    for f in fields(Settings):
        if f.name not in ("seed", "iters") and getattr(s, f.name) != getattr(d, f.name):
            parts.append(f"--{f.name.replace('_', '-')} {getattr(s, f.name)}")
    return " ".join(parts)


def log(out: Path, record: dict[str, Any]) -> None:
    with open(out / LOG, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


@torch.no_grad()
def pooled_features(net: ToyworldClassifier, images: torch.Tensor,
                    batch: int = 200) -> torch.Tensor:
    """The head's input: ``conv5`` averaged over space, ``[n, 128]``, for uint8 ``images``."""
    net.eval()
    out = []
    for i in range(0, len(images), batch):
        x = net.check_images(to_unit(images[i:i + batch]))
        x = (x - net._mean) / net._std
        for name in net.layer_names:
            x = getattr(net, name)(x)
        out.append(x.mean(dim=(2, 3)))
    return torch.cat(out)


def fit_sparse_head(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor, l1: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Refit the linear head on fixed ``features`` by mean cross-entropy + ``l1`` * |weight|_1
    (bias not penalised): FISTA, full batch, step 1/L with L = max eig(F^T F / n) / 2, started at
    ``weight, bias``. Deterministic; weights the L1 proximal step sets to zero are exactly 0."""
    lipschitz = 0.5 * float(torch.linalg.eigvalsh(features.T @ features / len(features)).max())
    step = 1.0 / max(lipschitz, 1e-6)
    w, b = weight.detach().clone(), bias.detach().clone()
    zw, zb, t = w.clone(), b.clone(), 1.0
    for _ in range(steps):
        zw.requires_grad_(True)
        zb.requires_grad_(True)
        loss = F.cross_entropy(features @ zw.T + zb, labels)
        gw, gb = torch.autograd.grad(loss, (zw, zb))
        with torch.no_grad():
            nw = zw - step * gw
            nw = nw.sign() * (nw.abs() - step * l1).clamp(min=0.0)
            nb = zb - step * gb
            t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
            zw = nw + (t - 1.0) / t_next * (nw - w)
            zb = nb + (t - 1.0) / t_next * (nb - b)
            w, b, t = nw, nb, t_next
    return w, b


def _data_file(out: Path, kind: str, seed: int, n: int) -> Path:
    return out / f"{kind}_seed{seed}_n{n}.npz"


def export(out: Path, weights_dir: Path, head_l1: float = 0.0, head_steps: int = 3000,
           head_samples: int = 6000) -> dict[str, Any]:
    """Store ``out``'s trained weights as float16 safetensors and their metadata JSON in
    ``weights_dir``; accuracy is measured on the stored (float16) weights, loaded back.

    ``head_l1 > 0`` first refits the linear head on the first ``head_samples`` training scenes
    with an L1 penalty (:func:`fit_sparse_head`), so each class reads few ``conv5`` units; the
    convolutions are unchanged. The held-out accuracy of the dense head is recorded too."""
    from safetensors.torch import save_file

    state = read_checkpoint(out)
    s = Settings(**state["settings"])
    net = ToyworldClassifier()
    net.load_state_dict({k: (v.half() if v.is_floating_point() else v)
                         for k, v in state["net"].items()})  # what float16 storage keeps
    held_out_set = typed_pool(s.eval_seed, s.eval_samples,
                              _data_file(out, "eval", s.eval_seed, s.eval_samples))
    head: dict[str, Any] = {"l1": head_l1}
    if head_l1 > 0:
        head["dense_head_held_out"] = evaluate(net, *held_out_set)["accuracy"]
        images, labels = typed_pool(s.data_seed, s.pool, _data_file(out, "pool", s.data_seed,
                                                                     s.pool))
        n = min(head_samples, len(images))
        w, b = fit_sparse_head(pooled_features(net, images[:n]), labels[:n], net.fc.weight,
                               net.fc.bias, head_l1, head_steps)
        net.fc.weight.data.copy_(w)
        net.fc.bias.data.copy_(b)
        head.update(steps=head_steps, samples=n, nonzero_per_class={
            c: int((w[i] != 0).sum()) for i, c in enumerate(SCENE_TYPES)})
    weights_dir.mkdir(parents=True, exist_ok=True)
    half = {k: (v.half() if v.is_floating_point() else v).contiguous()
            for k, v in net.state_dict().items()}
    save_file(half, str(weights_dir / WEIGHTS_FILE))
    stored = load_toyworld_classifier(weights_dir / WEIGHTS_FILE)
    held_out = evaluate(stored, *held_out_set)
    untyped = evaluate(stored, *untyped_set(s.eval_seed, s.eval_samples))
    elapsed = float(state.get("elapsed_seconds", 0.0))
    command = training_command(s, out) + " --export" + (
        f" --head-l1 {head_l1} --head-steps {head_steps} --head-samples {head_samples}"
        if head_l1 > 0 else "")
    meta = {"command": command, "seed": s.seed, "data_seed": s.data_seed,
            "eval_seed": s.eval_seed, "iterations": int(state["iteration"]),
            "settings": asdict(s), "classes": list(SCENE_TYPES), "head": head,
            "held_out": held_out,
            "accuracy": held_out["accuracy"],
            "per_class_accuracy": held_out["per_class_accuracy"],
            "untyped_scenes": {**untyped, "note": "default-prior scenes labelled by "
                               "scene_type_of; not the training distribution"},
            "training_seconds": round(elapsed, 1),
            "iterations_per_second": round(int(state["iteration"]) / max(elapsed, 1e-9), 3),
            "params": sum(p.numel() for p in net.parameters()),
            "stored_dtype": "float16", "torch": torch.__version__}
    with open(weights_dir / METADATA_FILE, "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    state = read_checkpoint(out) if args.resume else None
    s = Settings(**{**state["settings"], "iters": args.iters}) if state else settings_from(args)
    t0 = time.time()
    pool = typed_pool(s.data_seed, s.pool, _data_file(out, "pool", s.data_seed, s.pool))
    held_out = typed_pool(s.eval_seed, s.eval_samples,
                          _data_file(out, "eval", s.eval_seed, s.eval_samples))
    cells = (typed_cells(s.data_seed, s.pool, _data_file(out, "cells", s.data_seed, s.pool))
             if s.aux_weight > 0 else None)
    print(f"data ready in {time.time() - t0:.1f} s", flush=True)
    trainer = Trainer(s, pool, cells)
    elapsed0 = 0.0
    if state is not None:
        trainer.load_state_dict(state)
        elapsed0 = float(state.get("elapsed_seconds", 0.0))
    start, last_save, done_at_start = time.time(), time.time(), trainer.iteration

    def elapsed() -> float:
        return elapsed0 + time.time() - start

    while trainer.iteration < s.iters:
        losses = trainer.step()
        it = trainer.iteration
        if it % args.log_every == 0 or it == s.iters:
            rate = (it - done_at_start) / max(time.time() - start, 1e-9)
            log(out, {"iter": it, **{k: round(v, 5) for k, v in losses.items()},
                      "it_per_s": round(rate, 3), "elapsed_s": round(elapsed(), 1)})
        if it % args.eval_every == 0 or it == s.iters:
            result = evaluate(trainer.net, *held_out)
            log(out, {"iter": it, "held_out_accuracy": result["accuracy"],
                      "per_class": result["per_class_accuracy"]})
        if time.time() - last_save > 60 * args.checkpoint_minutes or it == s.iters:
            save_checkpoint(trainer, out, elapsed())
            last_save = time.time()
    if args.export:
        meta = export(out, Path(args.weights_dir), args.head_l1, args.head_steps,
                      args.head_samples)
        print(json.dumps({k: meta[k] for k in ("accuracy", "per_class_accuracy")}), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(prog="python -m models.classifiers.train",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/classifier", help="run folder (checkpoint, log, data)")
    p.add_argument("--seed", type=int, default=d.seed, help="initial weights and batch order")
    p.add_argument("--iters", type=int, default=d.iters, help="total iterations to reach")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--export", action="store_true", help="write float16 weights + JSON at the end")
    p.add_argument("--weights-dir", default=str(WEIGHTS_DIR), help="where --export writes")
    p.add_argument("--head-l1", type=float, default=0.0,
                   help="with --export: refit the linear head with this L1 penalty (sparse "
                        "head: each class reads few conv5 units); 0 keeps the trained head")
    p.add_argument("--head-steps", type=int, default=3000, help="FISTA steps of --head-l1")
    p.add_argument("--head-samples", type=int, default=6000,
                   help="training scenes the sparse head is fitted on (the first N of the pool)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (keep 1 when sharing)")
    p.add_argument("--data-seed", type=int, default=d.data_seed)
    p.add_argument("--eval-seed", type=int, default=d.eval_seed)
    p.add_argument("--pool", type=int, default=d.pool, help="training scenes (rendered once)")
    p.add_argument("--eval-samples", type=int, default=d.eval_samples)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--act-l1", type=float, default=d.act_l1,
                   help="weight of an L1 penalty on conv5's activations (mean), which favours "
                        "sparse units (0: none)")
    p.add_argument("--aux-weight", type=float, default=d.aux_weight,
                   help="weight of an auxiliary training loss: a 1x1 conv on conv5 predicts "
                        "each Toyworld concept's fraction of every 8x8 cell (0: none)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--checkpoint-minutes", type=float, default=2.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return train(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
