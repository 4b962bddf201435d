"""SegFormer segmenter: a tiny random ``SegformerForSemanticSegmentation`` (4 encoder blocks,
hidden sizes 8..32, 150 ADE-style labels) saved with ``save_pretrained`` and loaded through
``segmenters.load("segformer", path=...)``; masks against transformers' own forward pass and
post-processing, preprocessing by hand and against transformers' PIL image processor, and
errors for bad folders, pickles, hub ids offline and bad images. No network."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install transformers); "
    "CI installs it through the test extra")

import segmenters  # noqa: E402
from models.safe_load import CheckpointError, UnsafeCheckpointError  # noqa: E402
from segmenters.segformer import (  # noqa: E402
    Preprocessing,
    SegFormerSegmenter,
    load_segmenter,
)

ADE_FIRST = ["wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane"]
N_LABELS = 150
ID2LABEL = {i: (ADE_FIRST[i] if i < len(ADE_FIRST) else f"class{i}") for i in range(N_LABELS)}
LABELS = [name.strip() for name in ID2LABEL.values()]


def _config(num_labels: int = N_LABELS, id2label: dict[int, str] | None = None,
            **extra: Any) -> Any:
    id2label = ID2LABEL if id2label is None else id2label
    return transformers.SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2],
        decoder_hidden_size=16, num_labels=num_labels, id2label=id2label,
        label2id={v: k for k, v in id2label.items()}, **extra)


def _model(seed: int = 0, **config: Any) -> Any:
    """Random weights from a local generator (the global RNG is forked, then restored)."""
    with torch.random.fork_rng(devices=[]):
        model = transformers.SegformerForSemanticSegmentation(_config(**config)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("weight"):  # layer / batch norm scales
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        model.decode_head.classifier.weight.mul_(4.0)  # many classes win somewhere
    return model


def _save(model: Any, folder: Path, size: int | None = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    if size is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(
            {"size": {"height": size, "width": size}, "do_rescale": True,
             "rescale_factor": 1 / 255, "image_mean": [0.485, 0.456, 0.406],
             "image_std": [0.229, 0.224, 0.225], "resample": 2}))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    model = _model()
    return model, _save(model, tmp_path_factory.mktemp("segformer"))


def _images(n: int = 5, h: int = 48, w: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h // 8, w // 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear").clamp(-1, 1)


def test_load_folder_shape_labels_one_label_per_pixel(tiny: tuple[Any, Path]) -> None:
    _, folder = tiny
    seg = segmenters.load("segformer", path=folder, batch_size=2)
    assert isinstance(seg, SegFormerSegmenter)
    assert seg.preprocessing.size == (64, 64)
    masks = seg.segment(_images(5))
    assert masks.shape == (5, N_LABELS, 48, 40) and masks.dtype == torch.bool
    assert torch.equal(masks.sum(1), torch.ones(5, 48, 40, dtype=torch.long))
    assert seg.labels == LABELS and seg.labels[7] == "bed"
    assert seg.categories == ["object"] * N_LABELS
    assert seg.label_index("tree") == 4
    assert seg.segment(torch.zeros(0, 3, 48, 40)).shape == (0, N_LABELS, 48, 40)


def test_masks_equal_argmax_of_transformers_logits(tiny: tuple[Any, Path]) -> None:
    model, folder = tiny
    seg = load_segmenter(path=folder, batch_size=8)
    x = _images(6)
    masks = seg.segment(x)
    # brute force: transformers' own forward pass and post-processing on the same input
    ref_model = transformers.SegformerForSemanticSegmentation.from_pretrained(str(folder))
    with torch.no_grad():
        outputs = ref_model(pixel_values=seg.preprocess(x))
    post = transformers.SegformerImageProcessorPil()
    ref = torch.stack(post.post_process_semantic_segmentation(outputs,
                                                               target_sizes=[(48, 40)] * 6))
    expected = torch.nn.functional.one_hot(ref, N_LABELS).permute(0, 3, 1, 2).bool()
    assert torch.equal(masks, expected)
    assert len(ref.unique()) >= 10  # not vacuous: many classes win somewhere
    # the loaded weights are the saved ones, and the result does not depend on batching
    with torch.no_grad():
        torch.testing.assert_close(seg.logits(x), model(pixel_values=seg.preprocess(x)).logits)
    assert torch.equal(load_segmenter(path=folder, batch_size=1).segment(x), masks)
    small = load_segmenter(path=folder, downsample=2).segment(x)
    ref2 = torch.stack(post.post_process_semantic_segmentation(outputs,
                                                                target_sizes=[(24, 20)] * 6))
    assert small.shape == (6, N_LABELS, 24, 20) and torch.equal(small.float().argmax(1), ref2)


def _plain(size: tuple[int, int]) -> Preprocessing:
    return Preprocessing(size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), uint8=False)


def test_preprocessing_by_hand(tiny: tuple[Any, Path]) -> None:
    model, _ = tiny
    seg = SegFormerSegmenter(model, Preprocessing(size=(64, 64), uint8=False))
    colour = torch.tensor([0.5, -0.25, -1.0])
    x = colour.view(1, 3, 1, 1).expand(1, 3, 10, 7)
    pv = seg.preprocess(x)
    assert pv.shape == (1, 3, 64, 64) and pv.dtype == torch.float32
    expected = [(0.75 - 0.485) / 0.229, (0.375 - 0.456) / 0.224, (0.0 - 0.406) / 0.225]
    for c in range(3):
        torch.testing.assert_close(pv[0, c], torch.full((64, 64), expected[c]))
    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))  # values in [0, 1]
    # enlarging 2x2 -> 4x4: bilinear, pixel centres (align_corners=False)
    up = torch.tensor([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    got = SegFormerSegmenter(model, _plain((4, 4))).preprocess(img[None, :, :2, :2] * 2 - 1)
    torch.testing.assert_close(got[0], up @ img[:, :2, :2] @ up.T)
    # shrinking 8x8 -> 4x4: PIL's antialiased triangle filter, support 2 source pixels
    down = torch.zeros(4, 8)
    down[0, :3], down[3, 5:] = torch.tensor([3, 3, 1]) / 7, torch.tensor([1, 3, 3]) / 7
    down[1, 1:5], down[2, 3:7] = torch.tensor([1, 3, 3, 1]) / 8, torch.tensor([1, 3, 3, 1]) / 8
    got = SegFormerSegmenter(model, _plain((4, 4))).preprocess(img[None] * 2 - 1)
    torch.testing.assert_close(got[0], down @ img @ down.T)
    keep = SegFormerSegmenter(model, Preprocessing(size=None, uint8=False)).preprocess(x)
    assert keep.shape == (1, 3, 10, 7)
    # default (uint8=True): the colour is first rounded to 8 bits, as the processor's input
    u8 = SegFormerSegmenter(model, Preprocessing(size=(64, 64))).preprocess(x)
    q = [191 / 255, 96 / 255, 0.0]  # round(127.5 * (c + 1))
    for c, (m, sd) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)):
        torch.testing.assert_close(u8[0, c], torch.full((64, 64), (q[c] - m) / sd))


@pytest.mark.parametrize("shape", [(37, 50), (100, 90), (64, 64)])
def test_preprocessing_matches_transformers_image_processor(tiny: tuple[Any, Path],
                                                            shape: tuple[int, int]) -> None:
    model, _ = tiny
    seg = SegFormerSegmenter(model, Preprocessing(size=(64, 64)))
    u = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = seg.preprocess(torch.from_numpy(u).permute(2, 0, 1)[None].float() / 127.5 - 1)
    proc = transformers.SegformerImageProcessorPil(size={"height": 64, "width": 64})
    theirs = proc(images=[u], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 64, 64)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)  # same 8-bit resize: exact
    # the float path (uint8=False) does not round: within 1.5 uint8 steps
    level = 1 / 255 / 0.224
    flt = SegFormerSegmenter(model, Preprocessing(size=(64, 64), uint8=False))
    other = flt.preprocess(torch.from_numpy(u).permute(2, 0, 1)[None].float() / 127.5 - 1)
    assert (other - theirs).abs().max() <= 1.5 * level


def test_labels_equal_image_processor_pipeline(tmp_path: Path) -> None:
    """Label maps agree exactly with SegformerImageProcessor + model +
    post_process_semantic_segmentation on the same 8-bit images, on a tiny random model whose
    labels flip on small input changes (the float resize disagreed on ~4.5% of pixels)."""
    model = _model(seed=5)
    folder = _save(model, tmp_path / "m", size=64)
    seg = load_segmenter(path=folder, batch_size=4)
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 12, 10, generator=g) * 2 - 1,
                                        size=(96, 80), mode="bilinear").clamp(-1, 1)
    masks = seg.segment(x)
    u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    proc = transformers.SegformerImageProcessorPil(size={"height": 64, "width": 64})
    with torch.no_grad():
        outputs = model(**proc(images=list(u8), return_tensors="pt"))
    ref = torch.stack(proc.post_process_semantic_segmentation(outputs,
                                                              target_sizes=[(96, 80)] * 4))
    assert torch.equal(masks.float().argmax(1), ref)
    assert len(ref.unique()) >= 5  # not vacuous


def test_preprocessing_from_config() -> None:
    old = Preprocessing.from_config({"size": 512, "resample": 2, "do_normalize": True,  # nvidia
                                     "image_mean": [0.485, 0.456, 0.406], "reduce_labels": True,
                                     "image_std": [0.229, 0.224, 0.225]})
    assert old == Preprocessing()
    new = Preprocessing.from_config({"size": {"height": 640, "width": 320}, "do_rescale": False,
                                     "do_normalize": False, "resample": 3})
    assert new == Preprocessing(size=(640, 320), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                scale=255.0, resample="bicubic")
    assert Preprocessing.from_config({"do_resize": False}).size is None
    with pytest.raises(ValueError, match="resample 1 is not supported"):
        Preprocessing.from_config({"resample": 1})
    with pytest.raises(ValueError, match="shortest_edge"):
        Preprocessing.from_config({"size": {"shortest_edge": 512}})
    with pytest.raises(ValueError, match="std > 0"):
        Preprocessing(std=(0.2, 0.0, 0.2))


def test_size_override_categories_and_label_names(tmp_path: Path) -> None:
    names = {0: "wall", 1: "bed ", 2: "wall"}
    folder = _save(_model(num_labels=3, id2label=names, categories=["object", "part", "color"]),
                   tmp_path / "m", size=None)
    seg = load_segmenter(path=folder, size=32)
    assert seg.preprocessing.size == (32, 32) and seg.preprocess(_images(1)).shape[2:] == (32, 32)
    assert seg.labels == ["wall", "bed", "wall-2"]
    assert seg.categories == ["object", "part", "color"]  # from the config
    assert load_segmenter(path=folder, categories=["part"] * 3).categories == ["part"] * 3
    assert load_segmenter(path=folder).preprocessing.size == (512, 512)  # no processor config
    with pytest.raises(ValueError, match="one of .* per label"):
        load_segmenter(path=folder, categories=["object", "thing", "part"])


def test_folder_errors(tiny: tuple[Any, Path], tmp_path: Path) -> None:
    model, good = tiny
    with pytest.raises(ValueError, match="needs path="):
        segmenters.load("segformer")
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a hub id"):
        load_segmenter(path=tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="has no config.json.*found: nothing"):
        load_segmenter(path=empty)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert', not a 'segformer'"):
        load_segmenter(path=other)
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text((good / "config.json").read_text())
    (noweights / "weights.pth").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no model.safetensors.*found: config.json, "
                                              "weights.pth"):
        load_segmenter(path=noweights)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((good / "config.json").read_text())
    (truncated / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cannot load SegFormer weights"):
        load_segmenter(path=truncated)


def test_mismatched_checkpoints_are_refused(tiny: tuple[Any, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model, good = tiny
    state = load_file(str(good / "model.safetensors"))
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "config.json").write_text((good / "config.json").read_text())
    save_file({k: v for k, v in state.items() if k != "decode_head.classifier.weight"},
              str(missing / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing keys: decode_head\.classifier\.weight"):
        load_segmenter(path=missing)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "config.json").write_text((good / "config.json").read_text())
    save_file(dict(state, **{"decode_head.extra.weight": torch.zeros(2)}),
              str(extra / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"unexpected keys: decode_head\.extra\.weight"):
        load_segmenter(path=extra)
    wrong = _save(_model(num_labels=5, id2label={i: f"c{i}" for i in range(5)}),
                  tmp_path / "wrong", size=None)
    (wrong / "config.json").write_text((good / "config.json").read_text())  # 150 labels
    with pytest.raises(CheckpointError, match=r"mismatched keys: decode_head\.classifier\.bias "
                                              r"\(checkpoint \[5\], config \[150\]\)"):
        load_segmenter(path=wrong)


def test_pickle_only_folder_refused_unless_trusted(tiny: tuple[Any, Path],
                                                   tmp_path: Path) -> None:
    model, good = tiny
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((good / "config.json").read_text())
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="only pytorch_model.bin.*trust_pickle=True"):
        load_segmenter(path=folder)
    with pytest.warns(UserWarning, match="trust_pickle=True"):
        seg = load_segmenter(path=folder, trust_pickle=True, size=64)
    x = _images(2)
    assert torch.equal(seg.segment(x), load_segmenter(path=good).segment(x))


def test_hub_id_offline_says_what_to_do() -> None:
    with pytest.raises(FileNotFoundError, match=r"hub id 'gandissect-tests/no-such-segformer' "
                                                r"could not be fetched.*pass path=DIR"):
        load_segmenter(path="gandissect-tests/no-such-segformer", local_files_only=True)


def test_missing_transformers_gives_pip_command(tiny: tuple[Any, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _, folder = tiny
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now raises ImportError
    with pytest.raises(ImportError, match="pip install transformers"):
        load_segmenter(path=folder)


def test_bad_images_and_arguments(tiny: tuple[Any, Path]) -> None:
    model, _ = tiny
    seg = SegFormerSegmenter(model, Preprocessing(size=(32, 32)))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        seg.segment(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        seg.segment(torch.full((1, 3, 16, 16), 3.0))
    with pytest.raises(ValueError, match="floats"):
        seg.segment(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(TypeError, match="transformers SegFormer"):
        SegFormerSegmenter(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="downsample"):
        SegFormerSegmenter(model, downsample=0)
