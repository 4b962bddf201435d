"""Tests for gandissect.artifacts.quality: Frechet distance against brute force, FSD on tiny
data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gandissect.artifacts.quality import (
    HELD_OUT_SEED,
    concept_coverage_ok,
    concept_fractions,
    format_table,
    frechet_distance,
    fsd_of,
    gan_quality,
    sqrtm_psd,
)
from models.base import Generator
from models.toyworld.concepts import CONCEPTS
from segmenters.base import Segmenter


def _random_psd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _sqrtm_newton(m: np.ndarray, steps: int = 60) -> np.ndarray:
    """Denman-Beavers iteration: an independent (eigh-free) matrix square root."""
    y, z = m.copy(), np.eye(m.shape[0])
    for _ in range(steps):
        y, z = (y + np.linalg.inv(z)) / 2, (z + np.linalg.inv(y)) / 2
    return y


def test_sqrtm_psd_squares_back() -> None:
    m = _random_psd(np.random.default_rng(0), 6)
    r = sqrtm_psd(m)
    np.testing.assert_allclose(r @ r, m, atol=1e-10)
    np.testing.assert_allclose(r, r.T, atol=1e-12)


def test_frechet_identical_is_zero() -> None:
    rng = np.random.default_rng(1)
    mu, cov = rng.standard_normal(15), _random_psd(rng, 15)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)


def test_frechet_shifted_mean_is_squared_shift() -> None:
    rng = np.random.default_rng(2)
    mu, cov = rng.standard_normal(5), _random_psd(rng, 5)
    d = np.array([0.5, -1.0, 0.0, 2.0, 0.25])
    assert frechet_distance(mu, cov, mu + d, cov) == pytest.approx(float(d @ d), rel=1e-9)


def test_frechet_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(4), rng.standard_normal(4)
    c1, c2 = _random_psd(rng, 4), _random_psd(rng, 4)
    # Brute force: Tr((S1 S2)^1/2) via Denman-Beavers on the (non-symmetric) product.
    brute = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(c1 + c2)
                  - 2 * np.trace(_sqrtm_newton(c1 @ c2)))
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(brute, rel=1e-8)
    # Diagonal case has a closed form: sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    assert frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b)) == \
        pytest.approx(float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum()))


def test_frechet_singular_covariances_and_bad_shapes() -> None:
    cov = np.zeros((3, 3))
    cov[0, 0] = 1.0  # rank 1, as for concepts that never occur
    assert frechet_distance(np.zeros(3), cov, np.zeros(3), cov) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="mismatched shapes"):
        frechet_distance(np.zeros(3), cov, np.zeros(2), np.eye(2))


def test_fsd_of_samples_matches_population() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20000, 3))
    y = rng.standard_normal((20000, 3)) + np.array([1.0, 0.0, 0.0])
    assert fsd_of(x, y) == pytest.approx(1.0, abs=0.05)


class _ColorSegmenter(Segmenter):
    """Tiny fake segmenter: concept k is on where channel k%3 exceeds a threshold."""

    labels = list(CONCEPTS)
    categories = ["object"] * len(CONCEPTS)

    def _segment_batch(self, images: torch.Tensor) -> torch.Tensor:
        th = torch.linspace(-0.8, 0.8, len(self.labels))
        chans = images[:, [k % 3 for k in range(len(self.labels))]]
        return chans > th[None, :, None, None]


class _TinyGenerator(Generator):
    resolution = 64
    latent_shape = (4,)

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = torch.nn.Linear(4, 3)

    @property
    def layer_names(self) -> list[str]:
        return ["layer1"]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.check_latents(z)
        return torch.tanh(self.layer1(z))[:, :, None, None].expand(-1, -1, 64, 64)


def test_concept_fractions() -> None:
    masks = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    masks[0, 1, :2] = True
    masks[1, 2] = True
    np.testing.assert_allclose(concept_fractions(masks), np.array([[0, 0.5, 0], [0, 0, 1.0]]))


def test_gan_quality_on_tiny_models() -> None:
    seg = _ColorSegmenter(batch_size=16)
    g = _TinyGenerator()
    result = gan_quality(g, seg, samples=60, seed=0, batch_size=25, progress=False)
    assert set(result) >= {"fsd", "fsd_floor", "fsd_untrained", "concept_rates"}
    # Two disjoint rendered sets are close; a flat-colour generator is far from the world.
    assert result["fsd_floor"] < 0.5 * result["fsd"]
    # Brute force, independently: every image's concept fractions, Gaussians fitted by hand,
    # the Frechet distance from the eigenvalues of the (non-symmetric) covariance product
    from models.toyworld.render import render_batch

    def fractions(images: torch.Tensor) -> np.ndarray:
        return seg.segment(images).double().mean(dim=(2, 3)).numpy()

    def brute_fd(x: np.ndarray, y: np.ndarray) -> float:
        mx, my = x.mean(0), y.mean(0)
        cx = (x - mx).T @ (x - mx) / (len(x) - 1)
        cy = (y - my).T @ (y - my) / (len(y) - 1)
        # Tr((Cx Cy)^1/2) = sum of square roots of the (real, >= 0) eigenvalues of Cx Cy
        eig = np.linalg.eigvals(cx @ cy).real.clip(0, None)
        return float((mx - my) @ (mx - my) + np.trace(cx + cy) - 2 * np.sqrt(eig).sum())

    g.eval()
    with torch.no_grad():
        gen_f = fractions(g(g.sample_latents(60, 0)).clamp(-1, 1))
    ref_f = fractions(torch.from_numpy(render_batch(HELD_OUT_SEED, 0, 60, 64)[0]))
    ref2_f = fractions(torch.from_numpy(render_batch(HELD_OUT_SEED, 60, 60, 64)[0]))
    assert result["fsd"] == pytest.approx(brute_fd(gen_f, ref_f), rel=1e-4, abs=1e-6)
    assert result["fsd_floor"] == pytest.approx(brute_fd(ref2_f, ref_f), rel=1e-4, abs=1e-6)
    for k, c in enumerate(CONCEPTS):
        assert result["concept_rates"][c]["generated"] == pytest.approx(gen_f[:, k].mean())
        assert result["concept_rates"][c]["rendered"] == pytest.approx(ref_f[:, k].mean())
    assert set(result["concept_rates"]) == set(CONCEPTS)
    sky = result["concept_rates"]["sky"]
    assert 0.0 <= sky["generated"] <= 1.0 and 0.3 < sky["rendered_truth"] < 0.45
    assert set(concept_coverage_ok(result)) <= set(CONCEPTS)
    assert "FSD" in format_table(result)


def test_gan_quality_is_deterministic_and_batch_independent() -> None:
    seg = _ColorSegmenter()
    a = gan_quality(_TinyGenerator(), seg, samples=20, seed=3, batch_size=20, progress=False)
    b = gan_quality(_TinyGenerator(), seg, samples=20, seed=3, batch_size=7, progress=False)
    assert a["fsd_floor"] == pytest.approx(b["fsd_floor"], rel=1e-9)
    assert a["fsd_untrained"] == pytest.approx(b["fsd_untrained"], rel=1e-6)


def test_gan_quality_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="samples"):
        gan_quality(_TinyGenerator(), _ColorSegmenter(), samples=1, progress=False)
