"""``dissect(dtype="bfloat16")``: the forward passes run under bfloat16 autocast and the
statistics stay exact on what they computed (brute force on the same autocast passes); the
setting is part of the run's config; folders written before the setting existed still resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import TinyGenerator, TinySegmenter

from gandissect.common.hooks import Trace
from gandissect.dissection.config import DissectMismatchError
from gandissect.dissection.engine import brute_force, dissect

torch.set_num_threads(1)


def test_bfloat16_statistics_are_exact_on_the_autocast_passes() -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    layer = "b"                                        # a convolution: autocast changes it
    res = dissect(gen, seg, layer, samples=40, seed=3, batch_size=10, dtype="bfloat16")[layer]
    assert res.meta["dtype"] == "bfloat16"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), Trace(gen, [layer]) as tr:
        images = gen(gen.sample_latents(40, 3))
        masks = seg.segment(images)
    up = F.interpolate(tr[layer].float(), size=tuple(masks.shape[2:]), mode="bilinear",
                       align_corners=False)
    _, ref = brute_force(up, masks, 0.01)
    assert np.abs(res.iou - ref).max() <= 1e-3
    f32 = dissect(gen, seg, layer, samples=40, seed=3, batch_size=10)[layer]
    assert f32.meta["dtype"] == "float32"
    assert not np.array_equal(f32.iou, res.iou)        # bfloat16 did change the passes
    # same labels for (nearly) every unit: bfloat16 changes values, rarely the argmax
    agree = np.mean(np.array(f32.unit_labels) == np.array(res.unit_labels))
    assert agree >= 0.5


def test_dtype_is_checked_and_part_of_the_config(tmp_path: Path) -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    layer = gen.layer_names[0]
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16"):
        dissect(gen, seg, layer, samples=10, seed=0, dtype="float16")
    dissect(gen, seg, layer, samples=10, seed=0, out=tmp_path)
    with pytest.raises(DissectMismatchError, match="dtype"):
        dissect(gen, seg, layer, samples=10, seed=0, out=tmp_path, dtype="bfloat16")


def test_folder_from_before_the_dtype_setting_is_reused(tmp_path: Path) -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    layer = gen.layer_names[0]
    first = dissect(gen, seg, layer, samples=10, seed=0, out=tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["dtype"]                                   # as written by an older version
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    again = dissect(gen, seg, layer, samples=10, seed=0, out=tmp_path)
    assert np.array_equal(first[layer].iou, again[layer].iou)
