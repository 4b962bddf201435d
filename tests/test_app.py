"""The app's callback works through the public API and refuses bad input clearly."""

import pytest

import app


def test_sample_view_on_planted_model() -> None:
    grid, labels, summary = app.sample_view("planted", "planted", seed=0, count=4)
    assert grid.dtype.name == "uint8" and grid.shape == labels.shape and grid.shape[2] == 3
    assert "sky" in summary and "grass" in summary


@pytest.mark.parametrize(("seed", "count"), [(0, 0), (0, 1000), (-1, 4)])
def test_sample_view_bad_input(seed: int, count: int) -> None:
    with pytest.raises(ValueError):
        app.sample_view("planted", "planted", seed=seed, count=count)


def test_app_builds() -> None:
    demo = app.build_app("planted", "planted")
    assert demo is not None
