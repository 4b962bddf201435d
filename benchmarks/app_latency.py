"""Server-side latency of one GANPaint edit: make a stroke, push it on a history of strokes and
render the result (what one "Apply stroke" costs, without the network), median of 50 edits.

    python benchmarks/app_latency.py [--model toyworld --segmenter toyworld --layer layer4]

Falls back to the planted model when the Toyworld GAN's weights are missing. Target: 100 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from gandissect.paint import History, open_painter

TARGET_MS = 100.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--segmenter", default="toyworld")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        painter = open_painter(args.model, args.segmenter, args.layer, progress=print)
    except FileNotFoundError as exc:
        print(f"{exc}\nfalling back to the planted model")
        args.model, args.layer = "planted", "layout"
        painter = open_painter("planted", "planted", "layout", progress=print)
    rng = np.random.Generator(np.random.PCG64(0))
    size = painter.resolution * 4
    concepts = painter.concepts
    history = History()
    painter.render(0, scale=4)  # warm-up
    times = []
    for i in range(args.edits):
        mask = np.zeros((size, size), bool)
        y, x = rng.integers(0, size - 64, size=2)
        mask[y:y + 64, x:x + 64] = True
        t0 = time.perf_counter()
        stroke = painter.stroke(concepts[i % len(concepts)], ("draw", "remove")[i % 2], mask,
                                strength=10)
        history = history.push(stroke)
        painter.render(0, history.active, scale=4)
        times.append(time.perf_counter() - t0)
        if len(history.active) >= 5:
            history = history.reset()
    med = 1000 * statistics.median(times)
    print(f"{args.model}/{args.layer}: median edit latency {med:.1f} ms over {args.edits} edits "
          f"(1-5 strokes, {args.threads} thread(s)); {med / TARGET_MS:.2f}x the "
          f"{TARGET_MS:.0f} ms target")


if __name__ == "__main__":
    main()
