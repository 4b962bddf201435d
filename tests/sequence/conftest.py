"""Fixtures of the sequence tests: tiny untrained models (seeded) and a small probe set."""

from __future__ import annotations

import pytest
import torch

from gandissect.sequence.probe import SequenceProbe
from models.sequence.lstm import ToySeqLSTM


@pytest.fixture(scope="module")
def tiny_lm() -> ToySeqLSTM:
    """An untrained 12-unit LSTM (weights from seed 0): fast, and its states vary."""
    torch.manual_seed(0)
    return ToySeqLSTM(embed=8, hidden=12).eval()


@pytest.fixture(scope="module")
def small_probe() -> SequenceProbe:
    return SequenceProbe(seed=11, size=60, length=20)
