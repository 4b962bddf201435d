"""``gandissect dissect`` into a folder it cannot use (a damaged saved state, another run holding
the lock): a one-line error and exit 3, no traceback; the intact rerun resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from gandissect.cli import main
from gandissect.dissection import engine
from gandissect.dissection.folder import locked


def args(out: Path) -> list[str]:
    return ["dissect", "--model", "planted", "--segmenter", "planted", "--layer", "layout",
            "--samples", "16", "--batch-size", "8", "--out", str(out), "--no-report",
            "--no-progress"]


@pytest.fixture
def interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str]) -> Path:
    """A run stopped by Ctrl-C while writing its results: its state is saved in the folder."""
    def ctrl_c(*a: object) -> None:
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(engine, "save_results", ctrl_c)
        assert main(args(tmp_path)) == 130
    assert (tmp_path / "state.safetensors").is_file()
    capsys.readouterr()
    return tmp_path


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_damaged_state_is_a_clear_error(interrupted: Path, damage: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = interrupted / "state.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[8 + int.from_bytes(data[:8], "little") + 3] ^= 0x10
    path.write_bytes(bytes(data[:len(data) // 2] if damage == "truncate" else
                           b"" if damage == "empty" else data))
    assert main(args(interrupted)) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"gandissect dissect: error: the saved resume state {path} ")
    assert "delete it" in err and "Traceback" not in err
    path.unlink()                                     # as the message says: start again
    assert main(args(interrupted)) == 0
    assert "units interpretable" in capsys.readouterr().out


def test_intact_state_resumes(interrupted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args(interrupted)) == 0
    assert "units interpretable" in capsys.readouterr().out
    assert not (interrupted / "state.safetensors").exists()


def test_folder_in_use_is_a_clear_error(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with locked(tmp_path):
        assert main(args(tmp_path)) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"gandissect dissect: error: {tmp_path} is in use by another "
                          "dissection run (PID ")
    assert main(args(tmp_path)) == 0
