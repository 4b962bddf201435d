"""Interventions on a sequence model's states over a token span, inside the recurrence.

An intervention is an ordinary :class:`~gandissect.intervention.edit.Edit` on a ``1 x T``
layer: its mask ``[1, T]`` (or ``[n, 1, T]``) marks the token span, and the rule is the image
one, ``A' = A (1 - alpha m) + r alpha m``. :func:`step_edit` applies it at every step of the
recurrence (state ``t`` edited before step ``t + 1`` reads it), so the change propagates, which
hooking the recorded states after the loop would not do.

Bracket-closing accuracy: over the positions where the language forces a closing bracket next
(depth ``MAX_DEPTH``), the fraction where the model's most likely next token is that bracket
(an ideal model scores 1; see :mod:`models.sequence.language`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.sequence.language import closing_targets
from models.sequence.lstm import StepEdit

from ..intervention.causal import random_units
from ..intervention.edit import Coefficient, Edit
from .dissect import unit_states


def check_span(span: tuple[int, int] | None, length: int) -> tuple[int, int]:
    """``span`` (``None``: every token) as ``(start, stop)`` with ``0 <= start < stop <=
    length``; anything else raises a ValueError."""
    if span is None:
        return 0, length
    a, b = (int(v) for v in span)
    if not 0 <= a < b <= length:
        raise ValueError(f"bad span {tuple(span)}: need 0 <= start < stop <= {length} "
                         "(token positions, stop exclusive)")
    return a, b


def span_edit(layer: str, units: Sequence[int], length: int,
              span: tuple[int, int] | None = None, replacement: Coefficient = 0.0,
              alpha: Coefficient = 1.0) -> Edit:
    """An :class:`Edit` of ``units`` of ``layer`` on tokens ``span`` of sequences of
    ``length`` (``replacement`` 0 ablates; a high value activates)."""
    a, b = check_span(span, length)
    mask = torch.zeros(1, length)
    mask[0, a:b] = 1.0
    return Edit(layer, tuple(units), alpha=alpha, replacement=replacement, mask=mask)


def step_edit(model: nn.Module, edits: Sequence[Edit], length: int) -> StepEdit:
    """The model's ``step_edit`` applying ``edits`` at each step of sequences of ``length``.
    Layers are checked now (a wrong name lists the valid ones) and so are unit indices and
    mask lengths; a mask must be ``[1, length]`` or ``[n, 1, length]``."""
    names = list(getattr(model, "layer_names", []))
    width = _hidden(model)
    by_layer: dict[str, list[tuple[Edit, torch.Tensor | None]]] = {}
    for e in edits:
        if not isinstance(e, Edit):
            raise TypeError(f"expected Edit objects, got {type(e).__name__}")
        if e.layer not in names:
            raise ValueError(f"unknown layer {e.layer!r}; valid layers: {', '.join(names)}")
        e.check_layer(width, 1, length)
        m = e.mask
        if m is not None and (m.shape[-2:] != (1, length)):
            raise ValueError(f"edit mask on {e.layer!r} has shape {list(m.shape)}; a sequence "
                             f"edit needs [1, {length}] or [n, 1, {length}] (one per token)")
        by_layer.setdefault(e.layer, []).append((e, m))

    def edit(name: str, t: int, state: torch.Tensor) -> torch.Tensor:
        for e, m in by_layer.get(name, ()):
            if m is not None and not bool(m[..., t].any()):
                continue
            one = e if m is None else dataclasses.replace(e, mask=m[..., t:t + 1])
            state = one.apply(state[:, :, None, None])[:, :, 0, 0]
        return state
    return edit


def _hidden(model: nn.Module) -> int:
    rnn = getattr(model, "rnn", None) or getattr(model, "encoder", None)
    return int(getattr(rnn, "hidden", 0))


@torch.no_grad()
def edited_logits(model: nn.Module, tokens: torch.Tensor, *edits: Edit) -> torch.Tensor:
    """``model(tokens)`` with ``edits`` applied inside the recurrence (none: the plain run)."""
    return model(tokens, step_edit(model, edits, tokens.shape[1]) if edits else None)


def closing_accuracy(logits: torch.Tensor, tokens: torch.Tensor,
                     positions: torch.Tensor | None = None) -> float:
    """Bracket-closing accuracy of ``logits [n, T, V]`` on ``tokens [n, T]`` (optionally only
    where ``positions [n, T]`` is true); NaN when no closing bracket is scored."""
    where = torch.from_numpy(closing_targets(tokens.cpu().numpy()))
    if positions is not None:
        where &= positions.cpu()
    where[:, -1] = False
    right = torch.zeros_like(where)
    right[:, :-1] = logits[:, :-1].argmax(-1).cpu() == tokens[:, 1:].cpu()
    count = int(where.sum())
    return float(right[where].sum()) / count if count else float("nan")


@dataclass(frozen=True)
class AblationStudy:
    """Bracket-closing accuracy before (``base``) and after (``ablated``) switching ``units``
    of ``layer`` off over ``span``, and after switching off as many random units (one value
    per draw in ``random``), all on the same sequences; accuracy is scored on the positions
    from the span's start on. Random units are drawn from the layer's units outside ``units``
    and ``excluded``."""

    layer: str
    units: tuple[int, ...]
    span: tuple[int, int]
    base: float
    ablated: float
    random: tuple[float, ...]
    random_units: tuple[tuple[int, ...], ...]
    excluded: tuple[int, ...] = ()

    @property
    def drop(self) -> float:
        """Accuracy lost by ablating ``units`` (points of a fraction: 0.3 = 30 points)."""
        return self.base - self.ablated

    @property
    def random_drop(self) -> float:
        """Mean accuracy lost by ablating random units."""
        return self.base - float(np.mean(self.random)) if self.random else float("nan")

    @property
    def random_drop_median(self) -> float:
        """Median accuracy lost over the random draws."""
        return self.base - float(np.median(self.random)) if self.random else float("nan")

    @property
    def random_drop_sem(self) -> float:
        """Standard error of :attr:`random_drop` (NaN with fewer than two draws)."""
        r = np.asarray(self.random, dtype=np.float64)
        return float(r.std(ddof=1) / np.sqrt(len(r))) if len(r) > 1 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "drop": self.drop, "random_drop": self.random_drop,
                "random_drop_median": self.random_drop_median,
                "random_drop_sem": self.random_drop_sem}


def ablation_study(model: nn.Module, tokens: torch.Tensor, layer: str, units: Sequence[int],
                   span: tuple[int, int] | None = None, draws: int = 10, seed: int = 0,
                   replacement: float | str = 0.0, exclude: Sequence[int] = ()
                   ) -> AblationStudy:
    """Ablate ``units`` of ``layer`` over ``span`` (default: every token) on ``tokens`` and
    ``draws`` sets of as many random other units (draw ``d`` from ``seed + d``); see
    :class:`AblationStudy`. ``exclude``: further units kept out of the random pool (e.g. every
    unit labelled with the same category, so that the baseline is "units not tracking it").
    ``replacement``: a value for every unit (0: zero ablation) or
    ``"mean"``: each unit's own mean over all tokens of ``tokens`` (mean ablation: the unit
    keeps its average and loses what it says about the token)."""
    T = tokens.shape[1]
    a, b = check_span(span, T)
    scored = torch.zeros(tokens.shape, dtype=torch.bool)
    scored[:, a:] = True
    units = tuple(int(u) for u in units)
    width = _hidden(model)
    step_edit(model, [span_edit(layer, units, T, (a, b))], T)        # layer and units exist
    if isinstance(replacement, str):
        if replacement != "mean":
            raise ValueError(f"replacement is a number or 'mean', got {replacement!r}")
        means = torch.from_numpy(unit_states(model, tokens, layer).mean((0, 2)))
    else:
        means = torch.full((width,), float(replacement))

    def acc(*edits: Edit) -> float:
        return closing_accuracy(edited_logits(model, tokens, *edits), tokens, scored)

    def off(us: tuple[int, ...]) -> float:
        return acc(span_edit(layer, us, T, (a, b), means[list(us)]))

    base = acc()
    ablated = off(units)
    excluded = tuple(sorted({int(u) for u in exclude} - set(units)))
    bad = [u for u in excluded if not 0 <= u < width]
    if bad:
        raise ValueError(f"cannot exclude units {bad}: layer {layer!r} has {width} units")
    picks = [tuple(random_units(width, len(units), units + excluded, seed + d))
             for d in range(draws)]
    rand = tuple(off(r) for r in picks)
    return AblationStudy(layer, units, (a, b), base, ablated, rand, tuple(picks), excluded)


__all__ = ["AblationStudy", "ablation_study", "check_span", "closing_accuracy",
           "edited_logits", "span_edit", "step_edit"]
