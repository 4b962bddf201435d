"""The paint-context benchmark (benchmarks/paint_context.py): the square it picks is the most
covered one (brute force), and a draw counts as working only when the concept fills the share
of the square asked for, on images that hold a suitable square."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import torch
from tiny import load_benchmark


def _bench() -> ModuleType:
    return load_benchmark("paint_context")


def test_best_square_is_the_most_covered_on_its_grid() -> None:
    pc = _bench()
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((20, 20)) < 0.4
        mask[3:11, 9:17] = True
        cov, y, x = pc.best_square(mask, 6)
        grid = sorted(set(range(0, 15, 2)) | {14})
        brute = max(mask[r:r + 6, c:c + 6].mean() for r in grid for c in grid)
        assert cov == brute and mask[y:y + 6, x:x + 6].mean() == cov


class _Stroke:
    def __init__(self, box: np.ndarray) -> None:
        self.box = box


class _Painter:
    """Images are their seed; strokes paint their square with ``fill`` of the concept."""

    def __init__(self, fill: float) -> None:
        self.fill = fill

    def render_batch(self, items: list[tuple[int, tuple[Any, ...]]]) -> torch.Tensor:
        out = torch.zeros(len(items), 4, 16, 16)
        for i, (seed, strokes) in enumerate(items):
            out[i, 0] = seed
            for s in strokes:
                box = torch.from_numpy(s.box)
                rows = box.any(dim=1).nonzero()[:, 0]
                cut = rows[: max(1, round(self.fill * len(rows)))]  # the top rows of the square
                painted = torch.zeros_like(box)
                painted[cut] = box[cut]
                out[i, 1] += painted.float()
        return out

    def stroke(self, concept: str, mode: str, box: np.ndarray, strength: int) -> _Stroke:
        assert mode == "draw" and concept == "door" and strength == 3
        return _Stroke(box)


class _Segmenter:
    """Labels: door where painted; wall on the left half of even seeds, nowhere on odd ones."""

    labels = ("door", "wall")

    def label_index(self, name: str) -> int:
        return self.labels.index(name)

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        masks = torch.zeros(images.shape[0], 2, 16, 16, dtype=torch.bool)
        masks[:, 0] = images[:, 1] > 0
        for i in range(images.shape[0]):
            if int(images[i, 0, 0, 0]) % 2 == 0:
                masks[i, 1, :, :8] = True
        return masks


def test_run_case_counts_works_by_the_share_of_the_square() -> None:
    pc = _bench()
    for fill, works in ((0.5, 1.0), (0.25, 0.0)):
        res = pc.run_case(_Painter(fill), _Segmenter(), "door", "wall", n=4, size=4,
                          strength=3, need=0.3, min_context=0.75, seed=10, scan=40, batch=3)
        assert res["images"] == 4 and res["scanned"] == 9  # odd seeds have no wall
        assert [u["seed"] for u in res["per_image"]] == [10, 12, 14, 16]
        assert all(u["x"] + 4 <= 8 and u["before"] == 0.0 for u in res["per_image"])
        assert res["success"] == works
        assert res["after"] == fill
