"""The largest IoU a unit can reach with each concept under the quantile rule.

With a per-unit quantile threshold, unit ``u`` is "on" on ``A_u`` pixels (about ``q`` of all
pixels), whatever it encodes. Its IoU with a concept covering ``S_c`` pixels is at most
``min(A_u, S_c) / max(A_u, S_c)``: a concept much larger than ``q`` cannot be matched, however
perfectly a unit draws it. At q = 0.01 and IoU > 0.04, concepts covering more than ~25% of the
pixels (sky, grass in Toyworld) can never label a unit; the information-quality-ratio rule
(``threshold="iqr"``), whose thresholds adapt per concept, has no such ceiling.
"""

from __future__ import annotations

import numpy as np

from .results import LayerResult


def iou_ceiling(result: LayerResult) -> np.ndarray:
    """``[C]``: the largest IoU any unit of ``result`` could reach with each concept, given the
    pixels above its threshold and the concept's pixels (all ones in ``iqr`` mode, where
    thresholds are chosen per concept).

    >>> r = LayerResult("l", ["big", "small"], ["object"] * 2, thresholds=np.zeros(2),
    ...                 iou=np.zeros((2, 2)), intersection=np.zeros((2, 2)),
    ...                 above=np.array([10, 12]), concept_pixels=np.array([400, 8]),
    ...                 topk_indices=np.zeros((2, 1)), topk_values=np.zeros((2, 1)),
    ...                 frac_above=np.zeros(2), rank_error=np.zeros(2), iqr=np.zeros((2, 2)))
    >>> iou_ceiling(r).tolist()
    [0.03, 0.8]
    """
    if result.above.ndim != 1:  # iqr mode: thresholds per (unit, concept)
        return np.ones(len(result.labels))
    above = result.above.astype(np.float64)[:, None]
    concept = result.concept_pixels.astype(np.float64)[None, :]
    hi = np.maximum(above, concept)
    ratio = np.divide(np.minimum(above, concept), hi, out=np.zeros_like(hi), where=hi > 0)
    out: np.ndarray = ratio.max(axis=0)
    return out


def unreachable_concepts(result: LayerResult) -> dict[str, float]:
    """Concepts present in the data whose :func:`iou_ceiling` is at or below the layer's
    interpretability threshold (no unit can be labelled with them), with their ceilings."""
    ceiling = iou_ceiling(result)
    return {lab: round(float(c), 4) for lab, c, n in
            zip(result.labels, ceiling, result.concept_pixels, strict=True)
            if n > 0 and c <= result.iou_threshold}


__all__ = ["iou_ceiling", "unreachable_concepts"]
