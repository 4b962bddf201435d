"""Sequence dissection is the image engine on 1 x T maps: its counts equal a direct numpy
computation over token positions, it resumes bit-identically, and bad input is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import Interrupt, assert_identical

from gandissect.dissection.probe import ProbeModel, is_probe
from gandissect.sequence.dissect import (
    category_units,
    concept_units,
    dissect_sequences,
    unit_states,
)
from gandissect.sequence.probe import SequenceProbe
from models.sequence.lstm import ToySeqLSTM


def test_probe_contract(small_probe: SequenceProbe) -> None:
    assert is_probe(small_probe)
    x, m = small_probe.inputs(3, 4), small_probe.masks(3, 4)
    assert x.dtype == torch.long and tuple(x.shape) == (4, 20)
    assert m.dtype == torch.bool and tuple(m.shape) == (4, len(small_probe.labels), 1, 20)
    assert torch.equal(small_probe.inputs(5, 1)[0], x[2])
    with pytest.raises(IndexError):
        small_probe.inputs(58, 3)
    with pytest.raises(TypeError):
        small_probe.masks(1.5, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SequenceProbe(size=0)


def test_probe_model_feeds_tokens(tiny_lm: ToySeqLSTM, small_probe: SequenceProbe) -> None:
    pm = ProbeModel(tiny_lm, small_probe)
    out = pm(torch.tensor([4, 5]))
    assert torch.allclose(out, tiny_lm(small_probe.inputs(4, 2)))
    shuffled = pm(torch.tensor([5, 4]))                      # not consecutive: read one by one
    assert torch.allclose(shuffled[0], out[1])


@pytest.mark.parametrize("layer", ["h1", "c1"])
def test_iou_equals_numpy_over_tokens(tiny_lm: ToySeqLSTM, small_probe: SequenceProbe,
                                      layer: str) -> None:
    q = 0.1
    r = dissect_sequences(tiny_lm, small_probe, layer, quantile=q, batch_size=16)[layer]
    states = unit_states(tiny_lm, small_probe.inputs(0, 60), layer)          # [n, U, T]
    ann = small_probe.masks(0, 60)[:, :, 0].numpy()                           # [n, C, T]
    assert r.meta["layer_shape"] == [12, 1, 20] and r.meta["seg_shape"] == [1, 20]
    on = states > r.thresholds[None, :, None]                                 # engine's t_u
    inter = np.einsum("nut,nct->uc", on.astype(np.int64), ann.astype(np.int64))
    above = on.sum((0, 2))
    concept = ann.sum((0, 2))
    assert np.array_equal(r.intersection, inter)
    assert np.array_equal(r.above, above) and np.array_equal(r.concept_pixels, concept)
    iou = inter / np.maximum(above[:, None] + concept[None] - inter, 1)
    assert np.allclose(r.iou, iou, atol=1e-12)
    assert np.abs(above / on[:, 0].size - q).max() <= r.rank_error.max() + 1e-9
    # t_u is a top-q level: at most q (+ the bound on ties) of the tokens lie above it, and
    # at least q lie at or above it (discrete tokens repeat states, so ties are common)
    at_or_above = (states >= r.thresholds[None, :, None]).mean((0, 2))
    assert (at_or_above >= q - r.rank_error - 1e-9).all()
    assert r.iou.max() > 0.2


def test_resume_after_a_kill_is_identical(tiny_lm: ToySeqLSTM, small_probe: SequenceProbe,
                                          tmp_path: Path) -> None:
    whole = dissect_sequences(tiny_lm, small_probe, ["h1", "c1"], batch_size=16)

    def kill(phase: int, done: int) -> None:
        if phase == 2 and done >= 32:
            raise Interrupt

    with pytest.raises(Interrupt):
        dissect_sequences(tiny_lm, small_probe, ["h1", "c1"], batch_size=16, out=tmp_path,
                          on_batch=kill, checkpoint_seconds=0)
    assert (tmp_path / "state.safetensors").exists()
    resumed = dissect_sequences(tiny_lm, small_probe, ["h1", "c1"], batch_size=16,
                                out=tmp_path)
    assert_identical(whole, resumed)


def test_bad_input_is_refused(tiny_lm: ToySeqLSTM, small_probe: SequenceProbe) -> None:
    with pytest.raises(ValueError, match="valid layers: h1, c1"):
        dissect_sequences(tiny_lm, small_probe, "h2")
    with pytest.raises(ValueError, match="valid layers"):
        unit_states(tiny_lm, small_probe.inputs(0, 2), "lstm")
    r = dissect_sequences(tiny_lm, small_probe, "h1", batch_size=30)["h1"]
    with pytest.raises(ValueError, match="unknown concepts"):
        concept_units(r, ["depth>=9"])
    best = concept_units(r, r.labels)
    assert best[0] == int(np.argmax(r.best_iou)) and len(best) == r.units


def test_category_units_by_brute_force(tiny_lm: ToySeqLSTM, small_probe: SequenceProbe) -> None:
    r = dissect_sequences(tiny_lm, small_probe, "c1", batch_size=30)["c1"]
    for cats in (["depth"], ["token", "stack"], sorted(set(r.categories))):
        want = [u for u in range(r.units) if r.best_iou[u] > r.iou_threshold
                and r.categories[int(np.argmax(r.iou[u]))] in cats]
        assert category_units(r, cats) == want
    assert category_units(r, sorted(set(r.categories))) == \
        [u for u in range(r.units) if r.interpretable[u]]
    with pytest.raises(ValueError, match="unknown categories.*categories: depth"):
        category_units(r, ["colour"])
