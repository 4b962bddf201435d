"""Test-wide settings: one torch thread (tiny models gain nothing from more, and on a shared,
busy machine oversubscribed threads make them orders of magnitude slower)."""

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
