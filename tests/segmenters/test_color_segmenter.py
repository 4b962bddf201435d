"""The colour-naming rule: known colours get their names, every pixel exactly one."""

import colorsys

import pytest
import torch

from segmenters.color import COLOR_NAMES, ColorSegmenter, rgb_to_hsv

CASES = {
    (0.0, 0.0, 0.0): "black", (1.0, 1.0, 1.0): "white", (0.5, 0.5, 0.5): "gray",
    (0.9, 0.1, 0.1): "red", (1.0, 0.6, 0.0): "orange", (0.95, 0.9, 0.1): "yellow",
    (0.1, 0.7, 0.2): "green", (0.1, 0.3, 0.9): "blue", (0.5, 0.1, 0.7): "purple",
    (1.0, 0.75, 0.8): "pink", (0.45, 0.25, 0.1): "brown", (0.25, 0.6, 1.0): "blue",
}


def _image(rgb: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, 4, 4) * 2 - 1


@pytest.mark.parametrize(("rgb", "name"), list(CASES.items()))
def test_named_colours(rgb: tuple[float, float, float], name: str) -> None:
    masks = ColorSegmenter().segment(_image(rgb))
    assert masks[0, COLOR_NAMES.index(name)].all(), (rgb, name)


def test_partition_and_hsv_against_colorsys() -> None:
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 16, 16, generator=g)
    masks = ColorSegmenter().segment(rgb * 2 - 1)
    assert (masks.sum(dim=1) == 1).all()
    h, s, v = rgb_to_hsv(rgb)
    for y, x in [(0, 0), (3, 7), (15, 2), (9, 9)]:
        hh, ss, vv = colorsys.rgb_to_hsv(*rgb[0, :, y, x].tolist())
        assert abs(hh * 360 - h[0, y, x].item()) < 1e-3 or abs(hh * 360 - h[0, y, x].item()) > 359
        assert abs(ss - s[0, y, x].item()) < 1e-5 and abs(vv - v[0, y, x].item()) < 1e-6
