"""A probe set read from a folder in the Broden layout (see :mod:`.broden_format`).

Channels are the Broden labels that occur (``label.csv`` frequency >= ``min_frequency``) in
the selected categories, in label-number order; label 0 (unlabelled) is never a channel. A
label listed in several categories (Broden's ``fabric`` is both material and object) is one
channel, the union of its pixels and whole-image entries in every selected category, and its
category is the selected category where its coverage (``c_<category>.csv``) is largest, as
NetDissect's primary category (ties: the category listed first in ``category.csv``).

Rows without any entry in the selected categories are skipped (as NetDissect does); sample
``i`` is the ``i``-th remaining row of ``split``. Images are read as RGB (greyscale
converted), resized to ``size`` (default: the most common ``ih, iw``) by PIL's bilinear filter
(antialiased when shrinking), unchanged when already that size. Segmentations are resized to
``mask_size`` (default: the most common ``sh, sw``) by nearest neighbour (centred cells). Nothing
is loaded ahead: each call reads only its own rows' files.

>>> import tempfile
>>> from gandissect.probes.toyworld import ToyworldProbe
>>> from gandissect.probes.write_broden import write_broden
>>> folder = write_broden(ToyworldProbe(size=3, resolution=16), tempfile.mkdtemp() + "/b",
...                       image_format="png")
>>> probe = BrodenProbe(folder)
>>> len(probe), probe.image_size, probe.masks(0, 3).shape[0]
(3, (16, 16), 3)
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .base import ProbeSet
from .broden_format import (
    CATEGORIES,
    EXPECTED,
    IMAGES,
    INDEX,
    LABELS,
    META_COLUMNS,
    c_file,
    decode_png,
    entries,
    is_scalar,
    read_csv,
    resize_nearest,
    to_float,
    to_int,
)


class _Item(NamedTuple):
    """One sample: its image (relative to ``images/``), index.csv line, declared sizes, the
    segmentation PNGs of the selected categories and the channels of its whole-image labels."""

    image: str
    line: int
    ih: int
    iw: int
    sh: int
    sw: int
    pngs: tuple[str, ...]
    scalars: tuple[int, ...]


def _size(value: Any, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        h, w = value
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (h, w))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be None, a positive int or (height, width), got {value!r}")
    return int(h), int(w)


def _sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


class BrodenProbe(ProbeSet):
    """The Broden folder at ``path`` as a probe set (see module docstring).

    ``split``: ``None`` (all rows) or a value of index.csv's ``split`` column (``"train"``,
    ``"val"``). ``size`` / ``mask_size``: ``(H, W)`` (or one int) of :meth:`images` /
    :meth:`masks`. ``categories``: category names to use (default: all of category.csv).
    ``labels``: label names to keep (default: all). ``min_frequency``: keep labels that
    label.csv says occur in at least this many images. ``numbers[c]`` is channel ``c``'s
    Broden label number.
    """

    def __init__(self, path: str | Path, split: str | None = None,
                 size: tuple[int, int] | int | None = None,
                 categories: Sequence[str] | str | None = None, *,
                 mask_size: tuple[int, int] | int | None = None,
                 labels: Sequence[str] | None = None, min_frequency: int = 1) -> None:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder; {EXPECTED}")
        if not (root / INDEX).is_file():
            raise FileNotFoundError(f"{root} is not a Broden folder ({INDEX} is missing); "
                                    f"{EXPECTED}")
        if not (root / IMAGES).is_dir():
            raise FileNotFoundError(f"{root / IMAGES} is missing; {EXPECTED}")
        if split is not None and not isinstance(split, str):
            raise TypeError(f"split must be None or a split name such as 'val', got {split!r}")
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int):
            raise TypeError(f"min_frequency must be an int, got {min_frequency!r}")
        self.root, self.split, self.min_frequency = root, split, min_frequency
        self.selected = self._categories(categories)
        names, frequency = self._label_table()
        self.numbers, self.labels, self.categories = self._channels(names, frequency, labels)
        top = max(names) if names else 0
        self._known = np.zeros(top + 1, dtype=bool)
        self._known[0] = True
        self._known[list(names)] = True
        self._channel = np.full(top + 1, -1, dtype=np.int64)
        self._channel[self.numbers] = np.arange(len(self.numbers))
        self._items = self._index()
        self.image_size = _size(size, "size") or Counter(
            (it.ih, it.iw) for it in self._items).most_common(1)[0][0]
        self.mask_size = _size(mask_size, "mask_size") or Counter(
            (it.sh, it.sw) for it in self._items).most_common(1)[0][0]
        self._index_sha = _sha256(root / INDEX)
        self._meta_sha = _sha256(root / LABELS, root / CATEGORIES,
                                 *(root / c_file(c) for c in self.selected))

    # -- metadata --------------------------------------------------------------------------

    def _categories(self, wanted: Sequence[str] | str | None) -> list[str]:
        path = self.root / CATEGORIES
        _, rows = read_csv(path, ("name",))
        names = [r.cells["name"] for r in rows]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"{path} must list each category once, found {names}")
        if wanted is None:
            return names
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        unknown = [c for c in wanted if c not in names]
        if unknown or not wanted:
            raise ValueError(f"unknown categories {unknown or wanted}: {path} lists "
                             f"{', '.join(names)}")
        return [c for c in names if c in wanted]

    def _label_table(self) -> tuple[dict[int, str], dict[int, int]]:
        path = self.root / LABELS
        _, rows = read_csv(path, ("number", "name", "frequency"))
        names: dict[int, str] = {}
        frequency: dict[int, int] = {}
        for r in rows:
            number = to_int(path, r, "number")
            if number == 0:                                 # 0 is "unlabelled" by convention
                continue
            if number in names:
                raise ValueError(f"{path}, line {r.line}: label number {number} listed twice")
            names[number] = r.cells["name"]
            frequency[number] = to_int(path, r, "frequency")
        duplicates = sorted(n for n, k in Counter(names.values()).items() if k > 1)
        if duplicates:
            raise ValueError(f"{path}: label names must be unique, repeated: {duplicates[:5]}")
        return names, frequency

    def _channels(self, names: dict[int, str], frequency: dict[int, int],
                  wanted: Sequence[str] | None) -> tuple[list[int], list[str], list[str]]:
        """Label numbers, names and primary categories of the channels, by label number."""
        best: dict[int, tuple[float, int]] = {}            # number -> (coverage, -category order)
        for order, cat in enumerate(self.selected):
            path = self.root / c_file(cat)
            _, rows = read_csv(path, ("number", "coverage"))
            for r in rows:
                number = to_int(path, r, "number")
                if number not in names:
                    raise ValueError(f"{path}, line {r.line}: label number {number} is not in "
                                     f"{self.root / LABELS}")
                key = (to_float(path, r, "coverage"), -order)
                best[number] = max(best.get(number, key), key)
        keep = sorted(n for n in best if frequency[n] >= self.min_frequency)
        if wanted is not None:
            wanted = [wanted] if isinstance(wanted, str) else list(wanted)
            available = {names[n]: n for n in keep}
            missing = [w for w in wanted if w not in available]
            if missing:
                hints = {w: difflib.get_close_matches(w, list(available), 3) for w in missing}
                raise ValueError(
                    f"labels {missing} are not available in categories {self.selected} with "
                    f"frequency >= {self.min_frequency} (close matches: {hints})")
            keep = sorted(available[w] for w in set(wanted))
        if not keep:
            raise ValueError(f"no labels of categories {self.selected} occur in >= "
                             f"{self.min_frequency} images in {self.root / LABELS}")
        return keep, [names[n] for n in keep], [self.selected[-best[n][1]] for n in keep]

    def _index(self) -> list[_Item]:
        path = self.root / INDEX
        _, rows = read_csv(path, META_COLUMNS + tuple(self.selected))
        items: list[_Item] = []
        splits: Counter[str] = Counter()
        for r in rows:
            splits[r.cells["split"]] += 1
            if self.split is not None and r.cells["split"] != self.split:
                continue
            cells = [e for c in self.selected for e in entries(r.cells[c])]
            if not cells:
                continue                                    # no data in these categories
            scalars = []
            for e in cells:
                if is_scalar(e):
                    number = int(e)
                    if number >= len(self._known) or not self._known[number]:
                        raise ValueError(f"{path}, line {r.line}: whole-image label number "
                                         f"{number} is not in {self.root / LABELS}")
                    if self._channel[number] >= 0:
                        scalars.append(int(self._channel[number]))
            ih, iw, sh, sw = (to_int(path, r, c, 1) for c in ("ih", "iw", "sh", "sw"))
            items.append(_Item(r.cells["image"], r.line, ih, iw, sh, sw,
                               tuple(e for e in cells if not is_scalar(e)), tuple(scalars)))
        if self.split is not None and not splits[self.split]:
            raise ValueError(f"no rows of split {self.split!r} in {path}; its splits are "
                             f"{dict(splits)}")
        if not items:
            raise ValueError(f"no rows of {path} have data in categories {self.selected}")
        return items

    # -- the probe-set contract ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def image_path(self, i: int) -> Path:
        """The image file of sample ``i``."""
        return self.root / IMAGES / self._items[i].image

    def _images(self, start: int, n: int) -> torch.Tensor:
        h, w = self.image_size
        out = torch.empty((n, 3, h, w), dtype=torch.float32)
        for k in range(n):
            item = self._items[start + k]
            path = self.root / IMAGES / item.image
            where = f"(index.csv line {item.line})"
            if not path.is_file():
                raise FileNotFoundError(f"image {path} {where} is missing")
            try:
                with Image.open(path) as im:
                    rgb = im.convert("RGB")
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                raise ValueError(f"image {path} {where} is not a readable image: {e}") from None
            if rgb.size != (w, h):
                rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
            out[k] = torch.from_numpy(np.ascontiguousarray(arr))
        return out

    def _masks(self, start: int, n: int) -> torch.Tensor:
        h, w = self.mask_size
        out = np.zeros((n, len(self.labels), h * w), dtype=bool)
        pixels = np.arange(h * w)
        for k in range(n):
            item = self._items[start + k]
            for png in item.pngs:
                path = self.root / IMAGES / png
                try:
                    codes = decode_png(path)
                except (FileNotFoundError, ValueError) as e:
                    raise type(e)(f"{e} (index.csv line {item.line})") from None
                self._check_known(codes, path, item.line)
                channel = self._channel[resize_nearest(codes, (h, w))].ravel()
                hit = channel >= 0
                out[k, channel[hit], pixels[hit]] = True
            out[k, list(item.scalars)] = True
        return torch.from_numpy(out.reshape(n, len(self.labels), h, w))

    def _check_known(self, codes: np.ndarray, path: Path, line: int) -> None:
        values = np.unique(codes)
        bad = values[(values >= len(self._known)) | ~self._known[np.minimum(
            values, len(self._known) - 1)]]
        if bad.size:
            raise ValueError(f"segmentation {path} (index.csv line {line}) holds label "
                             f"number(s) {bad[:5].tolist()} not in {self.root / LABELS}")

    def describe(self) -> dict[str, Any]:
        """Name, resolved path, split, size, sizes, categories, label count, ``min_frequency``,
        and SHA-256 prefixes of the channels (numbers, names, categories: ``channels_sha256``),
        of index.csv (``index_sha256``) and of label.csv, category.csv and the selected c_*.csv
        (``metadata_sha256``). Image and PNG bytes are not hashed."""
        return {"name": "broden", "path": str(self.root.resolve()), "split": self.split,
                "size": len(self), "image_size": list(self.image_size),
                "mask_size": list(self.mask_size), "categories": list(self.selected),
                "labels": len(self.labels), "min_frequency": self.min_frequency,
                "channels_sha256": hashlib.sha256(json.dumps(
                    [self.numbers, self.labels, self.categories]).encode()).hexdigest()[:12],
                "index_sha256": self._index_sha, "metadata_sha256": self._meta_sha}


__all__ = ["BrodenProbe"]
