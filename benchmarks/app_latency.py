"""GANPaint latency on the bundled GAN: what a user waits for on first start and on one edit.

    python benchmarks/app_latency.py [--model toyworld --segmenter toyworld --layer layer4]

1. **First start**: the one-time brush build for ``--layer`` (dissection, insertion values,
   single-unit ablations), timed from an empty brush cache (a fresh temporary folder unless
   ``--cache DIR`` is given) with the same progress messages the app prints.
2. **One edit**: the app's "Apply stroke" event run server-side exactly as Gradio runs it
   (``Blocks.process_api`` on the app's ``paint`` endpoint: decode the uploaded stroke layer,
   make the stroke, generate the edited image, encode the PNG outputs, update the session's
   history), without network and queue. ``--warmup`` edits are excluded; then ``--edits``
   edits (concepts in turn, draw/remove alternating, strengths 4/10/20, a 64 px square at a
   random place of the 256 px canvas, histories of 1-5 strokes). Median, p90 and the share
   spent generating are printed. Target: median <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

TARGET_MS = 100.0
STROKE_PX = 64
HISTORY = 5


def _stroke_files(folder: Path, n: int, size: int, seed: int = 0) -> list[str]:
    """``n`` RGBA PNGs of ``size`` px, each painted (alpha 255) on one ``STROKE_PX`` square."""
    from PIL import Image

    rng = np.random.Generator(np.random.PCG64(seed))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rgba = np.zeros((size, size, 4), np.uint8)
        y, x = rng.integers(0, size - STROKE_PX + 1, size=2)
        rgba[y:y + STROKE_PX, x:x + STROKE_PX] = (255, 0, 255, 255)
        path = folder / f"stroke{i:03d}.png"
        Image.fromarray(rgba, "RGBA").save(path)
        paths.append(str(path))
    return paths


def _file(path: str) -> dict[str, Any]:
    """A file as the browser's upload hands it to the server (a Gradio FileData)."""
    return {"path": path, "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}


def _timed(fn: Callable[..., Any], log: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            log.append(time.perf_counter() - t0)
    return wrapper


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--segmenter", default="toyworld")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--edits", type=int, default=50, help="timed edits")
    parser.add_argument("--warmup", type=int, default=5, help="untimed edits first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--cache", default=None,
                        help="brush cache root (default: a fresh temporary folder, removed "
                             "afterwards, so the first-start build is always measured)")
    args = parser.parse_args(argv)
    if args.edits < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--edits and --threads must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    fresh = args.cache is None
    root = Path(tempfile.mkdtemp(prefix="gandissect-latency-") if fresh else args.cache)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(root / "gradio"))  # before importing gradio
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # app.py lives at the root

    import app
    from gandissect.paint.painter import STRENGTHS, open_painter

    load = os.getloadavg()
    print(f"settings: --model {args.model} --segmenter {args.segmenter} --layer {args.layer} "
          f"--edits {args.edits} --warmup {args.warmup} --threads {args.threads}; "
          f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"brush cache {root / 'brushes'}{' (fresh)' if fresh else ''}", flush=True)
    try:
        t0 = time.perf_counter()
        marks: list[float] = []

        def say(msg: str) -> None:
            marks.append(time.perf_counter())
            print(f"  [{marks[-1] - t0:6.1f} s] {msg}", flush=True)

        print("first start: loading the model (brushes are built if not cached)", flush=True)
        try:
            painter = open_painter(args.model, args.segmenter, args.layer,
                                   folder=root / "brushes", progress=say)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        end = time.perf_counter()
        build_s = end - marks[0] if marks else 0.0
        print(f"first start: {end - t0:.1f} s in all, brush build "
              f"{f'{build_s:.1f} s' if marks else 'skipped (cached)'}; "
              f"{len(painter.concepts)} concept brushes on {args.layer}", flush=True)
        return _edits(args, app, painter, STRENGTHS, root, build_s)
    finally:
        if fresh:
            shutil.rmtree(root, ignore_errors=True)


def _edits(args: argparse.Namespace, app: Any, painter: Any, strengths: tuple[int, ...],
           root: Path, build_s: float) -> int:
    from gradio.state_holder import SessionState

    demo = app.build_app(painter=painter)
    fns = {f.api_name: f for f in demo.fns.values()}
    paint, reset = fns["paint"], fns["reset"]
    state = SessionState(demo)
    gen_log: list[float] = []
    painter.render_tensor = _timed(painter.render_tensor, gen_log)
    size = painter.resolution * app.SCALE
    total = args.warmup + args.edits
    files = _stroke_files(root / "strokes", total, size)
    concepts = painter.concepts
    times: list[float] = []
    gen: list[float] = []

    async def run() -> None:
        for i in range(total):
            if i % HISTORY == 0:  # a new image and an empty history every HISTORY strokes
                await demo.process_api(reset, [i // HISTORY, None], state=state)
            mode = ("remove", "draw")[i % 2]
            inputs = [{"background": None, "layers": [_file(files[i])], "composite": None,
                       "id": None}, i // HISTORY, concepts[i % len(concepts)], mode,
                      strengths[i % len(strengths)], 1.0, None]
            del gen_log[:]
            t0 = time.perf_counter()
            out = await demo.process_api(paint, inputs, state=state)
            elapsed = time.perf_counter() - t0
            status = str(out["data"][-1])
            if not status.startswith(mode):
                raise RuntimeError(f"edit {i} was not applied: {status!r}")
            if i >= args.warmup:
                times.append(elapsed)
                gen.append(sum(gen_log))

    asyncio.run(run())
    ms = 1000 * np.asarray(times)
    med, p90 = float(np.median(ms)), float(np.percentile(ms, 90))
    gen_med = 1000 * statistics.median(gen)
    load = os.getloadavg()
    print(f"one edit ({args.model}/{args.layer}, {args.edits} edits after {args.warmup} warm-up, "
          f"1-{HISTORY} strokes, {torch.get_num_threads()} torch thread(s)): median "
          f"{med:.1f} ms, p90 {p90:.1f} ms, min {ms.min():.1f} ms, max {ms.max():.1f} ms; "
          f"generating (forward pass with the edits) median {gen_med:.1f} ms of it, the rest is "
          f"stroke decoding, PNG encoding and Gradio bookkeeping")
    print(f"summary: edit median {med:.1f} ms (target {TARGET_MS:.0f} ms: "
          f"{'met' if med <= TARGET_MS else 'MISSED'}), p90 {p90:.1f} ms; first-start brush "
          f"build {build_s:.1f} s; load average after {load[0]:.2f}")
    return 0 if med <= TARGET_MS else 2


if __name__ == "__main__":
    sys.exit(main())
