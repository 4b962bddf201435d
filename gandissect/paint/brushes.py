"""GANPaint brushes: a concept's units of one layer, ranked by causal effect, with the values a
stroke inserts; built once per (generator, segmenter, layer) and cached as JSON.

A :class:`Brush` is a concept's units of one layer, ranked by causal effect (single-unit ACE
among the units that best match the concept by dissection IoU), with per-unit insertion values
(a high quantile of each unit's activations). A :class:`BrushSet` holds a layer's brushes.
Strokes, history and rendering: :mod:`gandissect.paint.painter`.

The cache (:func:`load_or_build_brushes`) is checked before it is used
(:meth:`BrushSet.check`: format, finite numbers, unit indices, the layer's shape and the
weights' fingerprint); a cache that fails is rebuilt with a warning saying why. A cache folder
that cannot be written is a :class:`BrushCacheError` before anything is built.

``build_brushes(..., client=distributed.Client)`` runs the dissection and the single-unit
ablations on a Dask cluster (the models sent once per worker); the brushes are bit-identical.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..common.fingerprint import fingerprint
from ..dissection.cluster import check_client, map_on_cluster
from ..dissection.engine import dissect
from ..dissection.folder import atomic_write_bytes
from ..intervention.causal import measure_concepts, unit_statistics
from ..intervention.edit import Edit, layer_shape
from ..intervention.ranking import UnitRanking, ablate_each, rank_by_iou

#: 2: ``meta`` records the layer's shape (``layer_shape``) and the weights (``weights``)
BRUSH_FORMAT = 2
#: Units ablated between two progress messages while building brushes.
ABLATION_CHUNK = 32


class BrushCacheError(ValueError):
    """The brush cache folder cannot be written (the message names it and how to choose
    another)."""


def _ints(name: str, xs: Any) -> tuple[int, ...]:
    if not isinstance(xs, list) or not all(type(x) is int for x in xs):
        raise ValueError(f"{name} must be a list of integers, got {xs!r:.80}")
    return tuple(xs)


def _floats(name: str, xs: Any) -> tuple[float, ...]:
    if not isinstance(xs, list) or not all(type(x) in (int, float) for x in xs):
        raise ValueError(f"{name} must be a list of numbers, got {xs!r:.80}")
    return tuple(float(x) for x in xs)


@dataclass(frozen=True)
class Brush:
    """``units`` of ``layer`` for ``concept``, best first; ``scores[i]`` is unit ``units[i]``'s
    single-unit ACE (drop of the concept's pixel fraction when it alone is ablated) and
    ``values[i]`` its insertion value."""

    concept: str
    layer: str
    units: tuple[int, ...]
    scores: tuple[float, ...]
    values: tuple[float, ...]

    def top(self, strength: int) -> tuple[int, ...]:
        """The ``strength`` best units (all of them when the brush has fewer)."""
        if strength < 1:
            raise ValueError(f"strength must be >= 1, got {strength}")
        return self.units[:strength]


@dataclass(frozen=True)
class BrushSet:
    """Brushes of one layer plus each unit's insertion value ``quantile[u]`` (q-quantile)."""

    layer: str
    brushes: dict[str, Brush]
    quantile: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"format": BRUSH_FORMAT, "layer": self.layer, "meta": self.meta,
                           "quantile": list(self.quantile),
                           "brushes": [{"concept": b.concept, "units": list(b.units),
                                        "scores": list(b.scores), "values": list(b.values)}
                                       for b in self.brushes.values()]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> BrushSet:
        """Parse :meth:`to_json`'s text; ValueError saying what is malformed (units must be
        JSON integers, values numbers: nothing is truncated or parsed from strings)."""
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("format") != BRUSH_FORMAT:
            found = d.get("format") if isinstance(d, dict) else None
            raise ValueError(f"brush file format {found!r} is not {BRUSH_FORMAT}")
        try:
            layer, meta = d["layer"], d["meta"]
            if not isinstance(layer, str) or not isinstance(meta, dict):
                raise ValueError("layer must be a string and meta an object")
            brushes = {}
            for b in d["brushes"]:
                c = b["concept"]
                brushes[c] = Brush(c, layer, _ints(f"units of {c!r}", b["units"]),
                                   _floats(f"scores of {c!r}", b["scores"]),
                                   _floats(f"values of {c!r}", b["values"]))
            return cls(layer, brushes, _floats("quantile", d["quantile"]), dict(meta))
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed brush file ({type(e).__name__}: {e})") from e

    def check(self, layer: str, shape: tuple[int, int, int], weights: str) -> None:
        """Raise ValueError saying what is wrong unless these brushes fit ``layer`` of shape
        ``shape`` (units, h, w) of the models whose fingerprint is ``weights``: every number
        finite, every unit an index below ``units``, one insertion value per unit."""
        if self.layer != layer:
            raise ValueError(f"brushes of layer {self.layer!r}, not {layer!r}")
        if self.meta.get("weights") != weights:
            raise ValueError(f"built for weights {self.meta.get('weights')!r}, the models' "
                             f"fingerprint is {weights!r}")
        if self.meta.get("layer_shape") != list(shape):
            raise ValueError(f"built for layer shape {self.meta.get('layer_shape')!r}, "
                             f"{layer!r} has {list(shape)}")
        units = shape[0]
        if len(self.quantile) != units:
            raise ValueError(f"{len(self.quantile)} insertion values for {units} units")
        numbers = {"quantile": self.quantile, **{f"meta {k}": (v,) for k, v in self.meta.items()
                                                 if type(v) in (int, float)}}
        for b in self.brushes.values():
            if b.layer != layer or not b.units or not (
                    len(b.units) == len(b.scores) == len(b.values)):
                raise ValueError(f"brush {b.concept!r}: {len(b.units)} units, "
                                 f"{len(b.scores)} scores, {len(b.values)} values")
            bad = [u for u in b.units if not 0 <= u < units]
            if bad:
                raise ValueError(f"brush {b.concept!r} has unit {bad[0]}; {layer!r} has units "
                                 f"0..{units - 1}")
            if len(set(b.units)) != len(b.units):
                raise ValueError(f"brush {b.concept!r} repeats units")
            numbers.update({f"scores of {b.concept!r}": b.scores,
                            f"values of {b.concept!r}": b.values})
        for name, xs in numbers.items():
            if not all(math.isfinite(x) for x in xs):
                raise ValueError(f"{name} hold NaN or infinity")


def build_brushes(generator: Any, segmenter: Any, layer: str, samples: int = 200,
                  seed: int = 0, candidates: int = 40, ace_samples: int = 32, q: float = 0.99,
                  progress: Callable[[str], None] | None = None, client: Any = None
                  ) -> BrushSet:
    """Dissect ``layer``; for every concept, rank its ``candidates`` best-IoU units by
    single-unit ACE over ``ace_samples`` latents and keep those with a positive effect
    (concepts left with none get no brush). Insertion values: each unit's ``q`` quantile, or
    for a brush unit whose quantile is 0 (a rare concept), its mean where the concept is.

    Each unit in the union of the concepts' candidates is ablated once (``ABLATION_CHUNK``
    units per progress message), and that ablation serves every concept (the same numbers as
    :func:`single_unit_ace` per concept, which would ablate shared candidates repeatedly).

    ``client`` (a ``distributed.Client``): the dissection and each chunk of ablations run as
    tasks on its Dask cluster (generator and segmenter sent once per worker), with
    bit-identical brushes; the unit statistics (one pass over at most 100 samples) stay
    here."""
    check_client(client, "build_brushes")
    say = progress or (lambda _msg: None)
    say(f"dissecting {layer} over {samples} samples" + (" on the Dask cluster" if client else ""))
    result = dissect(generator, segmenter, layer, samples=samples, seed=seed,
                     client=client)[layer]
    say("unit statistics (insertion values)")
    stats = unit_statistics(generator, layer, samples=min(samples, 100), seed=seed, q=q)
    quant = stats.quantile.tolist()
    concepts = [c for i, c in enumerate(result.labels) if result.concept_pixels[i] > 0]
    cands = {c: rank_by_iou(result, c).top(min(candidates, result.units)) for c in concepts}
    pool = sorted({u for units in cands.values() for u in units})
    drops = np.full((result.units, len(concepts)), -np.inf)
    parts = [pool[start:start + ABLATION_CHUNK] for start in range(0, len(pool), ABLATION_CHUNK)]
    measured = _ablations(generator, segmenter, layer, parts, ace_samples, seed + 1, concepts,
                          say, client)
    with closing(measured):
        for i, (before, after) in measured:
            part = parts[i]
            for j in range(len(concepts)):
                # per concept as single_unit_ace computes it (same array layout, same float sums)
                drops[part, j] = (before[None, :, j:j + 1] - after[:, :, j:j + 1]
                                  ).mean(axis=1)[:, 0]
    brushes: dict[str, Brush] = {}
    for j, concept in enumerate(concepts):
        scores = np.full(result.units, -np.inf)
        scores[cands[concept]] = drops[cands[concept], j]
        ace = UnitRanking.from_scores(layer, concept, "ace", scores)
        units = [u for u in ace.order if np.isfinite(ace.scores[u]) and ace.scores[u] > 0]
        if not units:
            continue
        values = [quant[u] for u in units]
        if min(values) <= 0:
            say(f"insertion values for {concept} (rare concept)")
            try:
                cs = unit_statistics(generator, layer, samples=min(samples, 100), seed=seed,
                                     q=q, segmenter=segmenter, concept=concept)
                values = [v if v > 0 else float(cs.values([u], "concept")[0])
                          for u, v in zip(units, values, strict=True)]
            except ValueError:
                pass  # concept never covers a cell: keep the quantiles
        brushes[concept] = Brush(concept, layer, tuple(units),
                                 tuple(float(ace.scores[u]) for u in units), tuple(values))
    meta = {"samples": samples, "seed": seed, "candidates": candidates,
            "ace_samples": ace_samples, "q": q, "layer_shape": list(result.meta["layer_shape"]),
            "weights": result.meta["weights"]}
    return BrushSet(layer, brushes, tuple(float(v) for v in quant), meta)


def _ablations(generator: Any, segmenter: Any, layer: str, parts: list[list[int]], samples: int,
               seed: int, concepts: list[str], say: Callable[[str], None], client: Any
               ) -> Generator[tuple[int, tuple[np.ndarray, np.ndarray]], None, None]:
    """``(i, measure_concepts of parts[i]'s units each ablated alone)`` for every part: here,
    in order, or (``client``) as tasks on a Dask cluster, as they finish."""
    total = sum(len(p) for p in parts)
    what = f"single-unit ablations over {samples} samples"
    if client is None:
        start = 0
        for i, part in enumerate(parts):
            say(f"{what}: units {start + 1}-{start + len(part)} of {total} (candidates of "
                f"{len(concepts)} concepts)")
            yield i, measure_concepts(generator, segmenter, [[Edit(layer, [u])] for u in part],
                                      samples, seed, concepts)
            start += len(part)
        return
    say(f"{what} on the Dask cluster: {total} units (candidates of {len(concepts)} concepts) "
        f"in {len(parts)} tasks")
    done = 0
    results = map_on_cluster(client, (generator, segmenter), ablate_each, parts, layer, samples,
                             seed, concepts, 32, label=lambda p: f"brush-ablate-{p[0]}-{p[-1]}")
    with closing(results):
        for i, measured in results:
            done += len(parts[i])
            say(f"{what}: {done} of {total} units done")
            yield i, measured


#: Brush files shipped with the package for the bundled models (used when their weights match).
SHIPPED = Path(__file__).resolve().parent / "shipped"


def shipped_brushes(generator: Any, segmenter: Any, layer: str, key: str,
                    folder: Path | None = SHIPPED) -> BrushSet | None:
    """The brushes shipped as ``folder/<key>.json`` when that file exists and passes
    :meth:`BrushSet.check` against these models (a file that fails warns); else ``None``."""
    path = folder / f"{key}.json" if folder is not None else None
    if path is None or not path.is_file():
        return None
    try:
        brushes = BrushSet.from_json(path.read_text())
        brushes.check(layer, layer_shape(generator, layer), fingerprint(generator, segmenter))
    except (OSError, ValueError) as e:
        warnings.warn(f"shipped brushes {path} not usable ({e}); using the cache", stacklevel=2)
        return None
    return brushes


def cache_dir() -> Path:
    """Brush cache folder: ``$GANDISSECT_CACHE/brushes`` or ``~/.cache/gandissect/brushes``."""
    root = os.environ.get("GANDISSECT_CACHE") or Path.home() / ".cache" / "gandissect"
    return Path(root) / "brushes"


def _check_writable(folder: Path, default: bool) -> None:
    """Raise :class:`BrushCacheError` unless a file can be created in ``folder`` (made if
    missing); ``default``: ``folder`` is :func:`cache_dir` (advise ``GANDISSECT_CACHE``)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        how = ("set the environment variable GANDISSECT_CACHE to a writable folder (brushes "
               "are cached in its brushes/ subfolder)" if default else
               "give a writable folder")
        raise BrushCacheError(f"cannot write the brush cache in {folder} "
                              f"({e.strerror or e}); {how}. Nothing was built (building takes "
                              f"minutes)") from e


def load_or_build_brushes(generator: Any, segmenter: Any, layer: str, key: str,
                          folder: str | Path | None = None,
                          progress: Callable[[str], None] | None = None,
                          cluster: Callable[[], AbstractContextManager[Any]] | None = None,
                          **build: Any) -> BrushSet:
    """Brushes from ``folder/<key>.json`` (default folder :func:`cache_dir`) if it passes
    :meth:`BrushSet.check` against the models, else built and saved there atomically (a cache
    that fails is rebuilt and overwritten, with a warning saying what was wrong). Raises
    :class:`BrushCacheError` before building when the folder cannot be written. ``cluster()``
    (e.g. ``lambda: dask_client("local:2")``) is entered only when a build is needed, and the
    build runs on the Dask client it gives (:func:`build_brushes`' ``client``)."""
    say = progress or (lambda _msg: None)
    where = Path(folder) if folder is not None else cache_dir()
    path = where / f"{key}.json"
    if path.exists():
        shape, weights = layer_shape(generator, layer), fingerprint(generator, segmenter)
        try:
            brushes = BrushSet.from_json(path.read_text())
            brushes.check(layer, shape, weights)
            return brushes
        except (OSError, ValueError) as e:                 # JSON errors are ValueErrors
            msg = f"brush cache {path} is not usable ({e}); rebuilding it"
            warnings.warn(msg, stacklevel=2)
            say(msg)
    _check_writable(where, folder is None)
    with cluster() if cluster is not None else nullcontext(None) as client:
        brushes = build_brushes(generator, segmenter, layer, progress=progress, client=client,
                                **build)
    try:
        atomic_write_bytes(path, brushes.to_json().encode())
    except OSError as e:                     # keep the minutes of work; say why it is not cached
        msg = f"could not save brushes to {path} ({e}); they will be rebuilt next time"
        warnings.warn(msg, stacklevel=2)
        say(msg)
    return brushes
