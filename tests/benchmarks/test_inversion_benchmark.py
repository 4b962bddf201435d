"""The photo-inversion benchmark (benchmarks/inversion.py), run on two held-out scenes with a
few steps: it inverts as the app does for the brush layer, scores the tree edits where the
scene allows them, and writes its results and figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tiny import load_benchmark


def test_two_scenes_with_edits_write_results_and_a_figure(tmp_path: Path) -> None:
    bench = load_benchmark("inversion", "inversion_benchmark")
    out = tmp_path / "inv"
    assert bench.main(["--n", "2", "--edits", "--optimize-steps", "3", "--adapt-steps", "3",
                       "--sample-removal", "6", "--out", str(out)]) == 0
    saved = json.loads((out / "results.json").read_text())
    summary, rows = saved["summary"], saved["rows"]
    # photos are inverted three layers before the layer5 brushes; only layers after it adapt
    assert summary["settings"]["layer"] == "layer2"
    assert summary["settings"]["adapt_after"] == "layer5"
    assert [r["scene"] for r in rows] == [0, 1]
    for r in rows:
        assert r["psnr_optimize"] > r["psnr_encoder"] and r["wall_s"] > 0
    # scene 1 holds a tree covering >= 2% of the image, scene 0 a grass box
    assert "tree_removed" not in rows[0] and 0.0 <= rows[1]["tree_removed"] <= 1.0
    assert 0.0 <= rows[0]["tree_added_in_box"] <= 1.0
    assert summary["tree_removed"]["scenes"] == 1
    assert summary["tree_removed"]["scenes_ge_60"] == int(rows[1]["tree_removed"] >= 0.6)
    # the removal split by tree colour covers that scene once
    assert 0.0 <= rows[1]["tree_orange_share"] <= 1.0
    split = summary["tree_removed_by_colour"]
    assert sum(g["scenes"] for g in split.values()) == 1
    samples = summary["sample_tree_removed"]
    assert 0 < samples["samples"] <= 6 and 0.0 <= samples["mean"] <= 1.0
    assert sum(g["samples"] for k, g in samples.items() if k in ("autumn", "other")) == \
        samples["samples"]
    figure = Image.open(out / "photo_edits.png")
    assert figure.size[0] > figure.size[1]  # one row (the scene with a tree), six columns


def test_orange_share_counts_red_above_green_inside_the_mask() -> None:
    bench = load_benchmark("inversion", "inversion_benchmark")
    image = torch.zeros(1, 3, 4, 4)
    image[0, 0, :2] = 1.0  # the top half is red
    mask = np.zeros((4, 4), bool)
    mask[1:3] = True  # one red row, one not
    assert bench.orange_share(image, mask) == 0.5
    assert bench.orange_share(image, np.zeros((4, 4), bool)) == 0.0


def test_the_inversion_layer_can_be_overridden(tmp_path: Path) -> None:
    bench = load_benchmark("inversion", "inversion_benchmark")
    out = tmp_path / "inv"
    assert bench.main(["--n", "1", "--optimize-steps", "2", "--adapt-steps", "2",
                       "--invert-layer", "layer4", "--adapt-after", "layer4",
                       "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert (summary["settings"]["layer"], summary["settings"]["adapt_after"]) == \
        ("layer4", "layer4")
    assert Image.open(out / "photo_edits.png").size[1] > 0  # without --edits: any scene
