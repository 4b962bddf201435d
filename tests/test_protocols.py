"""Generator and Segmenter protocols, registries and their error messages."""

import pytest
import torch

import models
import segmenters
from models.base import per_index_normal


def test_per_index_latents_independent_of_batching() -> None:
    a = per_index_normal(10, seed=3, start=0, shape=(4,))
    b = per_index_normal(4, seed=3, start=6, shape=(4,))
    torch.testing.assert_close(a[6:], b)
    assert not torch.equal(per_index_normal(1, 4, 0, (4,)), a[:1])


def test_unknown_names_list_known_ones() -> None:
    with pytest.raises(ValueError, match="known models: .*planted"):
        models.load("nope")
    with pytest.raises(ValueError, match="known segmenters: .*color"):
        segmenters.load("nope")


def test_generator_layer_lookup_and_latent_checks() -> None:
    gen = models.load("planted")
    assert gen.layer("layout") is gen.layout
    with pytest.raises(ValueError, match="valid layers: layout"):
        gen.layer("layer4")
    with pytest.raises(ValueError, match="latents of shape"):
        gen(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        gen(torch.full((1, 8), float("nan")))


@pytest.mark.parametrize("name", ["color", "planted"])
def test_segmenter_input_validation(name: str) -> None:
    seg = segmenters.load(name)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        seg.segment(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        seg.segment(torch.full((1, 3, 8, 8), 3.0))
    with pytest.raises(ValueError, match="NaN"):
        seg.segment(torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="floats"):
        seg.segment(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError):
        seg.segment([[0.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="known concepts"):
        seg.label_index("unicorn")
    out = seg.segment(torch.zeros(0, 3, 8, 8))
    assert out.shape == (0, len(seg.labels), 8, 8)


def test_segmenter_batches_consistently() -> None:
    seg = segmenters.load("color", batch_size=3)
    x = torch.rand(7, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    full = seg.segment(x)
    assert full.dtype == torch.bool and full.shape == (7, 11, 16, 16)
    torch.testing.assert_close(full[5:], seg.segment(x[5:]))
