"""artifact_scores(..., client=...) and ``gandissect artifacts --scheduler`` on a Dask
LocalCluster (two worker processes, one thread each): the effect method's top-set images and
verification measurements are tasks, and every score is the one process's, bit for bit; the
generator and the measure go to each worker once, not with the tasks."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import distributed
import numpy as np
import pytest
import torch
from procs import released

import segmenters
from gandissect.artifacts.realism import (
    DiscriminatorMeasure,
    FIDMeasure,
    SegmenterFeatures,
    limit_numpy_blas_threads,
)
from gandissect.artifacts.removal import ArtifactScores, artifact_scores
from gandissect.cli import main
from models.toyworld_gan import ToyworldDiscriminator, ToyworldGenerator

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def nets() -> tuple[ToyworldGenerator, ToyworldDiscriminator]:
    limit_numpy_blas_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        return ToyworldGenerator().eval(), ToyworldDiscriminator(mbstd_group=0).eval()


def _same(a: ArtifactScores, b: ArtifactScores) -> None:
    assert np.array_equal(a.scores, b.scores) and a.ranking() == b.ranking()
    assert np.array_equal(a.top_samples, b.top_samples)
    assert a.details == b.details and a.details["verified"]


def test_effect_scores_on_a_cluster_are_bit_identical(client: distributed.Client, nets: tuple,
                                                      task_sizes: list[int]) -> None:
    gen, disc = nets
    m = DiscriminatorMeasure(disc, batch_size=4)
    kw: dict[str, Any] = dict(samples=8, seed=4, top=2, pool=3, verify_samples=8,
                              batch_size=4)
    one = artifact_scores(gen, "layer8", m, **kw)                     # 32 units, 64 pairs
    sizes = task_sizes
    two = artifact_scores(gen, "layer8", m, client=client, **kw)
    _same(one, two)
    n = len(one.details["verified"])
    assert len(sizes) == 8 + 2 * n + 2             # top-set chunks, then verification sets
    assert max(sizes) < 50_000 < len(pickle.dumps(gen))     # no model in a task
    assert released(client)


def test_fid_effect_scores_on_a_cluster_are_bit_identical(client: distributed.Client,
                                                          nets: tuple) -> None:
    gen = nets[0]
    kw: dict[str, Any] = dict(samples=12, seed=1, top=2, pool=2, verify_samples=12,
                              batch_size=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # few samples for a FID: fine for equality
        fid = FIDMeasure(SegmenterFeatures.from_segmenter(segmenters.load("toyworld")),
                         reference_samples=64, batch_size=16)
        one = artifact_scores(gen, "layer8", fid, **kw)
        two = artifact_scores(gen, "layer8", fid, client=client, **kw)
    _same(one, two)


def test_other_methods_refuse_a_client(client: distributed.Client, nets: tuple) -> None:
    m = DiscriminatorMeasure(nets[1], batch_size=4)
    with pytest.raises(ValueError, match="runs in this process"):
        artifact_scores(nets[0], "layer8", m, samples=4, method="causal", client=client)
    with pytest.raises(TypeError, match="client= takes a distributed.Client"):
        artifact_scores(nets[0], "layer8", m, samples=4, top=2, pool=0, client=object())


CLI = ["artifacts", "--model", "toyworld", "--layer", "layer8", "--measure", "discriminator",
       "--samples", "8", "--top", "2", "--pool", "2", "--verify-samples", "8",
       "--eval-samples", "8", "--ks", "1", "--random-draws", "1", "--batch-size", "4"]


def test_cli_artifacts_on_a_scheduler_match(client: distributed.Client, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    address = client.scheduler_info()["address"]
    assert main([*CLI, "--out", str(tmp_path / "one")]) == 0
    assert main([*CLI, "--out", str(tmp_path / "two"), "--scheduler", address]) == 0
    one, two = (json.loads((tmp_path / d / "artifacts.json").read_text())["scores"]
                for d in ("one", "two"))
    assert one == two
    capsys.readouterr()
    assert main([*CLI, "--out", str(tmp_path), "--method", "causal", "--cluster",
                 "local:2"]) == 2
    assert "--method causal runs in this process" in capsys.readouterr().err
    assert main([*CLI, "--out", str(tmp_path), "--cluster", "local:0"]) == 2
    assert "expected local:N" in capsys.readouterr().err
