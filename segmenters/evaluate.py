"""Held-out evaluation of a segmenter on Toyworld scenes: per-concept IoU and mean IoU.

IoU of concept c = sum over all pixels of all scenes of ``pred_c & true_c`` divided by the same
sum of ``pred_c | true_c`` (pooled over images, not averaged per image). Scenes come from
:data:`HELDOUT_SEED`, which no training run uses.

Robustness: :func:`robustness` scores the same scenes after a Gaussian blur of each given sigma
(:func:`gaussian_blur`; the true masks stay the rendered ones), because generated images are
blurrier than the renderer's.

CLI: ``python -m segmenters.evaluate --segmenter toyworld --samples 1000 [--blur 0,0.5,1,1.5]
[--weights PATH] [--json]`` (``gandissect eval-segmenter`` calls :func:`evaluate` too).
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


def gaussian_blur(images: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Blur float images ``[N, C, H, W]`` with a Gaussian of std ``sigma`` pixels.

    ``sigma`` is one float or a tensor ``[N]`` (one per image); 0 leaves an image unchanged.
    Separable kernel truncated at ``ceil(3 * max sigma)`` pixels, normalised to sum 1, with
    reflected borders (replicated if the image is smaller than the kernel radius). Returns a new
    tensor; the input is not modified.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"gaussian_blur needs float images [N, C, H, W], got "
                         f"{images.dtype} {list(images.shape)}")
    n, c, h, w = images.shape
    sig = torch.as_tensor(sigma, dtype=torch.float64).flatten()
    if sig.numel() == 1:
        sig = sig.expand(n)
    if sig.numel() != n or not torch.isfinite(sig).all() or (sig < 0).any():
        raise ValueError(f"sigma must be one finite value >= 0 or {n} of them (one per image), "
                         f"got {sigma}")
    radius = math.ceil(3.0 * float(sig.max())) if n else 0
    if radius == 0:
        return images.clone()
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x[None] / sig.clamp_min(1e-6)[:, None]) ** 2)  # [N, K]
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(images.dtype)
    kernel = kernel.repeat_interleave(c, dim=0)[:, None, None, :]  # [N*C, 1, 1, K]
    mode = "reflect" if radius < min(h, w) else "replicate"
    out = images.reshape(1, n * c, h, w)
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode=mode), kernel, groups=n * c)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode=mode),
                   kernel.transpose(2, 3), groups=n * c)
    return out.reshape(n, c, h, w)


def evaluate(segmenter: Segmenter, samples: int = 1000, seed: int = HELDOUT_SEED,
             batch_size: int = 100, size: int = 64, blur_sigma: float = 0.0) -> dict[str, Any]:
    """Score ``segmenter`` on Toyworld scenes ``0 .. samples-1`` of ``seed``.

    Returns ``{"miou", "per_class": {concept: IoU}, "samples", "seed", "blur_sigma", "absent",
    ...}``. Concepts the segmenter knows by name are scored; a concept absent from both
    prediction and truth in every scene has no IoU: it is left out of ``per_class`` and of the
    mean and listed in ``"absent"`` (so no NaN appears). If the segmenter's masks have another
    size than the scenes, the true masks are resized (nearest) to the masks' size. With
    ``blur_sigma > 0`` the images (not the masks) are blurred first (:func:`gaussian_blur`).
    """
    return robustness(segmenter, (blur_sigma,), samples, seed, batch_size, size)[0]


def robustness(segmenter: Segmenter, sigmas: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5),
               samples: int = 1000, seed: int = HELDOUT_SEED, batch_size: int = 100,
               size: int = 64) -> list[dict[str, Any]]:
    """:func:`evaluate` at each blur sigma in ``sigmas`` on the same scenes (rendered once).

    Returns one result per sigma, in order; each equals ``evaluate(..., blur_sigma=sigma)``.
    """
    if samples < 1 or batch_size < 1:
        raise ValueError(f"samples and batch_size must be >= 1, got {samples}, {batch_size}")
    if not sigmas or any(not math.isfinite(s) or s < 0 for s in sigmas):
        raise ValueError(f"sigmas must be one or more finite values >= 0, got {sigmas}")
    concepts = [c for c in CONCEPTS if c in segmenter.labels]
    if not concepts:
        raise ValueError(f"{type(segmenter).__name__} knows none of the Toyworld concepts "
                         f"({', '.join(CONCEPTS)}); its labels are {segmenter.labels[:10]}")
    channels = [segmenter.label_index(c) for c in concepts]
    true_channels = [CONCEPTS.index(c) for c in concepts]
    inter = torch.zeros(len(sigmas), len(concepts), dtype=torch.int64)
    union = torch.zeros(len(sigmas), len(concepts), dtype=torch.int64)
    seconds = [0.0] * len(sigmas)
    for start in range(0, samples, batch_size):
        n = min(batch_size, samples - start)
        t0 = time.perf_counter()
        images, masks = render_batch(seed, start, n, size)
        clean = torch.from_numpy(images)
        true = torch.from_numpy(masks)[:, true_channels]
        t_render = (time.perf_counter() - t0) / len(sigmas)
        for j, sigma in enumerate(sigmas):
            t0 = time.perf_counter()
            x = gaussian_blur(clean, sigma).clamp_(-1.0, 1.0) if sigma > 0 else clean
            pred = segmenter.segment(x).cpu()[:, channels]
            t = true
            if t.shape[-2:] != pred.shape[-2:]:
                t = F.interpolate(t.float(), size=pred.shape[-2:], mode="nearest") > 0.5
            i, u = iou_counts(pred, t)
            inter[j] += i
            union[j] += u
            seconds[j] += t_render + time.perf_counter() - t0
    results = []
    for j, sigma in enumerate(sigmas):
        per_class = {c: float(inter[j, k]) / float(union[j, k]) for k, c in enumerate(concepts)
                     if union[j, k] > 0}
        absent = [c for k, c in enumerate(concepts) if union[j, k] == 0]
        miou = float(np.mean(list(per_class.values()))) if per_class else math.nan
        results.append({"miou": miou, "per_class": per_class, "samples": samples, "seed": seed,
                        "blur_sigma": float(sigma), "absent": absent,
                        "unscored": [c for c in CONCEPTS if c not in concepts],
                        "seconds": round(seconds[j], 2)})
    return results


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of ``evaluate``'s result."""
    lines = [f"{'concept':<10} {'IoU':>6}"]
    lines += [f"{c:<10} {v:6.3f}" for c, v in result["per_class"].items()]
    blur = f", blur sigma {result['blur_sigma']:g}" if result.get("blur_sigma") else ""
    lines.append(f"{'mIoU':<10} {result['miou']:6.3f}   ({result['samples']} scenes, "
                 f"seed {result['seed']}{blur})")
    if result["absent"]:
        lines.append(f"absent from prediction and truth (not in mean): {result['absent']}")
    return "\n".join(lines)


