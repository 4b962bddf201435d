"""LSTMVis-style hypothesis testing on hidden states: select a token span and a threshold, get
the units *on* over the span and *off* around it, then every span in a data set where those
units are on together.

Definitions (``states [U, T]`` of one sequence, ``threshold`` θ):

* unit ``u`` is **on** at ``t`` when ``states[u, t] > θ``;
* :func:`select_units` keeps the units on at every token of ``span = (a, b)`` (stop exclusive)
  and off at the ``margin`` tokens before ``a`` and from ``b`` on (where they exist);
* :func:`find_matches` returns the maximal runs of tokens where every selected unit is on, in
  every sequence, with at least ``min_length`` tokens, each with the concepts that hold on all
  of its tokens; closest in length to the selection first.

>>> import numpy as np
>>> s = np.array([[0., 1, 1, 0, 1], [1., 1, 1, 1, 1]])
>>> select_units(s, (1, 3), 0.5)
[0]
>>> [(m.start, m.stop) for m in find_matches(s[None], [0], 0.5)]
[(1, 3), (4, 5)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Match:
    """Tokens ``start .. stop-1`` of sequence ``sample`` where every selected unit is on;
    ``concepts``: the annotations true on all of those tokens."""

    sample: int
    start: int
    stop: int
    concepts: tuple[str, ...] = ()

    @property
    def length(self) -> int:
        return self.stop - self.start


def _check_states(states: np.ndarray, dims: int) -> np.ndarray:
    arr = np.asarray(states)
    if arr.ndim != dims:
        shape = "[units, T]" if dims == 2 else "[n, units, T]"
        raise ValueError(f"states must be {shape}, got shape {list(arr.shape)}")
    return arr


def select_units(states: np.ndarray, span: tuple[int, int], threshold: float,
                 margin: int = 1) -> list[int]:
    """Units on over ``span`` of ``states [U, T]`` and off for ``margin`` tokens on each side
    (see the module docstring); a span outside ``0 .. T`` raises a ValueError."""
    arr = _check_states(states, 2)
    T = arr.shape[1]
    a, b = (int(v) for v in span)
    if not 0 <= a < b <= T:
        raise ValueError(f"bad span {tuple(span)}: need 0 <= start < stop <= {T}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    on = arr > threshold
    keep = on[:, a:b].all(1)
    around = np.r_[max(0, a - margin):a, b:min(T, b + margin)].astype(np.int64)
    if around.size:
        keep &= ~on[:, around].any(1)
    return [int(u) for u in np.flatnonzero(keep)]


def find_matches(states: np.ndarray, units: Sequence[int], threshold: float,
                 min_length: int = 1, annotations: np.ndarray | None = None,
                 labels: Sequence[str] = (), target_length: int | None = None,
                 limit: int | None = None) -> list[Match]:
    """Maximal runs where all ``units`` are on in ``states [n, U, T]`` (see the module
    docstring). ``annotations [n, C, T]`` (bool) with ``labels`` name each match's concepts;
    matches are sorted by ``|length - target_length|`` (when given), then by position, and at
    most ``limit`` are returned. No units: no matches."""
    arr = _check_states(states, 3)
    units = [int(u) for u in units]
    bad = [u for u in units if not 0 <= u < arr.shape[1]]
    if bad:
        raise ValueError(f"unknown units {bad}: the layer has {arr.shape[1]} (0.."
                         f"{arr.shape[1] - 1})")
    if not units:
        return []
    on = (arr[:, units] > threshold).all(1)                                 # [n, T]
    padded = np.pad(on, ((0, 0), (1, 1))).astype(np.int8)
    edges = np.diff(padded, axis=1)
    starts, stops = np.nonzero(edges == 1), np.nonzero(edges == -1)
    out = []
    for n, a, b in zip(starts[0], starts[1], stops[1], strict=True):
        if b - a < min_length:
            continue
        names: tuple[str, ...] = ()
        if annotations is not None:
            names = tuple(labels[int(c)] for c in
                          np.flatnonzero(annotations[n, :, a:b].all(1)))
        out.append(Match(int(n), int(a), int(b), names))
    if target_length is not None:
        out.sort(key=lambda m: (abs(m.length - target_length), m.sample, m.start))
    return out[:limit]


def concept_precision(matches: Sequence[Match], annotations: np.ndarray,
                      labels: Sequence[str]) -> dict[str, float]:
    """Per concept, the fraction of matched tokens where it holds (``annotations [n, C, T]``),
    highest first: what the matched spans have in common."""
    total = sum(m.length for m in matches)
    if not total:
        return {}
    hits = np.zeros(len(labels))
    for m in matches:
        hits += annotations[m.sample, :, m.start:m.stop].sum(1)
    frac = hits / total
    return {labels[int(c)]: float(frac[c]) for c in np.argsort(-frac, kind="stable")}


__all__ = ["Match", "concept_precision", "find_matches", "select_units"]
