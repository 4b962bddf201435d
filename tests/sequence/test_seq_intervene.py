"""Span interventions act inside the recurrence: nothing changes before the span, the edited
units take the replacement inside it, later steps feel it; closing accuracy against a loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gandissect.common.hooks import Trace
from gandissect.intervention.edit import Edit
from gandissect.sequence.dissect import unit_states
from gandissect.sequence.intervene import (
    ablation_study,
    closing_accuracy,
    edited_logits,
    span_edit,
    step_edit,
)
from gandissect.sequence.probe import SequenceProbe
from models.sequence.language import CLOSERS, MAX_DEPTH, OPENERS
from models.sequence.lstm import ToySeqLSTM


def states(model: ToySeqLSTM, tokens: torch.Tensor, *edits: Edit) -> dict[str, torch.Tensor]:
    fn = step_edit(model, edits, tokens.shape[1]) if edits else None
    with torch.no_grad(), Trace(model, ["h1", "c1"]) as tr:
        model(tokens, fn)
    return {k: tr[k][:, :, 0] for k in ("h1", "c1")}


@pytest.mark.parametrize("layer", ["h1", "c1"])
def test_span_edit_inside_the_recurrence(tiny_lm: ToySeqLSTM, small_probe: SequenceProbe,
                                         layer: str) -> None:
    toks = small_probe.inputs(0, 8)
    plain = states(tiny_lm, toks)
    edited = states(tiny_lm, toks, span_edit(layer, [2, 5], 20, (6, 11)))
    for name in ("h1", "c1"):
        assert torch.equal(edited[name][:, :, :6], plain[name][:, :, :6])   # before: untouched
    assert (edited[layer][:, [2, 5], 6:11] == 0).all()                      # inside: replaced
    assert not torch.equal(edited[layer][:, [2, 5], 6:11], plain[layer][:, [2, 5], 6:11])
    other = [u for u in range(12) if u not in (2, 5)]                       # propagated
    assert (edited["h1"][:, other, 11:] - plain["h1"][:, other, 11:]).abs().max() > 1e-4
    # activation: a replacement value, half-way with alpha 0.5
    half = states(tiny_lm, toks, span_edit(layer, [3], 20, (6, 7), replacement=2.0, alpha=0.5))
    before = states(tiny_lm, toks)[layer][:, 3, 6]
    assert torch.allclose(half[layer][:, 3, 6], before * 0.5 + 1.0, atol=1e-6)


def test_bad_edits_are_refused(tiny_lm: ToySeqLSTM) -> None:
    toks = torch.zeros(1, 20, dtype=torch.long)
    for span in [(5, 5), (-1, 3), (3, 21), (8, 2)]:
        with pytest.raises(ValueError, match="bad span"):
            span_edit("h1", [0], 20, span)
    with pytest.raises(ValueError, match="unknown layer 'h3'; valid layers: h1, c1"):
        edited_logits(tiny_lm, toks, span_edit("h3", [0], 20))
    with pytest.raises(ValueError, match="has 12 units"):
        edited_logits(tiny_lm, toks, span_edit("h1", [12], 20))
    with pytest.raises(ValueError, match=r"needs \[1, 20\]"):
        edited_logits(tiny_lm, toks, span_edit("h1", [0], 10))
    with pytest.raises(TypeError, match="Edit objects"):
        step_edit(tiny_lm, ["h1"], 20)  # type: ignore[list-item]


def test_closing_accuracy_against_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    probe = SequenceProbe(seed=2, size=30, length=64)
    toks = probe.inputs(0, 30)
    logits = torch.randn(30, 64, 8, generator=g)
    logits[:, :-1].scatter_add_(2, toks[:, 1:, None], torch.rand(30, 63, 1, generator=g) * 3)
    right = total = 0
    for n in range(30):
        depth = 0
        for t in range(63):
            tok = int(toks[n, t])
            depth += (tok in OPENERS) - (tok in CLOSERS)
            if depth == MAX_DEPTH:                             # a closer is forced next
                assert int(toks[n, t + 1]) in CLOSERS
                total += 1
                right += int(logits[n, t].argmax()) == int(toks[n, t + 1])
    assert total > 30
    assert closing_accuracy(logits, toks) == pytest.approx(right / total)
    late = torch.zeros(30, 64, dtype=torch.bool)
    late[:, 10:] = True
    assert 0 < closing_accuracy(logits, toks, late) <= 1
    assert np.isnan(closing_accuracy(logits, torch.zeros(30, 64, dtype=torch.long)))


def test_ablation_study_draws_other_units(tiny_lm: ToySeqLSTM,
                                          small_probe: SequenceProbe) -> None:
    toks = small_probe.inputs(0, 20)
    s = ablation_study(tiny_lm, toks, "c1", [0, 1, 2], span=(4, 20), draws=3, seed=5)
    assert s.span == (4, 20) and len(s.random) == 3 and s.units == (0, 1, 2)
    assert all(len(r) == 3 and not set(r) & {0, 1, 2} for r in s.random_units)
    again = ablation_study(tiny_lm, toks, "c1", [0, 1, 2], span=(4, 20), draws=3, seed=5)
    assert again == s
    scored = torch.zeros(toks.shape, dtype=torch.bool)
    scored[:, 4:] = True
    assert s.base == closing_accuracy(edited_logits(tiny_lm, toks), toks, scored)
    assert s.drop == s.base - s.ablated
    assert s.as_dict()["random_drop"] == pytest.approx(s.base - float(np.mean(s.random)))


def test_mean_ablation_sets_each_unit_to_its_mean(tiny_lm: ToySeqLSTM,
                                                  small_probe: SequenceProbe) -> None:
    toks = small_probe.inputs(0, 20)
    means = torch.from_numpy(unit_states(tiny_lm, toks, "h1").mean((0, 2)))
    s = ablation_study(tiny_lm, toks, "h1", [3, 7], draws=2, replacement="mean")
    by_hand = closing_accuracy(edited_logits(tiny_lm, toks, span_edit(
        "h1", [3, 7], 20, None, means[[3, 7]])), toks)
    assert s.ablated == by_hand or (np.isnan(s.ablated) and np.isnan(by_hand))
    inside = states(tiny_lm, toks, span_edit("h1", [3, 7], 20, None, means[[3, 7]]))["h1"]
    assert torch.allclose(inside[:, [3, 7]], means[[3, 7]][None, :, None].expand(20, 2, 20))
    with pytest.raises(ValueError, match="'mean'"):
        ablation_study(tiny_lm, toks, "h1", [3], replacement="median")


def test_excluded_units_stay_out_of_the_random_pool(tiny_lm: ToySeqLSTM,
                                                    small_probe: SequenceProbe) -> None:
    toks = small_probe.inputs(0, 20)
    s = ablation_study(tiny_lm, toks, "c1", [0, 1], draws=8, exclude=[1, 2, 3, 4, 5, 6, 7])
    assert s.excluded == (2, 3, 4, 5, 6, 7)                 # the chosen unit 1 is not repeated
    assert all(set(r) <= {8, 9, 10, 11} and len(r) == 2 for r in s.random_units)
    assert len(set(s.random_units)) > 1
    plain = ablation_study(tiny_lm, toks, "c1", [0, 1], draws=8)
    assert plain.excluded == () and plain.ablated == s.ablated
    d = s.as_dict()
    assert d["excluded"] == (2, 3, 4, 5, 6, 7)
    assert d["random_drop_median"] == pytest.approx(s.base - float(np.median(s.random)))
    assert d["random_drop_sem"] == pytest.approx(float(np.std(s.random, ddof=1) / np.sqrt(8)))
    with pytest.raises(ValueError, match="cannot exclude units \\[12\\]"):
        ablation_study(tiny_lm, toks, "c1", [0], draws=1, exclude=[12])
    with pytest.raises(ValueError, match="only 1 units"):
        ablation_study(tiny_lm, toks, "c1", [0, 1], draws=1, exclude=range(2, 11))
