"""Write any probe set in the Broden layout; by default Toyworld scenes, as a test fixture or a
small Broden-format dataset: ``python -m gandissect.probes.write_broden OUT --count N --seed S``.

What is written (see :mod:`.broden_format` for the layout):

- ``images/<dataset>/<i:06d>.jpg`` (or ``.png``) per sample, from ``images()`` rounded to 8 bits
  (JPEG at ``jpeg_quality`` 95 without chroma subsampling: within ~0.09 of the source on
  Toyworld, 0.012 on average; PNG is exact up to that rounding);
- per pixel category present in a sample, ``images/<dataset>/<i:06d>_<category>.png`` (further
  layers ``_<category>_2.png`` ...) with label ``R + 256 * G``. Labels of one category that
  overlap in a sample go to separate layers: labels by decreasing coverage, each into the first
  layer where it overlaps nothing (Toyworld's objects never overlap, nor do its parts);
- categories in :data:`~.base.SCALAR_CATEGORIES` (``scene``, ``texture``) as label numbers in
  ``index.csv`` (their masks must be all or nothing per sample);
- ``index.csv`` (samples in order; split ``val`` for every ``val_every``-th sample, i.e.
  ``i % val_every == val_every - 1``, else ``train``), ``label.csv``, ``category.csv`` and
  ``c_<category>.csv`` with frequency and coverage counted as NetDissect does; labels that never
  occur are left out, and label numbers go by decreasing frequency (then coverage), as in Broden;
- ``README.txt`` naming the source (``describe()`` of the probe set).

The Toyworld fixture adds whole-image ``scene`` labels (``ToyworldProbe(scene_labels=True)``:
each scene's type by the renderer's rule) so that the scalar path of a reader is exercised too;
``--no-scene-labels`` leaves them out, ``--typed`` renders balanced typed scenes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import SCALAR_CATEGORIES, ProbeSet
from .broden_format import (
    C_COLUMNS,
    CATEGORIES,
    CATEGORY_COLUMNS,
    IMAGES,
    INDEX,
    LABEL_COLUMNS,
    LABELS,
    META_COLUMNS,
    c_file,
    encode_png,
)


def _layers(masks: np.ndarray, channels: list[int]) -> list[list[int]]:
    """Channels present in one sample's ``masks`` ``[C, h, w]``, grouped into layers of
    non-overlapping channels: by decreasing coverage, each into the first layer it fits."""
    present = [c for c in channels if masks[c].any()]
    present.sort(key=lambda c: -int(masks[c].sum()))
    layers: list[list[int]] = []
    taken: list[np.ndarray] = []
    for c in present:
        for layer, used in zip(layers, taken, strict=True):
            if not (used & masks[c]).any():
                layer.append(c)
                used |= masks[c]
                break
        else:
            layers.append([c])
            taken.append(masks[c].copy())
    return layers


def _check_scalars(probe: ProbeSet, masks: np.ndarray, scalar: list[int], i: int) -> None:
    for c in scalar:
        if masks[c].any() and not masks[c].all():
            raise ValueError(f"sample {i}: label {probe.labels[c]!r} of category "
                             f"{probe.categories[c]!r} covers part of the image; whole-image "
                             f"categories ({', '.join(SCALAR_CATEGORIES)}) must be all or nothing")


def _statistics(probe: ProbeSet, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: images where it occurs, and summed pixel fraction (whole images)."""
    frequency = np.zeros(len(probe.labels), dtype=np.int64)
    coverage = np.zeros(len(probe.labels), dtype=np.float64)
    scalar = [c for c, cat in enumerate(probe.categories) if cat in SCALAR_CATEGORIES]
    for start in range(0, len(probe), batch):
        m = probe.masks(start, min(batch, len(probe) - start)).numpy()
        for k in range(len(m)):
            _check_scalars(probe, m[k], scalar, start + k)
        flat = m.reshape(m.shape[0], m.shape[1], -1)
        frequency += flat.any(axis=2).sum(axis=0)
        coverage += flat.mean(axis=2).sum(axis=0)
    return frequency, coverage


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_broden(probe: ProbeSet, out: str | Path, *, image_format: str = "jpg",
                 jpeg_quality: int = 95, val_every: int = 5, dataset: str = "toyworld",
                 batch_size: int = 32) -> Path:
    """Write ``probe`` into a new Broden folder ``out`` (see module docstring); returns it.
    ``out`` must not exist or be an empty folder."""
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if val_every < 1 or batch_size < 1:
        raise ValueError("val_every and batch_size must be >= 1")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new one")
    (out / IMAGES / dataset).mkdir(parents=True, exist_ok=True)
    frequency, coverage = _statistics(probe, batch_size)
    # numbers 1.. by decreasing frequency, then coverage, then channel order (as Broden)
    occurring = sorted(np.flatnonzero(frequency).tolist(),
                       key=lambda c: (-frequency[c], -coverage[c], c))
    number = {c: k + 1 for k, c in enumerate(occurring)}
    cats = list(dict.fromkeys(probe.categories[c] for c in occurring))   # by first number
    per_cat = {cat: [c for c in occurring if probe.categories[c] == cat] for cat in cats}
    codes = np.zeros(len(probe.labels), dtype=np.int64)
    for c, k in number.items():
        codes[c] = k
    index_rows = []
    for start in range(0, len(probe), batch_size):
        n = min(batch_size, len(probe) - start)
        images = probe.images(start, n).numpy()
        masks = probe.masks(start, n).numpy()
        for k in range(n):
            i = start + k
            stem = f"{dataset}/{i:06d}"
            rgb = np.clip(np.round(images[k].transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
            image = f"{stem}.{image_format}"
            if image_format == "jpg":
                Image.fromarray(rgb).save(out / IMAGES / image, quality=jpeg_quality,
                                          subsampling=0)
            else:
                Image.fromarray(rgb).save(out / IMAGES / image)
            row: dict[str, Any] = {
                "image": image, "split": "val" if i % val_every == val_every - 1 else "train",
                "ih": probe.image_size[0], "iw": probe.image_size[1],
                "sh": probe.mask_size[0], "sw": probe.mask_size[1]}
            for cat in cats:
                if cat in SCALAR_CATEGORIES:
                    row[cat] = ";".join(str(number[c]) for c in per_cat[cat] if masks[k, c].all())
                    continue
                names = []
                for depth, layer in enumerate(_layers(masks[k], per_cat[cat])):
                    label = np.zeros(probe.mask_size, dtype=np.int64)
                    for c in layer:
                        label[masks[k, c]] = codes[c]
                    name = f"{stem}_{cat}.png" if depth == 0 else f"{stem}_{cat}_{depth + 1}.png"
                    Image.fromarray(encode_png(label)).save(out / IMAGES / name)
                    names.append(name)
                row[cat] = ";".join(names)
            index_rows.append(row)
    _write_csv(out / INDEX, META_COLUMNS + tuple(cats), index_rows)
    _write_csv(out / LABELS, LABEL_COLUMNS, [
        {"number": number[c], "name": probe.labels[c],
         "category": f"{probe.categories[c]}({frequency[c]})", "frequency": int(frequency[c]),
         "coverage": f"{coverage[c]:f}", "syns": ""} for c in occurring])
    _write_csv(out / CATEGORIES, CATEGORY_COLUMNS, [
        {"name": cat, "first": number[per_cat[cat][0]], "last": number[per_cat[cat][-1]],
         "count": len(per_cat[cat]), "frequency": int(sum(frequency[c] for c in per_cat[cat]))}
        for cat in cats])
    for cat in cats:
        _write_csv(out / c_file(cat), C_COLUMNS, [
            {"code": code, "number": number[c], "name": probe.labels[c],
             "frequency": int(frequency[c]), "coverage": f"{coverage[c]:f}"}
            for code, c in enumerate(per_cat[cat], start=1)])
    (out / "README.txt").write_text(
        "A probe set in the Broden layout (NetDissect), written by "
        "gandissect.probes.write_broden.\nSource: "
        + json.dumps(probe.describe(), sort_keys=True) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m gandissect.probes.write_broden OUT --count N --seed S``: Toyworld scenes."""
    from .toyworld import PROBE_SEED, ToyworldProbe

    p = argparse.ArgumentParser(prog="python -m gandissect.probes.write_broden",
                                description="Render Toyworld scenes into a Broden-layout folder.")
    p.add_argument("out", type=Path, help="new (or empty) output folder")
    p.add_argument("--count", type=int, default=100, help="number of scenes (default 100)")
    p.add_argument("--seed", type=int, default=PROBE_SEED,
                   help=f"Toyworld scene seed (default {PROBE_SEED})")
    p.add_argument("--resolution", type=int, default=64, help="pixels per side (default 64)")
    p.add_argument("--format", choices=("jpg", "png"), default="jpg", dest="image_format",
                   help="image file format (default jpg, as Broden; png is lossless)")
    p.add_argument("--val-every", type=int, default=5,
                   help="every N-th scene goes to split 'val' (default 5: 20%%)")
    p.add_argument("--no-scene-labels", action="store_true",
                   help="leave out the whole-image 'scene' labels")
    p.add_argument("--typed", action="store_true",
                   help="scene i of type SCENE_TYPES[i %% 6] (balanced), as the classifier's data")
    args = p.parse_args(argv)
    try:
        probe = ToyworldProbe(seed=args.seed, size=args.count, resolution=args.resolution,
                              scene_labels=not args.no_scene_labels, typed=args.typed)
        out = write_broden(probe, args.out, image_format=args.image_format,
                           val_every=args.val_every)
    except (ValueError, TypeError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(probe)} scenes to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
