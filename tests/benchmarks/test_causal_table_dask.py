"""benchmarks/causal_table.py --scheduler ADDRESS on a Dask LocalCluster (two worker
processes): the dissection, the single-unit ablations and the unit sets' ablations run as
tasks, and the table is the one process's, number for number; its cache serves a run without
the cluster."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import distributed
import pytest
import torch
from tiny import load_benchmark

torch.set_num_threads(1)


def _bench() -> ModuleType:
    return load_benchmark("causal_table", "causal_table_dask")


ARGS = ["--model", "planted", "--segmenter", "planted", "--layer", "layout", "--concepts",
        "tree,sky", "--rankings", "iou,ace", "--ks", "1,3", "--samples", "10",
        "--dissect-samples", "24", "--ace-samples", "8", "--select-samples", "6",
        "--random-draws", "2", "--batch-size", "8"]


def _rows(out: Path) -> list[dict]:
    rows: list[dict] = json.loads((out / "causal_table.json").read_text())["rows"]
    return rows


def test_causal_table_on_a_scheduler_is_the_one_process_table(client: distributed.Client,
                                                              tmp_path: Path) -> None:
    address = client.scheduler_info()["address"]
    ct = _bench()
    assert ct.main([*ARGS, "--out", str(tmp_path / "one")]) == 0
    assert ct.main([*ARGS, "--out", str(tmp_path / "two"), "--scheduler", address]) == 0
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(one) == 2 * 2 * 2 and one == two
    # the cluster's cache serves a run without the cluster: nothing new to compute, same rows
    ct = _bench()
    assert ct.main([*ARGS, "--out", str(tmp_path / "two")]) == 0
    assert _rows(tmp_path / "two") == one


def test_cluster_spec_is_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _bench().main([*ARGS, "--out", str(tmp_path), "--cluster", "local:x"])
    assert "expected local:N" in capsys.readouterr().err
