"""The bracket language: sequences are valid prefixes drawn per index, annotations are exact
(checked against a direct stack walk), and the closing rule makes closers predictable."""

from __future__ import annotations

import numpy as np
import pytest

from models.sequence import language as L


def walk(tokens: np.ndarray) -> tuple[list[int], list[int]]:
    """Depth and innermost type after each token, by an explicit stack."""
    stack: list[int] = []
    depth, top = [], []
    for tok in tokens.tolist():
        if tok in L.OPENERS:
            stack.append(L.OPENERS.index(tok))
        elif tok in L.CLOSERS:
            stack.pop()
        depth.append(len(stack))
        top.append(stack[-1] if stack else -1)
    return depth, top


def test_sequences_are_valid_prefixes_drawn_per_index() -> None:
    seqs = L.batch(7, 0, 200, 48)
    assert seqs.shape == (200, 48) and (seqs[:, 0] == L.BOS).all()
    assert np.array_equal(L.batch(7, 5, 3, 48), seqs[5:8])
    assert not np.array_equal(L.batch(8, 0, 1, 48), seqs[:1])
    for row in seqs:
        stack: list[int] = []
        for t, tok in enumerate(row[1:].tolist(), start=1):
            if len(stack) == L.MAX_DEPTH:            # at the maximum depth the next token closes
                assert tok in L.CLOSERS, (row, t)
            if tok in L.OPENERS:
                stack.append(L.OPENERS.index(tok))
            elif tok in L.CLOSERS:
                assert stack and L.CLOSERS.index(tok) == stack.pop(), (row, t)
            assert tok != L.BOS


def test_annotations_are_exact() -> None:
    seqs = L.batch(3, 0, 50, 40)
    ann = L.annotate(seqs)
    assert ann.shape == (50, len(L.CONCEPTS), 40) and ann.dtype == bool
    c = {name: i for i, name in enumerate(L.CONCEPTS)}
    for row, a in zip(seqs, ann, strict=True):
        depth, top = walk(row)
        for k in range(L.MAX_DEPTH + 1):
            assert a[c[f"depth={k}"]].tolist() == [d == k for d in depth]
        for k in range(1, L.MAX_DEPTH + 1):
            assert a[c[f"depth>={k}"]].tolist() == [d >= k for d in depth]
        for k, t in enumerate(L.TYPES):
            assert a[c[f"inside {t}"]].tolist() == [x == k for x in top]
        assert a[c["closing"]].tolist() == [tok in L.CLOSERS for tok in row]
    assert len(L.CONCEPTS) == len(L.CATEGORIES)


def test_text_round_trip_and_errors() -> None:
    toks = L.encode("^(x[]{)")
    assert L.decode(toks) == "^(x[]{)"
    assert L.depths(toks).tolist() == [0, 1, 1, 2, 1, 2, 1]
    assert L.innermost(toks).tolist() == [-1, 0, 0, 1, 0, 2, 0]
    assert not L.closing_targets(toks).any()
    full = L.encode("^(((((()x")                  # depth 6 after token 6: a closer is forced
    assert L.closing_targets(full).tolist() == [t == 6 for t in range(9)]
    assert not L.closing_targets(L.encode("^((((((")).any()     # never the last position
    with pytest.raises(ValueError, match="not tokens"):
        L.encode("^(a)")
    with pytest.raises(ValueError, match="length"):
        L.sequence(0, 0, 0)
