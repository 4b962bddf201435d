"""What determines a dissection's result (:class:`DissectConfig`, checked when a run resumes)
and the errors for an output folder that cannot be used (it holds another run, another run is
using it, or its saved state is damaged): shared by the engine
(:mod:`gandissect.dissection.engine`) and one layer's statistics
(:mod:`gandissect.dissection.layer_stats`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DissectConfig", "DissectLockedError", "DissectMismatchError", "DissectStateError"]


class DissectMismatchError(RuntimeError):
    """An output folder holds a run made with other arguments."""


class DissectLockedError(RuntimeError):
    """Another dissection run (the message names its PID) holds the output folder's lock."""


class DissectStateError(ValueError):
    """An output folder's saved resume state is damaged (empty, truncated, or changed after it
    was saved): the message names the file and how to start again."""


#: forward-pass precisions :attr:`DissectConfig.dtype` takes
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class DissectConfig:
    """Everything that determines a dissection's result (checked when resuming)."""

    layers: tuple[str, ...]
    samples: int
    seed: int
    quantile: float = 0.01
    batch_size: int = 32
    seg_resolution: int | None = None
    threshold: str = "quantile"
    category_conditioned: bool = False
    iou_threshold: float = 0.04
    topk: int = 12
    bins: int = 2048
    fine_log2: int = 8
    iqr_bins: int = 256
    min_iqr: float = 0.01
    model_name: str = ""
    segmenter_name: str = ""
    #: :func:`gandissect.common.fingerprint.fingerprint` of generator and segmenter: a folder's
    #: run is never resumed or reused with other weights
    weights: str = ""
    #: precision of the forward passes: ``float32``, or ``bfloat16`` (autocast; the statistics
    #: stay exact on the activations and masks computed that way)
    dtype: str = "float32"

    def check(self) -> None:
        if not self.layers:
            raise ValueError("give at least one layer to dissect")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")
        if self.threshold not in ("quantile", "iqr"):
            raise ValueError(f"threshold must be 'quantile' or 'iqr', got {self.threshold!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
