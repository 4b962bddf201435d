"""The latent-parameterised Toyworld renderer and the generator's supervised pretraining."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from models.pretrain_toyworld_gan import Pretrainer, Settings, load_checkpoint, main, pixel_weights
from models.toyworld.concepts import CONCEPTS, LEAF_ID
from models.toyworld.latent import (
    LATENT_DIM,
    SLOTS,
    LatentStream,
    render_latent,
    render_latent_batch,
)
from models.toyworld.render import render_leaves
from models.toyworld_training import render_pool


def _z(seed: int, n: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(LATENT_DIM if n is None else (n, LATENT_DIM))


def test_render_latent_is_a_function_of_z() -> None:
    z = _z(0)
    a, b = render_latent(z), render_latent(z.copy())
    assert a.image.shape == (3, 64, 64) and a.masks.shape == (len(CONCEPTS), 64, 64)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.leaf, b.leaf)
    assert a.image.min() >= -1.0 and a.image.max() <= 1.0
    assert not np.array_equal(render_latent(_z(1)).leaf, a.leaf)


def test_slots_fit_the_latent_and_do_not_overlap() -> None:
    used = np.zeros(LATENT_DIM, dtype=int)
    for sl in SLOTS.values():
        used[sl] += 1
    assert used.max() == 1


def test_an_objects_slots_move_only_that_object() -> None:
    """Changing the slots of house 0 changes only pixels of houses (and what they covered)."""
    z = _z(3)
    z[SLOTS["scene", 0]] = [0.0, 0.0, 0.6, -2.0]  # one or two houses, no trees
    base = render_latent(z)
    moved = z.copy()
    moved[SLOTS["house", 0]] = _z(4)[:8]
    other = render_latent(moved)
    changed = (base.leaf != other.leaf)
    assert changed.any()
    house_leaves = [LEAF_ID[n] for n in ("wall", "roof", "door", "window")]
    near_house = np.isin(base.leaf, house_leaves) | np.isin(other.leaf, house_leaves)
    assert not (changed & ~near_house).any()


def test_stream_draws_are_uniform_and_counts_follow_the_prior() -> None:
    zs = _z(5, 4000)
    u = np.array([LatentStream(("house", 0), z).random() for z in zs])
    assert abs(u.mean() - 0.5) < 0.02 and abs((u < 0.25).mean() - 0.25) < 0.03
    derived = []
    for z in zs[:2000]:
        s = LatentStream(("house", 0), z)
        for _ in range(8):
            s.random()
        derived.append(s.random())  # past the stream's own slots: a mixed draw
    assert abs(np.mean(derived) - 0.5) < 0.03
    counts = np.array([LatentStream(("scene", 0), z).choice(4, p=[0.3, 0.35, 0.25, 0.1])
                       for z in zs])
    assert np.allclose(np.bincount(counts, minlength=4) / len(zs), [0.3, 0.35, 0.25, 0.1],
                       atol=0.03)


def test_latent_scenes_have_the_seeded_renderers_concept_rates() -> None:
    n = 400
    _, leaves = render_latent_batch(_z(6, n))
    seeded = render_leaves(0, 0, n)
    for name in ("sky", "grass", "tree", "crown", "house", "wall", "roof", "water", "road",
                 "mountain", "cloud"):
        ids = [LEAF_ID[name]] if name in LEAF_ID else [
            LEAF_ID[x] for x in (("crown", "trunk") if name == "tree"
                                 else ("wall", "roof", "door", "window"))]
        a, b = np.isin(leaves, ids).mean(), np.isin(seeded, ids).mean()
        assert abs(a - b) < 0.3 * b + 0.003, (name, a, b)


def test_detail_adds_texture_seeded() -> None:
    z = _z(7)
    flat, tex = render_latent(z), render_latent(z, detail=1)
    assert np.array_equal(flat.leaf, tex.leaf)
    assert 0.005 < np.abs(flat.image - tex.image).mean() < 0.2
    assert np.array_equal(tex.image, render_latent(z, detail=1).image)


@pytest.mark.parametrize("bad, message", [(np.zeros(5), "shape"),
                                          (np.full(LATENT_DIM, np.nan), "NaN")])
def test_bad_latents_are_refused(bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_latent(bad)


def test_pixel_weights_mark_edges_and_small_parts() -> None:
    leaf = torch.full((1, 6, 6), LEAF_ID["grass"], dtype=torch.uint8)
    leaf[0, 2, 2] = LEAF_ID["door"]
    w = pixel_weights(leaf, edge_weight=2.0, part_weight=4.0)[0, 0]
    assert w[2, 2] == 1 + 2 + 4
    assert w[2, 1] == 3 and w[1, 2] == 3 and w[1, 1] == 1 and w[5, 5] == 1


@pytest.mark.parametrize("objective", ["regression", "vae"])
def test_pretraining_resumes_exactly_and_exports(tmp_path, objective) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "run"
    quick = ["--preview", "4", "--objective", objective]
    assert main(["--out", str(out), "--iters", "2", "--batch", "4", *quick]) == 0
    assert main(["--out", str(out), "--iters", "4", "--resume", *quick]) == 0
    resumed = load_checkpoint(out / "checkpoint.pt")
    assert main(["--out", str(tmp_path / "straight"), "--iters", "4", "--batch", "4",
                 *quick]) == 0
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert resumed["iteration"] == straight["iteration"] == 4
    assert resumed["settings"]["objective"] == objective
    nets = ["g", "e"] if objective == "vae" else ["g"]
    assert ("e" in straight) == (objective == "vae")
    for net in nets:
        for k, v in straight[net].items():
            torch.testing.assert_close(resumed[net][k], v, rtol=1e-5, atol=1e-6)
    assert main(["--out", str(out), "--export-to", str(tmp_path / "w"),
                 "--bn-batches", "1"]) == 0
    assert (tmp_path / "w" / "toyworld_gan_g.safetensors").is_file()


def test_pretraining_regresses_onto_a_fixed_batch() -> None:
    """Repeating one batch, the generator fits it: the loss falls well below its start."""
    torch.set_num_threads(1)
    trainer = Pretrainer(Settings(batch=4, lr=2e-3))
    state = trainer.rng.get_state()
    losses = []
    for _ in range(25):
        trainer.rng.set_state(state)
        losses.append(trainer.step())
    assert losses[-1] < 0.6 * losses[0]


def test_the_vae_objective_fits_a_fixed_batch_and_reports_its_terms() -> None:
    """Repeating one batch, encoder + generator reconstruct it: the loss and L1 fall, and the
    KL term is finite and non-negative."""
    torch.set_num_threads(1)
    trainer = Pretrainer(Settings(batch=4, lr=2e-3, objective="vae"))
    state = trainer.rng.get_state()
    losses, l1 = [], []
    for _ in range(25):
        trainer.rng.set_state(state)
        losses.append(trainer.step())
        l1.append(trainer.terms["l1"])
        assert 0.0 <= trainer.terms["kl"] < float("inf")
    assert losses[-1] < 0.6 * losses[0] and l1[-1] < 0.7 * l1[0]


def test_an_unknown_objective_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown pretraining objective 'gan'.*regression, vae"):
        Pretrainer(Settings(objective="gan"))


def test_a_foreign_checkpoint_is_refused(tmp_path) -> None:
    torch.save({"iteration": 3}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_adversarial_training_starts_from_the_pretrained_generator(tmp_path, capsys) -> None:
    from models import train_toyworld_gan as gan

    torch.set_num_threads(1)
    pre = tmp_path / "pre"
    assert main(["--out", str(pre), "--iters", "1", "--batch", "2", "--preview", "2"]) == 0
    pretrained = load_checkpoint(pre / "checkpoint.pt")["g_ema"]
    out = tmp_path / "gan"
    argv = ["--out", str(out), "--iters", "0", "--pool", "8", "--batch", "4",
            "--init-generator", str(pre / "checkpoint.pt")]
    assert gan.main(argv) == 0
    state = gan.load_checkpoint(out)
    for k, v in pretrained.items():
        assert torch.equal(state["g"][k], v) and torch.equal(state["g_ema"][k], v)
    assert state["settings"]["init_generator"] == str(pre / "checkpoint.pt")
    assert gan.main(["--out", str(tmp_path / "gan2"), *argv[2:], "--upsample", "nearest"]) == 1
    assert "pass the same --upsample" in capsys.readouterr().err


def test_adversarial_training_keeps_the_vae_encoder_as_a_reconstruction_anchor(tmp_path,
                                                                                capsys) -> None:
    from models import train_toyworld_gan as gan

    torch.set_num_threads(1)
    vae, reg = tmp_path / "vae", tmp_path / "reg"
    assert main(["--out", str(vae), "--iters", "1", "--batch", "2", "--preview", "2",
                 "--objective", "vae"]) == 0
    assert main(["--out", str(reg), "--iters", "1", "--batch", "2", "--preview", "2"]) == 0
    encoder = load_checkpoint(vae / "checkpoint.pt")["e"]
    common = ["--pool", "8", "--batch", "4", "--recon-weight", "2"]
    out = tmp_path / "gan"
    assert gan.main(["--out", str(out), "--iters", "2", *common,
                     "--init-generator", str(vae / "checkpoint.pt")]) == 0
    state = gan.load_checkpoint(out)
    for k, v in encoder.items():  # frozen: unchanged by two iterations
        assert torch.equal(state["e"][k], v)
    trainer = gan.make_trainer_from_checkpoint(state, render_pool(0, 8))
    losses = trainer.step()
    assert trainer.e is not None and losses["recon"] > 0
    assert all(not p.requires_grad for p in trainer.e.parameters())
    assert gan.main(["--out", str(tmp_path / "g2"), "--iters", "1", *common,
                     "--init-generator", str(reg / "checkpoint.pt")]) == 1
    assert "pretrain with --objective vae" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pass --init-generator"):
        gan.Settings(recon_weight=1.0)


def test_whitening_folds_the_code_distribution_into_the_generator(tmp_path, capsys) -> None:
    """G'(L^-1 m) == G(m) for the encoder's mean codes m, with C = L L^T the codes' fitted
    covariance; whitened checkpoints start the adversarial stage but never resume the VAE."""
    from models import train_toyworld_gan as gan
    from models.pretrain_toyworld_gan import whiten
    from models.toyworld.latent import render_latent_batch

    torch.set_num_threads(1)
    vae = tmp_path / "vae"
    assert main(["--out", str(vae), "--iters", "2", "--batch", "2", "--preview", "2",
                 "--objective", "vae"]) == 0
    state = load_checkpoint(vae / "checkpoint.pt")
    white = whiten(state, n=300, seed=1)
    old, new = Pretrainer(Settings(**state["settings"])), Pretrainer(Settings(**state["settings"]))
    old.load_state_dict(state)
    new.load_state_dict(white)
    assert old.e is not None and new.e is not None
    images, _ = render_latent_batch(torch.randn(300, 128, generator=torch.Generator()
                                                .manual_seed(1)).double().numpy())
    x = torch.from_numpy(images)
    with torch.no_grad():
        m_old, lv_old = old.e(x)
        m_new, _ = new.e(x)
        chol = white["whitened"]["cholesky"].double()
        cov = torch.cov(m_old.double().T) + torch.diag(lv_old.double().exp().mean(0))
        torch.testing.assert_close(chol @ chol.T, cov + 1e-4 * torch.eye(128, dtype=torch.float64),
                                   rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(chol.float() @ m_new[:8].T, m_old[:8].T, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(new.g_ema(m_new[:8]), old.g_ema(m_old[:8]), rtol=1e-3,
                                   atol=1e-4)
    assert white["whitened"]["samples"] == 300 and "opt" not in white
    with pytest.raises(ValueError, match="already whitened"):
        whiten(white)
    assert main(["--out", str(vae), "--whiten-to", str(tmp_path / "w.pt"),
                 "--whiten-samples", "200"]) == 0
    shutil.copyfile(tmp_path / "w.pt", vae / "checkpoint.pt")
    assert main(["--out", str(vae), "--resume", "--iters", "3", "--preview", "2"]) == 1
    assert "whitened checkpoint" in capsys.readouterr().err
    argv = ["--out", str(tmp_path / "gan"), "--iters", "1", "--pool", "8", "--batch", "4",
            "--recon-weight", "1", "--init-generator", str(tmp_path / "w.pt")]
    assert gan.main(argv) == 0
    reg = tmp_path / "reg"
    assert main(["--out", str(reg), "--iters", "1", "--batch", "2", "--preview", "2"]) == 0
    with pytest.raises(ValueError, match="needs a VAE"):
        whiten(load_checkpoint(reg / "checkpoint.pt"))
