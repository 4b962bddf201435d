"""Held-out evaluation of a segmenter on Toyworld scenes: per-concept IoU and mean IoU.

IoU of concept c = sum over all pixels of all scenes of ``pred_c & true_c`` divided by the same
sum of ``pred_c | true_c`` (pooled over images, not averaged per image). Scenes come from
:data:`HELDOUT_SEED`, which no training run uses.

CLI: ``python -m segmenters.evaluate --segmenter toyworld --samples 1000 [--json]``
(``gandissect eval-segmenter`` calls :func:`evaluate` too).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.toyworld.concepts import CONCEPTS
from models.toyworld.render import render_batch

from .base import Segmenter

#: Seed of the held-out scenes. Training must use a different seed.
HELDOUT_SEED = 1_000_003


def iou_counts(pred: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (intersection, union) pixel counts (int64 ``[C]``) of bool ``[N, C, H, W]``."""
    inter = (pred & true).sum(dim=(0, 2, 3), dtype=torch.int64)
    union = (pred | true).sum(dim=(0, 2, 3), dtype=torch.int64)
    return inter, union


def evaluate(segmenter: Segmenter, samples: int = 1000, seed: int = HELDOUT_SEED,
             batch_size: int = 100, size: int = 64) -> dict[str, Any]:
    """Score ``segmenter`` on Toyworld scenes ``0 .. samples-1`` of ``seed``.

    Returns ``{"miou", "per_class": {concept: IoU}, "samples", "seed", "absent", ...}``.
    Concepts the segmenter knows by name are scored; a concept absent from both prediction and
    truth in every scene has no IoU: it is left out of ``per_class`` and of the mean and listed
    in ``"absent"`` (so no NaN appears). If the segmenter's masks have another size than the
    scenes, the true masks are resized (nearest) to the masks' size.
    """
    if samples < 1 or batch_size < 1:
        raise ValueError(f"samples and batch_size must be >= 1, got {samples}, {batch_size}")
    concepts = [c for c in CONCEPTS if c in segmenter.labels]
    if not concepts:
        raise ValueError(f"{type(segmenter).__name__} knows none of the Toyworld concepts "
                         f"({', '.join(CONCEPTS)}); its labels are {segmenter.labels[:10]}")
    channels = [segmenter.label_index(c) for c in concepts]
    true_channels = [CONCEPTS.index(c) for c in concepts]
    inter = torch.zeros(len(concepts), dtype=torch.int64)
    union = torch.zeros(len(concepts), dtype=torch.int64)
    t0 = time.perf_counter()
    for start in range(0, samples, batch_size):
        n = min(batch_size, samples - start)
        images, masks = render_batch(seed, start, n, size)
        pred = segmenter.segment(torch.from_numpy(images)).cpu()[:, channels]
        true = torch.from_numpy(masks)[:, true_channels]
        if true.shape[-2:] != pred.shape[-2:]:
            true = F.interpolate(true.float(), size=pred.shape[-2:], mode="nearest") > 0.5
        i, u = iou_counts(pred, true)
        inter += i
        union += u
    per_class = {c: float(inter[k]) / float(union[k]) for k, c in enumerate(concepts)
                 if union[k] > 0}
    absent = [c for k, c in enumerate(concepts) if union[k] == 0]
    miou = float(np.mean(list(per_class.values()))) if per_class else math.nan
    return {"miou": miou, "per_class": per_class, "samples": samples, "seed": seed,
            "absent": absent, "unscored": [c for c in CONCEPTS if c not in concepts],
            "seconds": round(time.perf_counter() - t0, 2)}


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of ``evaluate``'s result."""
    lines = [f"{'concept':<10} {'IoU':>6}"]
    lines += [f"{c:<10} {v:6.3f}" for c, v in result["per_class"].items()]
    lines.append(f"{'mIoU':<10} {result['miou']:6.3f}   ({result['samples']} scenes, "
                 f"seed {result['seed']})")
    if result["absent"]:
        lines.append(f"absent from prediction and truth (not in mean): {result['absent']}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    import segmenters

    torch.set_num_threads(args.threads)
    segmenter = segmenters.load(args.segmenter, device=args.device)
    result = evaluate(segmenter, samples=args.samples, seed=args.seed,
                      batch_size=args.batch_size)
    result["segmenter"] = args.segmenter
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--segmenter", default="toyworld", help="registered segmenter name")
    parser.add_argument("--samples", type=int, default=1000, help="number of held-out scenes")
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED, help="scene seed")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def main(argv: list[str] | None = None) -> int:
    """``python -m segmenters.evaluate``: score a registered segmenter on held-out scenes."""
    parser = argparse.ArgumentParser(prog="python -m segmenters.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    return _run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
