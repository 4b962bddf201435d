"""Fixtures of the probe-set tests: Toyworld scenes written in the Broden layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gandissect.probes.toyworld import ToyworldProbe
from gandissect.probes.write_broden import write_broden

#: The scenes of the PNG fixture (lossless: images compare within rounding to 8 bits).
FIXTURE = {"size": 20, "resolution": 32, "scene_labels": True}


@pytest.fixture(scope="session")
def toy_probe() -> ToyworldProbe:
    return ToyworldProbe(**FIXTURE)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def toy_folder(tmp_path_factory: pytest.TempPathFactory, toy_probe: ToyworldProbe) -> Path:
    """The fixture's scenes as a Broden folder with PNG images (read only: copy to damage)."""
    return write_broden(toy_probe, tmp_path_factory.mktemp("broden") / "toy", image_format="png")


@pytest.fixture
def toy_copy(tmp_path: Path, toy_folder: Path) -> Path:
    """A private copy of :func:`toy_folder`, free to damage."""
    return Path(shutil.copytree(toy_folder, tmp_path / "toy"))
