"""``gandissect class-ablation``: the per-class unit ablation curves from the command line equal
the Python API's, units are tied to a probe dissection's labels, and bad options are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gandissect.cli import main
from gandissect.cli.classifier import toyworld_scenes
from gandissect.intervention.accuracy import ablation_curves, unit_importance
from models.classifiers import load_classifier
from models.classifiers.toyworld import ToyworldClassifier

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    net = ToyworldClassifier().eval()
    path = tmp_path_factory.mktemp("cls") / "toyworld_classifier.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_toyworld_scenes_are_balanced_classifier_input() -> None:
    x, y = toyworld_scenes(5, 12)
    assert x.shape == (12, 3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert y.tolist() == [i % 6 for i in range(12)]


def test_cli_class_ablation_equals_api(weights: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    diss = tmp_path / "diss"
    assert main(["dissect", "--model", f"toyworld-classifier:{weights}", "--probe", "toyworld",
                 "--layer", "conv5", "--samples", "12", "--no-progress", "--no-report",
                 "--out", str(diss)]) == 0
    out = tmp_path / "abl"
    rc = main(["class-ablation", "--model", f"toyworld-classifier:{weights}", "--layer",
               "conv5", "--samples", "24", "--rank-samples", "18", "--seed", "3",
               "--rank-seed", "4", "--ks", "1,4", "--draws", "2", "--dissection", str(diss),
               "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "village" in text and "top units" in text
    data = json.loads((out / "ablation.json").read_text())
    assert (out / "ablation.png").stat().st_size > 5000
    assert data["ranked_on"] == {"seed": 4, "samples": 18} and data["ks"] == [1, 4]
    net = load_classifier("toyworld-classifier", path=weights)
    imp = unit_importance(net, "conv5", *toyworld_scenes(4, 18))
    curves = ablation_curves(net, imp, *toyworld_scenes(3, 24), ks=(1, 4), draws=2, seed=3)
    assert np.allclose(data["single_unit_drop"], imp.drop)
    for row in data["curves"]:
        c = curves[row["class"]]
        assert row["units"] == c.units and np.allclose(row["accuracy"], c.accuracy)
        assert np.allclose(row["random_accuracy"], c.random_accuracy)
        assert [u["unit"] for u in row["unit_concepts"]] == c.units[:4]
    again = tmp_path / "again"
    assert main(["class-ablation", "--model", f"toyworld-classifier:{weights}", "--layer",
                 "conv5", "--samples", "24", "--rank-samples", "18", "--seed", "3",
                 "--rank-seed", "4", "--ks", "2", "--draws", "2", "--ranking",
                 str(out / "ablation.json"), "--out", str(again), "--no-progress"]) == 0
    reused = json.loads((again / "ablation.json").read_text())
    assert reused["single_unit_drop"] == data["single_unit_drop"]
    assert [r["units"][:2] for r in reused["curves"]] == [r["units"][:2] for r in data["curves"]]
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["class-ablation", "--model", f"toyworld-classifier:{weights}",
                               "--layer", "conv5", "--rank-seed", "9", "--ranking",
                               str(out / "ablation.json"), "--out", str(again)]))
    assert e.value.code == 2 and "rerun without --ranking" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--seed", "5", "--rank-seed", "5"], "must differ"),
    (["--ks", "1,x"], "comma-separated integers"),
    (["--ks", "0"], "must be >= 1"),
    (["--ks", "999"], "has 128 units"),
    (["--model", "resnet18"], "takes toyworld-classifier"),
    (["--dissection", "/no/such/folder"], "no/such/folder"),
])
def test_cli_class_ablation_errors(argv: list[str], message: str, weights: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    args = ["class-ablation", "--layer", "conv5", "--samples", "6", "--rank-samples", "6",
            "--out", str(tmp_path / "o"), "--no-progress", *argv]
    if "--model" not in argv:
        args += ["--model", f"toyworld-classifier:{weights}"]
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(args))
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_explain(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    diss = tmp_path / "diss"
    assert main(["dissect", "--model", f"toyworld-classifier:{weights}", "--probe", "toyworld",
                 "--layer", "conv4", "--samples", "12", "--no-progress", "--no-report",
                 "--out", str(diss)]) == 0
    out = tmp_path / "exp"
    assert main(["explain", "--model", f"toyworld-classifier:{weights}", "--layer", "conv4",
                 "--dissection", str(diss), "--seed", "11", "--index", "2", "--top", "3",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    data = json.loads((out / "explain.json").read_text())
    assert data["scene_type"] == "lake" and len(data["units"]) == 3
    assert f"predicted {data['predicted']}" in text
    contrib = [u["contribution"] for u in data["units"]]
    assert contrib == sorted(contrib, reverse=True)
    assert (out / "explain.png").stat().st_size > 3000
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["explain", "--model", f"toyworld-classifier:{weights}",
                               "--layer", "conv5", "--dissection", str(diss), "--out",
                               str(out)]))
    assert e.value.code == 2 and "has no layer 'conv5'" in capsys.readouterr().err


def test_cli_dissect_with_the_color_probe(weights: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from gandissect.dissection.results import load_results
    from gandissect.probes.toyworld import COLOR_LABELS

    plain, colored = tmp_path / "plain", tmp_path / "colors"
    for probe, out in (("toyworld", plain), ("toyworld:colors", colored)):
        assert main(["dissect", "--model", f"toyworld-classifier:{weights}", "--probe", probe,
                     "--layer", "conv5", "--samples", "12", "--no-progress", "--no-report",
                     "--out", str(out)]) == 0
    a, b = load_results(plain)["conv5"], load_results(colored)["conv5"]
    n = len(a.labels)
    assert b.labels[:n] == a.labels and b.labels[n:] == list(COLOR_LABELS)
    assert b.categories[n:] == ["color"] * len(COLOR_LABELS)
    np.testing.assert_array_equal(b.iou[:, :n], a.iou)       # the other concepts score the same
    assert (b.iou[:, n:] > 0).any()
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["dissect", "--model", f"toyworld-classifier:{weights}",
                               "--probe", "toyworld:texture", "--layer", "conv5",
                               "--out", str(tmp_path / "bad")]))
    assert e.value.code == 2 and "toyworld:colors" in capsys.readouterr().err
