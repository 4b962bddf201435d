"""The Broden reader: round trip of the Toyworld fixture, filters, resizing, the published
format, and clear errors for damaged folders."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gandissect.probes.broden import BrodenProbe
from gandissect.probes.broden_format import encode_png
from gandissect.probes.toyworld import ToyworldProbe
from gandissect.probes.write_broden import write_broden


def by_name(probe: BrodenProbe, reference: ToyworldProbe, start: int, n: int,
            rows: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Broden probe's masks and the reference's for the same labels (by name)."""
    channels = [reference.labels.index(name) for name in probe.labels]
    ref = reference.masks(0, len(reference))[:, channels]
    ref = ref[rows] if rows is not None else ref[start:start + n]
    return probe.masks(start, n), ref


def test_round_trip_png_is_exact(toy_folder: Path, toy_probe: ToyworldProbe) -> None:
    probe = BrodenProbe(toy_folder)
    assert len(probe) == len(toy_probe)
    assert probe.image_size == probe.mask_size == (32, 32)
    ours, ref = by_name(probe, toy_probe, 0, len(probe))
    assert torch.equal(ours, ref)
    # every label that occurs is read back, with its category
    occurring = {toy_probe.labels[c] for c in range(len(toy_probe.labels))
                 if toy_probe.masks(0, len(toy_probe))[:, c].any()}
    assert set(probe.labels) == occurring
    for name, cat in zip(probe.labels, probe.categories, strict=True):
        assert cat == toy_probe.categories[toy_probe.labels.index(name)]
    assert set(probe.categories) == {"object", "part", "scene"}
    assert probe.numbers == sorted(probe.numbers) and 0 not in probe.numbers
    diff = (probe.images(0, len(probe)) - toy_probe.images(0, len(toy_probe))).abs()
    assert diff.max() <= 0.5 / 255 + 1e-6                             # rounding to 8 bits


def test_scalar_labels_are_full_masks(toy_folder: Path, toy_probe: ToyworldProbe) -> None:
    probe = BrodenProbe(toy_folder, categories=["scene"])
    assert set(probe.categories) == {"scene"} and len(probe) == len(toy_probe)
    masks = probe.masks(0, len(probe)).flatten(2)
    assert (masks.all(dim=2) == masks.any(dim=2)).all()
    assert (masks.all(dim=2).sum(dim=1) == 1).all()
    ours, ref = by_name(probe, toy_probe, 0, len(probe))
    assert torch.equal(ours, ref)


def test_round_trip_jpeg(tmp_path: Path, toy_probe: ToyworldProbe) -> None:
    folder = write_broden(toy_probe, tmp_path / "jpg", image_format="jpg")
    probe = BrodenProbe(folder)
    ours, ref = by_name(probe, toy_probe, 0, len(probe))
    assert torch.equal(ours, ref)
    diff = (probe.images(0, len(probe)) - toy_probe.images(0, len(toy_probe))).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.15                    # JPEG at quality 95


def test_splits_batching_and_index_errors(toy_folder: Path, toy_probe: ToyworldProbe) -> None:
    val = BrodenProbe(toy_folder, split="val")
    train = BrodenProbe(toy_folder, split="train")
    rows = [i for i in range(len(toy_probe)) if i % 5 == 4]
    assert len(val) == len(rows) and len(train) == len(toy_probe) - len(rows)
    ours, ref = by_name(val, toy_probe, 0, len(val), rows)
    assert torch.equal(ours, ref)
    whole = train.masks(0, len(train))
    assert torch.equal(train.masks(3, 5), whole[3:8])
    assert torch.equal(train.images(7, 2), train.images(0, len(train))[7:9])
    with pytest.raises(IndexError, match="requested from a probe set of 4"):
        val.masks(3, 2)
    with pytest.raises(ValueError, match=r"no rows of split 'test'.*'train': 16"):
        BrodenProbe(toy_folder, split="test")


def test_resizing_images_and_masks(toy_folder: Path, toy_probe: ToyworldProbe) -> None:
    probe = BrodenProbe(toy_folder, size=(24, 20), mask_size=16)
    assert probe.image_size == (24, 20) and probe.mask_size == (16, 16)
    assert probe.images(0, 2).shape == (2, 3, 24, 20)
    ours, ref = by_name(probe, toy_probe, 0, 4)
    assert torch.equal(ours, ref[..., 1::2, 1::2])                     # nearest, centred cells
    assert BrodenProbe(toy_folder, size=32).images(0, 1).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="size must be"):
        BrodenProbe(toy_folder, size=(0, 4))


