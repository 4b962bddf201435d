"""Rebuilding the shipped brush files (gandissect/paint/ship.py), on the planted model: the new
files serve the app as shipped brushes, stale keys of the same layer go, other files stay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gandissect.paint.brushes import shipped_brushes
from gandissect.paint.painter import brush_key, load_models
from gandissect.paint.ship import main, ship


def test_ship_writes_brushes_and_effects_and_drops_stale_keys(tmp_path: Path) -> None:
    stale = tmp_path / "planted-planted-layout-000000000000.json"
    other = tmp_path / "planted-planted-other-000000000000.json"
    stale.write_text("{}")
    other.write_text("{}")
    written = ship("planted", "planted", ["layout"], tmp_path, progress=False)
    gen, seg = load_models("planted", "planted", "layout")
    key = brush_key("planted", "planted", "layout", gen, seg)
    assert sorted(p.name for p in written) == [f"{key}-effects-16.json", f"{key}.json"]
    assert not stale.exists() and other.exists()
    brushes = shipped_brushes(gen, seg, "layout", key, tmp_path)
    assert brushes is not None and brushes.brushes
    effects = json.loads((tmp_path / f"{key}-effects-16.json").read_text())
    assert effects  # measured, not empty


def test_ship_names_the_layer_that_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    with pytest.raises(RuntimeError, match="nolayer"):
        ship("planted", "planted", ["nolayer"], tmp_path, progress=False)
    assert main(["--model", "planted", "--segmenter", "planted", "--layer", "nolayer",
                 "--folder", str(tmp_path)]) == 1
    assert "nolayer" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))
