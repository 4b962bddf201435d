"""``gandissect seq-dissect / seq-ablate / seq2seq``: the printed numbers are the Python API's,
and bad input exits 2 with a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gandissect.cli import main
from gandissect.dissection.results import load_results
from gandissect.sequence.dissect import category_units
from gandissect.sequence.intervene import ablation_study
from gandissect.sequence.probe import SequenceProbe
from models.sequence.lstm import load_toyseq_lstm


def test_dissect_then_ablate_its_units(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    out = tmp_path / "d"
    assert main(["seq-dissect", "--samples", "40", "--length", "32", "--layer", "c1",
                 "--top", "3", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    r = load_results(out)["c1"]
    best = int(r.best_iou.argmax())
    assert f"unit {best:3d}  {r.unit_labels[best]:12s} IoU {r.best_iou[best]:.3f}" in said
    assert (out / "report.html").exists() and (out / "dissect.json").exists()
    label = r.unit_labels[best]
    assert main(["seq-ablate", "--results", str(out), "--layer", "c1", "--concept", label,
                 "--min-iou", "0", "--top", "1", "--samples", "30", "--length", "32",
                 "--draws", "2", "--span", "4:32", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    toks = SequenceProbe(size=30, length=32).inputs(0, 30)
    with torch.no_grad():
        ref = ablation_study(load_toyseq_lstm(), toks, "c1", [best], (4, 32), 2,
                             replacement="mean")
    assert got["units"] == [best] and got["span"] == [4, 32]
    assert got["ablated"] == ref.ablated and got["random"] == list(ref.random)
    # the random pool without the units labelled with a depth concept
    depth = category_units(r, ["depth"])
    assert main(["seq-ablate", "--results", str(out), "--layer", "c1", "--units", str(best),
                 "--exclude-category", "depth", "--samples", "30", "--length", "32",
                 "--draws", "4", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["excluded"] == [u for u in depth if u != best]
    assert all(not set(us) & (set(depth) | {best}) for us in got["random_units"])
    assert main(["seq-ablate", "--results", str(out), "--layer", "c1", "--units", str(best),
                 "--exclude-category", "depth", "--samples", "30", "--length", "32",
                 "--draws", "4"]) == 0
    said = capsys.readouterr().out
    assert f"4 draws of 1 random units from the {64 - 1 - len(got['excluded'])} other c1 " \
        f"units (not the {len(got['excluded'])} others labelled depth)" in said
    assert main(["seq-ablate", "--results", str(out), "--units", "1", "--exclude-category",
                 "colour", "--samples", "2"]) == 2
    assert "unknown categories ['colour']" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["seq-ablate", "--units", "1", "--span", "9"], "--span takes START:STOP"),
    (["seq-ablate", "--units", "1", "--span", "9:2", "--samples", "2"], "bad span"),
    (["seq-ablate", "--units", "99", "--samples", "2"], "has 64 units"),
    (["seq-ablate", "--layer", "h7", "--units", "1", "--samples", "2"], "unknown layer 'h7'"),
    (["seq-ablate", "--samples", "2"], "give --units or --results"),
    (["seq-ablate", "--units", "1", "--exclude-category", "depth", "--samples", "2"],
     "--exclude-category needs --results"),
    (["seq2seq", "--text", "(["], "starts with '^'"),
])
def test_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_counts_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seq-ablate", "--units", "1", "--length", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err
