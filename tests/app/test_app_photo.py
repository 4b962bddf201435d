"""Uploading a photo to the GANPaint app, driven through gradio_client on a live server (bundled
Toyworld GAN, layer5, shipped brushes): bad uploads are refused with a message, a photo is
painted, undone and kept per session, and a dropped photo is said. A rendered scene of seed 7
plays the photo; the app's inversion runs 30 + 30 steps (``FAST``, passed to ``build_app``)
instead of 150 + 250 to keep the test quick."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import app
from gandissect.inversion.invert import InversionSettings
from gandissect.inversion.photo import MAX_BYTES
from gandissect.paint.canvas import mask_data_url
from gandissect.paint.photo import PhotoStore
from models.toyworld import render_scene

gradio_client = pytest.importorskip("gradio_client")
FAST = InversionSettings(optimize_steps=30, adapt_steps=30)


def scene_png(folder: Path, seed: int = 7, size: int = 64) -> Path:
    """A rendered Toyworld scene the generator never saw, as a PNG of ``size`` px."""
    image = render_scene(seed=seed, index=0, size=size).image
    path = folder / f"scene-{seed}-{size}.png"
    Image.fromarray(np.round((image.transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    mp = pytest.MonkeyPatch()
    mp.setenv("GANDISSECT_CACHE", str(tmp_path_factory.mktemp("cache")))
    demo = app.build_app(inversion=FAST, photos=PhotoStore(max_photos=2))
    demo.queue(default_concurrency_limit=2)
    port = app_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        assert demo.ganpaint_job.wait(300), demo.ganpaint_job.status()
        demo.ganpaint_url = f"http://127.0.0.1:{port}/"
        yield demo
    finally:
        demo.close()
        demo.ganpaint_job.stop(600)
        mp.undo()


@pytest.fixture(scope="module")
def url(demo: Any) -> str:
    return str(demo.ganpaint_url)


def app_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client(url: str) -> Any:
    return gradio_client.Client(url, verbose=False, ssl_verify=False)


def upload(c: Any, path: Path) -> tuple[Any, ...]:
    """Outputs: result, canvas, strokes table, status, photo, reconstruction, info, upload."""
    return tuple(c.predict(gradio_client.handle_file(str(path)), 0, api_name="/upload_photo"))


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))[::app.SCALE, ::app.SCALE]


def test_bad_uploads_are_said(url: str, tmp_path: Path) -> None:
    c = client(url)
    base = c.predict(3, api_name="/image")
    text = tmp_path / "notes.txt"
    text.write_text("no image here")
    out = upload(c, text)
    assert "Photo not used" in out[6] and "not a readable image" in out[6], out[6]
    big = tmp_path / "huge.png"
    big.write_bytes(b"\0" * (MAX_BYTES + 1024))
    out = upload(c, big)
    assert "Photo not used" in out[6] and "the limit is 20 MB" in out[6], out[6]
    # the session still shows its sample
    again = c.predict(mask_data_url(np.ones((256, 256), bool)), 3, "house", "draw", 4, 1.0,
                      api_name="/paint")
    assert "stroke 1" in again[3]
    assert c.predict(3, api_name="/undo")[0] is not None
    assert np.array_equal(pixels(c.predict(3, api_name="/undo")[0]), pixels(base[0]))


def test_paint_a_photo_and_undo(demo: Any, url: str, tmp_path: Path) -> None:
    c, other = client(url), client(url)
    sample = other.predict(5, api_name="/image")
    photo_file = scene_png(tmp_path, size=200)  # any size: centre-cropped, resized to 64 px
    out = upload(c, photo_file)
    assert "reconstruction PSNR" in out[6] and "reconstruction PSNR" in out[3], out[6]
    photo = pixels(out[4])
    assert photo.shape == (64, 64, 3)
    assert np.array_equal(pixels(out[0]), photo)  # unedited: the photo itself
    assert pixels(out[5]).shape == (64, 64, 3)    # the reconstruction beside it
    assert out[7] is None                         # the upload box is cleared
    # the uploaded file is deleted once read
    assert not list(Path(demo.GRADIO_CACHE).rglob(photo_file.name))
    mask = np.zeros((256, 256), bool)
    mask[64:160, 64:160] = True
    painted = c.predict(mask_data_url(mask), 0, "house", "draw", 20, 1.0, api_name="/paint")
    assert "stroke 1: draw house" in painted[3], painted[3]
    diff = np.abs(pixels(painted[0]).astype(int) - photo.astype(int)).max(axis=2)
    inside = np.zeros((64, 64), bool)
    inside[16:40, 16:40] = True
    near = np.zeros((64, 64), bool)
    near[4:52, 4:52] = True
    assert diff[inside].mean() > 5, diff[inside].mean()
    assert diff[~near].mean() <= 1.0, diff[~near].mean()
    undone = c.predict(0, api_name="/undo")
    assert np.array_equal(pixels(undone[0]), photo)
    redone = c.predict(0, api_name="/redo")
    assert np.array_equal(pixels(redone[0]), pixels(painted[0]))
    # the other session still paints its sample; a seed replaces the photo
    assert np.array_equal(pixels(other.predict(5, api_name="/undo")[0]), pixels(sample[0]))
    back = c.predict(5, api_name="/image")
    assert np.array_equal(pixels(back[0]), pixels(sample[0]))


def test_a_dropped_photo_is_said(url: str, tmp_path: Path) -> None:
    """The server keeps two photos here: a third upload drops the least recently used."""
    first = client(url)
    upload(first, scene_png(tmp_path, seed=8))
    for seed in (9, 10):
        upload(client(url), scene_png(tmp_path, seed=seed))
    out = first.predict(mask_data_url(np.ones((256, 256), bool)), 0, "house", "draw", 4, 1.0,
                        api_name="/paint")
    assert "dropped" in out[3] and "upload it again" in out[3], out[3]


def test_inversion_steps_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--inversion-steps 10 20`` reaches build_app; negative steps are refused."""
    seen: dict[str, Any] = {}

    class Fake:
        def queue(self, **_kw: Any) -> Fake:
            return self

        def launch(self, **kw: Any) -> None:
            seen["launch"] = kw

    def fake_build(**kw: Any) -> Fake:
        seen.update(kw)
        return Fake()

    monkeypatch.setattr(app, "build_app", fake_build)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # launch leaves this process's threads alone
    app.launch(app.parse_args(["--inversion-steps", "10", "20"]))
    assert seen["inversion"] == InversionSettings(optimize_steps=10, adapt_steps=20)
    assert seen["launch"]["max_file_size"] == app.UPLOAD_LIMIT
    with pytest.raises(SystemExit):
        app.parse_args(["--inversion-steps", "-1", "2"])
