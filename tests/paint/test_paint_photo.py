"""A photo as one more kind of image the painter holds (gandissect.paint.photo), on the bundled
Toyworld GAN: strokes act only where painted, undo/redo give the same images, the shared
generator is never modified, bad uploads raise PhotoError, and the photo store is bounded.
A rendered scene of seed 7 (never seen by the generator) plays the photo; the inversion runs
few steps (FAST) to keep the tests quick: the reconstruction is rougher, the contract the same.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import models
from gandissect.common.hooks import Trace
from gandissect.inversion.invert import InversionSettings, adaptable_parameters
from gandissect.inversion.photo import MAX_BYTES, PhotoError
from gandissect.paint.painter import History, Painter
from gandissect.paint.photo import (
    Photo,
    PhotoStore,
    inversion_layer,
    invert_photo,
    photo_settings,
)
from models.toyworld import render_scene

FAST = InversionSettings(optimize_steps=30, adapt_steps=30, candidates=4)
#: Units of layer4 removed by the test stroke (half of them, so that the change is visible).
UNITS = tuple(range(0, 256, 2))


@pytest.fixture(scope="module")
def painter() -> Painter:
    return Painter(models.load("toyworld"), name="toyworld", layer="layer4")


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = render_scene(seed=7, index=0).image
    path = tmp_path_factory.mktemp("photo") / "scene.png"
    Image.fromarray(np.round((image.transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def snapshot(painter: Painter) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in painter.generator.named_parameters()}


@pytest.fixture(scope="module")
def photo(painter: Painter, scene_png: Path, snapshot: dict[str, torch.Tensor]) -> Photo:
    return invert_photo(painter, scene_png, FAST)


def box(r0: int, r1: int, c0: int, c1: int, side: int = 64) -> np.ndarray:
    m = np.zeros((side, side), bool)
    m[r0:r1, c0:c1] = True
    return m


def test_the_photo_itself_without_strokes(painter: Painter, photo: Photo,
                                          scene_png: Path) -> None:
    shown = painter.render(photo)
    assert np.array_equal(shown, np.asarray(Image.open(scene_png).convert("RGB")))
    assert not shown.flags.writeable
    assert photo.layer == "layer1" and photo.resolution == 64  # three layers before layer4
    # only the layers after the painter's are adapted to the photo
    assert photo.inversion.adapted == adaptable_parameters(painter.generator, "layer4")
    assert photo.psnr > 20 and "reconstruction PSNR" in photo.describe()
    assert photo.reconstruction.shape == (64, 64, 3)


def test_photos_are_inverted_before_the_brushes_and_adapted_after_them() -> None:
    layers = models.load("toyworld").layer_names
    for layer, expected in (("layer5", "layer2"), ("layer4", "layer1"), ("layer2", "layer1"),
                            ("layer8", "layer5")):
        assert inversion_layer(layers, layer) == expected
        settings = photo_settings(layers, layer, FAST)
        assert (settings.layer, settings.adapt_after) == (expected, layer)
        assert settings.optimize_steps == FAST.optimize_steps
    with pytest.raises(ValueError, match="layer99"):
        inversion_layer(layers, "layer99")


def test_strokes_act_inside_undo_and_redo(painter: Painter, photo: Photo) -> None:
    stroke = painter.unit_stroke("layer4", UNITS, "remove", box(16, 40, 16, 40))
    history = History().push(stroke)
    before, after = painter.render_many([(photo, ()), (photo, history.active)])
    diff = np.abs(after.astype(int) - before.astype(int)).max(axis=2)
    near = box(16 - 12, 40 + 12, 16 - 12, 40 + 12)  # the stroke's cells and the next ones
    assert (diff[box(16, 40, 16, 40)] > 20).mean() > 0.1, "the stroke changed too little"
    assert diff[~near].mean() <= 1.0, f"{diff[~near].mean():.2f}/255 outside the stroke"
    assert np.array_equal(painter.render(photo, history.undo().active), before)
    assert np.array_equal(painter.render(photo, history.undo().redo().active), after)
    # a sample and a photo in one call: each as alone
    sample, again = painter.render_many([(3, history.active), (photo, history.active)])
    assert np.array_equal(again, after)
    assert np.array_equal(sample, painter.render(3, history.active))
    assert painter.render(photo, history.active, scale=4).shape == (256, 256, 3)


def test_the_shared_generator_is_never_modified(painter: Painter, photo: Photo,
                                                snapshot: dict[str, torch.Tensor]) -> None:
    stroke = painter.unit_stroke("layer4", UNITS, "remove", box(0, 32, 0, 32))
    painter.render(photo, [stroke])
    for n, p in painter.generator.named_parameters():
        assert torch.equal(p, snapshot[n]), n
        assert p.grad is None, n
    assert not any(m._forward_hooks for m in painter.generator.modules())


def test_hooks_on_the_generator_during_the_copy_do_not_reach_the_photo(
        painter: Painter, scene_png: Path) -> None:
    """A render of another session hooks the shared generator: the inversion copies it under
    the painter's lock, and its copy never carries such a hook."""
    quick = InversionSettings(optimize_steps=2, adapt_steps=2, candidates=2)
    with Trace(painter.generator, ["layer5"], edit=lambda _n, x: x + 100.0, retain=False):
        started = threading.Event()

        def invert() -> None:
            started.set()
            out.append(invert_photo(painter, scene_png, quick))

        out: list[Photo] = []
        with painter.lock:  # a render holds the lock: the copy waits for it
            t = threading.Thread(target=invert)
            t.start()
            started.wait(5)
            t.join(0.5)
            assert t.is_alive(), "the inversion copied the generator while it was locked"
    t.join(120)
    inv = out[0].inversion
    assert not any(m._forward_hooks for m in inv.model.modules())
    assert float(inv.reconstruction.abs().max()) <= 1.0 + 1e-5


def test_bad_uploads_raise_photo_errors(painter: Painter, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(PhotoError, match="not a readable image"):
        invert_photo(painter, text, FAST)
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_BYTES + 1))
    with pytest.raises(PhotoError, match="the limit is 20 MB"):
        invert_photo(painter, big, FAST)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    with pytest.raises(PhotoError, match="at least 8 pixels"):
        invert_photo(painter, buf.getvalue(), FAST)


def test_a_model_without_parameters_says_so(scene_png: Path) -> None:
    planted = Painter(models.load("planted"), name="planted", layer="layout")
    with pytest.raises(ValueError, match="no parameters"):
        invert_photo(planted, scene_png, FAST)


def test_the_photo_store_is_bounded(photo: Photo) -> None:
    store = PhotoStore(max_bytes=int(2.5 * photo.nbytes()), max_photos=10)
    a, b, c = (store.add(photo) for _ in range(3))
    assert len({a, b, c}) == 3 and len(a) == 32
    assert a not in store and store.get(a) is None  # the least recently used went first
    assert store.get(b) is photo and store.get(c) is photo
    assert store.nbytes == 2 * photo.nbytes() <= store._photos.max_bytes  # type: ignore[operator]
    store.drop(b)
    store.drop("")
    assert len(store) == 1 and store.nbytes == photo.nbytes()
    assert photo.nbytes() >= photo.inversion.state_nbytes() > 1_000_000
