"""Seq2Seq-Vis minimum for the bracket-completion encoder-decoder: per decoder step the
attention over the source and the top-k predictions, and interventions on encoder units
(over a token span, inside the encoder's recurrence) with their measured effect on the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.sequence.language import encode
from models.sequence.seq2seq import TARGET_TOKENS, ToySeq2Seq, completion_batch, target_text

from ..intervention.causal import random_units
from ..intervention.edit import Edit
from .intervene import span_edit, step_edit


@dataclass
class Seq2SeqTrace:
    """One decoding: ``source`` text, ``output`` text (through ``$``), ``attention [S, T]``
    (rows: the steps shown, through ``$``), and per step the ``top`` k (token, probability)."""

    source: str
    output: str
    attention: np.ndarray
    top: list[list[tuple[str, float]]] = field(default_factory=list)


def trace(model: ToySeq2Seq, text: str, k: int = 3, edits: Sequence[Edit] = ()
          ) -> Seq2SeqTrace:
    """Decode the completion of ``text`` (starts with ``^``; other characters than the
    language's tokens raise a ValueError), optionally with ``edits`` on encoder states."""
    if not text.startswith("^"):
        raise ValueError(f"a source starts with '^', got {text[:10]!r}")
    if not 1 <= k <= len(TARGET_TOKENS):
        raise ValueError(f"k must be 1..{len(TARGET_TOKENS)}, got {k}")
    src = torch.from_numpy(encode(text))[None]
    fn = step_edit(model, edits, src.shape[1]) if edits else None
    out = model.greedy(src, len(TARGET_TOKENS) + 10, fn)
    output = target_text(out.tokens[0])
    steps = len(output)
    top = []
    for s in range(steps):
        p, i = out.probs[0, s].topk(k)
        top.append([(TARGET_TOKENS[int(j)], float(q)) for q, j in zip(p, i, strict=True)])
    return Seq2SeqTrace(text, output, out.attention[0, :steps].numpy(), top)


@torch.no_grad()
def exact_match(model: ToySeq2Seq, src: torch.Tensor, tgt: torch.Tensor,
                edits: Sequence[Edit] = ()) -> torch.Tensor:
    """Per sample, whether the greedy completion equals the target (bool ``[n]``)."""
    fn = step_edit(model, edits, src.shape[1]) if edits else None
    out = model.greedy(src, tgt.shape[1] - 1, fn).tokens
    return (out == tgt[:, 1:]).all(1)


@dataclass(frozen=True)
class EncoderEffect:
    """Exact-match accuracy of completions: ``base``, with ``units`` of encoder ``layer``
    ablated over every source token (``ablated``), and with as many random units (``random``,
    one per draw); ``changed``: fraction of outputs the ablation changed."""

    layer: str
    units: tuple[int, ...]
    base: float
    ablated: float
    changed: float
    random: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "units": list(self.units), "base": self.base,
                "ablated": self.ablated, "changed": self.changed, "random": list(self.random),
                "random_mean": float(np.mean(self.random)) if self.random else None}


@torch.no_grad()
def encoder_effect(model: ToySeq2Seq, layer: str, units: Sequence[int], samples: int = 500,
                   seed: int = 1, length: int = 24, draws: int = 10,
                   draw_seed: int = 0) -> EncoderEffect:
    """Ablate ``units`` of encoder ``layer`` (``h1`` / ``c1``) on completions of ``samples``
    sequences of ``seed``; see :class:`EncoderEffect`."""
    src, tgt = completion_batch(seed, 0, samples, length)
    units = tuple(int(u) for u in units)
    base_out = model.greedy(src, tgt.shape[1] - 1).tokens
    edit = span_edit(layer, units, length)
    abl_out = model.greedy(src, tgt.shape[1] - 1, step_edit(model, [edit], length)).tokens
    width = model.encoder.hidden
    rand = tuple(float(exact_match(model, src, tgt, [span_edit(
        layer, random_units(width, len(units), units, draw_seed + d), length)]).float().mean())
        for d in range(draws))
    return EncoderEffect(
        layer, units, float((base_out == tgt[:, 1:]).all(1).float().mean()),
        float((abl_out == tgt[:, 1:]).all(1).float().mean()),
        float((abl_out != base_out).any(1).float().mean()), rand)


__all__ = ["EncoderEffect", "Seq2SeqTrace", "encoder_effect", "exact_match", "trace"]
