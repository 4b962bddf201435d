"""The brush cache is checked before use: a cache with NaN, out-of-range units, another layer
shape or other weights is rebuilt (with a warning naming the file and the problem); an
unwritable cache folder is a clear error before the build starts."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import segmenters
from gandissect.paint import brushes as brushes_mod
from gandissect.paint.brushes import (
    BrushCacheError,
    BrushSet,
    build_brushes,
    cache_dir,
    load_or_build_brushes,
)
from gandissect.paint.painter import open_painter
from models.base import Generator

BUILD: dict[str, Any] = {"samples": 40, "candidates": 4, "ace_samples": 4}
KEY = "planted-planted-layout-test"


@pytest.fixture(scope="module")
def built(gen: Generator, seg: segmenters.Segmenter) -> BrushSet:
    return build_brushes(gen, seg, "layout", **BUILD)


@pytest.fixture
def builds(built: BrushSet, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand in for the (slow) build: record each call, return the real brushes."""
    calls: list[str] = []

    def fake(generator: Any, segmenter: Any, layer: str, **kw: Any) -> BrushSet:
        calls.append(layer)
        return built
    monkeypatch.setattr(brushes_mod, "build_brushes", fake)
    return calls


def no_build(*a: Any, **kw: Any) -> BrushSet:
    raise AssertionError("build_brushes must not run")


def write(folder: Path, built: BrushSet, change: Callable[[dict[str, Any]], Any]) -> Path:
    d = json.loads(built.to_json())
    change(d)
    path = folder / f"{KEY}.json"
    path.write_text(json.dumps(d))
    return path


def all_finite(b: BrushSet) -> bool:
    return all(math.isfinite(x) for x in b.quantile) and all(
        math.isfinite(x) for br in b.brushes.values() for x in (*br.scores, *br.values))


def test_built_brushes_record_layer_shape_and_weights(built: BrushSet, gen: Generator,
                                                      seg: segmenters.Segmenter) -> None:
    from gandissect.common.fingerprint import fingerprint
    assert built.meta["layer_shape"] == [20, 32, 32]
    assert built.meta["weights"] == fingerprint(gen, seg)
    built.check("layout", (20, 32, 32), fingerprint(gen, seg))


def test_valid_cache_is_used(tmp_path: Path, gen: Generator, seg: segmenters.Segmenter,
                             built: BrushSet, builds: list[str]) -> None:
    write(tmp_path, built, lambda d: None)
    assert load_or_build_brushes(gen, seg, "layout", KEY, tmp_path) == built
    assert builds == []


def first(d: dict[str, Any]) -> dict[str, Any]:
    return d["brushes"][0]


