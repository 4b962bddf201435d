"""dissect(cache_mb=...): pass 1 keeps its batches' activations and segmentations so that
pass 2 does not run the generator and segmenter again; the result is bit-identical to a run
that keeps nothing, with every batch, some batches or none cached, and through extra pass-1
rounds."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import TinyGenerator, TinySegmenter, assert_identical, check_against_brute_force

from gandissect.dissection.engine import dissect

torch.set_num_threads(1)

KW: dict[str, Any] = dict(samples=60, seed=6, batch_size=16)


def _counted(gen: TinyGenerator, **kw: Any) -> tuple[dict[str, Any], int]:
    """A dissection of layers a and b, and how many forward passes the generator began."""
    calls = 0

    def hook(*_: Any) -> None:
        nonlocal calls
        calls += 1
    handle = gen.register_forward_pre_hook(hook)
    try:
        return dissect(gen, TinySegmenter(), ["a", "b"], **KW, **kw), calls
    finally:
        handle.remove()


@pytest.mark.parametrize("threshold", ["quantile", "iqr"])
def test_cached_runs_equal_a_run_that_keeps_nothing(threshold: str) -> None:
    gen = TinyGenerator()
    plain, n_plain = _counted(gen, threshold=threshold, cache_mb=0)
    full, n_full = _counted(gen, threshold=threshold)                  # default: all 4 batches
    part, n_part = _counted(gen, threshold=threshold, cache_mb=0.2)    # about 2 of 4 batches
    assert_identical(plain, full)
    assert_identical(plain, part)
    # a shape probe and pass 1's 4 batches; later pass-1 rounds and pass 2 read the cache
    assert n_full == 1 + 4 and n_full < n_part < n_plain
    if threshold == "quantile":
        check_against_brute_force(gen, TinySegmenter(), "b", full["b"], 60, 6)


def test_extra_pass1_rounds_read_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = importlib.import_module("gandissect.dissection.engine")
    gen = TinyGenerator()
    plain, plain_calls = _counted(gen, cache_mb=0)
    monkeypatch.setattr(mod, "FIRST_GUESS_FACTOR", 0.05)    # guesses too high: a second round
    monkeypatch.setattr(mod, "GUESS_FACTOR", 0.05)
    redo, _ = _counted(gen, cache_mb=0)
    cached, calls = _counted(gen)
    assert_identical(plain, redo)
    assert_identical(plain, cached)
    assert calls == 1 + 4 < plain_calls    # neither the second round nor pass 2 ran the model


def test_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="cache_mb must be >= 0"):
        dissect(TinyGenerator(), TinySegmenter(), "b", cache_mb=-1, **KW)


def test_cli_cache_mb(tmp_path: Path) -> None:
    from gandissect.cli import main
    from gandissect.dissection.results import load_results

    base = ["dissect", "--model", "planted", "--segmenter", "planted", "--layer", "layout",
            "--samples", "16", "--batch-size", "8", "--no-report", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "kept")]) == 0
    assert main([*base, "--cache-mb", "0", "--out", str(tmp_path / "none")]) == 0
    assert_identical(load_results(tmp_path / "kept"), load_results(tmp_path / "none"))
