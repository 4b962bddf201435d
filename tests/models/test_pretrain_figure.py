"""The pretraining comparison figure (models/pretrain_figure.py) on tiny runs."""

from __future__ import annotations

from PIL import Image

from models.pretrain_figure import main as figure_main
from models.pretrain_toyworld_gan import main


def test_the_figure_has_five_rows_of_eight_and_refuses_a_non_vae(tmp_path, capsys) -> None:
    quick = ["--iters", "1", "--batch", "2", "--preview", "2"]
    assert main(["--out", str(tmp_path / "reg"), *quick]) == 0
    assert main(["--out", str(tmp_path / "vae"), *quick, "--objective", "vae"]) == 0
    assert main(["--out", str(tmp_path / "vae"), "--whiten-to", str(tmp_path / "w.pt"),
                 "--whiten-samples", "200"]) == 0
    reg, vae = str(tmp_path / "reg" / "checkpoint.pt"), str(tmp_path / "vae" / "checkpoint.pt")
    out = tmp_path / "fig.png"
    assert figure_main(["--regression", reg, "--vae", vae, "--whitened", str(tmp_path / "w.pt"),
                        "--out", str(out)]) == 0
    assert Image.open(out).size == (8 * 66 * 2, 5 * 66 * 2)
    assert figure_main(["--regression", reg, "--vae", reg, "--whitened", str(tmp_path / "w.pt"),
                        "--out", str(out)]) == 1
    assert "not a VAE" in capsys.readouterr().err