def test_category_label_and_frequency_filters(toy_folder: Path,
                                              toy_probe: ToyworldProbe) -> None:
    parts = BrodenProbe(toy_folder, categories="part")
    assert set(parts.categories) == {"part"}
    has_parts = [i for i in range(len(toy_probe))
                 if toy_probe.masks(i, 1)[0, 9:15].any()]               # crown ... window
    assert len(parts) == len(has_parts)                # rows without parts would be skipped
    ours, ref = by_name(parts, toy_probe, 0, len(parts), has_parts)
    assert torch.equal(ours, ref)
    chosen = BrodenProbe(toy_folder, labels=["door", "sky"])
    assert sorted(chosen.labels) == ["door", "sky"] and len(chosen) == len(toy_probe)
    ours, ref = by_name(chosen, toy_probe, 0, len(chosen))
    assert torch.equal(ours, ref)
    with pytest.raises(ValueError, match=r"labels \['doors'\].*close matches.*'door'"):
        BrodenProbe(toy_folder, labels=["doors"])
    with pytest.raises(ValueError, match="unknown categories"):
        BrodenProbe(toy_folder, categories=["material"])
    freq = {r["name"]: int(r["frequency"]) for r in csv.DictReader(open(toy_folder / "label.csv"))}
    common = BrodenProbe(toy_folder, min_frequency=15)
    assert set(common.labels) == {n for n, f in freq.items() if f >= 15}
    with pytest.raises(ValueError, match="no labels"):
        BrodenProbe(toy_folder, min_frequency=10_000)


def test_describe_and_pickle(toy_copy: Path) -> None:
    probe = BrodenProbe(toy_copy, split="train")
    d = probe.describe()
    assert json.loads(json.dumps(d)) == d
    assert d["name"] == "broden" and d["size"] == len(probe) and d["labels"] == len(probe.labels)
    assert d["path"] == str(toy_copy.resolve()) and d["split"] == "train"
    assert BrodenProbe(toy_copy, split="train").describe() == d
    assert BrodenProbe(toy_copy, split="val").describe() != d
    assert BrodenProbe(toy_copy, split="train", labels=["sky"]).describe() != \
        BrodenProbe(toy_copy, split="train", labels=["grass"]).describe()
    copy = pickle.loads(pickle.dumps(probe))
    assert torch.equal(copy.masks(0, 3), probe.masks(0, 3))
    index = toy_copy / "index.csv"
    index.write_text(index.read_text().replace(",train,", ",val,", 1))  # content changes
    assert BrodenProbe(toy_copy, split="train").describe()["index_sha256"] != d["index_sha256"]


