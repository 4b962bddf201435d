"""Artifact units: realism measures vs brute force, planted ground truth found and removed.

The Toyworld GAN's shipped weights are used when present; otherwise the EMA generator of the
training checkpoint (runs/gan/checkpoint.pt); otherwise random weights (the planted-artifact
test is then skipped: see its comment). Assertion messages name the source that ran.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import segmenters
from gandissect.artifacts.plant import checkerboard, plant_artifacts
from gandissect.artifacts.quality import frechet_distance, gaussian_stats
from gandissect.artifacts.realism import (
    DiscriminatorMeasure,
    FewSamplesWarning,
    FIDMeasure,
    SegmenterFeatures,
    StreamingGaussian,
    limit_numpy_blas_threads,
)
from gandissect.artifacts.removal import (
    _spatial_check,
    artifact_scores,
    plot_removal,
    removal_edit,
    removal_study,
)
from gandissect.artifacts.scores import fid_feature_gradient
from gandissect.intervention.edit import ablation, intervene
from models.toyworld_gan import WEIGHTS_DIR, ToyworldDiscriminator, ToyworldGenerator

ROOT = Path(__file__).resolve().parent.parent.parent
CHECKPOINT = ROOT / "runs" / "gan" / "checkpoint.pt"
PLANTED = [3, 40, 100, 150, 200]


def _networks() -> tuple[ToyworldGenerator, ToyworldDiscriminator, str]:
    """Trained weights when shipped, else the training checkpoint, else random weights."""
    if (WEIGHTS_DIR / "toyworld_gan_g.safetensors").is_file():
        from models.toyworld_gan import load_discriminator, load_generator

        return load_generator(), load_discriminator(), "shipped weights"
    gen, disc = ToyworldGenerator(), ToyworldDiscriminator()
    if CHECKPOINT.is_file():
        state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
        gen.load_state_dict(state["g_ema"])
        disc.load_state_dict(state["d"])
        return gen.eval(), disc.eval(), "training checkpoint"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        gen, disc = ToyworldGenerator(), ToyworldDiscriminator()
    return gen.eval(), disc.eval(), "random weights"


@pytest.fixture(scope="module")
def nets() -> tuple[ToyworldGenerator, ToyworldDiscriminator, str]:
    limit_numpy_blas_threads(1)
    return _networks()


@pytest.fixture(scope="module")
def fid() -> FIDMeasure:
    feats = SegmenterFeatures.from_segmenter(segmenters.load("toyworld"))
    return FIDMeasure(feats, reference_samples=1000)


def test_streaming_gaussian_matches_numpy_and_merges() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)) * [1, 2, 3, 4] + 5
    a, b, whole = StreamingGaussian(4), StreamingGaussian(4), StreamingGaussian(4)
    a.add(x[:20])
    b.add(torch.from_numpy(x[20:]))
    whole.add(x)
    a.merge(b)
    mu, cov = gaussian_stats(x)
    for s in (a, whole):
        np.testing.assert_allclose(s.mean(), mu, rtol=1e-12)
        np.testing.assert_allclose(s.cov(), cov, rtol=1e-9)
    c = StreamingGaussian(4)
    c.load_state_dict(a.state_dict())
    np.testing.assert_allclose(c.cov(), cov, rtol=1e-9)
    with pytest.raises(ValueError, match="expected features"):
        a.add(x[:, :3])


def test_fid_measure_equals_brute_force(nets: tuple, fid: FIDMeasure) -> None:
    gen = nets[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewSamplesWarning)
        value = fid.score(gen, 60, seed=5)
    with torch.no_grad():
        feats = fid.features(gen(gen.sample_latents(60, 5)).clamp(-1, 1)).double().numpy()
    assert fid.dim == feats.shape[1] == 224
    expected = frechet_distance(*gaussian_stats(feats), *fid._ref)
    assert value == pytest.approx(expected, rel=1e-6)
    with pytest.warns(FewSamplesWarning, match="at least 225 samples"):
        fid.score(gen, 10, seed=5)


def test_discriminator_measure(nets: tuple) -> None:
    gen, disc, _ = nets
    m = DiscriminatorMeasure(disc, batch_size=7)
    g = max(1, disc.mbstd_group)  # minibatch-stddev: consecutive chunks of g images go together
    assert m.batch_size % g == 0 and m.batch_size >= 7
    with torch.no_grad():
        images = gen(gen.sample_latents(20, 3)).clamp(-1, 1)
        expected = -float(torch.cat([disc(images[s:s + g]) for s in range(0, 20, g)]).mean())
    assert m.score(gen, 20, seed=3) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert DiscriminatorMeasure(disc, batch_size=20).score(gen, 20, seed=3) == pytest.approx(
        expected, rel=1e-5, abs=1e-6)  # independent of the batch size
    with pytest.raises(ValueError, match="no discriminator"):
        DiscriminatorMeasure(None)


def test_plant_is_a_copy_and_ablation_removes_the_blotch(nets: tuple) -> None:
    gen = nets[0]
    z = gen.sample_latents(64, 11)
    with torch.no_grad():
        before = gen(z)
        planted = plant_artifacts(gen, "layer4", PLANTED)
        x = planted(z)
        assert torch.equal(gen(z), before)  # the original is untouched
        changed = (x - before).abs().amax(dim=1) > 1e-6  # [n, 64, 64]
        assert 0 < changed.any(dim=(1, 2)).float().mean() < 1
        edit = ablation("layer4", PLANTED)
        with intervene(planted, edit):
            xa = planted(z)
        with intervene(gen, edit):
            ga = gen(z)
    torch.testing.assert_close(xa, ga)  # ablating the planted units removes every blotch
    board = checkerboard(4, 2)
    assert board.tolist()[0] == [-1, -1, 1, 1] and board.tolist()[2] == [1, 1, -1, -1]


def test_fid_feature_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)) * [1, 2, 3, 1, 1]
    mu_r, cov_r = gaussian_stats(rng.normal(size=(100, 5)))
    grad = fid_feature_gradient(x, mu_r, cov_r)
    eps = 1e-6
    base = frechet_distance(*gaussian_stats(x), mu_r, cov_r)
    for i, j in ((0, 0), (3, 2), (39, 4)):
        x2 = x.copy()
        x2[i, j] += eps
        numeric = (frechet_distance(*gaussian_stats(x2), mu_r, cov_r) - base) / eps
        assert grad[i, j] == pytest.approx(numeric, rel=1e-4, abs=1e-7)


def test_effect_score_equals_brute_force_removal_when_the_top_set_is_everything(
        nets: tuple) -> None:
    # The discriminator measure is a mean over images, so with every image in every unit's top
    # set the effect score is exactly the measured drop when the unit alone is removed.
    gen = nets[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        disc = ToyworldDiscriminator(mbstd_group=0).eval()
    m = DiscriminatorMeasure(disc, batch_size=8)
    scores = artifact_scores(gen, "layer8", m, samples=8, seed=4, top=8, pool=0)  # 32 units
    assert scores.method == "effect/discriminator" and scores.replace == "mean"
    assert scores.replacement is not None
    base = m.score(gen, 8, seed=4)
    for u in (0, 5, 31):
        after = m.score(gen, 8, 4, [removal_edit("layer8", [u], scores.replacement)])
        assert scores.scores[u] == pytest.approx(base - after, rel=1e-4, abs=1e-6)
    # pool > 0 verifies candidates by measurement: same numbers here (exact linear measure)
    verified = artifact_scores(gen, "layer8", m, samples=8, seed=4, top=2, pool=3,
                               verify_samples=8)
    candidates = sorted(int(u) for u in verified.details["verified"])
    last_in = verified.details["verified_last_in"]
    assert sorted(int(u) for u in last_in) == candidates and len(candidates) >= 3
    everything = m.score(gen, 8, 4, [removal_edit("layer8", candidates, verified.replacement)])
    for u, value in verified.details["verified"].items():
        after = m.score(gen, 8, 4, [removal_edit("layer8", [int(u)],
                                                       verified.replacement)])
        assert value == pytest.approx(base - after, rel=1e-4, abs=1e-6)
        others = [v for v in candidates if v != int(u)]
        last = m.score(gen, 8, 4, [removal_edit("layer8", others, verified.replacement)])
        assert last_in[u] == pytest.approx(last - everything, rel=1e-4, abs=1e-6)
        assert verified.scores[int(u)] == max(value, last_in[u])


def test_removal_study_random_draws_and_noise(nets: tuple, tmp_path: Path) -> None:
    gen = nets[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        disc = ToyworldDiscriminator(mbstd_group=0).eval()
    m = DiscriminatorMeasure(disc, batch_size=8)
    values = np.linspace(0.0, 1.0, 32)
    study = removal_study(gen, "layer8", list(range(32)), m, ks=(2, 3), samples=8, seed=5,
                          random_draws=3, replacement=values, noise_seed=6, replace="mean")
    assert study.baseline == pytest.approx(m.score(gen, 8, seed=5), rel=1e-6)
    assert study.baseline_2 == pytest.approx(m.score(gen, 8, seed=6), rel=1e-6)
    assert study.baseline_2 is not None
    assert study.noise == pytest.approx(abs(study.baseline - study.baseline_2))
    for row in study.rows:
        assert row["top_units"] == list(range(row["k"]))
        assert len(row["random_units"]) == 3 and len(row["random_values"]) == 3
        assert all(not set(r) & set(row["top_units"]) for r in row["random_units"])
        assert row["random"] == pytest.approx(np.mean(row["random_values"]))
        assert row["random_sd"] == pytest.approx(np.std(row["random_values"], ddof=1))
        direct = m.score(gen, 8, 5, [removal_edit("layer8", row["random_units"][1],
                                                        values)])
        assert row["random_values"][1] == pytest.approx(direct, rel=1e-6)
    assert "random-k (3 draws)" in study.table()
    png = plot_removal(study, tmp_path / "plots" / "removal.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000


def test_planted_artifact_units_are_found_and_removal_restores_fid(
        nets: tuple, fid: FIDMeasure) -> None:
    gen, _, source = nets
    if source == "random weights":
        # Measured: an untrained generator paints near-uniform images; a checkerboard adds edges
        # and makes them MORE like rendered scenes, so the planted units rank last (253..255).
        pytest.skip("planted artifacts are only artifacts on a (partly) trained generator")
    planted = plant_artifacts(gen, "layer4", PLANTED)  # layer4: 256 units
    scores = artifact_scores(planted, "layer4", fid, samples=256, seed=1, top=8)
    ranking = scores.ranking()
    assert len(ranking) == 256
    assert set(PLANTED) <= set(ranking[:10]), (source, [ranking.index(u) for u in PLANTED])
    # k = 10: the top 10 hold all 5 planted units (asserted above), plus 5 innocent ones.
    study = removal_study(planted, "layer4", ranking, fid, ks=(10,), samples=250, seed=2,
                          random_draws=2, replacement=scores.replacement)
    row = study.rows[0]
    clean = fid.score(gen, 250, seed=2)
    assert study.baseline > 1.1 * clean, (source, study.baseline, clean)
    assert abs(row["top"] - clean) <= 0.10 * clean, (source, row, clean)
    assert row["top"] < row["random"] and row["top"] < row["bottom"], study.table()
    assert set(PLANTED) <= set(row["top_units"])


@pytest.mark.filterwarnings("ignore::gandissect.artifacts.realism.FewSamplesWarning")
def test_bad_input_messages(nets: tuple, fid: FIDMeasure) -> None:
    gen = nets[0]
    with pytest.raises(ValueError, match="spatial feature maps"):
        _spatial_check("fc", torch.zeros(2, 8))
    with pytest.raises(ValueError, match="spatial maps"):
        _spatial_check("pool", torch.zeros(2, 8, 1, 1))
    with pytest.raises(ValueError, match="unknown layer"):
        artifact_scores(gen, "nope", fid, samples=4)
    with pytest.raises(ValueError, match="method"):
        artifact_scores(gen, "layer4", fid, samples=4, method="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replace"):
        artifact_scores(gen, "layer4", fid, samples=4, replace="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ks must lie"):
        removal_study(gen, "layer4", list(range(10)), fid, ks=(6,), samples=4)


def test_cli_refuses_discriminator_for_a_model_without_one(capsys: pytest.CaptureFixture,
                                                           tmp_path: Path) -> None:
    from gandissect.cli import main

    code = main(["artifacts", "--model", "planted", "--layer", "layout", "--measure",
                 "discriminator", "--samples", "8", "--out", str(tmp_path)])
    assert code == 2
    assert "no bundled discriminator" in capsys.readouterr().err


def test_cli_checkpoint_loading(tmp_path: Path) -> None:
    """``--checkpoint`` builds the discriminator its settings describe (minibatch-stddev), and a
    checkpoint of another architecture is refused with a clear message."""
    import argparse

    from gandissect.cli.artifacts import _load

    gen, disc = ToyworldGenerator(), ToyworldDiscriminator(mbstd_group=4)
    path = tmp_path / "checkpoint.pt"
    torch.save({"g_ema": gen.state_dict(), "d": disc.state_dict(),
                "settings": {"mbstd_group": 4}}, path)
    args = argparse.Namespace(checkpoint=str(path), model="toyworld", measure="discriminator")
    g2, d2 = _load(args)
    assert d2 is not None and d2.mbstd_group == 4
    z = gen.sample_latents(2, 0)
    assert torch.equal(g2(z), gen.eval()(z))
    torch.save({"g_ema": gen.state_dict(), "d": disc.state_dict(), "settings": {}}, path)
    with pytest.raises(ValueError, match="does not fit"):
        _load(args)
    # a generator trained with --upsample nearest is rebuilt with that architecture
    near = ToyworldGenerator(upsample="nearest").eval()
    torch.save({"g_ema": near.state_dict(), "d": disc.state_dict(),
                "settings": {"mbstd_group": 4, "upsample": "nearest"}}, path)
    g3, _ = _load(args)
    assert g3.upsample == "nearest" and torch.equal(g3(z), near(z))
    torch.save({"g_ema": near.state_dict(), "d": disc.state_dict(),
                "settings": {"mbstd_group": 4, "upsample": "bicubic"}}, path)
    with pytest.raises(ValueError, match="settings.upsample"):
        _load(args)
