"""Train the bundled toy-sequence models on CPU (one thread) and export them as safetensors.

    python -m models.sequence.train lstm --seed 0 --steps 3000 --export
    python -m models.sequence.train seq2seq --seed 0 --steps 3000 --export

``--export`` writes ``models/weights/toyseq_<model>.safetensors`` and a JSON record beside it
(the command, seed, settings, held-out metrics and the training time). Data: sequence ``i`` of
the language's ``TRAIN_SEED`` for training batches (batch ``b`` holds sequences
``b*batch .. (b+1)*batch-1``), ``VALID_SEED`` for the held-out metrics; weights start from
``torch.manual_seed(seed)``'s stream of a local generator (the global RNG is not used).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from .language import CLOSERS, TRAIN_SEED, VALID_SEED, batch, closing_targets
from .lstm import WEIGHTS_DIR, ToySeqLSTM
from .seq2seq import ToySeq2Seq, completion_batch


def _init(model: nn.Module, seed: int) -> None:
    """Re-initialise ``model``'s weights from a local generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            else:
                bound = 1.0 / max(1, p.shape[-1]) ** 0.5
                p.uniform_(-bound, bound, generator=g)


@torch.no_grad()
def lstm_metrics(model: ToySeqLSTM, samples: int = 512, length: int = 64) -> dict[str, float]:
    """Held-out next-token loss and bracket-closing accuracy (at forced closings, the argmax
    is the closer)."""
    toks = torch.from_numpy(batch(VALID_SEED, 0, samples, length))
    logits = model.fused(toks)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1))
    where = torch.from_numpy(closing_targets(toks.numpy()))[:, :-1]
    right = logits[:, :-1].argmax(-1) == toks[:, 1:]
    return {"valid_loss": float(loss), "closing_accuracy": float(right[where].float().mean())}


def train_lstm(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    model = ToySeqLSTM(hidden=args.hidden, layers=args.layers)
    _init(model, args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    drop = torch.Generator().manual_seed(args.seed + 1)
    for step in range(args.steps):
        toks = torch.from_numpy(batch(TRAIN_SEED, step * args.batch, args.batch, args.length))
        keep = None
        if args.unit_dropout > 0:           # one mask per batch: whole-sequence unit ablation
            keep = [(torch.rand(args.hidden, generator=drop) >= args.unit_dropout).float()
                    / (1 - args.unit_dropout) for _ in range(args.layers)]
        logits = model.fused(toks, keep)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                               toks[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.4f} {lstm_metrics(model.eval(), 256)}",
                  flush=True)
            model.train()
    return model.eval(), lstm_metrics(model.eval())


def train_seq2seq(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    model = ToySeq2Seq(hidden=args.hidden)
    _init(model, args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    for step in range(args.steps):
        src, tgt = completion_batch(TRAIN_SEED, step * args.batch, args.batch, args.length)
        logits, _ = model(src, tgt[:, :-1], fused=True)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.4f} "
                  f"{seq2seq_metrics(model.eval(), args.length, 256)}", flush=True)
            model.train()
    return model.eval(), seq2seq_metrics(model.eval(), args.length)


@torch.no_grad()
def seq2seq_metrics(model: ToySeq2Seq, length: int, samples: int = 512) -> dict[str, float]:
    """Held-out exact-match accuracy of greedy completions and per-token accuracy."""
    src, tgt = completion_batch(VALID_SEED, 0, samples, length)
    out = model.greedy(src, tgt.shape[1] - 1).tokens
    exact = (out == tgt[:, 1:]).all(1)
    return {"exact_match": float(exact.float().mean()),
            "token_accuracy": float((out == tgt[:, 1:]).float().mean())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.sequence.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=["lstm", "seq2seq"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=None,
                   help="sequence length (default: 64 for lstm, 24 for seq2seq)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1, help="LSTM layers (lstm only)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--unit-dropout", type=float, default=0.0,
                   help="lstm: drop each hidden unit for a whole batch with this probability")
    p.add_argument("--log-every", type=int, default=250)
    p.add_argument("--export", action="store_true", help="write models/weights/toyseq_*")
    p.add_argument("--out", default=None, help="weights folder (default: models/weights)")
    args = p.parse_args(argv)
    if args.length is None:
        args.length = 64 if args.model == "lstm" else 24
    torch.set_num_threads(1)
    t0 = time.time()
    model, metrics = (train_lstm if args.model == "lstm" else train_seq2seq)(args)
    seconds = time.time() - t0
    print(json.dumps(metrics), f"{seconds:.0f} s")
    if args.export:
        folder = Path(args.out) if args.out else WEIGHTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"toyseq_{args.model}"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(folder / f"{stem}.safetensors"))
        record = {"command": "python -m models.sequence.train " + " ".join(
                      sys.argv[1:] if argv is None else argv),
                  "seed": args.seed, "settings": vars(args), "metrics": metrics,
                  "train_seconds": round(seconds, 1), "torch": torch.__version__,
                  "closers": list(CLOSERS), "numpy": np.__version__}
        (folder / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {folder / stem}.safetensors and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
