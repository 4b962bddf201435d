"""Toyworld rendering throughput on one core (target: >= 500 scenes/s at 64x64).

Run by hand: ``python benchmarks/render.py [--scenes 2000] [--size 64]``. Prints scenes per second
and the ratio to the target, measured in this run.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402

from models.toyworld import render_scene  # noqa: E402

TARGET = 500.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    render_scene(0, 0, args.size)  # warm up
    rates = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        for i in range(args.scenes):
            render_scene(r, i, args.size)
        rates.append(args.scenes / (time.perf_counter() - t0))
    best = max(rates)
    print(f"render {args.size}x{args.size}: best {best:.0f} scenes/s over {args.repeats} runs "
          f"of {args.scenes} (all: {', '.join(f'{x:.0f}' for x in rates)}); "
          f"{best / TARGET:.2f}x the {TARGET:.0f} scenes/s target")


if __name__ == "__main__":
    main()