CORRUPT: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "NaN value": (lambda d: first(d)["values"].__setitem__(0, float("nan")), "NaN or infinity"),
    "NaN quantile": (lambda d: d["quantile"].__setitem__(3, float("nan")), "NaN or infinity"),
    "inf score": (lambda d: first(d)["scores"].__setitem__(0, float("inf")), "NaN or infinity"),
    "unit 9999": (lambda d: first(d)["units"].__setitem__(0, 9999), "has unit 9999"),
    "negative unit": (lambda d: first(d)["units"].__setitem__(0, -1), "has unit -1"),
    "float unit": (lambda d: first(d)["units"].__setitem__(0, 2.5), "list of integers"),
    "string value": (lambda d: first(d)["values"].__setitem__(0, "nan"), "list of numbers"),
    "wrong layer shape": (lambda d: d["meta"].__setitem__("layer_shape", [20, 16, 16]),
                          "layer shape [20, 16, 16]"),
    "fewer units": (lambda d: d.__setitem__("quantile", d["quantile"][:12]),
                    "12 insertion values for 20 units"),
    "other weights": (lambda d: d["meta"].__setitem__("weights", "0123456789ab"),
                      "'0123456789ab'"),
    "no weights": (lambda d: d["meta"].pop("weights"), "built for weights None"),
    "other layer": (lambda d: d.__setitem__("layer", "other"), "layer 'other'"),
    "old format": (lambda d: d.__setitem__("format", 1), "format 1"),
    "missing entry": (lambda d: d.pop("brushes"), "malformed"),
    "uneven brush": (lambda d: first(d)["scores"].pop(), "scores"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_bad_cache_is_rebuilt_with_a_warning(tmp_path: Path, gen: Generator,
                                             seg: segmenters.Segmenter, built: BrushSet,
                                             builds: list[str], case: str) -> None:
    change, why = CORRUPT[case]
    path = write(tmp_path, built, change)
    said: list[str] = []
    with pytest.warns(UserWarning, match="not usable") as w:
        got = load_or_build_brushes(gen, seg, "layout", KEY, tmp_path, said.append)
    assert builds == ["layout"] and got == built and all_finite(got)
    message = str(w[0].message)
    assert str(path) in message and why in message and "rebuilding" in message
    assert message in said                                   # the app's progress sees it too
    assert BrushSet.from_json(path.read_text()) == built     # the bad file was overwritten
    assert not [p for p in tmp_path.iterdir() if p != path]  # no temporaries left


def test_unparsable_cache_is_rebuilt(tmp_path: Path, gen: Generator, seg: segmenters.Segmenter,
                                     built: BrushSet, builds: list[str]) -> None:
    (tmp_path / f"{KEY}.json").write_text('{"format": 2, "lay')
    with pytest.warns(UserWarning, match="not usable"):
        assert load_or_build_brushes(gen, seg, "layout", KEY, tmp_path) == built
    assert builds == ["layout"]


def test_nan_cache_is_rebuilt_for_real_and_draws(tmp_path: Path, built: BrushSet) -> None:
    """End to end, no stand-in: NaN insertion values in the cache open_painter uses are
    rebuilt, and drawing trees changes a small part of the image, never blackens it."""
    open_painter("planted", "planted", "layout", folder=tmp_path, **BUILD)
    (path,) = tmp_path.glob("*.json")
    d = json.loads(path.read_text())
    d["quantile"] = [float("nan")] * len(d["quantile"])
    for b in d["brushes"]:
        b["values"] = [float("nan")] * len(b["values"])
    path.write_text(json.dumps(d))
    with pytest.warns(UserWarning, match="NaN"):
        p = open_painter("planted", "planted", "layout", folder=tmp_path, **BUILD)
    assert all_finite(p.brushes) and all_finite(BrushSet.from_json(path.read_text()))
    region = np.zeros((64, 64), bool)
    region[20:44, 20:44] = True
    stroke = p.stroke("tree", "draw", region, strength=4, alpha=1.0)
    before, after = p.render_tensor(0), p.render_tensor(0, [stroke])
    changed = (before != after).any(dim=1)[0].numpy()
    assert 0 < changed.mean() < 0.3 and bool(after.isfinite().all())


def test_unwritable_cache_dir_fails_before_building(tmp_path: Path, gen: Generator,
                                                    seg: segmenters.Segmenter,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(brushes_mod, "build_brushes", no_build)
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a 0o500 folder is still writable")
        with pytest.raises(BrushCacheError, match=f"cannot write the brush cache in {locked}"):
            load_or_build_brushes(gen, seg, "layout", KEY, locked)
    finally:
        locked.chmod(0o700)


def test_cache_dir_that_cannot_exist_fails_before_building(
        tmp_path: Path, gen: Generator, seg: segmenters.Segmenter,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The default folder under a file (fails even for root): the error names the folder and
    says to set GANDISSECT_CACHE; with an explicit folder it says to give another."""
    monkeypatch.setattr(brushes_mod, "build_brushes", no_build)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GANDISSECT_CACHE", str(blocker))
    assert cache_dir() == blocker / "brushes"
    with pytest.raises(BrushCacheError, match="set the environment variable GANDISSECT_CACHE") \
            as e:
        load_or_build_brushes(gen, seg, "layout", KEY)
    assert str(blocker / "brushes") in str(e.value) and "Nothing was built" in str(e.value)
    with pytest.raises(BrushCacheError, match="give a writable folder"):
        load_or_build_brushes(gen, seg, "layout", KEY, blocker / "sub")


def test_open_painter_uses_the_shipped_brushes_of_the_bundled_gan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No folder given: the shipped layer4 brushes of the bundled Toyworld GAN are used as they
    are (nothing is built or written to the cache); a damaged shipped file warns and falls back
    to the cache."""
    from gandissect.paint.brushes import SHIPPED

    monkeypatch.setenv("GANDISSECT_CACHE", str(tmp_path))
    monkeypatch.setattr(brushes_mod, "build_brushes",
                        lambda *a, **k: pytest.fail("built brushes instead of the shipped ones"))
    painter = open_painter("toyworld", "toyworld", "layer4")
    shipped = [p for p in SHIPPED.glob("toyworld-toyworld-layer4-*.json")
               if "-effects-" not in p.name]
    assert len(shipped) == 1
    assert painter.brushes.to_json() == BrushSet.from_json(shipped[0].read_text()).to_json()
    assert not any(tmp_path.rglob("*.json"))
    broken = tmp_path / "shipped"
    broken.mkdir()
    (broken / shipped[0].name).write_text("{not json")
    from gandissect.paint import painter as painter_mod

    def build(*args: Any, **kwargs: Any) -> BrushSet:
        raise RuntimeError("built")

    monkeypatch.setattr(brushes_mod, "build_brushes", build)
    monkeypatch.setattr(painter_mod, "shipped_brushes",
                        lambda *a: brushes_mod.shipped_brushes(*a[:4], folder=broken))
    with pytest.warns(UserWarning, match="not usable"), pytest.raises(RuntimeError, match="built"):
        open_painter("toyworld", "toyworld", "layer4")
