"""Editing an uploaded photo in a real browser (issue 19), on the bundled model (Toyworld GAN,
layer5, shipped brushes): upload a photo, see the inversion's progress and then its
reconstruction beside the photo, paint a stroke, apply, undo, redo and download the result.

A rendered Toyworld scene of seed 7 (the generator never saw it) plays the photo, uploaded as a
200 px PNG (the app centre-crops and resizes it to 64 px). To keep the test quick the app's
inversion runs 30 + 30 steps (``FAST``, passed to ``build_app``) instead of 150 + 250: the
reconstruction is rougher, but the edit is composited into the photo all the same."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from chromium import (
    ARTIFACTS,
    browser_page,
    canvas_image,
    click_and_wait,
    paint_line,
    result_image,
    served,
    status,
)
from PIL import Image

import app
from gandissect.inversion.invert import InversionSettings
from gandissect.inversion.photo import load_photo
from gandissect.paint.canvas import MASK_SIDE
from models.toyworld import render_scene

FAST = InversionSettings(optimize_steps=30, adapt_steps=30)
BRUSH = 24  # the canvas's default brush width, in mask pixels
STROKE = ((0.3, 0.45), (0.7, 0.45))


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    mp = pytest.MonkeyPatch()
    mp.setenv("GANDISSECT_CACHE", str(tmp_path_factory.mktemp("cache")))
    demo = app.build_app(inversion=FAST)
    try:
        with served(demo) as u:
            assert demo.ganpaint_job.wait(300), demo.ganpaint_job.status()
            yield u
    finally:
        mp.undo()


def stroke_region(grow: int) -> np.ndarray:
    """The painted line at 64 px, grown by ``grow`` px."""
    m = np.zeros((MASK_SIDE, MASK_SIDE), np.uint8)
    p0, p1 = (tuple(int(round(v * MASK_SIDE)) for v in p) for p in STROKE)
    cv2.line(m, p0, p1, 1, BRUSH)
    small = (cv2.resize(m, (64, 64), interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
    return cv2.dilate(small, np.ones((2 * grow + 1,) * 2, np.uint8)) > 0 if grow else small > 0


def test_upload_paint_undo_download(url: str, tmp_path: Path) -> None:
    scene = render_scene(seed=7, index=0, size=200).image
    path = tmp_path / "my photo.png"
    Image.fromarray(np.round((scene.transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)).save(path)
    expected = np.round((load_photo(path, 64).numpy().transpose(1, 2, 0) + 1) * 127.5)
    with browser_page(url) as page:
        t0 = time.monotonic()
        page.locator("#photo-upload input[type=file]").set_input_files(str(path))
        # progress while it inverts, then the reconstruction beside the photo
        page.wait_for_function("document.body.innerText.includes('inverting the photo')",
                               timeout=120_000)
        page.wait_for_function(
            "document.querySelector('#photo-info').innerText.includes('reconstruction PSNR')",
            timeout=300_000)
        inverted = time.monotonic() - t0
        page.wait_for_function("v => document.querySelector('#paint-status textarea').value"
                               ".startsWith(v)", arg="photo my photo.png", timeout=30_000)
        page.wait_for_timeout(300)
        info = page.locator("#photo-info").inner_text()
        assert page.locator("#photo-view img").count() == 1
        assert page.locator("#photo-reconstruction img").count() == 1
        photo = canvas_image(page)
        assert np.abs(photo.astype(int) - expected).max() <= 1  # the photo, cropped, 64 px
        assert np.array_equal(result_image(page)[::app.SCALE, ::app.SCALE], photo)

        page.locator("#concept input").click()
        page.locator("ul[role='listbox'] li", has_text="house").first.click()
        page.get_by_label("draw", exact=True).check()
        page.get_by_label("20", exact=True).check()
        paint_line(page, *STROKE)
        new = click_and_wait(page, "#apply-stroke")
        assert "stroke 1: draw house" in new, new
        edited = canvas_image(page)
        assert np.array_equal(result_image(page)[::app.SCALE, ::app.SCALE], edited)
        diff = np.abs(edited.astype(int) - photo.astype(int)).max(axis=2)
        inside, near = stroke_region(0), stroke_region(12)
        assert diff[inside].mean() > 5, f"the stroke changed little: {diff[inside].mean():.1f}"
        assert diff[~near].mean() <= 1.0, f"{diff[~near].mean():.2f}/255 far outside"

        assert "undo: 0 stroke(s)" in click_and_wait(page, "#undo-edit")
        assert np.array_equal(canvas_image(page), photo), "undo: the photo is back"
        assert "redo: 1 stroke(s)" in click_and_wait(page, "#redo-edit")
        assert np.array_equal(canvas_image(page), edited)

        with page.expect_download() as download:
            page.locator("#paint-result").hover()
            page.locator("#paint-result").get_by_label("Download").first.click()
        saved = tmp_path / "download.png"
        download.value.save_as(saved)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app_photo.png"), full_page=True)
        final = status(page)
    with Image.open(saved) as got:
        assert got.format == "PNG" and got.size == (64 * app.SCALE, 64 * app.SCALE)
        assert np.array_equal(np.asarray(got.convert("RGB"))[::app.SCALE, ::app.SCALE],
                              edited)
    print(f"\nupload to reconstruction: {inverted:.1f} s ({FAST.optimize_steps} + "
          f"{FAST.adapt_steps} steps; load average {os.getloadavg()}); {info}; {final}")
