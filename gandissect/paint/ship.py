"""Rebuild the brush files shipped with the package for the bundled model (run by hand whenever
its weights change; the files are keyed by the weights, so stale ones are never used).

    python -m gandissect.paint.ship [--model toyworld] [--segmenter toyworld] \
        [--layer layer4 --layer layer5] [--folder gandissect/paint/shipped]

For each layer, a :class:`~gandissect.paint.job.PainterJob` builds the brushes and measures
their effects in a fresh temporary cache (never reusing shipped or cached files), exactly as the
app would; both JSON files are then moved into ``--folder`` and that folder's files of the same
model, segmenter and layer under another key are deleted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from .brushes import SHIPPED
from .job import PainterJob


def ship(model: str, segmenter: str, layers: list[str], folder: Path = SHIPPED,
         progress: bool = True) -> list[Path]:
    """Build and store the brushes (and their effects) of ``layers``; returns the new files.
    Raises RuntimeError naming the layer when a build fails (files already shipped for the
    layers done before stay)."""
    written: list[Path] = []
    folder.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        with tempfile.TemporaryDirectory() as tmp:
            job = PainterJob(model, segmenter, layer, folder=tmp, shipped=None).start()
            last = ""
            while job.status().state not in ("ready", "failed"):
                job.wait(2.0)
                msg = job.status().message
                if progress and msg != last:
                    print(f"{layer}: {msg}", file=sys.stderr)
                    last = msg
            if job.error is not None:
                raise RuntimeError(f"building the {layer} brushes failed: {job.error}")
            new = sorted(Path(tmp).glob("*.json"))
            prefix = f"{model}-{segmenter}-{layer}-"
            keys = {p.name[len(prefix):].split("-")[0] for p in new}
            for old in folder.glob(prefix + "*.json"):
                if old.name[len(prefix):].split("-")[0] not in keys:
                    old.unlink()
            for p in new:
                written.append(Path(shutil.move(str(p), folder / p.name)))
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="toyworld")
    ap.add_argument("--segmenter", default="toyworld")
    ap.add_argument("--layer", action="append", default=None,
                    help="layer to ship brushes for (repeat; default layer4 and layer5)")
    ap.add_argument("--folder", type=Path, default=SHIPPED)
    args = ap.parse_args(argv)
    try:
        for path in ship(args.model, args.segmenter, args.layer or ["layer4", "layer5"],
                         args.folder):
            print(path)
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
