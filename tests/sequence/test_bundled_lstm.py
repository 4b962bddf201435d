"""The bundled LSTM on held-out sequences (a smaller sample than docs/sequence.md): it closes
every forced bracket, dissection finds its depth units with IoU >= 0.5, and mean-ablating them
breaks bracket closing far more than as many random units do; random units without a depth
label cost at most 5 points on the mean."""

from __future__ import annotations

import numpy as np
import pytest

from gandissect.sequence.dissect import category_units, concept_units, dissect_sequences
from gandissect.sequence.intervene import ablation_study, closing_accuracy, edited_logits
from gandissect.sequence.probe import SequenceProbe
from models.sequence.language import VALID_SEED
from models.sequence.lstm import ToySeqLSTM, load_toyseq_lstm

#: the units docs/sequence.md reports for c1 (IoU >= 0.5 with a depth concept)
DEPTH_UNITS = [9, 22, 5]


@pytest.fixture(scope="module")
def lm() -> ToySeqLSTM:
    return load_toyseq_lstm()


def test_closes_every_forced_bracket(lm: ToySeqLSTM) -> None:
    toks = SequenceProbe(seed=VALID_SEED, size=150).inputs(0, 150)
    assert closing_accuracy(edited_logits(lm, toks), toks) >= 0.99


def test_depth_units_found_and_causal(lm: ToySeqLSTM) -> None:
    probe = SequenceProbe(size=300)
    r = dissect_sequences(lm, probe, "c1")["c1"]
    depth = [c for c, cat in zip(r.labels, r.categories, strict=True) if cat == "depth"]
    found = concept_units(r, depth, min_iou=0.5)
    assert found == DEPTH_UNITS
    assert {r.unit_labels[u] for u in found} <= {"depth=0", "depth>=5"}
    toks = probe.inputs(0, 150)
    s = ablation_study(lm, toks, "c1", found, draws=6, replacement="mean")
    assert s.base >= 0.99 and s.drop >= 0.5
    assert float(np.median(s.random)) >= s.base - 0.05
    # random units that do not track depth (no depth label): <= 5 points on the mean
    pool = ablation_study(lm, toks, "c1", found, draws=6, replacement="mean",
                          exclude=category_units(r, ["depth"]))
    assert pool.ablated == s.ablated and pool.random_drop <= 0.05
    assert not {u for us in pool.random_units for u in us} & set(category_units(r, ["depth"]))
