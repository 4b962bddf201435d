"""The causal table's verdict rule (benchmarks/causal_table.py): it can fail when random units
remove nothing (no more automatic pass through an infinite ratio), and the best ranking is
chosen on the ranking samples, never on the evaluation samples."""

from __future__ import annotations

import math
from types import ModuleType

from tiny import load_benchmark


def _bench() -> ModuleType:
    return load_benchmark("causal_table")


def _row(ranking: str, removal: float, ci: tuple[float, float], draws: list[float],
         select: float) -> dict:
    rmean = sum(draws) / len(draws)
    return {"layer": "layer4", "concept": "tree", "ranking": ranking, "k": 20,
            "relative_removal": removal, "ci95": list(ci), "random_removal": rmean,
            "random_removal_draws": draws, "ratio": removal / rmean if rmean > 0 else math.inf,
            "select_removal": select}


def test_random_at_or_below_zero_no_longer_passes_automatically() -> None:
    ct = _bench()
    # >= 50% and an infinite ratio: the old rule said yes; the CIs overlap, so the new one fails
    wide = _row("ace", 0.5, (0.05, 0.95), [-0.1, 0.05, 0.02], select=0.5)
    assert math.isinf(wide["ratio"]) and not ct.passes(wide)
    # clearly separated and >= 40 points above random: passes
    assert ct.passes(_row("ace", 0.6, (0.5, 0.7), [-0.02, 0.01, 0.0], select=0.6))
    # separated CIs but only 30 points above random: fails
    assert not ct.passes(_row("ace", 0.35, (0.3, 0.4), [0.05, 0.04, 0.06], select=0.35))
    lo, hi = ct.random_ci([0.0, 0.1, 0.2])
    assert lo < 0.1 < hi and abs((lo + hi) / 2 - 0.1) < 1e-12


def test_best_ranking_is_chosen_on_the_ranking_samples() -> None:
    ct = _bench()
    draws = [0.0, 0.01, -0.01]
    rows = [_row("iou", 0.9, (0.85, 0.95), draws, select=0.2),      # best on evaluation ...
            _row("ace", 0.55, (0.5, 0.6), draws, select=0.4)]       # ... but ace wins on ranking
    (v,) = ct.verdicts(rows)
    assert v["ranking"] == "ace" and v["pass"]
    assert len(v["random_ci95"]) == 2
