"""Values for strict JSON: :func:`strict_json` makes results that may hold NaN or infinities
(an undefined ratio, an empty ranking) writable with ``json.dumps(..., allow_nan=False)``."""

from __future__ import annotations

import math
from typing import Any


def strict_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None, recursively through dicts,
    lists and tuples (tuples become lists); other values are returned as they are."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    return obj