class _Overlapping(ToyworldProbe):
    """Images 12x16, masks 6x8: two 'part' labels that overlap (two PNG layers), an 'object'
    label shared nowhere else, and a whole-image 'texture' label on odd samples."""

    def __init__(self) -> None:
        super().__init__(size=4, resolution=16)
        self.labels = ["a", "b", "thing", "striped-t"]
        self.categories = ["part", "part", "object", "texture"]
        self.image_size, self.mask_size = (12, 16), (6, 8)

    def _images(self, start: int, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(start)
        return torch.rand((n, 3, 12, 16), generator=g)

    def _masks(self, start: int, n: int) -> torch.Tensor:
        m = torch.zeros((n, 4, 6, 8), dtype=torch.bool)
        for k in range(n):
            i = start + k
            m[k, 0, :, :4 + i] = True
            m[k, 1, 1 + i % 3:, 3:] = True
            m[k, 2, 0, i] = True
            m[k, 3] = i % 2 == 1
        return m


def test_layers_scalars_and_unequal_sizes(tmp_path: Path) -> None:
    src = _Overlapping()
    folder = write_broden(src, tmp_path / "o", image_format="png", dataset="synthetic")
    row = next(csv.DictReader(open(folder / "index.csv")))
    assert row["part"].split(";") == ["synthetic/000000_part.png", "synthetic/000000_part_2.png"]
    assert (row["ih"], row["iw"], row["sh"], row["sw"]) == ("12", "16", "6", "8")
    probe = BrodenProbe(folder)
    assert probe.image_size == (12, 16) and probe.mask_size == (6, 8)
    channels = [src.labels.index(n) for n in probe.labels]
    assert torch.equal(probe.masks(0, 4), src.masks(0, 4)[:, channels])
    assert (probe.images(0, 4) - src.images(0, 4)).abs().max() <= 0.5 / 255 + 1e-6


def _write(root: Path, files: dict[str, str], pngs: dict[str, np.ndarray]) -> Path:
    (root / "images").mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    for name, codes in pngs.items():
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(encode_png(codes)).save(root / "images" / name)
    return root


def published(root: Path) -> Path:
    """A two-image folder in the published broden1_224 format, with label numbers above 255,
    a label in two categories, a part PNG of two layers and scalar scene/texture labels."""
    index = ("image,split,ih,iw,sh,sw,color,object,part,material,scene,texture\n"
             "dtd/g_0106.jpg,train,8,8,4,4,dtd/g_0106_color.png,,,,,314;194\n"
             "ade20k/a.jpg,val,8,8,4,4,,ade20k/a_object.png,ade20k/a_part_1.png;"
             "ade20k/a_part_2.png,ade20k/a_material.png,379,\n")
    labels = ("number,name,category,frequency,coverage,syns\n"
              "10,red-c,color(289),289,9.140027,\n"
              "21,fabric,material(36);object(3),39,4.225474,cloth\n"
              "194,striped-t,texture(120),120,120.000000,\n"
              "300,wheel,part(50),50,2.000000,\n"
              "301,handle,part(40),40,1.000000,\n"
              "314,banded-t,texture(120),120,120.000000,\n"
              "379,street-s,scene(20),20,20.000000,\n"
              "400,car,object(70),70,5.000000,auto;automobile\n")
    cats = ("name,first,last,count,frequency\ncolor,10,10,1,289\nobject,21,400,2,73\n"
            "part,300,301,2,90\nmaterial,21,21,1,36\nscene,379,379,1,20\n"
            "texture,194,314,2,240\n")
    c = "code,number,name,frequency,coverage\n"
    files = {"index.csv": index, "label.csv": labels, "category.csv": cats,
             "c_color.csv": c + "1,10,red-c,289,9.140027\n",
             "c_object.csv": c + "1,400,car,70,5.0\n2,21,fabric,3,0.2\n",
             "c_part.csv": c + "1,300,wheel,50,2.0\n2,301,handle,40,1.0\n",
             "c_material.csv": c + "1,21,fabric,36,4.0\n",
             "c_scene.csv": c + "1,379,street-s,20,20.0\n",
             "c_texture.csv": c + "1,194,striped-t,120,120.0\n2,314,banded-t,120,120.0\n"}
    color = np.zeros((4, 4), dtype=np.int64)
    color[:2] = 10
    obj = np.zeros((4, 4), dtype=np.int64)
    obj[0] = 400
    obj[3, :2] = 21
    part1, part2 = np.zeros((4, 4), dtype=np.int64), np.zeros((4, 4), dtype=np.int64)
    part1[0, :2] = 300
    part2[0, 1:] = 301                                    # overlaps wheel at (0, 1)
    material = np.zeros((4, 4), dtype=np.int64)
    material[3, 2:] = 21
    root = _write(root, files, {"dtd/g_0106_color.png": color, "ade20k/a_object.png": obj,
                                "ade20k/a_part_1.png": part1, "ade20k/a_part_2.png": part2,
                                "ade20k/a_material.png": material})
    for name in ("dtd/g_0106.jpg", "ade20k/a.jpg"):
        Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(root / "images" / name)
    return root


def test_the_published_format(tmp_path: Path) -> None:
    probe = BrodenProbe(published(tmp_path / "b"))
    assert probe.labels == ["red-c", "fabric", "striped-t", "wheel", "handle", "banded-t",
                            "street-s", "car"]
    assert probe.numbers == [10, 21, 194, 300, 301, 314, 379, 400]
    assert probe.categories == ["color", "material", "texture", "part", "part", "texture",
                                "scene", "object"]                  # fabric: most coverage
    assert probe.mask_size == (4, 4) and probe.image_size == (8, 8)
    m = probe.masks(0, 2)
    ch = {n: probe.labels.index(n) for n in probe.labels}
    assert m[0, ch["red-c"], :2].all() and not m[0, ch["red-c"], 2:].any()
    assert m[0, ch["striped-t"]].all() and m[0, ch["banded-t"]].all()
    assert not m[0, ch["car"]].any() and m[1, ch["street-s"]].all()
    fabric = np.zeros((4, 4), dtype=bool)
    fabric[3] = True                                      # object half and material half
    assert np.array_equal(m[1, ch["fabric"]].numpy(), fabric)
    assert m[1, ch["wheel"], 0].tolist() == [True, True, False, False]
    assert m[1, ch["handle"], 0].tolist() == [False, True, True, True]
    assert m[1, ch["car"], 0].all() and m[1, ch["car"]].sum() == 4
    obj = BrodenProbe(tmp_path / "b", categories=["object"])
    assert len(obj) == 1 and obj.categories == ["object", "object"]   # fabric: object here
    assert obj.masks(0, 1)[0, 0].sum() == 2                           # object pixels only


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_not_a_broden_folder(tmp_path: Path, toy_copy: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a folder.*index.csv"):
        BrodenProbe(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"not a Broden folder \(index.csv is missing\).*"
                                                r"label.csv, category.csv, c_<category>.csv"):
        BrodenProbe(tmp_path)
    (toy_copy / "c_part.csv").unlink()
    with pytest.raises(FileNotFoundError, match="c_part.csv is missing"):
        BrodenProbe(toy_copy)
    assert len(BrodenProbe(toy_copy, categories=["object"])) == 20     # only what is used


def test_missing_columns(toy_copy: Path) -> None:
    index = toy_copy / "index.csv"
    _edit(index, "image,split,ih,iw,sh,sw,object,part,scene", "image,split,ih,iw,sh,object,part")
    with pytest.raises(ValueError, match=r"index.csv lacks column\(s\) sw, scene"):
        BrodenProbe(toy_copy)
    _edit(toy_copy / "label.csv", "number,name,category,frequency",
          "number,title,category,frequency")
    with pytest.raises(ValueError, match=r"label.csv lacks column\(s\) name"):
        BrodenProbe(toy_copy)


def test_bad_cells(toy_copy: Path) -> None:
    _edit(toy_copy / "index.csv", ",train,32,", ",train,x,")
    with pytest.raises(ValueError, match=r"index.csv, line 2: column ih must be an integer, "
                                         r"got 'x'"):
        BrodenProbe(toy_copy)


def test_unknown_label_numbers(toy_copy: Path) -> None:
    rows = list(csv.DictReader(open(toy_copy / "index.csv")))
    scene = rows[0]["scene"]
    _edit(toy_copy / "index.csv", f",{scene}\n", ",999\n")
    with pytest.raises(ValueError, match="line 2: whole-image label number 999 is not in"):
        BrodenProbe(toy_copy)
    _edit(toy_copy / "index.csv", ",999\n", f",{scene}\n")
    codes = np.full((32, 32), 1, dtype=np.int64)
    codes[5, 5] = 999
    Image.fromarray(encode_png(codes)).save(toy_copy / "images" / rows[2]["object"])
    probe = BrodenProbe(toy_copy)
    probe.masks(0, 2)
    with pytest.raises(ValueError, match=r"000002_object.png \(index.csv line 4\) holds label "
                                         r"number\(s\) \[999\] not in"):
        probe.masks(0, 3)
    _edit(toy_copy / "c_object.csv", "\n1,", "\n1,777,nothing,1,1.0\n1,")
    with pytest.raises(ValueError, match="c_object.csv, line 2: label number 777 is not in"):
        BrodenProbe(toy_copy)


def test_missing_and_damaged_files(toy_copy: Path) -> None:
    rows = list(csv.DictReader(open(toy_copy / "index.csv")))
    probe = BrodenProbe(toy_copy)
    (toy_copy / "images" / rows[1]["part"]).unlink()
    with pytest.raises(FileNotFoundError, match=r"000001_part.png is missing \(index.csv line 3"):
        probe.masks(1, 1)
    (toy_copy / "images" / rows[2]["object"]).write_bytes(b"not a png")
    with pytest.raises(ValueError, match="000002_object.png is not a readable image"):
        probe.masks(2, 1)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(toy_copy / "images" / rows[3]["object"])
    with pytest.raises(ValueError, match="000003_object.png has image mode L.*R \\+ 256 \\* G"):
        probe.masks(3, 1)
    (toy_copy / "images" / rows[4]["image"]).unlink()
    with pytest.raises(FileNotFoundError, match=r"000004.png \(index.csv line 6\) is missing"):
        probe.images(4, 1)
    (toy_copy / "images" / rows[5]["image"]).write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="000005.png .* is not a readable image"):
        probe.images(5, 1)
    assert probe.masks(6, 2).shape[0] == 2                            # the rest still reads
