"""LSTMVis matching against brute force: the selected units are exactly those on in the span
and off around it; matches are exactly the maximal all-on runs."""

from __future__ import annotations

import numpy as np
import pytest

from gandissect.sequence.match import concept_precision, find_matches, select_units


def brute_select(s: np.ndarray, a: int, b: int, th: float, margin: int) -> list[int]:
    out = []
    for u in range(s.shape[0]):
        inside = all(s[u, t] > th for t in range(a, b))
        around = [t for t in list(range(a - margin, a)) + list(range(b, b + margin))
                  if 0 <= t < s.shape[1]]
        if inside and all(s[u, t] <= th for t in around):
            out.append(u)
    return out


def brute_runs(states: np.ndarray, units: list[int], th: float) -> list[tuple[int, int, int]]:
    runs = []
    for n in range(states.shape[0]):
        t = 0
        T = states.shape[2]
        while t < T:
            if all(states[n, u, t] > th for u in units):
                a = t
                while t < T and all(states[n, u, t] > th for u in units):
                    t += 1
                runs.append((n, a, t))
            else:
                t += 1
    return runs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_and_matches_equal_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    states = rng.random((15, 10, 30))
    ann = rng.random((15, 3, 30)) > 0.3
    for a, b, margin in [(0, 2, 1), (5, 7, 1), (28, 30, 2), (10, 11, 0)]:
        got = select_units(states[4], (a, b), 0.4, margin)
        assert got == brute_select(states[4], a, b, 0.4, margin)
    units = [1, 7]
    found = find_matches(states, units, 0.4, annotations=ann, labels=["x", "y", "z"])
    assert [(m.sample, m.start, m.stop) for m in found] == brute_runs(states, units, 0.4)
    for m in found:
        assert m.concepts == tuple(n for c, n in enumerate("xyz")
                                   if ann[m.sample, c, m.start:m.stop].all())
    long = find_matches(states, units, 0.4, min_length=2, target_length=3, limit=5)
    assert len(long) <= 5 and all(m.length >= 2 for m in long)
    assert [abs(m.length - 3) for m in long] == sorted(abs(m.length - 3) for m in long)
    prec = concept_precision(found, ann, ["x", "y", "z"])
    total = sum(m.length for m in found)
    assert prec["x"] == pytest.approx(sum(ann[m.sample, 0, m.start:m.stop].sum()
                                          for m in found) / total)


def test_errors() -> None:
    s = np.zeros((4, 10))
    with pytest.raises(ValueError, match="bad span"):
        select_units(s, (3, 3), 0.0)
    with pytest.raises(ValueError, match="states must be"):
        select_units(s[None], (0, 2), 0.0)
    with pytest.raises(ValueError, match=r"unknown units \[4\]"):
        find_matches(s[None], [4], 0.0)
    assert find_matches(s[None], [], 0.0) == []
