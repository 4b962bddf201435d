"""build_brushes(client=...) on a Dask LocalCluster (two worker processes): the dissection and
the single-unit ablations run as tasks, and the brushes are bit-identical to one process."""

from __future__ import annotations

from typing import Any

import distributed
import pytest
import torch
from procs import released

from gandissect.paint import brushes

torch.set_num_threads(1)

BUILD: dict[str, Any] = {"samples": 64, "candidates": 6, "ace_samples": 8}


def test_brushes_on_a_cluster_are_bit_identical(client: distributed.Client, gen: Any, seg: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Several ablation chunks (ABLATION_CHUNK 4), each a task; the same JSON to the byte."""
    monkeypatch.setattr(brushes, "ABLATION_CHUNK", 4)
    one = brushes.build_brushes(gen, seg, "layout", **BUILD)
    said: list[str] = []
    keys: list[str] = []
    submit = client.submit

    def spy(*args: Any, **kw: Any) -> Any:
        keys.append(kw["key"])
        return submit(*args, **kw)
    monkeypatch.setattr(client, "submit", spy)
    two = brushes.build_brushes(gen, seg, "layout", progress=said.append, client=client, **BUILD)
    assert one.brushes and two.to_json() == one.to_json()
    assert any(k.startswith("dissect-") for k in keys)
    assert sum(k.startswith("brush-ablate-") for k in keys) >= 2
    assert any("on the Dask cluster" in m for m in said)
    assert released(client)


def test_not_a_client_is_refused(gen: Any, seg: Any) -> None:
    with pytest.raises(TypeError, match="client= takes a distributed.Client"):
        brushes.build_brushes(gen, seg, "layout", client="tcp://h:1", **BUILD)
