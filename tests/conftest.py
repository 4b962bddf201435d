"""Test-wide settings: one torch thread (tiny models gain nothing from more, and on a shared,
busy machine oversubscribed threads make them orders of magnitude slower), and shared fixtures."""

import os

import pytest
import torch

import models
import segmenters

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def gen() -> models.Generator:
    """The planted generator (ground-truth units), one per test module. A module that tests
    another generator defines its own ``gen`` fixture, which takes precedence."""
    return models.load("planted")


@pytest.fixture(scope="module")
def seg() -> segmenters.Segmenter:
    """The planted palette segmenter, one per test module (overridable like :func:`gen`)."""
    return segmenters.load("planted")
