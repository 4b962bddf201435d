"""A small LSTM language model for the bracket language, with every hidden and cell state
exposed as a 1 x T "feature map" so that the image dissection engine reads it unchanged.

Layers (for ``layers = L``): ``h1 .. hL`` (hidden states) and ``c1 .. cL`` (cell states), each a
hookable identity module whose output is ``[n, units, 1, T]``: unit ``u`` at token ``t`` is
pixel ``(0, t)``. The recurrence runs step by step in Python (the math of
:class:`torch.nn.LSTMCell`), so ``step_edit(layer, t, state)`` can change a state *inside* the
recurrence (the change reaches every later step); the views only record the states after the
loop, and what a forward hook returns for ``hL`` is what the output head reads.

>>> m = ToySeqLSTM(hidden=8)
>>> logits = m(torch.zeros(2, 5, dtype=torch.long))
>>> tuple(logits.shape), m.layer_names
((2, 5, 8), ['h1', 'c1'])
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
from torch import nn

from ..base import check_device, weights_path
from ..safe_load import load_checkpoint, load_into
from .language import TOKENS

#: ``step_edit(layer, t, state [n, units]) -> state``: called for every state at every step.
StepEdit = Callable[[str, int, torch.Tensor], torch.Tensor]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
WEIGHTS_FILE = "toyseq_lstm.safetensors"


class LSTMStack(nn.Module):
    """Embedding and ``layers`` LSTM layers, run step by step; states recorded as views.

    ``forward(tokens [n, T], step_edit=None)`` returns the top layer's hidden states
    ``[n, T, hidden]`` (after its view, so a forward hook's edit there is what comes out) and,
    for every layer name, the view outputs ``[n, hidden, 1, T]``.
    """

    def __init__(self, vocab: int, embed: int, hidden: int, layers: int) -> None:
        super().__init__()
        if min(vocab, embed, hidden, layers) < 1:
            raise ValueError("vocab, embed, hidden and layers must all be >= 1")
        self.hidden = hidden
        self.embed = nn.Embedding(vocab, embed)
        self.cells = nn.ModuleList(nn.LSTMCell(embed if i == 0 else hidden, hidden)
                                   for i in range(layers))
        self.views = nn.ModuleDict({f"{k}{i + 1}": nn.Identity() for i in range(layers)
                                    for k in ("h", "c")})

    def _cells(self) -> list[nn.LSTMCell]:
        return [cast(nn.LSTMCell, c) for c in self.cells]

    @property
    def layer_names(self) -> list[str]:
        return list(self.views)

    def layer(self, name: str) -> nn.Module:
        """The view module of state ``name``; an unknown name lists the valid ones."""
        if name not in self.views:
            raise ValueError(f"unknown layer {name!r}; valid layers: {', '.join(self.views)}")
        return self.views[name]

    def forward(self, tokens: torch.Tensor, step_edit: StepEdit | None = None
                ) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be int64 [n, T], got {tokens.dtype} "
                             f"{list(tokens.shape)}")
        x = self.embed(tokens)                                         # [n, T, E]
        n, T = tokens.shape
        for i, cell in enumerate(self._cells()):
            hname, cname = f"h{i + 1}", f"c{i + 1}"
            gx = x @ cell.weight_ih.t() + (cell.bias_ih + cell.bias_hh)     # [n, T, 4H]
            h = x.new_zeros(n, self.hidden)
            c = x.new_zeros(n, self.hidden)
            hs, cs = [], []
            for t in range(T):
                gi, gf, gg, go = (gx[:, t] + h @ cell.weight_hh.t()).chunk(4, dim=1)
                c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
                if step_edit is not None:
                    c = step_edit(cname, t, c)
                h = torch.sigmoid(go) * torch.tanh(c)
                if step_edit is not None:
                    h = step_edit(hname, t, h)
                hs.append(h)
                cs.append(c)
            self.views[cname](torch.stack(cs, 2)[:, :, None])
            x = self.views[hname](torch.stack(hs, 2)[:, :, None])[:, :, 0].transpose(1, 2)
        return x

    def fused(self, tokens: torch.Tensor, keep: list[torch.Tensor] | None = None
              ) -> torch.Tensor:
        """The top layer's hidden states ``[n, T, hidden]`` by PyTorch's fused LSTM kernel: the
        same function as :meth:`forward` (to float rounding), several times faster to train,
        but no views, hooks or ``step_edit``. ``keep[i]`` (``[hidden]``) multiplies layer
        ``i``'s hidden state wherever it is read (recurrence, next layer, output): 0 there is
        the whole-sequence ablation of that unit, so random ``keep`` masks train the model
        to survive it (unit dropout)."""
        x = self.embed(tokens)
        zero = x.new_zeros(1, tokens.shape[0], self.hidden)
        for i, cell in enumerate(self._cells()):
            w_hh = cell.weight_hh if keep is None else cell.weight_hh * keep[i][None, :]
            params = [cell.weight_ih, w_hh, cell.bias_ih, cell.bias_hh]
            x = torch.lstm(x, (zero, zero), params, True, 1, 0.0, self.training, False,
                           True)[0]
            if keep is not None:
                x = x * keep[i]
        return x


class ToySeqLSTM(nn.Module):
    """Next-token model: ``forward(tokens [n, T]) -> logits [n, T, vocab]`` (logits at ``t``
    predict token ``t + 1``). See the module docstring for layers and ``step_edit``."""

    def __init__(self, vocab: int = len(TOKENS), embed: int = 16, hidden: int = 64,
                 layers: int = 1) -> None:
        super().__init__()
        self.config = {"vocab": vocab, "embed": embed, "hidden": hidden, "layers": layers}
        self.rnn = LSTMStack(vocab, embed, hidden, layers)
        self.head = nn.Linear(hidden, vocab)

    @property
    def layer_names(self) -> list[str]:
        return self.rnn.layer_names

    def layer(self, name: str) -> nn.Module:
        return self.rnn.layer(name)

    def forward(self, tokens: torch.Tensor, step_edit: StepEdit | None = None
                ) -> torch.Tensor:
        return self.head(self.rnn(tokens, step_edit))

    def fused(self, tokens: torch.Tensor, keep: list[torch.Tensor] | None = None
              ) -> torch.Tensor:
        """Logits by the fused kernel (for training; see :meth:`LSTMStack.fused`)."""
        return self.head(self.rnn.fused(tokens, keep))


def load_toyseq_lstm(path: str | Path | None = None, device: str = "cpu",
                     weights: str | Path | None = None) -> ToySeqLSTM:
    """The bundled LSTM (``models/weights/toyseq_lstm.safetensors``, or another file or folder
    of the same architecture), float32, in eval mode on ``device``; keys and shapes are checked."""
    dev = check_device(device)
    file = weights_path(weights, path, WEIGHTS_DIR / WEIGHTS_FILE)
    state = load_checkpoint(file)
    hidden = int(state["head.weight"].shape[1]) if "head.weight" in state else 64
    layers = len({k.split(".")[2] for k in state if k.startswith("rnn.cells.")}) or 1
    net = ToySeqLSTM(hidden=hidden, layers=layers)
    load_into(net, state, "the toy-sequence LSTM", path=file,
              hint="retrain it with `python -m models.sequence.train lstm --export`")
    return net.to(dev).eval()


__all__ = ["LSTMStack", "StepEdit", "ToySeqLSTM", "load_toyseq_lstm"]
