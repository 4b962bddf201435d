"""measure_concepts_on_cluster(client, ...) on a Dask LocalCluster (two worker processes, one thread
each): groups of edit sets are tasks, and the per-sample fractions are the one process's, bit
for bit; the models go to each worker once (tasks carry edit sets, not models)."""

from __future__ import annotations

from typing import Any

import distributed
import numpy as np
import pytest
import torch
from procs import released
from tiny import TinyGenerator, TinySegmenter

from gandissect.intervention.causal import measure_concepts
from gandissect.intervention.edit import Edit
from gandissect.intervention.fanout import measure_concepts_on_cluster

torch.set_num_threads(1)


def test_edit_sets_on_a_cluster_are_bit_identical(client: distributed.Client,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  task_sizes: list[int]) -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    mask = torch.zeros(8, 8)
    mask[2:6, 1:5] = 1.0
    sets = [[Edit("b", [0])], [Edit("b", [1, 4], alpha=0.5)],
            [Edit("a", [2, 3]), Edit("b", [5], replacement=2.0)],
            [Edit("b", [0, 1, 2], mask=mask)], [Edit("b", [3], replacement=-1.0)]]
    kw: dict[str, Any] = dict(samples=21, seed=4, concepts=["red", "blue", "dark"],
                              batch_size=8)
    before, after = measure_concepts(gen, seg, sets, **kw)
    sizes = task_sizes
    seen: list[int] = []
    b2, a2 = measure_concepts_on_cluster(client, gen, seg, sets, progress=seen.append, **kw)
    assert np.array_equal(before, b2) and np.array_equal(after, a2)
    assert len(sizes) == 5 and max(sizes) < 5000       # one set per task; no model in a task
    assert seen == sorted(seen) and seen[-1] == 21
    monkeypatch.undo()
    # fewer tasks than sets: groups of several sets, put back together in order
    b3, a3 = measure_concepts_on_cluster(client, gen, seg, sets, tasks_per_thread=1, **kw)
    assert np.array_equal(before, b3) and np.array_equal(after, a3)
    assert released(client)


def test_bad_edit_is_refused_before_any_task(client: distributed.Client) -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    with pytest.raises(ValueError, match="unit"):
        measure_concepts_on_cluster(client, gen, seg, [[Edit("b", [99])]], 4, 0)
    with pytest.raises(ValueError, match="at least one edit set"):
        measure_concepts_on_cluster(client, gen, seg, [], 4, 0)
    with pytest.raises(TypeError, match="client= takes a distributed.Client"):
        measure_concepts_on_cluster(object(), gen, seg, [[Edit("b", [0])]], 4, 0)
