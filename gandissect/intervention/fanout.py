"""Causal measurements as tasks on a Dask cluster: :func:`measure_concepts_on_cluster` splits
the edit sets of a :func:`~gandissect.intervention.causal.measure_concepts` call into
contiguous groups, runs each group over all samples (the same batches as one process) as one
task, and puts the per-sample fractions back together in edit-set order, so every number is
the one process's. Generator and segmenter go to each worker once
(:func:`gandissect.dissection.cluster.map_on_cluster`); a group lost with its worker runs
again and each result is used once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import closing
from typing import Any

import numpy as np

from models.base import Generator
from segmenters.base import Segmenter

from ..dissection.cluster import check_client, client_threads, map_on_cluster
from .causal import _check_edit_sets, measure_concepts
from .edit import Edit


def measure_group(models: tuple[Generator, Segmenter],
                  item: tuple[int, Sequence[Sequence[Edit]]], samples: int, seed: int,
                  concepts: Sequence[str] | None, batch_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The task: ``measure_concepts`` of the edit sets of ``item = (first index, edit sets)``
    with ``models = (generator, segmenter)`` installed on the worker."""
    generator, segmenter = models
    return measure_concepts(generator, segmenter, item[1], samples, seed, concepts,
                            batch_size=batch_size)


def measure_concepts_on_cluster(client: Any, generator: Generator, segmenter: Segmenter,
                                edit_sets: Sequence[Sequence[Edit]], samples: int, seed: int,
                                concepts: Sequence[str] | None = None, batch_size: int = 32,
                                progress: Callable[[int], None] | None = None,
                                tasks_per_thread: int = 4, label: str = "measure"
                                ) -> tuple[np.ndarray, np.ndarray]:
    """``measure_concepts(generator, segmenter, edit_sets, samples, seed, concepts)`` (``before
    [N, C]``, ``after [len(edit_sets), N, C]``) computed on ``client``'s Dask cluster, bit for
    bit: ``tasks_per_thread`` groups of edit sets per worker thread (fewer when there are fewer
    sets); each task also measures the unedited output, so groups of one set cost twice the
    passes. ``progress(samples * sets_done // len(edit_sets))`` after each group; task keys
    start with ``label``."""
    check_client(client, "measure_concepts")
    n = len(edit_sets)
    if n == 0:
        raise ValueError("give at least one edit set")
    _check_edit_sets(generator, edit_sets)  # a clear error here, not on a worker
    count = min(n, tasks_per_thread * client_threads(client))
    bounds = [n * i // count for i in range(count + 1)]
    groups = [(a, [list(s) for s in edit_sets[a:b]]) for a, b in zip(bounds, bounds[1:],
                                                                     strict=False)]
    before: np.ndarray | None = None
    after: np.ndarray | None = None
    done = 0
    results = map_on_cluster(client, (generator, segmenter), measure_group, groups, samples,
                             seed, concepts, batch_size,
                             label=lambda g: f"{label}-sets{g[0]}-{g[0] + len(g[1]) - 1}")
    with closing(results):
        for i, (b, a) in results:
            if after is None:
                before, after = b, np.zeros((n, *a.shape[1:]))
            after[bounds[i]:bounds[i + 1]] = a
            done += bounds[i + 1] - bounds[i]
            if progress is not None:
                progress(samples * done // n)
    assert before is not None and after is not None
    return before, after
