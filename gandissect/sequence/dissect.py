"""Dissection of a sequence model's states: the image engine on ``1 x T`` feature maps.

:func:`dissect_sequences` hands a model and a :class:`~gandissect.sequence.probe.SequenceProbe`
to :func:`gandissect.dissection.engine.dissect` (as a probe set), so thresholds, IoU, merge,
resume, workers and reports are the image code's. Per unit, the threshold is the top
``quantile`` of its activations over all token positions of all sequences; IoU is over token
positions. :func:`unit_states` reads a layer's states for the views.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..common.hooks import Trace
from ..dissection.engine import dissect
from ..dissection.results import LayerResult

#: The default top fraction of token positions a unit is "on" for. Token concepts cover a large
#: share of positions (``depth>=4`` 32%, ``closing`` 36%), so q is much larger than the images'
#: 1%; a unit can reach IoU 0.5 only with concepts covering q/2 .. 2q of the positions.
SEQUENCE_QUANTILE = 0.1


def dissect_sequences(model: nn.Module, probe: Any, layers: str | Sequence[str],
                      samples: int | None = None, quantile: float = SEQUENCE_QUANTILE,
                      **kwargs: Any) -> dict[str, LayerResult]:
    """Dissect ``layers`` (states ``[n, units, 1, T]``) of ``model`` on the sequences of
    ``probe`` (default: all of them) with the image engine: plain IoU over token positions,
    ``kwargs`` as for :func:`~gandissect.dissection.engine.dissect` (``out``, ``workers``, ...).
    """
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("batch_size", 64)
    return dissect(model, probe, layers, samples=len(probe) if samples is None else samples,
                   quantile=quantile, category_conditioned=False, **kwargs)


@torch.no_grad()
def unit_states(model: nn.Module, tokens: torch.Tensor, layer: str,
                batch_size: int = 256) -> np.ndarray:
    """States ``[n, units, T]`` (float32) of ``layer`` for token ids ``tokens [n, T]``; a
    wrong layer name raises a ValueError listing the valid ones."""
    out = []
    for s in range(0, tokens.shape[0], batch_size):
        with Trace(model, layer, stop=True) as tr:
            model(tokens[s:s + batch_size])
        out.append(tr[layer][:, :, 0].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0, tokens.shape[1]), np.float32)


def concept_units(result: LayerResult, concepts: Sequence[str], k: int | None = None,
                  min_iou: float = 0.0) -> list[int]:
    """Units whose label is one of ``concepts`` with IoU >= ``min_iou``, highest IoU first
    (at most ``k``); an unknown concept raises a ValueError listing the labels."""
    bad = [c for c in concepts if c not in result.labels]
    if bad:
        raise ValueError(f"unknown concepts {bad}; labels: {', '.join(result.labels)}")
    labels, best = result.unit_labels, result.best_iou
    units = [u for u in np.argsort(-best, kind="stable")
             if labels[u] in concepts and best[u] >= min_iou]
    return [int(u) for u in units[:k]]


def category_units(result: LayerResult, categories: Sequence[str]) -> list[int]:
    """Interpretable units (IoU above the result's threshold) whose label belongs to one of
    ``categories`` (e.g. ``["depth"]``), by unit index; an unknown category raises a ValueError
    listing the categories."""
    known = sorted(set(result.categories))
    bad = [c for c in categories if c not in known]
    if bad:
        raise ValueError(f"unknown categories {bad}; categories: {', '.join(known)}")
    cats, ok = result.unit_categories, result.interpretable
    return [u for u in range(result.units) if ok[u] and cats[u] in categories]


__all__ = ["SEQUENCE_QUANTILE", "category_units", "concept_units", "dissect_sequences",
           "unit_states"]
