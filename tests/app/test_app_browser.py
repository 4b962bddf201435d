"""GANPaint in a real browser: headless Chromium (Playwright) paints a stroke with the mouse."""

from __future__ import annotations

import base64
import io
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import app

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    mp = pytest.MonkeyPatch()
    mp.setenv("GANDISSECT_CACHE", str(tmp_path_factory.mktemp("cache")))
    demo = app.build_app("planted", "planted", "layout", samples=100, candidates=8,
                         ace_samples=8)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                        quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        mp.undo()


@contextmanager
def opened(url: str, height: int) -> Iterator[Any]:
    """A headless Chromium page on ``url`` once the first result image is shown."""
    exe = CHROMIUM if Path(CHROMIUM).is_file() else str(shutil.which("chromium"))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.goto(url)
            page.wait_for_function("document.querySelector('#paint-result img') !== null",
                                   timeout=30_000)
            yield page
        finally:
            browser.close()


def result_image(page: Any) -> np.ndarray:
    """The result image's pixels, fetched the way the browser shows them."""
    src = page.locator("#paint-result img").first.get_attribute("src")
    if src.startswith("data:"):
        data = base64.b64decode(src.split(",", 1)[1])
    else:
        data = page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_paint_a_stroke_in_chromium(url: str) -> None:
    with opened(url, 1000) as page:
        page.wait_for_selector("#paint-editor canvas", timeout=30_000)
        before = result_image(page)
        # choose the "grass" brush, mode remove (default), then the Brush tool
        page.locator("input[aria-label='concept brush']").click()
        page.locator("ul[role='listbox'] li", has_text="grass").first.click()
        page.locator("#paint-editor button[aria-label='Brush']").click()
        box = page.locator("#paint-editor canvas").first.bounding_box()
        assert box is not None
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        side = 0.8 * min(box["width"], box["height"])
        y = cy + 0.3 * side  # low in the image: grass, far from the sky at the top
        page.mouse.move(cx - 0.3 * side, y)
        page.mouse.down()
        for i in range(1, 21):
            page.mouse.move(cx - 0.3 * side + i * 0.03 * side, y, steps=2)
        page.mouse.up()
        page.locator("#apply-stroke").click()
        page.wait_for_function(
            "document.querySelector('#paint-status textarea').value.includes('grass')",
            timeout=30_000)
        page.wait_for_timeout(500)
        after = result_image(page)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app_browser.png"), full_page=True)
        status = page.locator("#paint-status textarea").input_value()
    assert "remove grass" in status
    assert before.shape == after.shape
    changed = (before != after).any(axis=2)
    h = changed.shape[0]
    assert changed.any(), "the stroke changed nothing"
    rows = np.flatnonzero(changed.any(axis=1))
    assert rows.min() > 0.5 * h, f"changes reach row {rows.min()} of {h}, far above the stroke"
    assert not changed[: h // 2].any()


def test_pick_an_image_from_the_grid(url: str) -> None:
    """Open the grid, turn a page, click the third thumbnail: the seed becomes 12 + 2 and the
    result shows that image."""
    with opened(url, 1400) as page:
        before = result_image(page)
        page.get_by_text("Pick an image from a grid").click()
        page.get_by_role("button", name="Other images").click()
        page.wait_for_function(
            "document.querySelector('input[aria-label=\"grid page\"]').value === '1'",
            timeout=30_000)
        thumbs = page.locator("#image-grid button img")
        thumbs.nth(app.GRID - 1).wait_for(timeout=30_000)
        page.wait_for_timeout(500)
        thumbs.nth(2).click()
        page.wait_for_function(
            "document.querySelector('input[aria-label=\"image (seed)\"]').value === '14'",
            timeout=30_000)
        page.wait_for_timeout(500)
        after = result_image(page)
        status = page.locator("#paint-status textarea").input_value()
    assert "image 14" in status
    assert (before != after).any(), "the picked image is shown"
