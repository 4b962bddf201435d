"""Shared helpers of the browser tests: a live app server, a headless Chromium page on it, and
the pixels the page shows (the paint canvas's image, the result image)."""

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

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(demo: Any) -> Iterator[str]:
    """``demo`` launched on a free local port; closed (and its brush job cancelled) after."""
    port = free_port()
    demo.queue(default_concurrency_limit=2).launch(server_name="127.0.0.1", server_port=port,
                                                   prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        job = getattr(demo, "ganpaint_job", None)
        if job is not None:                  # cancelled, and its thread ended before we go on
            assert job.stop(600), "the brush job did not stop within 600 s of its cancel"


@contextmanager
def browser_page(url: str, width: int = 1400, height: int = 1000,
                 ready: bool = True, timeout_ms: int = 60_000,
                 ready_ms: int = 600_000) -> Iterator[Any]:
    """A headless Chromium page on ``url`` once the canvas shows an image (and, with ``ready``,
    once painting is enabled: brushes built, within ``ready_ms``); the browser is closed
    after."""
    exe = CHROMIUM if Path(CHROMIUM).is_file() else str(shutil.which("chromium"))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            wait_image(page, timeout_ms)
            if ready:
                page.wait_for_function("!document.querySelector('#apply-stroke').disabled",
                                       timeout=ready_ms)
            yield page
        finally:
            browser.close()


def wait_image(page: Any, timeout_ms: int = 60_000) -> None:
    page.wait_for_function(
        "(() => { const i = document.querySelector('#paint-canvas img.gp-image');"
        " return i !== null && i.src.startsWith('data:image/png'); })()", timeout=timeout_ms)


def canvas_image(page: Any) -> np.ndarray:
    """The image the paint canvas shows (64 px, from its data URL)."""
    src = page.locator("#paint-canvas img.gp-image").get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
                      .convert("RGB"))


def result_image(page: Any) -> np.ndarray:
    """The result image's pixels, fetched the way the browser shows them."""
    src = page.locator("#paint-result img").first.get_attribute("src")
    data = (base64.b64decode(src.split(",", 1)[1]) if src.startswith("data:")
            else page.request.get(src).body())
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def canvas_box(page: Any) -> dict[str, float]:
    box = page.locator("#paint-canvas canvas.gp-view").bounding_box()
    assert box is not None
    return dict(box)


def paint_line(page: Any, start: tuple[float, float], end: tuple[float, float],
               steps: int = 12) -> None:
    """Drag the mouse from ``start`` to ``end`` (fractions of the canvas) with the button down."""
    page.locator("#paint-canvas canvas.gp-view").scroll_into_view_if_needed()
    box = canvas_box(page)

    def at(f: tuple[float, float]) -> tuple[float, float]:
        return box["x"] + f[0] * box["width"], box["y"] + f[1] * box["height"]

    page.mouse.move(*at(start))
    page.mouse.down()
    for i in range(1, steps + 1):
        t = i / steps
        page.mouse.move(*at((start[0] + t * (end[0] - start[0]),
                             start[1] + t * (end[1] - start[1]))), steps=2)
    page.mouse.up()


def status(page: Any) -> str:
    return str(page.locator("#paint-status textarea").input_value())


def click_and_wait(page: Any, selector: str, timeout_ms: int = 60_000) -> str:
    """Click ``selector`` and wait until the status line changes; the new status."""
    old = status(page)
    page.locator(selector).click()
    page.wait_for_function("v => document.querySelector('#paint-status textarea').value !== v",
                           arg=old, timeout=timeout_ms)
    page.wait_for_timeout(200)  # the canvas re-renders after the status arrives
    return status(page)
