"""The app's brush build on a Dask cluster (``--cluster local:N`` / ``--scheduler ADDRESS`` of
``python app.py`` and ``gandissect app``, PainterJob(cluster=, scheduler=)): the same brushes
as one process, the cluster reached only when a build is needed, and clear errors for a bad
spec, a missing ``distributed`` and an unreachable scheduler."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import distributed
import pytest
import torch

from gandissect.cli import main
from gandissect.paint import brushes
from gandissect.paint.job import PainterJob

torch.set_num_threads(1)

BUILD: dict[str, Any] = {"samples": 64, "candidates": 6, "ace_samples": 8}
PLANTED = ("planted", "planted", "layout")


def test_job_builds_on_a_scheduler_the_one_process_brushes(client: distributed.Client, gen: Any,
                                                           seg: Any, tmp_path: Path) -> None:
    address = client.scheduler_info()["address"]
    one = brushes.build_brushes(gen, seg, "layout", **BUILD)
    job = PainterJob(*PLANTED, folder=tmp_path, shipped=None, scheduler=address, **BUILD)
    with distributed.get_task_stream(client=client) as stream:
        assert job.start().wait(600), job.status()
    keys = [str(t["key"]) for t in stream.data]
    assert any(k.startswith("brush-ablate-") for k in keys)
    assert job.painter is not None and job.painter.brushes.to_json() == one.to_json()
    # cached now: a job whose scheduler cannot be reached does not need it
    again = PainterJob(*PLANTED, folder=tmp_path, shipped=None, scheduler="tcp://127.0.0.1:9",
                       scheduler_timeout=1, **BUILD)
    assert again.start().wait(300), again.status()


def test_unreachable_scheduler_fails_the_build_with_its_address(tmp_path: Path) -> None:
    job = PainterJob(*PLANTED, folder=tmp_path, shipped=None, scheduler="tcp://127.0.0.1:9",
                     scheduler_timeout=1, **BUILD)
    assert not job.start().wait(300)
    st = job.status()
    assert st.state == "failed"
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in st.message, st.message


def test_bad_spec_and_missing_distributed_are_refused_at_once(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="expected local:N"):
        PainterJob(*PLANTED, cluster="local:x")
    assert main(["app", "--cluster", "local:0", "--port", "0"]) == 2
    assert "expected local:N" in capsys.readouterr().err
    assert main(["app", "--cluster", "local:2", "--scheduler", "tcp://h:1"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "distributed", None)    # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'gandissect\[dask\]'"):
        PainterJob(*PLANTED, scheduler="tcp://127.0.0.1:9")
    assert main(["app", "--cluster", "local:2", "--port", "0"]) == 2
    assert "gandissect[dask]" in capsys.readouterr().err
