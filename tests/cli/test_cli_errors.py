"""Bad input on the command line ends in one clear line (``gandissect CMD: error: ...``, exit
2), checked before any work, never in a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gandissect.cli import COUNT_OPTIONS, build_parser, main

ROOT = Path(__file__).resolve().parent.parent.parent
ABLATE = ["ablate", "--model", "planted", "--segmenter", "planted", "--layer", "layout",
          "--concept", "tree", "--samples", "2", "--units", "3"]


def error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores permissions: use /sys)."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        return ro
    if not Path("/sys").is_dir():
        pytest.skip("running as root without /sys: no unwritable folder to test with")
    return Path("/sys")


def test_out_that_cannot_be_written_is_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gandissect.cli.dissect as cli_dissect
    import models

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("loaded a model before checking --out")

    monkeypatch.setattr(models, "load", no_work)
    monkeypatch.setattr(cli_dissect, "run", no_work)
    file = tmp_path / "file.txt"
    file.write_text("x")
    cases = [(file, "is a file, not a folder"),
             (file / "sub" / "out", f"lies under {file}, which is a file"),
             (unwritable_folder(tmp_path) / "out", "cannot write in")]
    for out, message in cases:
        for argv in (ABLATE, ["render", "--samples", "1"], ["artifacts"],
                     ["dissect", "--model", "planted", "--segmenter", "planted",
                      "--layer", "layout"]):
            assert main([*argv, "--out", str(out)]) == 2, (argv, out)
            err = error(capsys)
            assert f"gandissect {argv[0]}: error: --out {out}" in err and message in err
    assert not (file.parent / "sub").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import models
    import segmenters

    want = "CUDA is not available on this machine (torch.cuda.is_available() is False)"
    for argv in ([*ABLATE, "--out", str(tmp_path)],
                 ["render", "--samples", "1", "--segmenter", "color", "--out", str(tmp_path)],
                 ["eval-segmenter", "--samples", "1"],
                 ["gan-quality", "--samples", "2"]):
        assert main([*argv, "--device", "cuda"]) == 2, argv
        assert f"error: {want}; use --device cpu" in error(capsys)
    assert main([*ABLATE, "--out", str(tmp_path), "--device", "gpu"]) == 2
    assert "invalid device 'gpu'" in error(capsys)
    # the Python API says the same (before loading anything)
    with pytest.raises(ValueError, match=r"CUDA is not available.*use device='cpu'"):
        models.load("planted", device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        segmenters.load("color", device="cuda:0")


def _toyworld_checkpoint(path: Path, nan: bool = False) -> Path:
    from models.toyworld_gan import ToyworldDiscriminator, ToyworldGenerator

    g, d = ToyworldGenerator().state_dict(), ToyworldDiscriminator().state_dict()
    if nan:
        name = next(k for k, v in g.items() if v.is_floating_point())
        g[name] = torch.full_like(g[name], float("nan"))
    torch.save({"g_ema": g, "d": d}, path)
    return path


def test_bad_artifacts_checkpoint_names_the_file(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    good = _toyworld_checkpoint(tmp_path / "good.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    nan = _toyworld_checkpoint(tmp_path / "nan.pt", nan=True)
    for path, message in [(junk, "is not a readable PyTorch checkpoint"),
                          (empty, "is not a readable PyTorch checkpoint"),
                          (truncated, "is not a readable PyTorch checkpoint"),
                          (nan, "g_ema holds NaN or infinite weights"),
                          (tmp_path / "none.pt", "does not exist")]:
        assert main(["artifacts", "--checkpoint", str(path), "--out", str(tmp_path / "o"),
                     "--samples", "2"]) == 2, path
        err = error(capsys)
        assert f"gandissect artifacts: error: --checkpoint {path}" in err and message in err


def test_bad_artifacts_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [(["--ks", "5,x"], "--ks takes comma-separated integers"),
                          (["--ks", "0,5"], "--ks needs integers >= 1"),
                          (["--plant", "a"], "--plant takes comma-separated integers")]:
        assert main(["artifacts", *argv, "--out", str(tmp_path)]) == 2
        assert message in error(capsys)


def test_unreadable_mask_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk_png, junk_npy = tmp_path / "junk.png", tmp_path / "junk.npy"
    junk_png.write_bytes(b"not an image")
    junk_npy.write_bytes(b"not an array")
    for mask in (junk_png, junk_npy, tmp_path):
        assert main([*ABLATE, "--mask", str(mask),
                     "--out", str(tmp_path / "o")]) == 2
        err = error(capsys)
        assert f"gandissect ablate: error: --mask {mask} is not a readable mask" in err
    np.save(tmp_path / "ok.npy", np.ones((32, 32), dtype=np.float32))
    assert main([*ABLATE, "--mask", str(tmp_path / "ok.npy"), "--no-random",
                 "--out", str(tmp_path / "o")]) == 0


@pytest.fixture(scope="module")
def dissection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dissection")
    assert main(["dissect", "--model", "planted", "--segmenter", "planted", "--layer", "layout",
                 "--samples", "8", "--batch-size", "8", "--seed", "1", "--out", str(out),
                 "--no-progress", "--no-report"]) == 0
    return out


@pytest.mark.parametrize("damage, message", [
    ("results.json", "results.json is missing"),
    ("layout.json", "layout.json (layer 'layout') missing"),
    ("layout.safetensors", "layout.safetensors (layer 'layout') missing"),
    ("corrupt results.json", "results.json is damaged"),
    ("corrupt layout.json", "layout.json is damaged"),
    ("corrupt layout.safetensors", "layout.safetensors is damaged"),
    ("truncated layout.safetensors", "layout.safetensors is damaged"),
])
def test_truncated_dissection_folder(dissection: Path, tmp_path: Path, damage: str,
                                     message: str, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "dissection"
    shutil.copytree(dissection, folder)
    name = damage.split()[-1]
    if damage.startswith("corrupt"):
        (folder / name).write_bytes(b"{")
    elif damage.startswith("truncated"):
        (folder / name).write_bytes((dissection / name).read_bytes()[:200])
    else:
        (folder / name).unlink()
    assert main([*ABLATE[:-2], "--top-k", "2", "--rank-by", "iou", "--dissection", str(folder),
                 "--out", str(tmp_path / "o")]) == 2
    err = error(capsys)
    assert f"gandissect ablate: error: --dissection {folder}" in err and message in err
    # it says how to regenerate the folder, with the arguments that made it
    assert (f"gandissect dissect --model planted --segmenter planted --layer layout --samples 8 "
            f"--seed 1 --out {folder}") in err


def test_dissection_that_is_not_a_folder(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ABLATE[:-2], "--top-k", "2", "--dissection", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "is not a folder" in error(capsys)


@pytest.mark.parametrize("argv", [
    ["dissect", "--model", "planted", "--segmenter", "planted", "--layer", "layout"],
    ["render"], ["eval-segmenter"], ["gan-quality"], ["artifacts"], ABLATE,
    ["insert", *ABLATE[1:]]])
def test_counts_below_one_are_refused(argv: list[str], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Every count option of the command refuses 0 (argparse error, exit 2) instead of
    running with a default in its place (``--seg-resolution 0`` used to mean 'default')."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[argv[0]]
    counts = [a.option_strings[0] for a in sub._actions if a.dest in COUNT_OPTIONS]
    assert counts, argv
    if any(a.dest == "out" for a in sub._actions):
        argv = [*argv, "--out", str(tmp_path)]
    for option in counts:
        assert main([*argv, option, "0"]) == 2, option
        assert f"argument {option}: must be >= 1, got 0" in error(capsys)
    assert main([*argv, counts[0], "-3"]) == 2
    assert "must be >= 1, got -3" in error(capsys)


def test_gan_quality_needs_two_samples(capsys: pytest.CaptureFixture[str]) -> None:
    from gandissect.cli.quality import main as quality_main

    for run in (main, lambda argv: quality_main(argv[1:])):
        assert run(["gan-quality", "--samples", "1"]) == 2
        assert "gandissect gan-quality: error: --samples must be >= 2" in error(capsys)


def test_every_int_option_is_classified() -> None:
    """An int option is a count (refused below 1) or one of the few where 0 and below are
    meaningful; a new int option must be put in one of the two."""
    not_counts = {"seed", "eval_seed", "rank_seed", "port", "rotate", "index"}
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subs.items():
        for a in sub._actions:
            if a.type is int:
                assert a.dest in not_counts, f"{name} {a.option_strings}: add to COUNT_OPTIONS?"
            elif a.dest in COUNT_OPTIONS:
                assert a.type is not None and a.type.__name__ == "positive_int", (name, a.dest)
    assert {"seg_resolution", "samples", "top_k", "batch_size"} <= COUNT_OPTIONS


@pytest.mark.parametrize("command", ["models", "zoo"])
def test_listing_into_a_closed_pipe_exits_quietly(command: str) -> None:
    """Unbuffered, a print meets the closed pipe; buffered, the final flush does."""
    cmd = f"{sys.executable} -m gandissect {command}"
    done = subprocess.run(f"{cmd} | head -1", shell=True, capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    # a reader that is gone before the first line is written: always a closed pipe
    done = subprocess.run(f"{cmd} | true; echo \"${{PIPESTATUS[0]}}\"", shell=True,
                          executable="/bin/bash", capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": ""})
    assert done.stderr == "" and done.stdout.strip() in ("0", "141"), (done.stdout,
                                                                      done.stderr)


def test_broken_pipe_in_main_returns_141(monkeypatch: pytest.MonkeyPatch) -> None:
    import gandissect.cli as cli

    def closed_pipe(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    parser = build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    sub = next(a for a in parser._actions if a.dest == "command").choices["models"]
    sub.set_defaults(func=closed_pipe)
    assert cli.main(["models"]) == 141


def test_help_and_usage_errors_return_their_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0 and "usage: gandissect" in capsys.readouterr().out
    assert main(["nope"]) == 2 and "invalid choice" in capsys.readouterr().err
