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


def test_top_k_ranks_on_another_seed_than_it_measures(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ace and optimized rankings run on --rank-seed (default --seed + 1), the effect on
    --seed; result.json says which samples did what, and equal seeds are refused."""
    import gandissect.cli.intervene as cli_intervene
    import segmenters
    from gandissect.intervention.ranking import UnitRanking, single_unit_ace

    calls: list[tuple[str, int, int]] = []

    def spy_ace(gen, seg, concept, layer, samples, seed, **kw):  # type: ignore[no-untyped-def]
        calls.append(("ace", samples, seed))
        return single_unit_ace(gen, seg, concept, layer, samples, seed, **kw)

    def spy_optimized(gen, seg, concept, layer, **kw):  # type: ignore[no-untyped-def]
        calls.append(("optimized", kw["samples"], kw["seed"]))
        return UnitRanking.from_scores(layer, concept, "optimized", np.arange(20.0))

    monkeypatch.setattr(cli_intervene, "single_unit_ace", spy_ace)
    monkeypatch.setattr(cli_intervene, "optimize_alpha", spy_optimized)
    args = ["ablate", *BASE, "--seed", "5", "--concept", "tree", "--top-k", "2", "--samples", "6",
            "--rank-samples", "4", "--no-random", "--out", str(tmp_path)]
    assert main([*args, "--rank-by", "ace"]) == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert calls == [("ace", 4, 6)]
    assert res["ranked_on"] == {"method": "ace", "dissection": None, "seed": 6, "samples": 4}
    assert res["measured_on"] == {"seed": 5, "samples": 6, "sweep_samples": 6}
    assert res["seed"] == 5 and res["ranked_on"]["seed"] != res["measured_on"]["seed"]
    direct = single_unit_ace(models.load("planted"), segmenters.load("planted"), "tree",
                             "layout", 4, 6)
    assert res["ranking"] == direct.to_dict(len(res["ranking"]["units"]))
    assert main([*args, "--rank-by", "optimized", "--rank-seed", "11"]) == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert calls[-1] == ("optimized", 4, 11) and res["ranked_on"]["seed"] == 11
    assert main(["insert", *args[1:], "--rank-by", "ace"]) == 0  # insert ranks the same way
    assert calls[-1] == ("ace", 4, 6)
    capsys.readouterr()
    assert main([*args, "--rank-by", "ace", "--rank-seed", "5"]) == 2
    assert "--rank-seed 5 must differ from --seed 5" in capsys.readouterr().err
    # --units ranks nothing: nothing is recorded as ranked
    assert main(["ablate", *BASE, "--concept", "tree", "--units", "3", "--samples", "2",
                 "--no-random", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "result.json").read_text())["ranked_on"] is None


def test_iou_ranking_records_the_dissection_seed(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "dissection"
    assert main(["dissect", "--model", "planted", "--segmenter", "planted", "--layer", "layout",
                 "--samples", "8", "--batch-size", "8", "--seed", "3", "--out", str(folder),
                 "--no-progress", "--no-report"]) == 0
    args = ["ablate", *BASE, "--concept", "tree", "--top-k", "2", "--samples", "4",
            "--no-random", "--dissection", str(folder), "--out", str(tmp_path / "o")]
    assert main(args) == 0
    res = json.loads((tmp_path / "o" / "result.json").read_text())
    assert res["ranked_on"] == {"method": "iou", "dissection": str(folder), "seed": 3,
                                "samples": 8}
    assert res["measured_on"]["seed"] == 0
    capsys.readouterr()
    assert main([*args, "--seed", "3"]) == 2
    assert "ranked units on seed 3, the seed --seed measures on" in capsys.readouterr().err
