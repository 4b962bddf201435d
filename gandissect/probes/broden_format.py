"""The Broden folder layout (Network Dissection's probe set), shared by the reader and writer.

A Broden folder holds (as written by NetDissect's ``joinseg.py`` and read by its ``loadseg.py``):

- ``index.csv``: ``image,split,ih,iw,sh,sw`` then one column per category (the published
  ``broden1_224`` header: ``image,split,ih,iw,sh,sw,color,object,part,material,scene,texture``).
  ``image`` is a path relative to ``images/``; ``ih, iw`` the image's and ``sh, sw`` the
  segmentation's height and width. A category cell lists ``;``-separated entries (empty: no
  labels of that category): a decimal number is a label of the whole image (``scene``,
  ``texture``); anything else is a segmentation PNG, relative to ``images/``, whose label at
  each pixel is ``R + 256 * G``, 0 meaning unlabelled. Several PNGs in one cell are layers
  (Broden's parts have up to 4), dominant first.
- ``label.csv``: ``number,name,category,frequency,coverage,syns``: one row per label number
  (numbers are global across categories, 0 is the unlabelled ``-`` and not listed);
  ``category`` reads ``object(12);part(3)``: images per category; ``frequency`` images in all;
  ``coverage`` summed pixel fractions (in whole images); ``syns`` ``;``-separated synonyms.
- ``category.csv``: ``name,first,last,count,frequency``, one row per category.
- ``c_<category>.csv``: ``code,number,name,frequency,coverage``: the labels occurring in
  that category, with a dense per-category ``code``, and their frequency and coverage there.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

INDEX = "index.csv"
LABELS = "label.csv"
CATEGORIES = "category.csv"
IMAGES = "images"
META_COLUMNS: tuple[str, ...] = ("image", "split", "ih", "iw", "sh", "sw")
LABEL_COLUMNS: tuple[str, ...] = ("number", "name", "category", "frequency", "coverage", "syns")
CATEGORY_COLUMNS: tuple[str, ...] = ("name", "first", "last", "count", "frequency")
C_COLUMNS: tuple[str, ...] = ("code", "number", "name", "frequency", "coverage")
#: The largest label number ``R + 256 * G`` can hold.
MAX_LABEL = 255 + 256 * 255
#: What a Broden folder must hold, for error messages.
EXPECTED = (f"a Broden folder holds {INDEX} (columns {','.join(META_COLUMNS)},<categories>), "
            f"{LABELS}, {CATEGORIES}, c_<category>.csv per category and the {IMAGES}/ folder")


def c_file(category: str) -> str:
    """The per-category label file's name: ``c_<category>.csv``."""
    return f"c_{category}.csv"


@dataclass(frozen=True)
class Row:
    """One row of a Broden CSV file: its cells by column, and its line in the file."""

    cells: dict[str, str]
    line: int


def read_csv(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[Row]]:
    """Header and rows of ``path``; ``FileNotFoundError`` when it is missing, ``ValueError``
    naming the file when it has no header, lacks a ``required`` column or a row has more
    cells than the header."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {EXPECTED}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        if not header:
            raise ValueError(f"{path} is empty (no header row); {EXPECTED}")
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path} lacks column(s) {', '.join(missing)}: expected "
                             f"{','.join(required)}, found {','.join(header)}")
        rows = []
        for cells in reader:
            if None in cells:
                raise ValueError(f"{path}, line {reader.line_num}: more cells than the header's "
                                 f"{len(header)} columns")
            rows.append(Row({k: (v or "").strip() for k, v in cells.items()}, reader.line_num))
    return header, rows


def to_int(path: Path, row: Row, column: str, minimum: int = 0) -> int:
    """Cell ``column`` of ``row`` as an int >= ``minimum`` (``ValueError`` naming file, line)."""
    text = row.cells[column]
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{path}, line {row.line}: column {column} must be an integer, got "
                         f"{text!r}") from None
    if value < minimum:
        raise ValueError(f"{path}, line {row.line}: column {column} must be >= {minimum}, "
                         f"got {value}")
    return value


def to_float(path: Path, row: Row, column: str) -> float:
    """Cell ``column`` of ``row`` as a float; empty reads as 0."""
    text = row.cells[column]
    try:
        return float(text) if text else 0.0
    except ValueError:
        raise ValueError(f"{path}, line {row.line}: column {column} must be a number, got "
                         f"{text!r}") from None


def entries(cell: str) -> list[str]:
    """The ``;``-separated entries of an index.csv category cell (empty ones dropped)."""
    return [e.strip() for e in cell.split(";") if e.strip()]


def is_scalar(entry: str) -> bool:
    """A whole-image label number (decimal digits) rather than a segmentation PNG path."""
    return entry.isascii() and entry.isdigit()


def decode_png(path: Path) -> np.ndarray:
    """Label numbers ``R + 256 * G`` (int32 ``[h, w]``) of a segmentation PNG.
    ``FileNotFoundError`` when missing; ``ValueError`` when unreadable or not RGB(A)."""
    if not path.is_file():
        raise FileNotFoundError(f"segmentation {path} is missing")
    try:
        with Image.open(path) as im:
            if im.mode not in ("RGB", "RGBA"):
                raise ValueError(f"segmentation {path} has image mode {im.mode}; Broden "
                                 f"segmentations are RGB with label = R + 256 * G")
            rgb = np.asarray(im.convert("RGB"), dtype=np.int32)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"segmentation {path} is not a readable image: {e}") from None
    return rgb[..., 0] + 256 * rgb[..., 1]


def encode_png(codes: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[h, w, 3]`` holding label numbers ``codes`` ``[h, w]`` as ``R + 256 * G``."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() > MAX_LABEL):
        raise ValueError(f"label numbers must lie in 0..{MAX_LABEL} to fit R + 256 * G")
    rgb = np.zeros(codes.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = codes % 256
    rgb[..., 1] = codes // 256
    return rgb


def nearest_index(source: int, target: int) -> np.ndarray:
    """Source index of each of ``target`` cells when resizing ``source`` cells by nearest
    neighbour with centred cells: ``floor((j + 0.5) * source / target)``."""
    return np.minimum((np.arange(target) * 2 + 1) * source // (2 * target), source - 1)


def resize_nearest(codes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``codes`` ``[h, w]`` resized to ``size`` by :func:`nearest_index` (no new values)."""
    h, w = codes.shape
    if (h, w) == tuple(size):
        return codes
    return codes[nearest_index(h, size[0])[:, None], nearest_index(w, size[1])[None, :]]


__all__ = ["CATEGORIES", "CATEGORY_COLUMNS", "C_COLUMNS", "EXPECTED", "IMAGES", "INDEX",
           "LABELS", "LABEL_COLUMNS", "MAX_LABEL", "META_COLUMNS", "Row", "c_file",
           "decode_png", "encode_png", "entries", "is_scalar", "nearest_index", "read_csv",
           "resize_nearest", "to_float", "to_int"]
