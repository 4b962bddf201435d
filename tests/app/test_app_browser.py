"""GANPaint in a real browser on the planted model: headless Chromium (Playwright) paints a
stroke with the mouse, picks an image from the grid, and the page fits a phone-wide window."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from chromium import (
    ARTIFACTS,
    browser_page,
    canvas_box,
    canvas_image,
    click_and_wait,
    paint_line,
    result_image,
    served,
)

import app


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    mp = pytest.MonkeyPatch()
    mp.setenv("GANDISSECT_CACHE", str(tmp_path_factory.mktemp("cache")))
    demo = app.build_app("planted", "planted", "layout", samples=100, candidates=8,
                         ace_samples=8)
    try:
        with served(demo) as u:
            yield u
    finally:
        mp.undo()


def choose(page: Any, concept: str, mode: str) -> None:
    page.locator("#concept input").click()
    page.locator("ul[role='listbox'] li", has_text=concept).first.click()
    page.get_by_label(mode, exact=True).check()


def test_paint_a_stroke_in_chromium(url: str) -> None:
    with browser_page(url) as page:
        before = result_image(page)
        choose(page, "grass", "remove")
        paint_line(page, (0.2, 0.8), (0.8, 0.8))  # low in the image: grass, far from the sky
        new = click_and_wait(page, "#apply-stroke")
        after = result_image(page)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app_browser.png"), full_page=True)
        assert not page.evaluate("window.__ganpaint.painted()"), "the applied paint stays"
    assert "remove grass" in new
    assert before.shape == after.shape
    changed = (before != after).any(axis=2)
    h = changed.shape[0]
    assert changed.any(), "the stroke changed nothing"
    rows = np.flatnonzero(changed.any(axis=1))
    assert rows.min() > 0.5 * h, f"changes reach row {rows.min()} of {h}, far above the stroke"


def test_empty_stroke_says_so(url: str) -> None:
    with browser_page(url) as page:
        before = canvas_image(page)
        new = click_and_wait(page, "#apply-stroke")
        assert "empty stroke" in new
        assert np.array_equal(canvas_image(page), before)


def test_pick_an_image_from_the_grid(url: str) -> None:
    """Open the grid, turn a page, click the third thumbnail: the seed becomes 12 + 2 and the
    canvas and the result show that image."""
    with browser_page(url, height=1400) as page:
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
        page.wait_for_function("document.querySelector('#paint-status textarea')"
                               ".value.includes('image 14')", timeout=30_000)
        page.wait_for_timeout(500)
        after = result_image(page)
        shown = canvas_image(page)
    assert (before != after).any(), "the picked image is shown"
    assert np.array_equal(after[::app.SCALE, ::app.SCALE], shown)


def test_a_400_px_window(url: str) -> None:
    """At 400 px the canvas takes the window's width, nothing spills out sideways, and a
    stroke still lands where it was painted."""
    with browser_page(url, width=400, height=900) as page:
        box = canvas_box(page)
        assert box["width"] >= 300 and abs(box["width"] - box["height"]) < 2, box
        assert box["x"] >= 0 and box["x"] + box["width"] <= 400
        assert page.evaluate("document.documentElement.scrollWidth") <= 401
        bar = page.locator("#paint-canvas .gp-bar").bounding_box()
        assert bar is not None and bar["x"] + bar["width"] <= 400
        for sel in ("#apply-stroke", "#undo-edit", "#redo-edit", "#reset-edits"):
            b = page.locator(sel).bounding_box()
            assert b is not None and b["x"] >= 0 and b["x"] + b["width"] <= 400, sel
        before = canvas_image(page)
        choose(page, "grass", "remove")
        paint_line(page, (0.2, 0.8), (0.8, 0.8))
        assert "remove grass" in click_and_wait(page, "#apply-stroke")
        after = canvas_image(page)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app_browser_400px.png"), full_page=True)
    changed = (before != after).any(axis=2)
    assert changed.any() and np.flatnonzero(changed.any(axis=1)).min() > 32
