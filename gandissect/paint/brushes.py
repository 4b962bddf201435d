"""GANPaint brushes: a concept's units of one layer, ranked by causal effect, with the values a
stroke inserts; built once per (generator, segmenter, layer) and cached as JSON.

A :class:`Brush` is a concept's units of one layer, ranked by causal effect (single-unit ACE
among the units that best match the concept by dissection IoU), with per-unit insertion values
(a high quantile of each unit's activations). A :class:`BrushSet` holds a layer's brushes.
Strokes, history and rendering: :mod:`gandissect.paint.painter`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..dissection.engine import dissect
from ..intervention.causal import measure_concepts, unit_statistics
from ..intervention.edit import Edit
from ..intervention.ranking import UnitRanking, rank_by_iou

BRUSH_FORMAT = 1
#: Units ablated between two progress messages while building brushes.
ABLATION_CHUNK = 32


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
        d = json.loads(text)
        if d.get("format") != BRUSH_FORMAT:
            raise ValueError(f"brush file format {d.get('format')!r} is not {BRUSH_FORMAT}")
        layer = str(d["layer"])
        brushes = {b["concept"]: Brush(b["concept"], layer, tuple(int(u) for u in b["units"]),
                                       tuple(float(s) for s in b["scores"]),
                                       tuple(float(v) for v in b["values"]))
                   for b in d["brushes"]}
        return cls(layer, brushes, tuple(float(v) for v in d["quantile"]), dict(d["meta"]))


def build_brushes(generator: Any, segmenter: Any, layer: str, samples: int = 200,
                  seed: int = 0, candidates: int = 40, ace_samples: int = 32, q: float = 0.99,
                  progress: Callable[[str], None] | None = None) -> BrushSet:
    """Dissect ``layer``; for every concept, rank its ``candidates`` best-IoU units by
    single-unit ACE over ``ace_samples`` latents and keep those with a positive effect
    (concepts left with none get no brush). Insertion values: each unit's ``q`` quantile, or
    for a brush unit whose quantile is 0 (a rare concept), its mean where the concept is.

    Each unit in the union of the concepts' candidates is ablated once (``ABLATION_CHUNK``
    units per progress message), and that ablation serves every concept (the same numbers as
    :func:`single_unit_ace` per concept, which would ablate shared candidates repeatedly)."""
    say = progress or (lambda _msg: None)
    say(f"dissecting {layer} over {samples} samples")
    result = dissect(generator, segmenter, layer, samples=samples, seed=seed)[layer]
    say("unit statistics (insertion values)")
    stats = unit_statistics(generator, layer, samples=min(samples, 100), seed=seed, q=q)
    quant = stats.quantile.tolist()
    concepts = [c for i, c in enumerate(result.labels) if result.concept_pixels[i] > 0]
    cands = {c: rank_by_iou(result, c).top(min(candidates, result.units)) for c in concepts}
    pool = sorted({u for units in cands.values() for u in units})
    drops = np.full((result.units, len(concepts)), -np.inf)
    for start in range(0, len(pool), ABLATION_CHUNK):
        part = pool[start:start + ABLATION_CHUNK]
        say(f"single-unit ablations over {ace_samples} samples: units {start + 1}-"
            f"{start + len(part)} of {len(pool)} (candidates of {len(concepts)} concepts)")
        before, after = measure_concepts(generator, segmenter, [[Edit(layer, [u])] for u in part],
                                         ace_samples, seed + 1, concepts)
        for j in range(len(concepts)):
            # per concept as single_unit_ace computes it (same array layout, same float sums)
            drops[part, j] = (before[None, :, j:j + 1] - after[:, :, j:j + 1]).mean(axis=1)[:, 0]
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
            "ace_samples": ace_samples, "q": q}
    return BrushSet(layer, brushes, tuple(float(v) for v in quant), meta)


def cache_dir() -> Path:
    """Brush cache folder: ``$GANDISSECT_CACHE/brushes`` or ``~/.cache/gandissect/brushes``."""
    root = os.environ.get("GANDISSECT_CACHE") or Path.home() / ".cache" / "gandissect"
    return Path(root) / "brushes"


def load_or_build_brushes(generator: Any, segmenter: Any, layer: str, key: str,
                          folder: str | Path | None = None,
                          progress: Callable[[str], None] | None = None,
                          **build: Any) -> BrushSet:
    """Brushes from ``folder/<key>.json`` if present and readable, else built and saved there
    atomically (a corrupt cache file is rebuilt)."""
    path = Path(folder or cache_dir()) / f"{key}.json"
    if path.is_file():
        try:
            brushes = BrushSet.from_json(path.read_text())
            if brushes.layer == layer:
                return brushes
        except (ValueError, KeyError, TypeError):
            pass
    brushes = build_brushes(generator, segmenter, layer, progress=progress, **build)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(brushes.to_json())
    os.replace(tmp, path)
    return brushes
