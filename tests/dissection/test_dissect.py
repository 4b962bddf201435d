"""dissect(): exact against brute force on tiny models, resumable, refuses mixed folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import Interrupt, TinyGenerator, TinySegmenter

from gandissect.common.hooks import Trace
from gandissect.dissection.engine import DissectMismatchError, brute_force, dissect
from gandissect.dissection.results import LayerResult, load_results
from models.base import Generator
from segmenters.base import Segmenter

torch.set_num_threads(1)


def reference(gen: Generator, seg: Segmenter, layer: str, n: int, seed: int, size: int = 16
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Upsampled activations and masks of samples 0..n-1, computed in one go."""
    with torch.no_grad(), Trace(gen, [layer]) as tr:
        images = gen(gen.sample_latents(n, seed))
    up = F.interpolate(tr[layer], size=(size, size), mode="bilinear", align_corners=False)
    return up, seg.segment(images)


@pytest.mark.parametrize("q", [0.01, 0.05])
def test_quantile_mode_matches_brute_force(q: float) -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    res = dissect(gen, seg, ["a", "b"], samples=150, seed=3, quantile=q, batch_size=37)
    for layer in ["a", "b"]:
        up, masks = reference(gen, seg, layer, 150, 3)
        t_ref, iou_ref = brute_force(up, masks, q)
        r = res[layer]
        on = up.double() > torch.from_numpy(r.thresholds)[None, :, None, None]
        frac = on.double().mean((0, 2, 3)).numpy()
        assert np.allclose(frac, r.frac_above)                       # reported fraction is exact
        assert np.all(np.abs(r.frac_above - q) <= 0.001)
        assert np.all(np.abs(r.frac_above - q) <= r.rank_error + 1.0 / up[:, 0].numel())
        assert np.abs(r.iou - iou_ref).max() <= 1e-3
        assert np.allclose(r.thresholds, t_ref, rtol=1e-2, atol=1e-3)
        assert r.concept_pixels.tolist() == masks.sum((0, 2, 3)).tolist()
        # the never-occurring concept scores 0 without crashing
        assert np.all(r.iou[:, 2] == 0)


def test_iqr_mode_iou_exact_at_reported_thresholds() -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    r = dissect(gen, seg, "b", samples=80, seed=2, batch_size=32, threshold="iqr")["b"]
    up, masks = reference(gen, seg, "b", 80, 2)
    assert r.thresholds.shape == (6, 4)
    for u in range(6):
        for c in range(4):
            on = up[:, u].double() > r.thresholds[u, c]
            inter = (on & masks[:, c]).sum().item()
            union = (on | masks[:, c]).sum().item()
            assert r.intersection[u, c] == inter
            assert abs(r.iou[u, c] - (inter / union if union else 0.0)) < 1e-12


@pytest.mark.parametrize("mode", ["quantile", "iqr"])
def test_category_conditioned(mode: str) -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    plain = dissect(gen, seg, "b", samples=60, seed=5, batch_size=25, threshold=mode)["b"]
    cond = dissect(gen, seg, "b", samples=60, seed=5, batch_size=25, threshold=mode,
                   category_conditioned=True)["b"]
    up, masks = reference(gen, seg, "b", 60, 5)
    present = masks[:, 3].flatten(1).any(1)
    assert 0 < int(present.sum()) < 60                       # 'color' absent on some images
    # object concepts are present on every image here: conditioned == plain
    assert np.allclose(cond.iou[:, :2], plain.iou[:, :2])
    for u in range(6):
        t = cond.thresholds[u] if mode == "quantile" else cond.thresholds[u, 3]
        on = up[:, u].double() > t
        inter = (on & masks[:, 3]).sum().item()
        union = ((on & present[:, None, None]) | masks[:, 3]).sum().item()
        assert abs(cond.iou[u, 3] - (inter / union if union else 0.0)) < 1e-12
    assert not np.allclose(cond.iou[:, 3], plain.iou[:, 3])


def test_seg_resolution_and_segmenter_size() -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    seg.size = (8, 8)
    r = dissect(gen, seg, "a", samples=40, seed=1, batch_size=16)["a"]
    assert r.meta["seg_shape"] == [8, 8]
    # brute force at the segmenter's own 8x8: activations upsampled to 8x8, masks as given
    up, masks = reference(gen, seg, "a", 40, 1, size=8)
    assert masks.shape[2:] == (8, 8)
    _, iou_ref = brute_force(up, masks, 0.01)
    assert np.abs(r.iou - iou_ref).max() <= 1e-3 and iou_ref.max() > 0.01
    assert r.concept_pixels.tolist() == masks.sum((0, 2, 3)).tolist()
    r2 = dissect(gen, TinySegmenter(), "a", samples=40, seed=1, batch_size=16,
                 seg_resolution=8)["a"]
    assert r2.meta["seg_shape"] == [8, 8]
    # seg_resolution=8: 16x16 masks resized (nearest) to 8x8, activations upsampled to 8x8
    up2, masks16 = reference(gen, TinySegmenter(), "a", 40, 1, size=8)
    masks8 = F.interpolate(masks16.float(), size=(8, 8), mode="nearest") > 0.5
    _, iou_ref2 = brute_force(up2, masks8, 0.01)
    assert np.abs(r2.iou - iou_ref2).max() <= 1e-3 and iou_ref2.max() > 0.01
    assert r2.concept_pixels.tolist() == masks8.sum((0, 2, 3)).tolist()


