"""Photo loading: the crop-and-resize contract and clear errors for unusable inputs."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from gandissect.inversion import photo as ph
from gandissect.inversion.photo import PhotoError, load_photo


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_same_size_photo_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "p.png"
    path.write_bytes(_png(a))
    t = load_photo(path, 64)
    assert t.shape == (3, 64, 64) and t.dtype == torch.float32
    back = np.rint((t.numpy().transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
    assert np.array_equal(back, a)


def test_wide_photo_is_centre_cropped_then_area_resized():
    a = np.zeros((32, 96, 3), dtype=np.uint8)
    a[:, 32:64] = 200  # the centre square is uniform 200; the sides are black
    t = load_photo(_png(a), 16)
    assert t.shape == (3, 16, 16)
    assert torch.allclose(t, torch.full_like(t, 200 / 127.5 - 1), atol=1e-6)


def test_upscaling_greyscale_and_alpha():
    grey = np.full((10, 10), 100, dtype=np.uint8)
    t = load_photo(_png(grey), 20)
    assert t.shape == (3, 20, 20) and torch.allclose(t[0], t[1]) and torch.allclose(t[1], t[2])
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)  # fully transparent: composited over white
    t = load_photo(_png(rgba, "RGBA"), 16)
    assert torch.allclose(t, torch.ones_like(t))


def test_arrays_and_jpeg():
    f = np.full((20, 20, 3), 0.5, dtype=np.float32)
    assert torch.allclose(load_photo(f, 20), torch.full((3, 20, 20), 128 / 127.5 - 1), atol=1e-6)
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(buf, format="JPEG")
    t = load_photo(buf.getvalue(), 20)
    assert abs(float(t.mean()) - (90 / 127.5 - 1)) < 0.02


@pytest.mark.parametrize("source, message", [
    (b"this is not an image", "not a readable image"),
    (np.zeros((4, 4, 3), np.uint8), "at least 8 pixels"),
    (np.zeros((8, 8, 2), np.uint8), "must be"),
    (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
    (np.full((8, 8, 3), 2.0, np.float32), "[0, 1]"),
    (np.zeros((8, 8, 3), np.int64), "uint8 or float"),
])
def test_bad_photos_are_refused_with_a_reason(source, message):
    with pytest.raises(PhotoError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_photo(source, 64)


def test_missing_and_huge_files_are_refused(tmp_path, monkeypatch):
    with pytest.raises(PhotoError, match="not a file"):
        load_photo(tmp_path / "nope.png", 64)
    big = tmp_path / "big.png"
    big.write_bytes(_png(np.zeros((64, 64, 3), np.uint8)))
    monkeypatch.setattr(ph, "MAX_BYTES", 10)
    with pytest.raises(PhotoError, match="MB; the limit"):
        load_photo(big, 64)
    monkeypatch.setattr(ph, "MAX_BYTES", 1 << 30)
    monkeypatch.setattr(ph, "MAX_PIXELS", 100)
    with pytest.raises(PhotoError, match="pixels; the limit"):
        load_photo(big, 64)
