"""`gandissect ablate` / `insert` on the planted generator: files, JSON, numbers, clear errors."""

import json
from pathlib import Path

import numpy as np
import pytest

import models
from gandissect.cli import main

PLANTED = models.load("planted").planted_units
BASE = ["--model", "planted", "--segmenter", "planted", "--layer", "layout", "--seed", "0"]


def test_ablate_units_writes_json_plot_and_grid(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    units = f"{PLANTED['tree']},{PLANTED['crown']}"
    rc = main(["ablate", *BASE, "--concept", "tree", "--units", units, "--samples", "12",
               "--out", str(tmp_path), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert printed == saved
    for name in ("result.json", "effect_vs_k.png", "before_after.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert saved["units"] == [PLANTED["tree"], PLANTED["crown"]]
    assert saved["effect"]["relative"] <= -0.99 and abs(saved["random"]["relative"]) < 0.01
    assert saved["sweep"]["ks"] == [1, 2] and len(saved["sweep"]["random"]) == 2


def test_insert_top_k_by_ace_in_a_box_with_heatmap(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["insert", *BASE, "--concept", "tree", "--top-k", "2", "--rank-by", "ace",
               "--samples", "8", "--box", "4,4,16,28", "--heatmap", "--heatmap-size", "8",
               "--heatmap-samples", "4", "--out", str(tmp_path)])
    assert rc == 0
    assert "insert tree units" in capsys.readouterr().out
    res = json.loads((tmp_path / "result.json").read_text())
    assert sorted(res["units"]) == sorted([PLANTED["tree"], PLANTED["crown"]])
    assert res["rank_by"] == "ace" and res["inside"]["after"] > 0.8
    assert np.asarray(res["heatmap"]["success"]).shape == (4, 4)
    assert (tmp_path / "heatmap.png").exists()


@pytest.mark.parametrize("extra, message", [
    (["--concept", "tree", "--units", "3,99"], "has 20 units"),
    (["--concept", "dragon", "--units", "3"], "known concepts"),
    (["--concept", "tree", "--units", "3", "--layer", "conv9"], "valid layers: layout"),
    (["--concept", "tree", "--top-k", "2", "--rank-by", "iou"], "needs --dissection"),
    (["--concept", "tree", "--units", "3", "--box", "0,0,40,4"], "does not fit"),
    (["--concept", "tree", "--top-k", "30"], "--top-k must be in 1..20"),
    (["--concept", "tree", "--units", "a,b"], "comma-separated"),
])
def test_bad_input_gives_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      extra: list[str], message: str) -> None:
    assert main(["ablate", *BASE, "--samples", "2", "--out", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err


def test_mask_file_of_wrong_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "m.npy", np.ones((1, 2, 32, 32), dtype=np.float32))
    assert main(["insert", *BASE, "--concept", "sky", "--units", "3", "--samples", "2",
                 "--mask", str(tmp_path / "m.npy"), "--out", str(tmp_path)]) == 2
    assert "[h, w] or [n, h, w]" in capsys.readouterr().err
