"""A tiny attention encoder-decoder for bracket completion: read a prefix of the bracket
language, write the closers of every bracket still open (innermost first), then ``$``.

The encoder is an :class:`~models.sequence.lstm.LSTMStack` (layers ``h1``, ``c1``: ``[n,
units, 1, T]`` views, and ``step_edit`` inside its recurrence); the decoder an LSTM cell with
dot-product attention over the encoder's hidden states (Luong's "general" score), started
from the encoder's last state. ``greedy`` returns the tokens, the attention and the
probabilities of every decoder step.

>>> src, tgt = completion_batch(0, 0, 2, 10)
>>> m = ToySeq2Seq(hidden=8)
>>> out = m.greedy(src, tgt.shape[1] - 1)
>>> tuple(out.tokens.shape), tuple(out.attention.shape), tuple(out.probs.shape)
((2, 7), (2, 7, 10), (2, 7, 5))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..base import check_device, weights_path
from ..safe_load import load_checkpoint, load_into
from .language import CLOSERS, MAX_DEPTH, TOKENS, batch, decode
from .lstm import WEIGHTS_DIR, LSTMStack, StepEdit

#: Decoder vocabulary: start, the three closers, end.
TARGET_TOKENS: tuple[str, ...] = ("^", ")", "]", "}", "$")
TGT_BOS, TGT_EOS = 0, 4
WEIGHTS_FILE = "toyseq_seq2seq.safetensors"


def completion(tokens: np.ndarray) -> list[int]:
    """Decoder-vocabulary ids of the closers that complete ``tokens`` (innermost first)."""
    stack: list[int] = []
    for tok in np.asarray(tokens).tolist():
        text = TOKENS[tok]
        if text in "([{":
            stack.append("([{".index(text))
        elif text in ")]}" and stack:
            stack.pop()
    return [1 + k for k in reversed(stack)]


def completion_batch(seed: int, start: int, n: int, length: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources ``[n, length]`` (language sequences ``start ..`` of ``seed``) and targets
    ``[n, MAX_DEPTH + 2]``: start, the completion, then ``$`` to the end."""
    src = batch(seed, start, n, length)
    tgt = np.full((n, MAX_DEPTH + 2), TGT_EOS, dtype=np.int64)
    tgt[:, 0] = TGT_BOS
    for i, row in enumerate(src):
        c = completion(row)
        tgt[i, 1:1 + len(c)] = c
    return torch.from_numpy(src), torch.from_numpy(tgt)


def target_text(ids: torch.Tensor | list[int]) -> str:
    """The text of decoder ids, up to and including the first ``$``."""
    out = ""
    for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
        out += TARGET_TOKENS[int(i)]
        if int(i) == TGT_EOS:
            break
    return out


@dataclass
class Decoded:
    """Greedy decoding: ``tokens [n, S]``, ``attention [n, S, T]`` (each step's weights over the
    source), ``probs [n, S, V]`` (each step's distribution over :data:`TARGET_TOKENS`)."""

    tokens: torch.Tensor
    attention: torch.Tensor
    probs: torch.Tensor


class ToySeq2Seq(nn.Module):
    """Encoder-decoder with attention; ``forward(src, tgt_in)`` (teacher forcing) returns
    logits ``[n, S, V]`` and attention ``[n, S, T]``."""

    def __init__(self, hidden: int = 64, embed: int = 16) -> None:
        super().__init__()
        self.encoder = LSTMStack(len(TOKENS), embed, hidden, 1)
        self.tgt_embed = nn.Embedding(len(TARGET_TOKENS), embed)
        self.decoder = nn.LSTMCell(embed, hidden)
        self.score = nn.Linear(hidden, hidden, bias=False)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, len(TARGET_TOKENS))

    @property
    def layer_names(self) -> list[str]:
        """The encoder's states (``h1``, ``c1``)."""
        return self.encoder.layer_names

    def layer(self, name: str) -> nn.Module:
        return self.encoder.layer(name)

    def encode(self, src: torch.Tensor, step_edit: StepEdit | None = None, fused: bool = False
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Encoder states ``[n, T, H]`` and the decoder's start state (the last one);
        ``fused`` runs the encoder by the fused kernel (training)."""
        enc = self.encoder.fused(src) if fused else self.encoder(src, step_edit)
        return enc, (enc[:, -1], enc.new_zeros(enc.shape[0], enc.shape[2]))

    def step(self, enc: torch.Tensor, y: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One decoder step from previous tokens ``y [n]``: logits, attention, new state."""
        h, c = self.decoder(self.tgt_embed(y), state)
        att = torch.softmax(torch.einsum("nth,nh->nt", enc, self.score(h)), dim=1)
        ctx = torch.einsum("nt,nth->nh", att, enc)
        logits = self.out(torch.tanh(self.combine(torch.cat([h, ctx], 1))))
        return logits, att, (h, c)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor | None = None,
                step_edit: StepEdit | None = None, fused: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Without ``tgt_in``, one step from the start token (what a dissection of the
        encoder runs: ``model(src)``)."""
        if tgt_in is None:
            tgt_in = torch.full((src.shape[0], 1), TGT_BOS, dtype=torch.long,
                                device=src.device)
        enc, state = self.encode(src, step_edit, fused)
        logits, atts = [], []
        for s in range(tgt_in.shape[1]):
            lg, att, state = self.step(enc, tgt_in[:, s], state)
            logits.append(lg)
            atts.append(att)
        return torch.stack(logits, 1), torch.stack(atts, 1)

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, steps: int, step_edit: StepEdit | None = None
               ) -> Decoded:
        """Greedy decoding for ``steps`` steps (after ``$`` the model keeps writing ``$``)."""
        enc, state = self.encode(src, step_edit)
        y = torch.full((src.shape[0],), TGT_BOS, dtype=torch.long)
        toks, atts, probs = [], [], []
        for _ in range(steps):
            lg, att, state = self.step(enc, y, state)
            p = torch.softmax(lg, 1)
            y = p.argmax(1)
            toks.append(y)
            atts.append(att)
            probs.append(p)
        return Decoded(torch.stack(toks, 1), torch.stack(atts, 1), torch.stack(probs, 1))


def load_toyseq_seq2seq(path: str | Path | None = None, device: str = "cpu",
                        weights: str | Path | None = None) -> ToySeq2Seq:
    """The bundled encoder-decoder (``models/weights/toyseq_seq2seq.safetensors`` or another
    file or folder of the same architecture), in eval mode on ``device``."""
    dev = check_device(device)
    file = weights_path(weights, path, WEIGHTS_DIR / WEIGHTS_FILE)
    state = load_checkpoint(file)
    hidden = int(state["out.weight"].shape[1]) if "out.weight" in state else 64
    net = ToySeq2Seq(hidden=hidden)
    load_into(net, state, "the toy-sequence encoder-decoder", path=file,
              hint="retrain it with `python -m models.sequence.train seq2seq --export`")
    return net.to(dev).eval()


__all__ = ["CLOSERS", "Decoded", "TARGET_TOKENS", "ToySeq2Seq", "completion",
           "completion_batch", "decode", "load_toyseq_seq2seq", "target_text"]
