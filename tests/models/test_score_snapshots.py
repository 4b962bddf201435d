"""Tests for models/score_snapshots.py: choosing a GAN snapshot by FSD, concept coverage and FID."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from gandissect import gan_quality
from models import score_snapshots as ss
from models import train_toyworld_gan as tr
from models.toyworld_gan import load_generator

FAST = ["--samples", "8", "--fid-samples", "8", "--reference-samples", "16", "--bn-batches", "1",
        "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("score") / "v9"
    assert tr.main(["--out", str(out), "--pool", "8", "--batch", "4", "--r1-every", "2",
                    "--iters", "2", "--snapshot-every", "1"]) == 0
    return out


def test_find_and_label(run: Path, tmp_path: Path) -> None:
    snaps = ss.find_snapshots([run])
    assert [ss.label_of(s) for s in snaps] == ["v9 1", "v9 2"]
    assert ss.find_snapshots([run], latest=True)[-1] == run
    assert ss.label_of(run) == "v9 latest"
    assert ss.find_snapshots([snaps[0]]) == [snaps[0]]      # a snapshot folder itself
    with pytest.raises(FileNotFoundError, match="--snapshot-every"):
        ss.find_snapshots([run, tmp_path])


def test_choose_needs_coverage() -> None:
    scores = [{"fid": 10.0, "coverage_ok": False}, {"fid": 30.0, "coverage_ok": True},
              {"fid": 20.0, "coverage_ok": True}]
    assert ss.choose(scores) == scores[2]
    assert ss.choose(scores[:1]) is None


def test_scores_match_gan_quality_and_are_cached(run: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "t.md"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                      # few samples for FID: expected
        assert ss.main([str(run), "--latest", "--table", str(table), "--plot",
                        str(tmp_path / "p.png"), *FAST]) == 0
    assert (tmp_path / "p.png").stat().st_size > 1000
    out = capsys.readouterr().out
    rows = [r for r in table.read_text().splitlines() if r.startswith("| v9")]
    assert [r.split(" | ")[0] for r in rows] == ["| v9 1", "| v9 2", "| v9 latest"]
    assert "recommended:" in out
    snap = run / "snapshots" / "iter_000002"
    score = json.loads((snap / "w" / ss.SCORE_FILE).read_text())
    assert score["iteration"] == 2 and (snap / "w" / "samples.png").is_file()
    # FSD and rates agree with gan-quality on the same samples and reference scenes
    gen = load_generator(weights=snap / "w" / "toyworld_gan_g.safetensors")
    import segmenters
    ref = gan_quality(gen, segmenters.load("toyworld"), samples=8, seed=0, progress=False)
    assert score["fsd"] == pytest.approx(ref["fsd"], rel=1e-9)
    for c, r in ref["concept_rates"].items():
        assert score["concept_rates"][c]["generated"] == pytest.approx(r["generated"])
        assert score["concept_rates"][c]["rendered"] == pytest.approx(r["rendered"])
    assert score["coverage_ok"] == (not score["low"])
    # a rerun with the same settings reuses the cache; other settings score again
    stamp = (snap / "w" / ss.SCORE_FILE).stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ss.main([str(run), *FAST]) == 0
        assert (snap / "w" / ss.SCORE_FILE).stat().st_mtime_ns == stamp
        assert ss.main([str(run), *FAST, "--seed", "3"]) == 0
    assert json.loads((snap / "w" / ss.SCORE_FILE).read_text())["settings"]["seed"] == 3


def test_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ss.main([str(tmp_path), *FAST]) == 2
    assert "no snapshots" in capsys.readouterr().err


def test_fid_floor_and_random_encoder(run: Path) -> None:
    """The FID floor is the FID of rendered scenes disjoint from the reference (0 for the
    reference scenes themselves); the second FID uses a seeded random U-Net encoder."""
    import torch

    from gandissect.artifacts.realism import FIDMeasure

    feats = ss.random_encoder_features()
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(feats(x), ss.random_encoder_features()(x))  # deterministic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                      # few samples for FID: expected
        measure = FIDMeasure(feats, reference_samples=16, batch_size=8)
        assert ss.rendered_fid(measure, 16, 0, 8) == pytest.approx(0.0, abs=1e-6)
        assert ss.rendered_fid(measure, 16, 16, 8) > 1e-4
        scorer = ss.Scorer(8, 8, 16, seed=0, batch_size=8, progress=False)
        snap = run / "snapshots" / "iter_000001"
        score = ss.score_folder(snap, scorer, bn_batches=1)
    assert score["fid_floor"] == pytest.approx(scorer.floors["fid"])
    assert score["fid_random"] > score["fid_random_floor"] > 0  # 1 iteration: far from real
    assert score["rates_in_band"] == (not score["out_of_band"])
