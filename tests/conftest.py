"""Test-wide settings: one torch thread (tiny models gain nothing from more, and on a shared,
busy machine oversubscribed threads make them orders of magnitude slower), and shared fixtures."""

import importlib
import os
import sys

import pytest
import torch

import models
import segmenters

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

#: TEMPORARY, for tests/models/ only (another team's folder, not edited by the layout change):
#: the flat module paths it still imports, aliased to their new modules for the test session.
#: Delete this once tests/models/ imports the new paths; the package itself has no aliases.
OLD_MODULE_PATHS = {
    "gandissect.hooks": "gandissect.common.hooks",
    "gandissect.dissect": "gandissect.dissection.engine",
    "gandissect.intervene": "gandissect.intervention.edit",
    "gandissect.quality": "gandissect.artifacts.quality",
}
for _old, _new in OLD_MODULE_PATHS.items():
    sys.modules.setdefault(_old, importlib.import_module(_new))


@pytest.fixture(scope="module")
def gen() -> models.Generator:
    """The planted generator (ground-truth units), one per test module. A module that tests
    another generator defines its own ``gen`` fixture, which takes precedence."""
    return models.load("planted")


@pytest.fixture(scope="module")
def seg() -> segmenters.Segmenter:
    """The planted palette segmenter, one per test module (overridable like :func:`gen`)."""
    return segmenters.load("planted")
