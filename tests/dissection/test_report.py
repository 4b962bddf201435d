"""Report: dissect.json contents, offline HTML, plots; CLI end to end (resume, refusal)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TinyGenerator, TinySegmenter

from gandissect.cli.dissect import register
from gandissect.dissection.engine import dissect
from gandissect.dissection.report import _outline, write_report
from gandissect.dissection.results import load_results

torch.set_num_threads(1)


def test_report_files_offline_and_consistent(tmp_path: Path) -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    res = dissect(gen, seg, ["a", "b"], samples=40, seed=2, batch_size=20)
    path = write_report(res, tmp_path, generator=gen, per_unit=3)
    text = path.read_text()
    assert "http://" not in text and "https://" not in text
    assert "src='data:image/png;base64," in text
    assert text.count("<tr data-iou") + text.count("<tr class='dim' data-iou") == 8 + 6
    assert "sortTable('units0','label')" in text
    for name in ["layers.png", "concepts_a.png", "iou_b.png"]:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    info = json.loads((tmp_path / "dissect.json").read_text())
    units = info["layers"]["b"]["unit_results"]
    assert [u["label"] for u in units] == res["b"].unit_labels
    assert np.allclose([u["iou"] for u in units], res["b"].best_iou)
    assert info["layers"]["b"]["interpretable"] == int(res["b"].interpretable.sum())


def test_outline_dims_outside_and_marks_border() -> None:
    img = np.full((4, 4, 3), 200, dtype=np.uint8)
    region = np.zeros((4, 4), dtype=bool)
    region[1:3, 1:3] = True
    out = _outline(img, region, scale=2)
    assert out.shape == (8, 8, 3)
    assert tuple(out[0, 0]) == (80, 80, 80)                  # dimmed
    assert tuple(out[2, 2]) == (255, 230, 0)                 # border of the region


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_runs_resumes_and_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["dissect", "--model", "planted", "--segmenter", "planted", "--layer", "layout",
            "--samples", "20", "--seed", "1", "--out", str(out), "--batch-size", "10",
            "--threshold", "iqr", "--no-progress", "--checkpoint-seconds", "0"]
    args = parse(argv)
    assert args.func(args) == 0
    first = load_results(out)["layout"]
    assert (out / "report.html").exists() and not (out / "state.safetensors").exists()
    assert args.func(args) == 0                               # same arguments: reuses
    assert np.array_equal(load_results(out)["layout"].iou, first.iou)
    other = parse([a if a != "1" else "2" for a in argv])
    assert other.func(other) == 3
    assert "other arguments" in capsys.readouterr().err
    from gandissect.cli import main

    assert main(argv[:6] + ["nope"] + argv[7:]) == 2          # errors reach main's handler
    assert "gandissect dissect: error: unknown layer" in capsys.readouterr().err
    assert main([*argv, "--workers", "0"]) == 2
    assert "--workers: must be >= 1" in capsys.readouterr().err
