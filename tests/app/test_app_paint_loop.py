"""The paint loop of issue 19 in a real browser on the bundled model (Toyworld GAN, layer5):
ten strokes painted and applied in a row, each changing the image where it was painted, with
the canvas showing the current image every time; and a fresh cache serves its page at once."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest
from chromium import (
    ARGS,
    ARTIFACTS,
    CHROMIUM,
    browser_page,
    canvas_image,
    click_and_wait,
    paint_line,
    result_image,
    served,
    sync_api,
    wait_image,
)

import app
from gandissect.paint.canvas import MASK_SIDE
from gandissect.paint.job import PainterJob

#: The strokes: (start, end) in fractions of the canvas, all over the image.
STROKES = [((0.15, 0.15 + 0.075 * k), (0.85, 0.15 + 0.075 * k)) if k % 2 == 0 else
           ((0.2 + 0.07 * k, 0.1), (0.2 + 0.07 * k, 0.9)) for k in range(10)]
BRUSH = 24  # the canvas's default brush width, in mask pixels


@pytest.fixture(scope="module")
def toyworld(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The default app (toyworld, layer5) on an empty cache: the shipped brushes serve it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GANDISSECT_CACHE", str(tmp_path_factory.mktemp("cache")))
    demo = app.build_app()
    try:
        with served(demo) as url:
            if not demo.ganpaint_job.wait(120):
                pytest.fail("the toyworld brushes were not ready in 120 s: do the shipped "
                            "brushes in gandissect/paint/shipped/ still match the weights? "
                            f"({demo.ganpaint_job.status().message})")
            yield url
    finally:
        mp.undo()


def painted_region(start: tuple[float, float], end: tuple[float, float], side: int = 64,
                   grow: int = 8) -> np.ndarray:
    """The stroke's pixels at ``side`` px, grown by ``grow`` px (the layer's 8 px cells)."""
    m = np.zeros((MASK_SIDE, MASK_SIDE), np.uint8)
    p0 = tuple(int(round(v * MASK_SIDE)) for v in start)
    p1 = tuple(int(round(v * MASK_SIDE)) for v in end)
    cv2.line(m, p0, p1, 1, BRUSH)
    small = cv2.resize(m, (side, side), interpolation=cv2.INTER_AREA) > 0
    return cv2.dilate(small.astype(np.uint8), np.ones((2 * grow + 1,) * 2, np.uint8)) > 0


def geometry(page: Any) -> dict[str, Any]:
    return dict(page.evaluate("""(() => {
        const r = (s) => document.querySelector(s).getBoundingClientRect().toJSON();
        return {img: r('#paint-canvas img.gp-image'), view: r('#paint-canvas canvas.gp-view'),
                stage: r('#paint-canvas .gp-stage')}; })()"""))


def test_ten_strokes_in_a_row(toyworld: str) -> None:
    """House, draw, 20 units: a brush that acts anywhere on this GAN (the tree brush needs
    ground under it; the page says so in its measured effect)."""
    latencies = []
    with browser_page(toyworld) as page:
        effect = page.locator("#brush-effect").inner_text()
        assert "no measurable effect" not in effect, effect  # the default brush acts
        concept = "house"
        page.locator("#concept input").click()
        page.locator("ul[role='listbox'] li", has_text=concept).first.click()
        page.get_by_label("draw", exact=True).check()
        page.get_by_label("20", exact=True).check()
        page.wait_for_function("document.querySelector('#brush-effect').innerText"
                               ".includes('draw house (20 units)')", timeout=30_000)
        first = canvas_image(page)
        for k, (start, end) in enumerate(STROKES):
            before = canvas_image(page)
            paint_line(page, start, end)
            t = time.monotonic()
            new = click_and_wait(page, "#apply-stroke")
            latencies.append(time.monotonic() - t)
            assert f"stroke {k + 1}: " in new and concept in new, new
            after, shown = canvas_image(page), result_image(page)
            # the canvas shows the current image: the result, not blank, not shifted
            assert np.array_equal(shown[::app.SCALE, ::app.SCALE], after), f"stroke {k + 1}"
            assert after.std() > 10, f"stroke {k + 1}: the canvas image is blank"
            g = geometry(page)
            for key in ("x", "y", "width", "height"):
                assert abs(g["img"][key] - g["view"][key]) < 1, (k, g)
                assert abs(g["img"][key] - g["stage"][key]) < 1, (k, g)
            assert not page.evaluate("window.__ganpaint.painted()"), "applied paint stays"
            # changed where painted
            diff = np.abs(after.astype(int) - before.astype(int)).sum(axis=2)
            region = painted_region(start, end)
            assert diff.sum() > 0, f"stroke {k + 1} changed nothing"
            inside = diff[region].sum() / diff.sum()
            assert inside >= 0.7, f"stroke {k + 1}: only {inside:.0%} of the change inside"
            assert (diff[region] > 30).sum() >= 20, f"stroke {k + 1}: no visible change"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app_paint_loop.png"), full_page=True)
        assert (canvas_image(page) != first).any()
    print(f"\nper-Apply latency (s): {', '.join(f'{x:.2f}' for x in latencies)}; "
          f"median {np.median(latencies):.2f}; load average {os.getloadavg()}")


def test_fresh_cache_serves_the_page_at_once(tmp_path: Any, monkeypatch: Any) -> None:
    """No cache, no shipped brushes: the page is served while the brushes are still being
    built (the build takes minutes): it shows the build's progress, then the first image,
    while the paint controls wait; the build is cancelled at the end. The time to the page is
    printed (issue 19's bar: within 10 s of the start on an idle machine) but not asserted:
    this machine is shared, and timing bars live in benchmarks. The browser is started first:
    its start-up is not the app's."""
    monkeypatch.setenv("GANDISSECT_CACHE", str(tmp_path))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            t0 = time.monotonic()
            job = PainterJob("toyworld", "toyworld", "layer4", shipped=None)
            with served(app.build_app(job=job)) as url:
                listening = time.monotonic() - t0
                page.goto(url)
                page.wait_for_selector("#build-status progress", timeout=120_000)
                shown = time.monotonic() - t0
                assert job.status().state in ("loading", "building"), job.status()
                assert page.locator("#apply-stroke").is_disabled()
                text = page.locator("#build-status").inner_text()
                wait_image(page, 60_000)
                image = time.monotonic() - t0
                assert canvas_image(page).std() > 10
        finally:
            browser.close()
    print(f"\nfresh cache: listening after {listening:.1f} s, page with progress after "
          f"{shown:.1f} s, first image after {image:.1f} s (load average {os.getloadavg()}): "
          f"{text[:100]!r}")
    assert "%" in text and ("Building the brushes" in text or "Loading" in text), text
