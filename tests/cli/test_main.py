"""``python -m gandissect`` is the ``gandissect`` console script."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gandissect.cli import main


def test_python_m_gandissect_runs_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    expected = capsys.readouterr().out
    done = subprocess.run([sys.executable, "-m", "gandissect", "models"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected
    usage = subprocess.run([sys.executable, "-m", "gandissect", "--help"], capture_output=True,
                           text=True, timeout=300)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: gandissect ")
