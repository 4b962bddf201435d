"""The command line: render writes what it says, errors are clear and exit non-zero."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gandissect.cli import main


def test_render_writes_grids_and_masks(tmp_path: Path) -> None:
    assert main(["render", "--samples", "4", "--out", str(tmp_path), "--segmenter", "color"]) == 0
    for name in ("scenes.png", "masks.png", "scenes.npz", "legend.json", "segmented_color.png"):
        assert (tmp_path / name).exists(), name
    data = np.load(tmp_path / "scenes.npz")
    assert data["images"].shape == (4, 3, 64, 64) and data["masks"].shape == (4, 15, 64, 64)
    assert "sky" in json.loads((tmp_path / "legend.json").read_text())


def test_listing_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0 and "planted" in capsys.readouterr().out
    assert main(["segmenters"]) == 0 and "color" in capsys.readouterr().out


def test_errors_are_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    assert main(["render", "--samples", "0", "--out", str(tmp_path)]) == 2
    assert "argument --samples: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["render", "--samples", "2", "--segmenter", "nope", "--out", str(tmp_path)]) == 2
    assert "known segmenters" in capsys.readouterr().err


def test_eval_segmenter_blur_table(capsys: pytest.CaptureFixture[str]) -> None:
    """``--blur 0,1.5`` gives one result per sigma; blurring cannot raise the bundled
    segmenter's mIoU by much, and a bad sigma list is refused with exit 2."""
    args = ["eval-segmenter", "--segmenter", "toyworld", "--samples", "20", "--batch-size", "20"]
    assert main([*args, "--blur", "0,1.5", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["blur_sigma"] for r in results] == [0.0, 1.5]
    # brute force on the same 20 held-out scenes: per-concept IoU of the segmenter's masks
    # with the renderer's exact masks, averaged over the concepts present
    import segmenters
    from models.toyworld import CONCEPTS, render_batch
    from segmenters.evaluate import HELDOUT_SEED

    images, truth = render_batch(HELDOUT_SEED, 0, 20, 64)
    pred = segmenters.load("toyworld").segment(torch.from_numpy(images))
    true = torch.from_numpy(truth)
    ious = [int((pred[:, k] & true[:, k]).sum()) / int((pred[:, k] | true[:, k]).sum())
            for k in range(len(CONCEPTS)) if (pred[:, k] | true[:, k]).any()]
    assert results[0]["miou"] == pytest.approx(sum(ious) / len(ious), abs=1e-9)
    # segmenters/TRAINING.md: 0.991 clean and 0.930 at sigma 1.5 over 1,000 scenes
    assert results[0]["miou"] > 0.98
    assert 0.90 < results[1]["miou"] < 0.97
    assert main([*args, "--blur", "0,1.5"]) == 0
    assert "blur sigma" in capsys.readouterr().out
    assert main([*args, "--blur", "one"]) == 2
    assert "--blur takes" in capsys.readouterr().err
    assert main([*args, "--blur", "-1"]) == 2
    assert ">= 0" in capsys.readouterr().err


def test_local_checkpoint_spec_and_trust_pickle(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``--model FAMILY:PATH`` loads a local checkpoint; a pickle needs ``--trust-pickle``."""
    import datetime

    import torch

    from models.progan import ProGAN

    g = ProGAN([16, 8, 8, 4, 4], seed=0)
    plain, pickled = tmp_path / "g.pth", tmp_path / "pickled.pth"
    torch.save(g.state_dict(), plain)
    torch.save({"state_dict": g.state_dict(), "date": datetime.date(2020, 1, 1)}, pickled)
    common = ["--segmenter", "color", "--layer", "layer4", "--concept", "green", "--units",
              "0,1", "--samples", "4", "--json"]
    assert main(["ablate", "--model", f"progan:{plain}", *common,
                 "--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "result.json").read_text())
    assert report["units"] == [0, 1] and "relative" in json.dumps(report)
    capsys.readouterr()
    assert main(["ablate", "--model", f"progan:{pickled}", *common,
                 "--out", str(tmp_path / "b")]) == 2
    assert "trust_pickle" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="trust_pickle=True"):
        assert main(["ablate", "--model", f"progan:{pickled}", "--trust-pickle", *common,
                     "--out", str(tmp_path / "c")]) == 0
    assert main(["ablate", "--model", "progan:", *common, "--out", str(tmp_path / "d")]) == 2
    assert "names no path" in capsys.readouterr().err


def test_bundled_specs_with_paths(tmp_path: Path) -> None:
    """``toyworld:PATH`` (a file or a folder) loads the bundled architectures from other weights;
    a built-in model or segmenter given a path says it loads none."""
    import argparse

    import torch

    from gandissect.cli import load_model_and_segmenter
    from models.base import weights_path
    from models.toyworld_gan import WEIGHTS_DIR
    from segmenters.toyworld import DEFAULT_WEIGHTS

    def load(model: str, seg: str) -> tuple:
        return load_model_and_segmenter(argparse.Namespace(model=model, segmenter=seg,
                                                           device="cpu", trust_pickle=False))

    gen, seg = load(f"toyworld:{WEIGHTS_DIR}", f"toyworld:{DEFAULT_WEIGHTS}")
    ref, _ = load("toyworld", "color")
    z = ref.sample_latents(2, 0)
    assert torch.equal(gen(z), ref(z)) and seg.labels[0] == "sky"
    with pytest.raises(ValueError, match="'planted' is built in and loads no checkpoint"):
        load("planted:x.pt", "color")
    with pytest.raises(ValueError, match="'color' is built in"):
        load("planted", "color:x.pt")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load(f"toyworld:{tmp_path / 'nope.safetensors'}", "color")
    with pytest.raises(ValueError, match="not both"):
        weights_path("a", "b", Path("c"))