def format_robustness(results: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`robustness`'s results: one column per blur sigma."""
    sigmas = [r["blur_sigma"] for r in results]
    concepts = [c for c in CONCEPTS if any(c in r["per_class"] for r in results)]
    head = f"{'blur sigma':<10} " + " ".join(f"{s:>6g}" for s in sigmas)
    rows = [f"{c:<10} " + " ".join(
        f"{r['per_class'][c]:6.3f}" if c in r["per_class"] else f"{'-':>6}" for r in results)
        for c in concepts]
    rows.append(f"{'mIoU':<10} " + " ".join(f"{r['miou']:6.3f}" for r in results))
    return "\n".join([head, *rows, f"({results[0]['samples']} scenes, seed {results[0]['seed']})"])


def _run(args: argparse.Namespace) -> int:
    import segmenters

    torch.set_num_threads(args.threads)
    try:
        sigmas = tuple(float(s) for s in args.blur.split(","))
    except ValueError:
        raise SystemExit(f"--blur takes comma-separated sigmas in pixels such as 0,0.5,1,1.5; "
                         f"got {args.blur!r}") from None
    kwargs: dict[str, Any] = {} if args.weights is None else {"weights": args.weights}
    segmenter = segmenters.load(args.segmenter, device=args.device, **kwargs)
    results = robustness(segmenter, sigmas, samples=args.samples, seed=args.seed,
                         batch_size=args.batch_size)
    for r in results:
        r["segmenter"] = args.segmenter
        if args.weights is not None:
            r["weights"] = args.weights
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    else:
        print(format_table(results[0]) if len(results) == 1 else format_robustness(results))
    return 0


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--segmenter", default="toyworld", help="registered segmenter name")
    parser.add_argument("--samples", type=int, default=1000, help="number of held-out scenes")
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED, help="scene seed")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--blur", default="0",
                        help="Gaussian blur sigma(s) in pixels applied to the images, comma-"
                             "separated, e.g. 0,0.5,1,1.5 (one table column per sigma)")
    parser.add_argument("--weights", default=None,
                        help="weights file passed to the segmenter's loader (default: shipped)")
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
