"""The Broden writer: the files it writes follow NetDissect's layout, and its command line."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gandissect.probes.broden_format import (
    C_COLUMNS,
    CATEGORY_COLUMNS,
    LABEL_COLUMNS,
    META_COLUMNS,
    decode_png,
    encode_png,
    nearest_index,
    resize_nearest,
)
from gandissect.probes.toyworld import ToyworldProbe
from gandissect.probes.write_broden import main, write_broden


def rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_files_follow_the_layout(toy_folder: Path, toy_probe: ToyworldProbe) -> None:
    header, index = rows(toy_folder / "index.csv")
    assert header == list(META_COLUMNS) + ["object", "part", "scene"]
    assert [r["split"] for r in index] == ["val" if i % 5 == 4 else "train" for i in range(20)]
    assert all(r["scene"].isdigit() for r in index)                  # one scalar label each
    header, labels = rows(toy_folder / "label.csv")
    assert header == list(LABEL_COLUMNS)
    numbers = [int(r["number"]) for r in labels]
    assert numbers == list(range(1, len(labels) + 1))
    freq = [int(r["frequency"]) for r in labels]
    assert freq == sorted(freq, reverse=True)                        # Broden's numbering
    masks = toy_probe.masks(0, 20)
    for r in labels:
        c = toy_probe.labels.index(r["name"])
        assert r["category"] == f"{toy_probe.categories[c]}({r['frequency']})"
        assert int(r["frequency"]) == int(masks[:, c].flatten(1).any(1).sum())
        assert float(r["coverage"]) == pytest.approx(float(masks[:, c].float().mean((1, 2)).sum()),
                                                     abs=1e-5)
    header, cats = rows(toy_folder / "category.csv")
    assert header == list(CATEGORY_COLUMNS) and [r["name"] for r in cats] == ["object", "part",
                                                                              "scene"]
    for cat in cats:
        header, c_rows = rows(toy_folder / f"c_{cat['name']}.csv")
        assert header == list(C_COLUMNS)
        assert [int(r["code"]) for r in c_rows] == list(range(1, len(c_rows) + 1))
        assert int(cat["count"]) == len(c_rows)
        assert int(cat["first"]) == min(int(r["number"]) for r in c_rows)
        assert int(cat["last"]) == max(int(r["number"]) for r in c_rows)
    number = {r["name"]: int(r["number"]) for r in labels}
    codes = decode_png(toy_folder / "images" / index[0]["object"])
    sky = masks[0, toy_probe.labels.index("sky")].numpy()
    assert (codes[sky] == number["sky"]).all()
    assert "Source:" in (toy_folder / "README.txt").read_text()


def test_png_encoding_round_trips_large_numbers(tmp_path: Path) -> None:
    codes = np.array([[0, 1, 255], [256, 1197, 65535]])
    Image.fromarray(encode_png(codes)).save(tmp_path / "s.png")
    rgb = np.asarray(Image.open(tmp_path / "s.png"))
    assert rgb[1, 1].tolist() == [1197 % 256, 1197 // 256, 0]
    assert np.array_equal(decode_png(tmp_path / "s.png"), codes)
    with pytest.raises(ValueError, match="0..65535"):
        encode_png(np.array([[65536]]))


def test_nearest_resize() -> None:
    assert nearest_index(4, 2).tolist() == [1, 3]
    assert nearest_index(2, 4).tolist() == [0, 0, 1, 1]
    assert nearest_index(3, 3).tolist() == [0, 1, 2]
    codes = np.arange(12).reshape(3, 4)
    assert resize_nearest(codes, (3, 4)) is codes
    assert resize_nearest(codes, (6, 2)).tolist() == [[1, 3], [1, 3], [5, 7], [5, 7], [9, 11],
                                                      [9, 11]]


class _HalfScene(ToyworldProbe):
    def _masks(self, start: int, n: int) -> torch.Tensor:
        m = super()._masks(start, n)
        m[:, -1, :2] = True                                           # a partial scene label
        return m


def test_refusals(tmp_path: Path, toy_probe: ToyworldProbe) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        write_broden(toy_probe, tmp_path / "full")
    with pytest.raises(ValueError, match="image_format"):
        write_broden(toy_probe, tmp_path / "a", image_format="gif")
    with pytest.raises(ValueError, match="'open_field-s' of category 'scene' covers part"):
        write_broden(_HalfScene(size=2, resolution=16, scene_labels=True), tmp_path / "b")


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "b"), "--count", "3", "--seed", "7", "--resolution", "16",
                 "--format", "png", "--no-scene-labels"]) == 0
    assert "wrote 3 scenes" in capsys.readouterr().out
    header, index = rows(tmp_path / "b" / "index.csv")
    assert header == list(META_COLUMNS) + ["object", "part"] and len(index) == 3
    assert (tmp_path / "b" / "images" / "toyworld" / "000002.png").is_file()
    assert main([str(tmp_path / "t"), "--count", "6", "--resolution", "16", "--typed"]) == 0
    _, index = rows(tmp_path / "t" / "index.csv")
    _, labels = rows(tmp_path / "t" / "label.csv")
    name = {r["number"]: r["name"] for r in labels}
    assert [name[r["scene"]] for r in index] == ["village-s", "forest-s", "lake-s", "road-s",
                                                "mountains-s", "open_field-s"]
    assert main([str(tmp_path / "b"), "--count", "3"]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err


def test_runs_as_a_module(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "gandissect.probes.write_broden",
                           str(tmp_path / "m"), "--count", "2", "--resolution", "16"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m" / "images" / "toyworld" / "000001.jpg").is_file()
