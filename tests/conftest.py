"""Test-wide settings: one torch thread (tiny models gain nothing from more, and on a shared,
busy machine oversubscribed threads make them orders of magnitude slower), and shared fixtures."""

import os
import pickle
from collections.abc import Iterator
from typing import Any

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


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A ``distributed.Client`` of a LocalCluster of two worker processes (one thread each),
    both up, one per test module; closed with the cluster at the module's end."""
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=120)
        yield c


@pytest.fixture
def task_sizes(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Filled during the test with the pickled size of ``(item, args)`` of every task submitted
    through ``client.submit`` (what a task carries; models must not be in it)."""
    sizes: list[int] = []
    submit = client.submit

    def spy(fn: Any, item: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(pickle.dumps((item, args))))
        return submit(fn, item, *args, **kwargs)
    monkeypatch.setattr(client, "submit", spy)
    return sizes
