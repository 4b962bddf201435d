"""The LSTMVis page in a real browser (headless Chromium, Playwright): choose a span and a
threshold, press *Select span*, and the page lists the units and the matching spans that the
explorer computes; picking a unit shows its dissection label."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "app"))
from chromium import ARGS, ARTIFACTS, CHROMIUM, served, sync_api  # noqa: E402

from gandissect.sequence.dissect import dissect_sequences  # noqa: E402
from gandissect.sequence.explorer import SequenceExplorer  # noqa: E402
from gandissect.sequence.probe import SequenceProbe  # noqa: E402
from gandissect.sequence.view import build_view  # noqa: E402
from models.sequence.lstm import load_toyseq_lstm  # noqa: E402
from models.sequence.seq2seq import ToySeq2Seq  # noqa: E402


@pytest.fixture(scope="module")
def explorer() -> SequenceExplorer:
    model = load_toyseq_lstm()
    probe = SequenceProbe(size=120)
    return SequenceExplorer(model, probe, ["c1", "h1"], 120,
                            dissect_sequences(model, probe, ["c1", "h1"]))


def a_selection(ex: SequenceExplorer) -> tuple[int, int, float, dict[str, Any]]:
    """A span of sequence 3 whose selection has units and several matches."""
    for th in (0.3, 0.5, 0.2):
        for a in range(2, 40):
            found = ex.select("c1", (a, a + 2), th, sample=3)
            if found["units"] and found["total"] >= 3:
                return a, a + 2, th, found
    raise AssertionError("no selection with matches in sequence 3")


@pytest.fixture(scope="module")
def url(explorer: SequenceExplorer) -> Iterator[str]:
    torch.manual_seed(0)
    with served(build_view(explorer, ToySeq2Seq(hidden=8).eval())) as u:
        yield u


def set_number(page: Any, elem: str, value: float) -> None:
    box = page.locator(f"#{elem} input[type='number']").first
    box.fill(str(value))
    box.press("Tab")


def test_select_a_span_get_matching_spans(url: str, explorer: SequenceExplorer) -> None:
    a, b, th, found = a_selection(explorer)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(url)
            page.locator("#lv-select").wait_for(timeout=60_000)
            set_number(page, "lv-sample", 3)
            set_number(page, "lv-start", a)
            set_number(page, "lv-stop", b)
            set_number(page, "lv-threshold", th)
            page.locator("#lv-select").click()
            page.wait_for_function("document.querySelectorAll('#lv-match-table tr.lv-match')"
                                   ".length > 0", timeout=60_000)
            rows = page.locator("#lv-match-table tr.lv-match")
            shown = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(rows.count())]
            summary = page.locator("#lv-summary textarea").input_value()
            selected = page.locator("#lv-selected textarea").input_value()
            assert page.locator("#lv-trace img").count() == 1
            highlighted = page.locator("#lv-token-strip .lv-in").count()
            unit = found["units"][0]
            page.locator("#lv-unit input").click()
            page.locator("ul[role='listbox'] li", has_text=str(unit)).first.click()
            page.wait_for_function("document.querySelector('#lv-unit-label textarea')"
                                   ".value.includes('IoU')", timeout=30_000)
            label = page.locator("#lv-unit-label textarea").input_value()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "lstmvis_browser.png"), full_page=True)
        finally:
            browser.close()
    assert selected == ", ".join(map(str, found["units"]))
    assert highlighted == b - a
    assert f"{found['total']} matching spans" in summary
    assert shown == [f"{m.start}..{m.stop - 1}" for m in found["matches"]]
    r = explorer.results["c1"]
    assert label.startswith(f"unit {unit} of c1: {r.unit_labels[unit]} (IoU")
