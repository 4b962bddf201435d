"""strict_json: NaN and infinities become None at any depth; everything else is kept."""

import json
import math

from gandissect.common.jsonsafe import strict_json


def test_non_finite_floats_become_none_at_any_depth() -> None:
    raw = {"a": math.nan, "b": [1.5, math.inf, (-math.inf, "x")], "c": {"d": 2, "e": None}}
    clean = strict_json(raw)
    assert clean == {"a": None, "b": [1.5, None, [None, "x"]], "c": {"d": 2, "e": None}}
    json.dumps(clean, allow_nan=False)  # strict JSON
    assert strict_json(3) == 3 and strict_json("nan") == "nan"
