"""What each brush measurably does: the change of its concept's pixel share when a stroke covers
the whole image, per mode and strength, so the app can show it and say when a brush does nothing.

The measure: on ``samples`` latents of ``seed`` (never the brush build's), a whole-image stroke
of the ``strength`` best units (alpha 1, the brush's insertion values when drawing) is applied,
the segmenter labels the output, and the change of the concept's pixel share is averaged:
``added`` (draw: share after - before, in points of the image) and ``removed`` (remove: the
fraction of the concept's pixels that go). A brush *acts* when drawing adds at least
:data:`MIN_ADDED` of the image or removing takes at least :data:`MIN_REMOVED` of the concept's
pixels (and the concept covers at least :data:`MIN_PRESENT` of the images before).

>>> e = BrushEffect("tree", "draw", 4, before=0.10, after=0.112)
>>> e.acts, e.describe()
(False, 'draw tree (4 units): +1.2 points of the image (no measurable effect)')
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..intervention.causal import measure_concepts
from ..intervention.edit import Edit
from .brushes import BrushSet

#: A draw brush acts when it adds at least this share of the image to its concept (3 points:
#: a whole-image stroke that adds less is hard to see in a local one).
MIN_ADDED = 0.03
#: A remove brush acts when it takes at least this fraction of its concept's pixels.
MIN_REMOVED = 0.20
#: Removal is only judged when the concept covers at least this share of the images before.
MIN_PRESENT = 0.002


@dataclass(frozen=True)
class BrushEffect:
    """Mean share of ``concept``'s pixels in the image ``before`` and ``after`` a whole-image
    stroke of ``mode`` with the ``strength`` best units."""

    concept: str
    mode: str
    strength: int
    before: float
    after: float

    @property
    def added(self) -> float:
        """Points of the image gained by the concept (negative: lost)."""
        return self.after - self.before

    @property
    def removed(self) -> float:
        """Fraction of the concept's pixels that went (0 when it was absent)."""
        return (self.before - self.after) / self.before if self.before > 0 else 0.0

    @property
    def acts(self) -> bool:
        if self.mode == "draw":
            return self.added >= MIN_ADDED
        return self.before >= MIN_PRESENT and self.removed >= MIN_REMOVED

    def describe(self) -> str:
        head = f"{self.mode} {self.concept} ({self.strength} units): "
        if self.mode == "draw":
            text = f"{100 * self.added:+.1f} points of the image"
        elif self.before < MIN_PRESENT:
            text = f"{self.concept} is too rare to measure ({100 * self.before:.2f}% of pixels)"
        else:
            text = (f"removes {100 * self.removed:.0f}% of its pixels "
                    f"({100 * self.before:.1f}% -> {100 * self.after:.1f}% of the image)")
        return head + text + ("" if self.acts else " (no measurable effect)")


def effect_edit(brushes: BrushSet, concept: str, mode: str, strength: int) -> Edit:
    """The whole-image stroke whose effect is measured (as the painter would make it)."""
    brush = brushes.brushes[concept]
    units = brush.top(strength)
    rep: Any = 0.0 if mode == "remove" else list(brush.values[:len(units)])
    return Edit(brushes.layer, units, alpha=1.0, replacement=rep)


def measure_effects(generator: Any, segmenter: Any, brushes: BrushSet,
                    strengths: Sequence[int], samples: int = 16, seed: int = 7,
                    progress: Callable[[str], None] | None = None
                    ) -> dict[tuple[str, str, int], BrushEffect]:
    """:class:`BrushEffect` of every brush, mode and strength (one batch of edits per concept)."""
    out: dict[tuple[str, str, int], BrushEffect] = {}
    concepts = list(brushes.brushes)
    for i, concept in enumerate(concepts):
        if progress is not None:
            progress(f"measuring brush effects: {concept} ({i + 1} of {len(concepts)})")
        keys = [(concept, mode, int(s)) for mode in ("draw", "remove") for s in strengths]
        edits = [[effect_edit(brushes, *k)] for k in keys]
        before, after = measure_concepts(generator, segmenter, edits, samples, seed, [concept])
        b = float(np.mean(before[:, 0]))
        for k, a in zip(keys, after[:, :, 0].mean(axis=1), strict=True):
            out[k] = BrushEffect(*k, before=b, after=float(a))
    return out


def effects_to_json(effects: dict[tuple[str, str, int], BrushEffect]) -> str:
    return json.dumps([asdict(e) for e in effects.values()], indent=1)


def effects_from_json(text: str) -> dict[tuple[str, str, int], BrushEffect]:
    """Parse :func:`effects_to_json`; ValueError when malformed."""
    try:
        items = [BrushEffect(str(d["concept"]), str(d["mode"]), int(d["strength"]),
                             float(d["before"]), float(d["after"])) for d in json.loads(text)]
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed brush effects ({type(e).__name__}: {e})") from e
    if not all(np.isfinite([e.before, e.after]).all() for e in items):
        raise ValueError("brush effects hold NaN or infinity")
    return {(e.concept, e.mode, e.strength): e for e in items}


def best_default(effects: dict[tuple[str, str, int], BrushEffect], strengths: Sequence[int],
                 prefer: Sequence[tuple[str, str]] = (("tree", "draw"), ("cloud", "draw"),
                                                      ("tree", "remove"))
                 ) -> tuple[str, str, int] | None:
    """A sensible first action ``(concept, mode, strength)``: the first of ``prefer`` that acts
    at the largest of ``strengths`` (a first stroke should show), else the draw (then remove)
    brush with the largest effect there; ``None`` if nothing acts.

    >>> fx = {("sky", "draw", 4): BrushEffect("sky", "draw", 4, 0.3, 0.32),
    ...       ("cloud", "draw", 4): BrushEffect("cloud", "draw", 4, 0.05, 0.2)}
    >>> best_default(fx, [4])
    ('cloud', 'draw', 4)
    """
    top = max(strengths)
    for concept, mode in prefer:
        e = effects.get((concept, mode, top))
        if e is not None and e.acts:
            return concept, mode, top
    for mode, size in (("draw", lambda e: e.added), ("remove", lambda e: e.removed)):
        acting = [e for e in effects.values() if e.mode == mode and e.strength == top
                  and e.acts]
        if acting:
            best = max(acting, key=size)
            return best.concept, best.mode, top
    return None
