"""single_unit_ace(client=...) and ``gandissect ablate --rank-by ace --cluster/--scheduler``
on a Dask LocalCluster (two worker processes, one thread each): the same rankings as one
process, bit for bit; the models go to each worker once (tasks carry unit groups and names)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import distributed
import numpy as np
import pytest
import torch
from procs import released
from tiny import TinyGenerator, TinySegmenter

from gandissect.cli import main
from gandissect.intervention.ranking import single_unit_ace, single_unit_ace_concepts

torch.set_num_threads(1)


def test_ace_concepts_on_tiny_models_are_bit_identical(client: distributed.Client,
                                                       task_sizes: list[int]) -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    kw: dict[str, Any] = dict(samples=20, seed=3, batch_size=8)
    concepts = ["red", "dark", "blue"]
    one = single_unit_ace_concepts(gen, seg, concepts, "b", **kw)
    sizes = task_sizes
    seen: list[int] = []
    two = single_unit_ace_concepts(gen, seg, concepts, "b", progress=seen.append,
                                   client=client, **kw)
    for c in concepts:
        assert np.array_equal(one[c].scores, two[c].scores) and one[c].order == two[c].order
    assert len(sizes) == 6 and max(sizes) < 1000       # one unit per task; no model in a task
    assert seen == sorted(seen) and seen[-1] == 20
    assert released(client)


def test_ace_on_planted_subset_is_bit_identical(client: distributed.Client, gen: Any,
                                                seg: Any) -> None:
    units = [9, 2, 5, 0, 14, 7, 3]                       # any order, any subset
    one = single_unit_ace(gen, seg, "tree", "layout", samples=12, seed=1, units=units)
    two = single_unit_ace(gen, seg, "tree", "layout", samples=12, seed=1, units=units,
                          client=client)
    assert np.array_equal(one.scores, two.scores, equal_nan=True) and one.order == two.order


def test_not_a_client_is_refused(gen: Any, seg: Any) -> None:
    with pytest.raises(TypeError, match="client= takes a distributed.Client"):
        single_unit_ace(gen, seg, "tree", "layout", samples=2, client=object())


ABLATE = ["ablate", "--model", "planted", "--segmenter", "planted", "--layer", "layout",
          "--concept", "tree", "--top-k", "2", "--rank-by", "ace", "--samples", "6",
          "--rank-samples", "8", "--sweep-samples", "4", "--seed", "0"]


def test_cli_ace_ranking_on_a_scheduler_matches(client: distributed.Client,
                                                tmp_path: Path) -> None:
    address = client.scheduler_info()["address"]
    assert main([*ABLATE, "--out", str(tmp_path / "one")]) == 0
    assert main([*ABLATE, "--out", str(tmp_path / "two"), "--scheduler", address]) == 0
    one, two = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("one", "two"))
    for k in ("units", "rank_by", "ranked_on", "effect", "sweep"):
        assert one[k] == two[k], k


def test_cli_cluster_needs_an_ace_ranking(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    units = ["ablate", "--model", "planted", "--segmenter", "planted", "--layer", "layout",
             "--concept", "tree", "--units", "1", "--samples", "4"]
    assert main([*units, "--out", str(tmp_path), "--cluster", "local:2"]) == 2
    assert "use them with --top-k and --rank-by ace" in capsys.readouterr().err
    assert main([*ABLATE, "--out", str(tmp_path), "--cluster", "local:x"]) == 2
    assert "expected local:N" in capsys.readouterr().err
    assert main([*ABLATE, "--out", str(tmp_path), "--cluster", "local:1", "--scheduler",
                 "tcp://h:1"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
