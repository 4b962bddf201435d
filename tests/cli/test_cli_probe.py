"""``gandissect dissect --probe``: a classifier dissected on a probe set from the command line
(Toyworld probe, a Broden folder written in the real layout, the rotation baseline), and the
errors of mixed-up options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gandissect.cli import main
from gandissect.dissection.engine import dissect_probe
from gandissect.dissection.results import load_results
from gandissect.probes.toyworld import ToyworldProbe
from models.classifiers.toyworld import ToyworldClassifier

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised Toyworld classifier in the bundled file format."""
    torch.manual_seed(0)
    net = ToyworldClassifier().eval()
    path = tmp_path_factory.mktemp("cls") / "toyworld_classifier.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_cli_probe_toyworld_equals_python_api(weights: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = main(["dissect", "--model", f"toyworld-classifier:{weights}", "--probe", "toyworld",
               "--layer", "conv2", "--layer", "conv4", "--samples", "24", "--batch-size", "8",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "conv2:" in text and "conv4:" in text and (out / "report.html").exists()
    res = load_results(out)
    assert res["conv2"].meta["quantile"] == 0.005
    assert res["conv2"].meta["category_conditioned"] is True
    assert "scene" in res["conv2"].categories and "door" in res["conv2"].labels
    from models.classifiers import load_classifier
    net = load_classifier("toyworld-classifier", path=weights)
    probe = ToyworldProbe(size=24, typed=True, scene_labels=True)
    ref = dissect_probe(net, probe, ["conv2", "conv4"], batch_size=8)
    for layer in ("conv2", "conv4"):
        assert np.array_equal(ref[layer].iou, res[layer].iou)
    report = (out / "report.html").read_text()
    assert report.count("<img") > 10                        # unit strips from probe images
    assert json.loads((out / "dissect.json").read_text())


def test_cli_probe_rotation_baseline(weights: Path, tmp_path: Path) -> None:
    kw = ["--model", f"toyworld-classifier:{weights}", "--probe", "toyworld", "--layer",
          "conv3", "--samples", "16", "--no-progress", "--no-report"]
    assert main(["dissect", *kw, "--out", str(tmp_path / "a")]) == 0
    assert main(["dissect", *kw, "--rotate", "3", "--out", str(tmp_path / "b")]) == 0
    a, b = load_results(tmp_path / "a")["conv3"], load_results(tmp_path / "b")["conv3"]
    assert a.iou.shape == b.iou.shape and not np.allclose(a.iou, b.iou)
    assert "rotated, seed 3" in b.meta["model_name"]
    # the same pixels are labelled: concept sizes do not depend on the basis
    assert np.array_equal(a.concept_pixels, b.concept_pixels)


def test_cli_probe_broden_folder(weights: Path, tmp_path: Path) -> None:
    from gandissect.probes.write_broden import write_broden
    probe = ToyworldProbe(size=12, typed=True, scene_labels=True)
    write_broden(probe, tmp_path / "broden", image_format="png")
    rc = main(["dissect", "--model", f"toyworld-classifier:{weights}", "--probe",
               f"broden:{tmp_path / 'broden'}", "--layer", "conv2", "--no-progress",
               "--no-report", "--out", str(tmp_path / "run")])
    assert rc == 0
    res = load_results(tmp_path / "run")["conv2"]
    assert res.meta["samples"] == 12
    assert res.concept_pixels.sum() > 0


@pytest.mark.parametrize("argv,message", [
    (["--probe", "toyworld", "--segmenter", "toyworld"], "not allowed with"),
    (["--probe", "nowhere"], "expected toyworld or broden:PATH"),
    (["--probe", "toyworld", "--model", "toyworld"], "is not one; known classifiers"),
    (["--segmenter", "toyworld", "--plain-iou"], "--plain-iou is for --probe"),
    (["--probe", "broden:/no/such/folder"], "is not a folder"),
])
def test_cli_probe_errors(argv: list[str], message: str, tmp_path: Path, weights: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    args = ["dissect", "--layer", "conv2", "--out", str(tmp_path / "o"), *argv]
    if "--model" not in argv:
        args += ["--model", f"toyworld-classifier:{weights}"]
    with pytest.raises(SystemExit) as e:
        rc = main(args)
        raise SystemExit(rc)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
