"""Classifiers: published layouts equal torchvision's key by key, published checkpoints (Places365
style, Python 2 pickles, whole pickled models) load safely or are refused clearly, the Classifier
protocol holds, the bundled Toyworld classifier and its training script work, and the renderer's
opt-in scene types leave the untyped renderer byte-identical."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.classifiers import CLASSIFIERS, PUBLISHED, Classifier, build, load_classifier
from models.classifiers.published import torchvision_names
from models.classifiers.toyworld import METADATA_FILE, WEIGHTS_DIR, ToyworldClassifier
from models.safe_load import CheckpointError, UnsafeCheckpointError
from models.toyworld.render import (
    SCENE_MARGIN,
    SCENE_TYPES,
    render_batch,
    render_scene,
    render_typed_batch,
    scene_ratios,
    scene_type_of,
)

Table = list[tuple[str, tuple[int, ...]]]


# --- torchvision's state dicts, written out from its architecture definitions ------------------

def _conv(t: Table, name: str, cout: int, cin: int, k: int, bias: bool = False) -> None:
    t.append((f"{name}.weight", (cout, cin, k, k)))
    if bias:
        t.append((f"{name}.bias", (cout,)))


def _bn(t: Table, name: str, c: int) -> None:
    t += [(f"{name}.weight", (c,)), (f"{name}.bias", (c,)), (f"{name}.running_mean", (c,)),
          (f"{name}.running_var", (c,)), (f"{name}.num_batches_tracked", ())]


def resnet_table(depth: int, num_classes: int) -> Table:
    """torchvision resnet18 (BasicBlock x [2,2,2,2]) / resnet50 (Bottleneck x [3,4,6,3], x4)."""
    t: Table = []
    _conv(t, "conv1", 64, 3, 7)
    _bn(t, "bn1", 64)
    counts, expansion = ([2, 2, 2, 2], 1) if depth == 18 else ([3, 4, 6, 3], 4)
    inplanes = 64
    for i, (planes, n) in enumerate(zip([64, 128, 256, 512], counts, strict=True)):
        for b in range(n):
            p = f"layer{i + 1}.{b}"
            if depth == 18:
                _conv(t, f"{p}.conv1", planes, inplanes, 3)
                _bn(t, f"{p}.bn1", planes)
                _conv(t, f"{p}.conv2", planes, planes, 3)
                _bn(t, f"{p}.bn2", planes)
            else:
                _conv(t, f"{p}.conv1", planes, inplanes, 1)
                _bn(t, f"{p}.bn1", planes)
                _conv(t, f"{p}.conv2", planes, planes, 3)
                _bn(t, f"{p}.bn2", planes)
                _conv(t, f"{p}.conv3", planes * 4, planes, 1)
                _bn(t, f"{p}.bn3", planes * 4)
            if b == 0 and (i > 0 or inplanes != planes * expansion):
                _conv(t, f"{p}.downsample.0", planes * expansion, inplanes, 1)
                _bn(t, f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    return t + [("fc.weight", (num_classes, 512 * expansion)), ("fc.bias", (num_classes,))]


def vgg16_table(num_classes: int) -> Table:
    """torchvision vgg16: cfg 'D' convs (3x3, bias) at features indices, 3 linear layers."""
    t: Table = []
    cin, idx = 3, 0
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"]:
        if v == "M":
            idx += 1
            continue
        assert isinstance(v, int)
        _conv(t, f"features.{idx}", v, cin, 3, bias=True)
        cin, idx = v, idx + 2
    return t + [("classifier.0.weight", (4096, 25088)), ("classifier.0.bias", (4096,)),
                ("classifier.3.weight", (4096, 4096)), ("classifier.3.bias", (4096,)),
                ("classifier.6.weight", (num_classes, 4096)), ("classifier.6.bias", (num_classes,))]


def alexnet_table(num_classes: int) -> Table:
    t: Table = []
    for idx, cout, cin, k in [(0, 64, 3, 11), (3, 192, 64, 5), (6, 384, 192, 3), (8, 256, 384, 3),
                              (10, 256, 256, 3)]:
        _conv(t, f"features.{idx}", cout, cin, k, bias=True)
    return t + [("classifier.1.weight", (4096, 9216)), ("classifier.1.bias", (4096,)),
                ("classifier.4.weight", (4096, 4096)), ("classifier.4.bias", (4096,)),
                ("classifier.6.weight", (num_classes, 4096)), ("classifier.6.bias", (num_classes,))]


TABLES = {"resnet18": lambda n: resnet_table(18, n), "resnet50": lambda n: resnet_table(50, n),
          "vgg16": vgg16_table, "alexnet": alexnet_table}
#: torchvision's published parameter counts for 1000 classes.
PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "vgg16": 138_357_544,
          "alexnet": 61_100_840}


def _meta(arch: str, num_classes: int = 1000) -> Classifier:
    with torch.device("meta"):
        return build(arch, num_classes)


@pytest.mark.parametrize("arch", sorted(TABLES))
@pytest.mark.parametrize("num_classes", [1000, 365])
def test_state_dict_equals_torchvision_key_by_key(arch: str, num_classes: int) -> None:
    net = _meta(arch, num_classes)
    got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert got == TABLES[arch](num_classes)


@pytest.mark.parametrize("arch", sorted(PARAMS))
def test_parameter_counts_match_torchvision(arch: str) -> None:
    net = _meta(arch)
    assert sum(p.numel() for p in net.parameters()) == PARAMS[arch]
    table = [s for k, s in TABLES[arch](1000) if not k.endswith(("running_mean", "running_var",
                                                                    "num_batches_tracked"))]
    assert sum(int(np.prod(s)) for s in table) == PARAMS[arch]


# --- forward passes and layers -----------------------------------------------------------------

#: Hooked layer -> (units, side) for a 64x64 input.
LAYER_SHAPES = {
    "resnet18": {"conv1": (64, 32), "layer1": (64, 16), "layer2": (128, 8), "layer3": (256, 4),
                 "layer4": (512, 2)},
    "resnet50": {"conv1": (64, 32), "layer1": (256, 16), "layer2": (512, 8),
                 "layer3": (1024, 4), "layer4": (2048, 2)},
    "vgg16": {"conv1_1": (64, 64), "conv1_2": (64, 64), "conv2_2": (128, 32),
              "conv3_3": (256, 16), "conv4_3": (512, 8), "conv5_3": (512, 4),
              "features.29": (512, 4)},
    "alexnet": {"conv1": (64, 15), "conv2": (192, 7), "conv3": (384, 3), "conv4": (256, 3),
                "conv5": (256, 3)},
}


@pytest.fixture(scope="module")
def nets() -> dict[str, Classifier]:
    torch.manual_seed(0)
    return {arch: build(arch, 365).eval() for arch in TABLES}


@pytest.mark.parametrize("arch", sorted(LAYER_SHAPES))
def test_forward_and_hooked_layer_shapes(nets: dict[str, Classifier], arch: str) -> None:
    net = nets[arch]
    seen: dict[str, tuple[int, ...]] = {}
    handles = [net.layer(name).register_forward_hook(
        lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape)))
        for name in LAYER_SHAPES[arch]]
    try:
        with torch.no_grad():
            logits = net(torch.rand(2, 3, 64, 64))
    finally:
        for h in handles:
            h.remove()
    assert logits.shape == (2, 365) and torch.isfinite(logits).all()
    assert seen == {n: (2, u, s, s) for n, (u, s) in LAYER_SHAPES[arch].items()}
    assert len(net.classes) == 365 and net.input_size == 224
    assert net.mean == (0.485, 0.456, 0.406) and net.std == (0.229, 0.224, 0.225)


def test_layer_names_aliases_and_errors(nets: dict[str, Classifier]) -> None:
    vgg, alex = nets["vgg16"], nets["alexnet"]
    assert vgg.layer("conv5_3") is vgg.layer("features.29") is vgg.get_submodule("features.29")
    assert isinstance(vgg.layer("conv5_3"), torch.nn.ReLU) and len(vgg.layer_names) == 13
    assert alex.layer_names == ["features.1", "features.4", "features.7", "features.9",
                                "features.11"]
    assert alex.layer("conv5") is alex.get_submodule("features.11")
    assert nets["resnet50"].layer_names == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    with pytest.raises(ValueError, match="valid layers: conv1, layer1"):
        nets["resnet18"].layer("layer5")
    with pytest.raises(ValueError, match="aliases: conv1_1"):
        vgg.layer("conv6_1")


def test_forward_validates_input(nets: dict[str, Classifier]) -> None:
    net = nets["resnet18"]
    with pytest.raises(ValueError, match=r"\[n, 3, H, W\]"):
        net(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match=r"got shape \[1, 4, 64, 64\]"):
        net(torch.rand(1, 4, 64, 64))
    bad = torch.rand(1, 3, 64, 64)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        net(bad)
    with pytest.raises(ValueError, match="floating point"):
        net(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_normalisation_happens_inside(nets: dict[str, Classifier]) -> None:
    net = nets["alexnet"]
    x = torch.rand(1, 3, 64, 64)
    mean = torch.tensor(net.mean).view(1, 3, 1, 1)
    std = torch.tensor(net.std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.logits((x - mean) / std))


# --- published checkpoints ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def places_resnet18(nets: dict[str, Classifier]) -> tuple[Classifier, dict[str, torch.Tensor]]:
    """A ResNet-18 with 365 classes, BN statistics made non-trivial, and its state dict as the
    Places365 release stores it: ``module.`` keys, no ``num_batches_tracked``."""
    net = nets["resnet18"]
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    state = {f"module.{k}": v.clone() for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    return net, state


def _logits(net: Classifier, seed: int = 0) -> torch.Tensor:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return net(x)


def test_places365_pth_tar_round_trip(tmp_path: Path, places_resnet18: tuple) -> None:
    net, state = places_resnet18
    path = tmp_path / "resnet18_places365.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet18", "state_dict": state, "best_prec1": 54.74}, path)
    names = [f"scene_{i}" for i in range(365)]
    loaded = load_classifier("places365-resnet18", path=path, classes=names)
    assert loaded.classes == names and not loaded.training
    torch.testing.assert_close(_logits(loaded), _logits(net), rtol=0, atol=0)


def test_python2_pickle_is_read_with_latin1_strings(tmp_path: Path,
                                                    places_resnet18: tuple) -> None:
    """The Places365 files were saved by Python 2.7 (legacy format): their byte strings need
    not be UTF-8. A legacy file whose ``arch`` is such a string still loads, weights-only."""
    net, state = places_resnet18
    buf = io.BytesIO()
    torch.save({"state_dict": state, "arch": "py2marker"}, buf,
               _use_new_zipfile_serialization=False, pickle_protocol=2)
    py3 = b"X" + struct.pack("<I", 9) + b"py2marker"           # BINUNICODE
    py2 = b"U" + bytes([9]) + b"py2marke\xe9"                  # SHORT_BINSTRING, not UTF-8
    data = buf.getvalue()
    assert data.count(py3) == 1
    path = tmp_path / "resnet18_places365.pth.tar"
    path.write_bytes(data.replace(py3, py2))
    with pytest.raises(UnicodeDecodeError):
        torch.load(path, weights_only=True)
    loaded = load_classifier("places365-resnet18", path=path)
    torch.testing.assert_close(_logits(loaded), _logits(net), rtol=0, atol=0)


def test_places_alexnet_and_pnas_vgg_names_become_torchvision_names() -> None:
    alex = alexnet_table(365)
    places = {k.replace("features.", "features.module.") if k.startswith("features.")
              else k: torch.empty(0) for k, _ in alex}
    assert "features.module.0.weight" in places
    assert list(torchvision_names(places)) == [k for k, _ in alex]
    pnas_convs = [f"conv{b}_{i}" for b, n in enumerate([2, 2, 3, 3, 3], 1)
                  for i in range(1, n + 1)]
    vgg = vgg16_table(365)
    pnas = {}
    for k, _ in vgg:
        head, _, leaf = k.rpartition(".")
        section, idx = head.split(".")
        if section == "features":
            convs = [int(n.split(".")[1]) for n, _ in vgg if n.startswith("features.")
                     and n.endswith(".weight")]
            name = pnas_convs[convs.index(int(idx))]
        else:
            name = {"0": "fc6", "3": "fc7", "6": "fc8a"}[idx]
        pnas[f"module.{section}.{name}.{leaf}"] = torch.empty(0)
    assert "module.features.conv5_3.weight" in pnas and "module.classifier.fc8a.bias" in pnas
    assert list(torchvision_names(pnas)) == [k for k, _ in vgg]


class _NotWeights:
    """Unpickling this needs code from this module: a safe loader must refuse it."""


def test_pickles_that_need_code_are_refused(tmp_path: Path, places_resnet18: tuple) -> None:
    net, state = places_resnet18
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state, "extra": _NotWeights()}, path)
    with pytest.raises(UnsafeCheckpointError, match="trust_pickle"):
        load_classifier("places365-resnet18", path=path)
    whole = tmp_path / "whole_resnet18_places365.pth.tar"
    torch.save(net, whole)
    with pytest.raises(UnsafeCheckpointError):
        load_classifier("places365-resnet18", path=whole)
    with pytest.warns(UserWarning, match="trust_pickle"):
        loaded = load_classifier("places365-resnet18", path=whole, trust_pickle=True)
    torch.testing.assert_close(_logits(loaded), _logits(net), rtol=0, atol=0)


def test_wrong_checkpoints_and_names_give_clear_errors(tmp_path: Path,
                                                       places_resnet18: tuple) -> None:
    _, state = places_resnet18
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"fc.weight: checkpoint \[365, 512\] vs model "
                                              r"\[1000, 512\]"):
        load_classifier("resnet18", path=path)
    with pytest.raises(CheckpointError, match=r"missing keys: layer1.0.bn3.bias.* \| "
                                              r"mismatched shapes: fc.weight"):
        load_classifier("places365-resnet50", path=path)
    with pytest.raises(ValueError, match="resnet18-f37072fd.pth and pass path="):
        load_classifier("resnet18")
    with pytest.raises(ValueError, match="known classifiers: toyworld-classifier, resnet18"):
        load_classifier("resnet19")
    with pytest.raises(ValueError, match="expected 365 class names, got 2"):
        load_classifier("places365-resnet18", path=path, classes=["a", "b"])


def test_class_list_file(tmp_path: Path, places_resnet18: tuple) -> None:
    _, state = places_resnet18
    path = tmp_path / "r.pth"
    torch.save(state, path)
    cats = tmp_path / "categories_places365.txt"
    cats.write_text("".join(f"/a/airfield{i} {i}\n" for i in range(365)))
    net = load_classifier("places365-resnet18", path=path, classes=cats)
    assert net.classes[:2] == ["airfield0", "airfield1"]


def test_registry_lists_every_name() -> None:
    assert set(CLASSIFIERS) == {"toyworld-classifier"} | set(PUBLISHED)
    assert {s.num_classes for n, s in PUBLISHED.items() if n.startswith("places365-")} == {365}


# --- the bundled Toyworld classifier -----------------------------------------------------------

@pytest.fixture(scope="module")
def toy() -> Classifier:
    return load_classifier("toyworld-classifier")


def test_toyworld_classifier_layers_and_size(toy: Classifier) -> None:
    assert isinstance(toy, ToyworldClassifier) and toy.classes == list(SCENE_TYPES)
    assert 200_000 < sum(p.numel() for p in toy.parameters()) < 600_000
    seen: dict[str, tuple[int, ...]] = {}
    handles = [toy.layer(n).register_forward_hook(
        lambda m, i, o, n=n: seen.__setitem__(n, tuple(o.shape))) for n in toy.layer_names]
    try:
        with torch.no_grad():
            assert toy(torch.rand(3, 3, 64, 64)).shape == (3, 6)
    finally:
        for h in handles:
            h.remove()
    assert seen == {"conv1": (3, 32, 64, 64), "conv2": (3, 64, 32, 32),
                    "conv3": (3, 128, 16, 16), "conv4": (3, 128, 8, 8), "conv5": (3, 128, 8, 8)}


def test_toyworld_classifier_accuracy_on_held_out_scenes(toy: Classifier) -> None:
    """The shipped weights classify typed scenes of another seed than they were trained on
    (the metadata's eval seed, new indices) and the metadata reports >= 90% held-out."""
    meta = json.loads((WEIGHTS_DIR / METADATA_FILE).read_text())
    assert meta["classes"] == list(SCENE_TYPES) and meta["accuracy"] >= 0.9
    assert meta["data_seed"] != meta["eval_seed"]
    images, _, labels = render_typed_batch(meta["eval_seed"], 5000, 60)
    pred = toy.predict(torch.from_numpy((images + 1) / 2))
    assert (pred.numpy() == labels).mean() >= 0.85
    stored = load_file(str(WEIGHTS_DIR / "toyworld_classifier.safetensors"))
    assert stored["fc.weight"].dtype == torch.float16


# --- training script ---------------------------------------------------------------------------


def train_straight_and_resumed(main: Any, tmp_path: Path, *extra: str
                               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Checkpoints of 4 tiny training iterations run straight (``a``) and as 2 + 2 resumed and
    exported to ``tmp_path/w`` (``b``), with the extra training arguments ``extra``."""
    common = ["--seed", "3", "--pool", "24", "--eval-samples", "12", "--batch", "4",
              "--warmup", "2", "--log-every", "1", "--eval-every", "2", *extra]
    assert main([*common, "--out", str(tmp_path / "a"), "--iters", "4"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--iters", "2"]) == 0
    assert main(["--out", str(tmp_path / "b"), "--iters", "4", "--resume", "--export",
                 "--weights-dir", str(tmp_path / "w")]) == 0
    return (torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True),
            torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True))

def test_training_resumes_exactly_and_exports(tmp_path: Path) -> None:
    from models.classifiers.train import main

    a, b = train_straight_and_resumed(main, tmp_path)
    assert a["iteration"] == b["iteration"] == 4
    for k, v in a["net"].items():
        torch.testing.assert_close(b["net"][k], v, rtol=0, atol=0)
    meta = json.loads((tmp_path / "w" / METADATA_FILE).read_text())
    assert meta["iterations"] == 4 and meta["seed"] == 3 and set(meta["per_class_accuracy"]) \
        == set(SCENE_TYPES)
    assert "--seed 3" in meta["command"] and "--pool 24" in meta["command"]
    net = load_classifier("toyworld-classifier", path=tmp_path / "w")
    assert net.classes == list(SCENE_TYPES)
    assert main(["--out", str(tmp_path / "c"), "--data-seed", "1", "--eval-seed", "1"]) == 2


# --- scene types in the renderer ---------------------------------------------------------------

def test_untyped_renderer_is_byte_identical_to_before_scene_types() -> None:
    images, masks = render_batch(0, 0, 16)
    assert hashlib.sha256(images.tobytes()).hexdigest() == \
        "660f7d6b0ad84d17c9b9ff5a48886cfa85d22ad63560cc9acecc262f2e12ba11"
    assert hashlib.sha256(masks.tobytes()).hexdigest() == \
        "94c2d3a6986a23b7ef44b02399f7d2aa062ea7806469abbeda83d37b5e7fadc8"


def test_typed_scenes_follow_the_rule_with_a_margin() -> None:
    for i in range(36):
        t = SCENE_TYPES[i % len(SCENE_TYPES)]
        scene = render_scene(4, i, scene_type=t)
        assert scene_type_of(scene.leaf) == t
        others = [r for u, r in scene_ratios(scene.leaf).items() if u != t]
        assert max(others) <= SCENE_MARGIN
    again = render_scene(4, 2, scene_type="lake")
    np.testing.assert_array_equal(again.image, render_scene(4, 2, scene_type="lake").image)
    with pytest.raises(ValueError, match="scene types: village, forest"):
        render_scene(0, 0, scene_type="desert")


def test_typed_batches_are_balanced_and_independent_of_batching() -> None:
    images, masks, labels = render_typed_batch(2, 3, 9)
    assert labels.tolist() == [3, 4, 5, 0, 1, 2, 3, 4, 5]
    tail_images, _, tail_labels = render_typed_batch(2, 8, 4)
    np.testing.assert_array_equal(images[5:], tail_images)
    assert masks.shape == (9, 15, 64, 64) and images.dtype == np.float32


def test_auxiliary_concept_loss_trains_resumes_and_exports_the_plain_classifier(
        tmp_path: Path) -> None:
    from models.classifiers.train import AUX_CELL, Settings, main, typed_cells
    from models.toyworld.concepts import CONCEPTS

    cells = typed_cells(3, 12, cache=tmp_path / "cells.npz", chunk=5)
    _, masks, _ = render_typed_batch(3, 0, 12)
    assert cells.shape == (12, len(CONCEPTS), 64 // AUX_CELL, 64 // AUX_CELL)
    expected = torch.from_numpy(masks).float().reshape(12, len(CONCEPTS), 8, 8, 8, 8)
    torch.testing.assert_close(cells.float(), expected.mean(dim=(3, 5)), atol=1e-3, rtol=0)
    assert torch.equal(typed_cells(3, 12, cache=tmp_path / "cells.npz"), cells)   # cached
    a, b = train_straight_and_resumed(main, tmp_path, "--aux-weight", "0.5", "--act-l1", "0.1")
    assert a["settings"]["aux_weight"] == 0.5 and a["settings"]["act_l1"] == 0.1
    assert a["aux"]["weight"].shape == (len(CONCEPTS), 128, 1, 1)
    for k, v in {**a["net"], **{f"aux.{k}": v for k, v in a["aux"].items()}}.items():
        other = b["aux"][k[4:]] if k.startswith("aux.") else b["net"][k]
        torch.testing.assert_close(other, v, rtol=0, atol=0)
    plain = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["net"]
    assert set(load_file(str(tmp_path / "w" / "toyworld_classifier.safetensors"))) == set(plain)
    meta = json.loads((tmp_path / "w" / METADATA_FILE).read_text())
    assert "--aux-weight 0.5" in meta["command"] and "--act-l1 0.1" in meta["command"]
    with pytest.raises(ValueError, match="must be >= 0"):
        Settings(aux_weight=-1.0)