def test_topk_are_samples_with_largest_max() -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    r = dissect(gen, seg, "b", samples=50, seed=4, batch_size=16, topk=5)["b"]
    with torch.no_grad(), Trace(gen, ["b"]) as tr:
        gen(gen.sample_latents(50, 4))
    best = tr["b"].amax((2, 3)).argsort(0, descending=True)[:5].T.numpy()
    assert np.array_equal(r.topk_indices, best)


def test_batch_size_does_not_change_result() -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    a = dissect(gen, seg, "b", samples=90, seed=7, batch_size=90)["b"]
    b = dissect(gen, seg, "b", samples=90, seed=7, batch_size=13)["b"]
    assert np.array_equal(a.thresholds, b.thresholds) and np.array_equal(a.iou, b.iou)


def test_per_pixel_rows_path_equals_coded_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segmenters with too many concepts for codes (C + K > 62) count per-pixel rows."""
    import importlib
    mod = importlib.import_module("gandissect.dissection.batches")
    gen, seg = TinyGenerator(), TinySegmenter()
    coded = dissect(gen, seg, "b", samples=40, seed=8, batch_size=16,
                    category_conditioned=True)["b"]
    monkeypatch.setattr(mod, "encode_rows", lambda masks, present: None)
    rows = dissect(gen, seg, "b", samples=40, seed=8, batch_size=16,
                   category_conditioned=True)["b"]
    for key in ["thresholds", "iou", "intersection", "above", "rank_error"]:
        assert np.array_equal(getattr(coded, key), getattr(rows, key))


def test_too_high_pass1_guess_is_redone_and_changes_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A pass-1 cut guess above the threshold is detected; the affected units get another
    pass-1 round at valid bounds only, and the result equals the default run's exactly (also
    when killed inside that round and resumed)."""
    import importlib
    mod = importlib.import_module("gandissect.dissection.engine")
    gen, seg = TinyGenerator(), TinySegmenter()
    default = dissect(gen, seg, ["a", "b"], samples=60, seed=6, batch_size=16)
    rounds: list[int] = []
    monkeypatch.setattr(mod, "FIRST_GUESS_FACTOR", 0.05)    # guess at the top 0.05 q: too high
    monkeypatch.setattr(mod, "GUESS_FACTOR", 0.05)
    bad = dissect(gen, seg, ["a", "b"], samples=60, seed=6, batch_size=16,
                  on_batch=lambda p, d: rounds.append(p))
    assert rounds.count(1) == 2 * 4                # pass 1 ran twice (4 batches each)
    up, masks = reference(gen, seg, "b", 60, 6)
    _, iou_ref = brute_force(up, masks, 0.01)
    assert np.abs(bad["b"].iou - iou_ref).max() <= 1e-3
    calls = 0

    def kill(phase: int, done: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 6:                                       # second batch of the second round
            raise Interrupt
    with pytest.raises(Interrupt):
        dissect(gen, seg, ["a", "b"], samples=60, seed=6, batch_size=16, out=tmp_path,
                checkpoint_seconds=0.0, on_batch=kill)
    resumed = dissect(gen, seg, ["a", "b"], samples=60, seed=6, batch_size=16, out=tmp_path)
    for layer in ["a", "b"]:
        for key in ["thresholds", "iou", "intersection", "above", "topk_indices", "rank_error"]:
            assert np.array_equal(getattr(default[layer], key), getattr(bad[layer], key))
            assert np.array_equal(getattr(default[layer], key), getattr(resumed[layer], key))


@pytest.mark.parametrize("mode", ["quantile", "iqr"])
@pytest.mark.parametrize("stop_at", [(1, 40), (2, 20), (2, 100)])
def test_resume_after_kill_gives_uninterrupted_result(tmp_path: Path, mode: str,
                                                      stop_at: tuple[int, int]) -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    kw = dict(samples=100, seed=9, batch_size=20, threshold=mode)
    full = dissect(gen, seg, ["a", "b"], **kw)  # type: ignore[arg-type]

    def kill(phase: int, done: int) -> None:
        if (phase, done) == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        dissect(gen, seg, ["a", "b"], out=tmp_path, checkpoint_seconds=0.0, on_batch=kill,
                **kw)  # type: ignore[arg-type]
    assert (tmp_path / "state.safetensors").exists()
    seen: list[tuple[int, int]] = []
    resumed = dissect(gen, seg, ["a", "b"], out=tmp_path, checkpoint_seconds=0.0,
                      on_batch=lambda p, d: seen.append((p, d)), **kw)  # type: ignore[arg-type]
    if stop_at != (2, 100):
        assert seen[0] == (stop_at[0], stop_at[1] + 20)       # continued, did not restart
    else:
        assert seen == []
    for layer in ["a", "b"]:
        for key in ["thresholds", "iou", "intersection", "above", "topk_indices"]:
            assert np.array_equal(getattr(full[layer], key), getattr(resumed[layer], key))
    loaded = load_results(tmp_path)
    assert np.array_equal(loaded["b"].iou, full["b"].iou)
    assert not (tmp_path / "state.safetensors").exists()


def test_folder_with_other_arguments_is_refused(tmp_path: Path) -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    dissect(gen, seg, "a", samples=20, seed=1, batch_size=10, out=tmp_path)
    again = dissect(gen, seg, "a", samples=20, seed=1, batch_size=10, out=tmp_path)
    assert again["a"].iou.shape == (8, 4)
    with pytest.raises(DissectMismatchError, match="differs in: seed"):
        dissect(gen, seg, "a", samples=20, seed=2, batch_size=10, out=tmp_path)
    # same arguments, other weights: neither resumed nor reused
    with torch.no_grad():
        next(gen.parameters()).add_(0.5)
    with pytest.raises(DissectMismatchError, match="differs in: weights"):
        dissect(gen, seg, "a", samples=20, seed=1, batch_size=10, out=tmp_path)


def test_save_load_roundtrip(tmp_path: Path) -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    r = dissect(gen, seg, "b", samples=20, seed=1, batch_size=10)["b"]
    r.save(tmp_path)
    back = LayerResult.load(tmp_path, "b")
    assert back.labels == r.labels and back.meta == r.meta
    assert np.array_equal(back.iou, r.iou) and back.intersection.dtype == np.int64
    assert not list(tmp_path.glob("*.pkl"))


def test_bad_inputs_have_clear_errors() -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    with pytest.raises(ValueError, match="valid layers: a, b, flat"):
        dissect(gen, seg, "nope", samples=4, seed=0)
    with pytest.raises(ValueError, match=r"layer 'flat' output has shape \[1, 64\]"):
        dissect(gen, seg, "flat", samples=4, seed=0)
    z7 = gen.sample_latents(10, 0)[7]
    bad = TinyGenerator(nan_latent=z7)
    with pytest.raises(ValueError, match="layer 'b' produced NaN or inf activations for sample 7"):
        dissect(bad, seg, "b", samples=10, seed=0, batch_size=4)
    wrong = TinySegmenter()
    wrong.output_size = lambda h, w: (h, w + 1)  # type: ignore[method-assign,assignment]
    with pytest.raises(ValueError, match="segmenter returned masks"):
        dissect(gen, wrong, "a", samples=4, seed=0)
    with pytest.raises(ValueError, match="threshold must be"):
        dissect(gen, seg, "a", samples=4, seed=0, threshold="mean")


def test_first_bad_finds_the_first_sample_with_nan_or_inf() -> None:
    from gandissect.dissection.layer_stats import _first_bad
    a = torch.randn(40, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    assert _first_bad(a) is None
    assert _first_bad(a[:0]) is None
    for value in (float("nan"), float("inf"), -float("inf")):
        for first in (0, 13, 39):
            b = a.clone()
            b[first, 7, 15, 3] = value
            b[39, 0, 0, 0] = value
            assert _first_bad(b) == first
            assert _first_bad(b.double()) == first


def test_planted_units_found_with_iqr() -> None:
    import models
    import segmenters
    gen, seg = models.load("planted"), segmenters.load("planted")
    r = dissect(gen, seg, "layout", samples=60, seed=1, batch_size=30, threshold="iqr")["layout"]
    planted: dict[str, int] = gen.planted_units  # type: ignore[assignment]
    distractors: list[int] = gen.distractor_units  # type: ignore[assignment]
    for concept, unit in planted.items():
        assert r.unit_labels[unit] == concept
        assert r.best_iou[unit] >= 0.9, (concept, r.best_iou[unit])
    assert not r.interpretable[distractors].any()
    assert r.interpretable.sum() == len(planted)
