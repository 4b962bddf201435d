"""The bundled bracket-completion encoder-decoder: it completes held-out prefixes, its
attention points at the bracket each step closes, and ablating one encoder depth unit changes
its outputs (measured against the plain run)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gandissect.sequence.intervene import span_edit
from gandissect.sequence.seq2seq import encoder_effect, exact_match, trace
from models.sequence.language import VALID_SEED
from models.sequence.seq2seq import ToySeq2Seq, completion_batch, load_toyseq_seq2seq

#: the encoder unit docs/sequence.md reports (c1, labelled depth>=5)
UNIT = 59


@pytest.fixture(scope="module")
def model() -> ToySeq2Seq:
    return load_toyseq_seq2seq()


def test_completes_held_out_prefixes(model: ToySeq2Seq) -> None:
    src, tgt = completion_batch(VALID_SEED, 1000, 200, 24)
    assert float(exact_match(model, src, tgt).float().mean()) >= 0.98


def test_attention_points_at_the_bracket_it_closes(model: ToySeq2Seq) -> None:
    t = trace(model, "^([{x}[", k=3)
    assert t.output == "]])$"
    assert int(np.argmax(t.attention[0])) == 6              # the last '[' is closed first
    assert int(np.argmax(t.attention[2])) == 1              # then the '(' at token 1
    assert [row[0][0] for row in t.top] == list("]])$")
    deep = trace(model, "^(([{[(x")
    assert deep.output == ")]}]))$"
    assert [int(np.argmax(a)) for a in deep.attention[:6]] == [6, 5, 4, 3, 2, 1]
    assert trace(model, "^(([{[(x", edits=[span_edit("c1", [UNIT], 8)]).output == ")}]))$"


def test_an_encoder_unit_changes_the_output(model: ToySeq2Seq) -> None:
    eff = encoder_effect(model, "c1", [UNIT], samples=200, draws=2)
    assert eff.base >= 0.98 and eff.changed >= 0.1 and eff.ablated <= eff.base - 0.1
    src, tgt = completion_batch(1, 0, 200, 24)
    same = exact_match(model, src, tgt, [span_edit("c1", [UNIT], 24)])
    assert float(same.float().mean()) == pytest.approx(eff.ablated)
    with pytest.raises(ValueError, match="has 64 units"):
        encoder_effect(model, "c1", [64], samples=2, draws=0)
    assert torch.is_tensor(same)
