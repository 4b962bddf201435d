"""UPerNet (unified perceptual parsing) segmenter: exact upp-resnet50-upernet key layout at full
width (meta device), and with random weights at reduced width (stem 4 instead of 64, fpn/ppm 8
instead of 512; same ResNet-50 block counts 3/4/6/3, so the same keys with smaller shapes):
loading from a folder, multi-label rules against brute force, normalisation, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from models.safe_load import CheckpointError
from segmenters.upernet import UPerNet, UPerNetSegmenter, from_state_dicts, load_segmenter

LABELS: dict[str, Any] = {
    "object": ["-", "sky", "building", "tree", "door", "person"],
    "material": ["-", "wood", "glass", "sky"],
    "scene": ["street", "kitchen"],
    "part": ["door", "window", "head", "arm"],
    "object_part": {"person": ["head", "arm"], "building": ["door", "window"]},
}
SMALL = {"stem": 4, "fpn_dim": 8, "ppm_dim": 8}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Many tiny convs: on the shared 2-core machine 2 threads were ~100x slower than 1."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _model(seed: int = 0) -> UPerNet:
    m = UPerNet.empty(6, 4, 4, 2, **SMALL).init_weights_(seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # distinct classes win in different places
        for head in ("object_head", "part_head", "material_head"):
            conv = m.decoder.get_submodule(f"{head}.1")
            assert isinstance(conv, torch.nn.Conv2d) and conv.bias is not None
            conv.weight.mul_(3.0)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
        for name, b in m.named_buffers():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return m.eval()


def _folder(tmp_path: Path, model: UPerNet, labels: dict[str, Any] = LABELS,
            epoch: int = 40) -> Path:
    torch.save(model.encoder.state_dict(), tmp_path / f"encoder_epoch_{epoch}.pth")
    torch.save(model.decoder.state_dict(), tmp_path / f"decoder_epoch_{epoch}.pth")
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    return tmp_path


def _images(n: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 8, size // 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear").clamp(-1, 1)


def test_full_width_key_layout() -> None:
    with torch.device("meta"):
        m = UPerNet(n_object=336, n_part=10, n_material=26, n_scene=5)
    enc = {k: tuple(v.shape) for k, v in m.encoder.state_dict().items()}
    dec = {k: tuple(v.shape) for k, v in m.decoder.state_dict().items()}
    assert enc["conv1.weight"] == (64, 3, 3, 3) and enc["conv3.weight"] == (128, 64, 3, 3)
    assert enc["layer1.0.downsample.0.weight"] == (256, 128, 1, 1)
    assert enc["layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert enc["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    blocks = {n: sum(k.startswith(f"layer{n}.") and k.endswith(".conv1.weight") for k in enc)
              for n in range(1, 5)}
    assert blocks == {1: 3, 2: 4, 3: 6, 4: 3}
    assert sum(k.endswith("downsample.0.weight") for k in enc) == 4
    # 3 stem + 53 bottleneck/downsample convs... each BN has 5 entries, each conv 1
    n_conv, n_bn = 3 + 3 * 16 + 4, 3 + 3 * 16 + 4
    assert len(enc) == n_conv + 5 * n_bn
    assert dec["ppm_conv.3.0.weight"] == (512, 2048, 1, 1)
    assert dec["ppm_last_conv.0.weight"] == (512, 2048 + 4 * 512, 3, 3)
    assert dec["fpn_in.0.0.weight"] == (512, 256, 1, 1)
    assert dec["fpn_in.2.0.weight"] == (512, 1024, 1, 1) and "fpn_in.3.0.weight" not in dec
    assert dec["fpn_out.2.0.0.weight"] == (512, 512, 3, 3)
    assert dec["fpn_out.0.0.1.running_var"] == (512,)
    assert dec["conv_fusion.0.weight"] == (512, 2048, 3, 3)
    assert dec["scene_head.0.0.weight"] == (512, 512, 3, 3)
    assert dec["scene_head.2.weight"] == (5, 512, 1, 1) and dec["scene_head.2.bias"] == (5,)
    assert dec["object_head.1.weight"] == (336, 512, 1, 1)
    assert dec["part_head.1.bias"] == (10,) and dec["material_head.0.1.weight"] == (512,)


def test_labels_and_categories() -> None:
    seg = UPerNetSegmenter(_model(), LABELS, sizes=(64,))
    assert seg.labels == ["sky", "building", "tree", "door", "person", "wood", "glass",
                          "sky-material", "window", "head", "arm"]
    assert seg.categories == ["object"] * 5 + ["material"] * 3 + ["part"] * 3
    assert seg.label_index("window") == 8


def test_load_folder_and_multilabel_rules_vs_brute_force(tmp_path: Path) -> None:
    m = _model(seed=2)
    seg = load_segmenter("cpu", path=_folder(tmp_path, m), sizes=(64,), batch_size=2)
    x = _images(3)
    masks = seg.segment(x)
    assert masks.shape == (3, 11, 64, 64) and masks.dtype == torch.bool
    p = seg.probabilities(x)
    obj, mat = p["object"].argmax(1), p["material"].argmax(1)
    # brute force, pixel by pixel rules
    for o in (1, 2, 3, 5):  # 4 = door, also a part of building (below)
        assert torch.equal(masks[:, o - 1], obj == o)
    for k in range(1, 4):
        assert torch.equal(masks[:, 4 + k], mat == k)
    part_b = p["part"][:, 0:2].argmax(1)   # building (object 2): door (-> object 'door'), window
    part_p = p["part"][:, 2:4].argmax(1)   # person (object 5): head, arm
    in_b, in_p = obj == 2, obj == 5
    assert torch.equal(masks[:, 8], in_b & (part_b == 1))
    assert torch.equal(masks[:, 9], in_p & (part_p == 0))
    assert torch.equal(masks[:, 10], in_p & (part_p == 1))
    assert torch.equal(masks[:, 3], (obj == 4) | (in_b & (part_b == 0)))  # merged 'door'
    assert (masks[:, :5].sum(1) <= 2).all() and (masks[:, 5:8].sum(1) <= 1).all()
    # the test is not vacuous: several objects, materials and parts occur
    assert (masks.flatten(2).any(2).sum(0) > 0).sum() >= 7
    assert (masks[:, 8:].any()) and (in_b.any() or in_p.any())
    # probabilities: softmax per category (and per owner for parts)
    torch.testing.assert_close(p["object"].sum(1), torch.ones(3, 64, 64))
    torch.testing.assert_close(p["part"][:, 2:4].sum(1), torch.ones(3, 64, 64))
    assert torch.equal(seg.segment(x[1:2]), masks[1:2])  # batch independent


def test_part_objects_sizes_and_downsample(tmp_path: Path) -> None:
    m = _model(seed=2)
    only_people = UPerNetSegmenter(m, LABELS, sizes=(64,), part_objects=["person"])
    full = UPerNetSegmenter(m, LABELS, sizes=(64,))
    x = _images(2)
    a, b = only_people.segment(x), full.segment(x)
    # 'window' belongs only to building, whose parts are not predicted: no label that is never set
    assert "window" not in only_people.labels and len(only_people.labels) == 10
    assert only_people.labels == [n for n in full.labels if n != "window"]
    keep = [0, 1, 2, 4, 5, 6, 7]  # 'door' (3) also gets building's door part only in `full`
    assert torch.equal(a[:, 8:], b[:, 9:]) and torch.equal(a[:, keep], b[:, keep])
    assert not (a[:, 3] & ~b[:, 3]).any()
    assert a[:, 8:].any()  # head/arm are set
    two = UPerNetSegmenter(m, LABELS, sizes=(64, 32), downsample=2)
    p = two.probabilities(x)
    assert p["object"].shape == (2, 6, 32, 32)
    torch.testing.assert_close(p["object"].sum(1), torch.full((2, 32, 32), 2.0))
    assert two.segment(x).shape == (2, 11, 32, 32) and two.output_size(64, 48) == (32, 24)


def test_normalisation() -> None:
    seg = UPerNetSegmenter(_model(), LABELS)
    white_red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)  # pure red, RGB
    caffe = seg._normalize(white_red).flatten().tolist()
    assert caffe == pytest.approx([-102.9801, -115.9465, 255 - 122.7717])  # BGR order
    seg_in = UPerNetSegmenter(_model(), LABELS, normalization="imagenet")
    imnet = seg_in._normalize(white_red).flatten().tolist()
    assert imnet == pytest.approx([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225])


def test_clear_errors(tmp_path: Path) -> None:
    m = _model()
    with pytest.raises(ValueError, match="part head has 4 channels but labels.json gives 5"):
        UPerNetSegmenter(m, dict(LABELS, object_part={"person": ["head", "arm", "leg"],
                                                      "building": ["door", "window"]}))
    with pytest.raises(ValueError, match="object head has 6 channels"):
        UPerNetSegmenter(m, dict(LABELS, object=LABELS["object"] + ["car"]))
    with pytest.raises(ValueError, match="lacks 'object_part'"):
        UPerNetSegmenter(m, {k: v for k, v in LABELS.items() if k != "object_part"})
    with pytest.raises(ValueError, match="normalization"):
        UPerNetSegmenter(m, LABELS, normalization="rgb")
    with pytest.raises(ValueError, match="objects with parts: building, person"):
        UPerNetSegmenter(m, LABELS, part_objects=["tree"])
    with pytest.raises(ValueError, match="needs path"):
        load_segmenter()
    with pytest.raises(FileNotFoundError, match="encoder_epoch"):
        load_segmenter(path=tmp_path)
    enc, dec = m.encoder.state_dict(), m.decoder.state_dict()
    with pytest.raises(CheckpointError, match=r"missing keys: layer3\.5\.bn2\.weight"):
        from_state_dicts({k: v for k, v in enc.items() if k != "layer3.5.bn2.weight"}, dec,
                         LABELS)
    bad = dict(dec, **{"object_head.1.weight": torch.zeros(7, 8, 1, 1)})
    with pytest.raises(CheckpointError, match=r"object_head\.1\.weight: checkpoint \[7, 8, 1, 1\]"):
        from_state_dicts(enc, bad, LABELS)
    with pytest.raises(CheckpointError, match="not a unifiedparsing UPerNet decoder"):
        from_state_dicts(enc, {"weight": torch.zeros(1)}, LABELS)
    seg = UPerNetSegmenter(m, LABELS)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        seg.segment(torch.full((1, 3, 32, 32), 3.0))


def test_num_batches_tracked_optional_and_epoch_pick(tmp_path: Path) -> None:
    m = _model(seed=4)
    enc = {k: v for k, v in m.encoder.state_dict().items() if "num_batches" not in k}
    torch.save(enc, tmp_path / "encoder_epoch_7.pth")
    torch.save(m.decoder.state_dict(), tmp_path / "decoder_epoch_7.pth")
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    seg = load_segmenter(path=tmp_path, sizes=(64,))
    ref = UPerNetSegmenter(m, LABELS, sizes=(64,))
    x = _images(1)
    assert torch.equal(seg.segment(x), ref.segment(x))
    # a mismatch names the folder and the files of the chosen epoch
    torch.save({k: v for k, v in enc.items() if k != "conv1.weight"},
               tmp_path / "encoder_epoch_7.pth")
    with pytest.raises(CheckpointError, match="encoder_epoch_7.pth.*not a unifiedparsing"):
        load_segmenter(path=tmp_path)


def test_pyramid_pooling_is_prroi_pool() -> None:
    """The PPM pools with PrRoIPool over the RoI (0, 0, W, H) as GAN Dissection does; the
    'average' option is adaptive average pooling. The two differ even where the grid divides
    the map."""
    from segmenters.prroi_pool import prroi_pool2d

    m = _model(seed=3)
    x = _images(2, 64)
    feats = m.encoder(UPerNetSegmenter(m, LABELS)._normalize(x))
    dec = m.decoder
    c5 = feats[-1]
    rois = torch.tensor([[i, 0.0, 0.0, c5.shape[3], c5.shape[2]] for i in range(2)])
    seen: list[torch.Tensor] = []
    hook = dec.ppm_conv[1].register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    try:
        dec.ppm_pooling = "prroi"
        dec(feats)
        dec.ppm_pooling = "average"
        dec(feats)
    finally:
        hook.remove()
    s = dec.pool_scales[1]
    size = tuple(c5.shape[2:])

    def up(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(t, size, mode="bilinear", align_corners=False)

    torch.testing.assert_close(seen[0], up(prroi_pool2d(c5, rois, s, s)))
    torch.testing.assert_close(seen[1], up(torch.nn.functional.adaptive_avg_pool2d(c5, s)))
    assert not torch.allclose(seen[0], seen[1])
    with pytest.raises(ValueError, match="ppm_pooling"):
        UPerNetSegmenter(m, LABELS, ppm_pooling="max")
