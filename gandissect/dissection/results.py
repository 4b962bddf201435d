"""The result of dissecting one layer, and its save/load (safetensors + JSON, never pickle)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from .folder import atomic_write_bytes, temp_path

_ARRAYS = ("thresholds", "iou", "intersection", "above", "concept_pixels", "topk_indices",
           "topk_values", "frac_above", "rank_error", "iqr")


def layer_filename(layer: str) -> str:
    """A file-system-safe stem for a layer name (``features.4`` -> ``features.4``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer) or "_"


@dataclass
class LayerResult:
    """Dissection of one layer.

    ``iou[u, c]`` is the IoU of unit ``u``'s thresholded map with concept ``c``;
    ``thresholds`` is ``[U]`` (quantile mode) or ``[U, C]`` (``iqr`` mode, one per concept);
    ``above`` the number of pixels above threshold (``[U]`` or ``[U, C]``), ``intersection``
    the exact ``|A > t and S_c|``; ``concept_pixels[c]`` the exact ``|S_c|`` over all
    ``pixels`` (= samples x segmentation pixels). ``frac_above``/``rank_error`` (quantile mode):
    exact fraction of pixels above ``t_u`` and the bound on ``|frac_above - fraction above the
    exact quantile|``. ``iqr[u, c]`` (``iqr`` mode): information quality ratio
    ``I(A;S)/H(A,S)`` at the chosen threshold. ``topk_indices[u]``: samples with the largest
    maximum raw activation.
    """

    layer: str
    labels: list[str]
    categories: list[str]
    thresholds: np.ndarray
    iou: np.ndarray
    intersection: np.ndarray
    above: np.ndarray
    concept_pixels: np.ndarray
    topk_indices: np.ndarray
    topk_values: np.ndarray
    frac_above: np.ndarray
    rank_error: np.ndarray
    iqr: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def units(self) -> int:
        return int(self.iou.shape[0])

    @property
    def iou_threshold(self) -> float:
        return float(self.meta.get("iou_threshold", 0.04))

    @property
    def score(self) -> np.ndarray:
        """IoU used for labels: in ``iqr`` mode, pairs whose information quality ratio is below
        ``meta["min_iqr"]`` score 0 (an uninformative unit thresholded near its median still
        overlaps a concept covering 40% of pixels with IoU ~0.3, by chance)."""
        if self.meta.get("threshold") == "iqr":
            return np.where(self.iqr >= float(self.meta.get("min_iqr", 0.0)), self.iou, 0.0)
        return self.iou

    @property
    def best_concept(self) -> np.ndarray:
        """Index of each unit's label (argmax of :attr:`score`; first on ties)."""
        score = self.score
        return score.argmax(1) if score.shape[1] else np.zeros(self.units, dtype=np.int64)

    @property
    def best_iou(self) -> np.ndarray:
        """Each unit's :attr:`score` for its label."""
        score = self.score
        return score.max(1) if score.shape[1] else np.zeros(self.units)

    @property
    def unit_labels(self) -> list[str]:
        return [self.labels[c] for c in self.best_concept]

    @property
    def unit_categories(self) -> list[str]:
        return [self.categories[c] for c in self.best_concept]

    @property
    def interpretable(self) -> np.ndarray:
        """Units whose best IoU exceeds the IoU threshold."""
        return self.best_iou > self.iou_threshold

    def unit_threshold(self, unit: int) -> float:
        """The activation threshold used for ``unit``'s label."""
        t = self.thresholds
        return float(t[unit] if t.ndim == 1 else t[unit, self.best_concept[unit]])

    def summary(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per unit."""
        return [{"unit": u, "label": self.labels[c] if self.labels else None,
                 "category": self.categories[c] if self.categories else None,
                 "iou": float(self.best_iou[u]), "interpretable": bool(self.interpretable[u]),
                 "threshold": self.unit_threshold(u),
                 "top_samples": [int(i) for i in self.topk_indices[u]]}
                for u, c in enumerate(self.best_concept)]

    def save(self, folder: str | Path) -> Path:
        """Write ``<layer>.safetensors`` (arrays) and ``<layer>.json`` (names, settings)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = layer_filename(self.layer)
        arrays = {k: np.ascontiguousarray(getattr(self, k)) for k in _ARRAYS}
        tmp = temp_path(folder / f"{stem}.safetensors")
        try:
            save_file(arrays, str(tmp))
            os.replace(tmp, folder / f"{stem}.safetensors")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        info = {"layer": self.layer, "labels": self.labels, "categories": self.categories,
                "meta": self.meta}
        atomic_write_bytes(folder / f"{stem}.json", json.dumps(info, indent=1).encode())
        return folder / f"{stem}.json"

    @classmethod
    def load(cls, folder: str | Path, layer: str) -> LayerResult:
        """Read what :meth:`save` wrote."""
        folder = Path(folder)
        stem = layer_filename(layer)
        info_path = folder / f"{stem}.json"
        if not info_path.exists():
            raise FileNotFoundError(f"no dissection result for layer {layer!r} in {folder} "
                                    f"(expected {info_path.name})")
        info = json.loads(info_path.read_text())
        arrays = load_file(str(folder / f"{stem}.safetensors"))
        return cls(layer=info["layer"], labels=list(info["labels"]),
                   categories=list(info["categories"]), meta=dict(info["meta"]),
                   **{k: arrays[k] for k in _ARRAYS})


def save_results(results: dict[str, LayerResult], folder: str | Path) -> None:
    """Save every layer's result and an index ``results.json`` listing the layers."""
    folder = Path(folder)
    for r in results.values():
        r.save(folder)
    atomic_write_bytes(folder / "results.json",
                       json.dumps({"layers": list(results)}, indent=1).encode())


def load_results(folder: str | Path) -> dict[str, LayerResult]:
    """Load what :func:`save_results` wrote."""
    folder = Path(folder)
    index = folder / "results.json"
    if not index.exists():
        raise FileNotFoundError(f"{folder} holds no dissection results (no results.json)")
    layers = json.loads(index.read_text())["layers"]
    return {name: LayerResult.load(folder, name) for name in layers}
