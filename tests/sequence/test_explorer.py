"""The page's logic without a browser: states per text, selection = match.py on the stored
states, unit labels from the dissection, figures, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gandissect.sequence.dissect import dissect_sequences, unit_states
from gandissect.sequence.explorer import (
    SequenceExplorer,
    attention_figure,
    parse_units,
    topk_html,
)
from gandissect.sequence.match import find_matches, select_units
from gandissect.sequence.probe import SequenceProbe
from gandissect.sequence.seq2seq import trace
from models.sequence.language import encode
from models.sequence.lstm import ToySeqLSTM
from models.sequence.seq2seq import ToySeq2Seq


@pytest.fixture(scope="module")
def ex(tiny_lm: ToySeqLSTM, small_probe: SequenceProbe) -> SequenceExplorer:
    res = dissect_sequences(tiny_lm, small_probe, ["c1"], batch_size=30)
    return SequenceExplorer(tiny_lm, small_probe, ["c1", "h1"], 40, res)


def test_selection_is_match_on_the_stored_states(ex: SequenceExplorer) -> None:
    states = ex.states["c1"]
    assert states.shape == (40, 12, 20)
    found = ex.select("c1", (3, 5), 0.0, sample=2, limit=7)
    units = select_units(states[2], (3, 5), 0.0)
    every = find_matches(states, units, 0.0, target_length=2)
    assert found["units"] == units and found["total"] == len(every)
    assert [(m.sample, m.start) for m in found["matches"]] == \
        [(m.sample, m.start) for m in every[:7]]
    prec = list(found["precision"].values())
    assert prec == sorted(prec, reverse=True) and all(0 <= p <= 1 for p in prec)
    assert "<mark>" in ex.matches_html(found["matches"]) or not found["matches"]


def test_own_text_and_labels(ex: SequenceExplorer, tiny_lm: ToySeqLSTM) -> None:
    text, states = ex.text_states("h1", text="^(([]")
    ref = unit_states(tiny_lm, torch.from_numpy(encode("^(([]"))[None], "h1")[0]
    assert text == "^(([]" and np.array_equal(states, ref)
    r = ex.results["c1"]
    assert ex.unit_label("c1", 4) == (f"unit 4 of c1: {r.unit_labels[4]} (IoU "
                                      f"{r.best_iou[4]:.3f}, threshold "
                                      f"{r.unit_threshold(4):.3f}, q = 0.1)")
    assert "no dissection" in ex.unit_label("h1", 0)
    strip = ex.tokens_html("^(x)", (1, 3))
    assert strip.count("class='lv-tok") == 4 and strip.count("lv-in") == 2
    img = ex.trace_figure("c1", [1, 2], sample=0, span=(2, 4), threshold=0.1)
    assert img.ndim == 3 and img.shape[2] == 3 and img.shape[1] > 300


def test_errors(ex: SequenceExplorer) -> None:
    with pytest.raises(ValueError, match="unknown layer 'x'; layers: c1, h1"):
        ex.select("x", (0, 2), 0.0)
    with pytest.raises(ValueError, match="unknown unit 12"):
        ex.unit_label("c1", 12)
    with pytest.raises(ValueError, match="not in the data set"):
        ex.text_states("c1", sample=40)
    with pytest.raises(ValueError, match="starts with"):
        ex.text_states("c1", text="(()")
    with pytest.raises(ValueError, match="bad span"):
        ex.select("c1", (5, 30), 0.0)
    assert parse_units("3, 1 3", 5) == [3, 1]
    with pytest.raises(ValueError, match=r"unknown units \[7\]"):
        parse_units("7", 5)
    with pytest.raises(ValueError, match="integers"):
        parse_units("a", 5)


def test_seq2seq_trace_and_figures() -> None:
    torch.manual_seed(0)
    model = ToySeq2Seq(hidden=8).eval()
    t = trace(model, "^([x", k=2)
    assert t.attention.shape == (len(t.output), 4)
    assert np.allclose(t.attention.sum(1), 1, atol=1e-5)
    assert all(len(row) == 2 and row[0][1] >= row[1][1] for row in t.top)
    assert attention_figure(t.source, t.output, t.attention).shape[2] == 3
    assert topk_html(t.output, t.top).count("<tr>") == len(t.output) + 1
    with pytest.raises(ValueError, match="starts with"):
        trace(model, "([")
    with pytest.raises(ValueError, match="k must be"):
        trace(model, "^(", k=9)
