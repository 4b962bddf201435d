"""Sample and rendered grids (models/toyworld_training.py): the layout the docs show side by
side, each cell exactly its image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.toyworld.render import render_batch
from models.toyworld_gan import ToyworldGenerator
from models.toyworld_training import rendered_grid, sample_grid


def _cell(grid: np.ndarray, k: int, side: int, scale: int) -> np.ndarray:
    r, c = divmod(k, side)
    y, x = (r * 66 + 1) * scale, (c * 66 + 1) * scale
    return grid[y:y + 64 * scale:scale, x:x + 64 * scale:scale]


def test_rendered_grid_cells_are_the_scenes(tmp_path: Path) -> None:
    rendered_grid(tmp_path / "r.png", n=6, seed=7, scale=2)
    grid = np.asarray(Image.open(tmp_path / "r.png"))
    assert grid.shape == (3 * 66 * 2, 3 * 66 * 2, 3)  # ceil(sqrt(6)) = 3 cells a side
    images, _ = render_batch(7, 0, 6, 64)
    for k in range(6):
        want = np.rint((images[k].transpose(1, 2, 0) + 1) * 127.5)
        assert np.abs(_cell(grid, k, 3, 2).astype(float) - want).max() <= 1
    assert (_cell(grid, 7, 3, 2) == 255).all()  # empty cells stay white
    assert not list(tmp_path.glob("*.tmp.png"))


def test_sample_grid_draws_the_generator_and_keeps_its_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    gen = ToyworldGenerator().train()
    sample_grid(gen, tmp_path / "s.png", n=4, seed=3, scale=1)
    assert gen.training
    gen.eval()
    with torch.no_grad():
        want = ((gen(gen.sample_latents(4, 3)).clamp(-1, 1) + 1) * 127.5).round()
    grid = np.asarray(Image.open(tmp_path / "s.png"))
    for k in range(4):
        got = _cell(grid, k, 2, 1).astype(float)
        assert np.abs(got - want[k].permute(1, 2, 0).numpy()).max() <= 1
