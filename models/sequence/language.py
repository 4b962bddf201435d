"""A toy language of nested brackets of three types, with exact token-level annotations.

A sequence is ``length`` tokens: ``^`` (the start) and then a random walk of brackets and
fillers. At depth 0 the next token opens a bracket (``P_OPEN_AT_0``, type uniform) or is the
filler ``x``; at depth ``1 .. MAX_DEPTH-1`` it opens (``P_OPEN``, split evenly over the three
types), closes the innermost open bracket (``P_CLOSE``) or is ``x`` (``P_FILL``, the most likely
token there); at ``MAX_DEPTH`` it must close. So a closing bracket is the single most likely next
token exactly at depth ``MAX_DEPTH``, and there it is certain: predicting it needs the depth
(is it 6 or 5?) and the innermost type. **Bracket-closing accuracy** is measured at those
forced closings (:func:`closing_targets`); an ideal model scores 100%.

Sequence ``i`` of ``seed`` draws from ``numpy.random.SeedSequence([seed, i])`` alone, so it never
depends on batching. Annotations describe the state *after* reading token ``t`` (what the hidden
state at ``t`` should know), one boolean mask per concept (:data:`CONCEPTS`).

>>> toks = sequence(seed=0, index=0, length=12)
>>> len(toks), int(toks[0])
(12, 0)
>>> decode(encode("^([x])"))
'^([x])'
>>> depths(encode("^([x])")).tolist()
[0, 1, 2, 2, 1, 0]
"""

from __future__ import annotations

import numpy as np

#: Vocabulary: the start symbol, the filler, then (opener, closer) for each bracket type.
TOKENS: tuple[str, ...] = ("^", "x", "(", ")", "[", "]", "{", "}")
BOS, FILLER = 0, 1
OPENERS: tuple[int, ...] = (2, 4, 6)
CLOSERS: tuple[int, ...] = (3, 5, 7)
TYPES: tuple[str, ...] = ("()", "[]", "{}")
MAX_DEPTH = 6
P_OPEN_AT_0 = 0.75
P_OPEN, P_CLOSE, P_FILL = 0.30, 0.30, 0.40
#: Seeds: training data, validation (held out), and the probe set dissections run on.
TRAIN_SEED, VALID_SEED, PROBE_SEED = 0, 1, 4_000_037


def _concepts() -> tuple[list[str], list[str]]:
    names = [f"depth={k}" for k in range(MAX_DEPTH + 1)]
    cats = ["depth"] * (MAX_DEPTH + 1)
    names += [f"depth>={k}" for k in range(1, MAX_DEPTH + 1)]
    cats += ["depth"] * MAX_DEPTH
    names += ["start", "filler", "opening", "closing"]
    cats += ["token"] * 4
    names += [f"inside {t}" for t in TYPES]
    cats += ["stack"] * len(TYPES)
    return names, cats


#: Concept names and their categories: ``depth=k`` / ``depth>=k`` (after the token),
#: the token's kind (``start``, ``filler``, ``opening``, ``closing``), and ``inside ()`` etc.:
#: the innermost open bracket after the token has that type.
CONCEPTS, CATEGORIES = _concepts()


def sequence(seed: int, index: int, length: int) -> np.ndarray:
    """Token ids ``[length]`` (int64) of sequence ``index`` of ``seed``."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    u = rng.random(length)
    kind = rng.integers(0, len(TYPES), size=length)
    out = np.empty(length, dtype=np.int64)
    out[0] = BOS
    stack: list[int] = []
    for t in range(1, length):
        d = len(stack)
        p_open = P_OPEN_AT_0 if d == 0 else (0.0 if d >= MAX_DEPTH else P_OPEN)
        p_close = 0.0 if d == 0 else (1.0 if d >= MAX_DEPTH else P_CLOSE)
        if u[t] < p_open:
            stack.append(int(kind[t]))
            out[t] = OPENERS[stack[-1]]
        elif u[t] < p_open + p_close:
            out[t] = CLOSERS[stack.pop()]
        else:
            out[t] = FILLER
    return out


def batch(seed: int, start: int, n: int, length: int) -> np.ndarray:
    """Sequences ``start .. start+n-1`` of ``seed`` as ``[n, length]`` int64."""
    return np.stack([sequence(seed, i, length) for i in range(start, start + n)]) \
        if n else np.zeros((0, length), dtype=np.int64)


def encode(text: str) -> np.ndarray:
    """Token ids of ``text`` (one character per token); unknown characters raise ValueError."""
    bad = sorted({c for c in text if c not in TOKENS})
    if bad:
        raise ValueError(f"characters {bad} are not tokens of the language; tokens: "
                         f"{' '.join(TOKENS)}")
    return np.array([TOKENS.index(c) for c in text], dtype=np.int64)


def decode(tokens: np.ndarray | list[int]) -> str:
    """The text of token ids."""
    return "".join(TOKENS[int(t)] for t in tokens)


def depths(tokens: np.ndarray) -> np.ndarray:
    """Nesting depth after each token (``[..., T]``; a closer never takes it below 0)."""
    toks = np.asarray(tokens)
    step = np.isin(toks, OPENERS).astype(np.int64) - np.isin(toks, CLOSERS).astype(np.int64)
    d = np.zeros(toks.shape, dtype=np.int64)
    run = np.zeros(toks.shape[:-1], dtype=np.int64)
    for t in range(toks.shape[-1]):
        run = np.maximum(run + step[..., t], 0)
        d[..., t] = run
    return d


def innermost(tokens: np.ndarray) -> np.ndarray:
    """Type (0, 1, 2) of the innermost open bracket after each token, -1 when none
    (``[..., T]``); a closer pops whatever is open, matching or not."""
    toks = np.asarray(tokens)
    flat = toks.reshape(-1, toks.shape[-1])
    out = np.full(flat.shape, -1, dtype=np.int64)
    for r, row in enumerate(flat):
        stack: list[int] = []
        for t, tok in enumerate(row):
            if tok in OPENERS:
                stack.append(OPENERS.index(int(tok)))
            elif tok in CLOSERS and stack:
                stack.pop()
            out[r, t] = stack[-1] if stack else -1
    return out.reshape(toks.shape)


def annotate(tokens: np.ndarray) -> np.ndarray:
    """Concept masks ``[..., len(CONCEPTS), T]`` (bool) of token ids ``[..., T]``."""
    toks = np.asarray(tokens)
    d = depths(toks)
    top = innermost(toks)
    rows = [d == k for k in range(MAX_DEPTH + 1)]
    rows += [d >= k for k in range(1, MAX_DEPTH + 1)]
    rows += [toks == BOS, toks == FILLER, np.isin(toks, OPENERS), np.isin(toks, CLOSERS)]
    rows += [top == k for k in range(len(TYPES))]
    return np.stack(rows, axis=-2)


def closing_targets(tokens: np.ndarray) -> np.ndarray:
    """``[..., T]`` bool: after token ``t`` the depth is ``MAX_DEPTH``, so the language forces
    a closing bracket next (where bracket-closing accuracy is measured; never the last
    position)."""
    toks = np.asarray(tokens)
    out = depths(toks) >= MAX_DEPTH
    out[..., -1] = False
    return out
