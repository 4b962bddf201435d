"""dissect(client=...) on a Dask LocalCluster (two worker processes, one thread each): bit-identical
to one process, also when a worker is killed mid-run (right away, or after the scheduler's
memory manager had time to drop replicas) or the client goes away (resumed without a cluster);
the models go to each worker once, by a worker plugin; run_tasks resubmits lost tasks and gives
up with a clear error; the CLI's --cluster / --scheduler and their errors.

Starting the cluster's workers costs a few seconds, so one cluster serves the whole module;
each test waits until it has its two workers again (a killed one is replaced by its nanny).
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed
import pytest
import torch
from procs import HAVE_PROC, children_of, cmdline, kill9, wait_gone
from safetensors import safe_open
from tiny import CountingGenerator, Interrupt, TinyGenerator, TinySegmenter, assert_identical

from gandissect.cli import main
from gandissect.dissection.cluster import (
    TaskLostError,
    installed,
    installed_on_workers,
    run_tasks,
)
from gandissect.dissection.engine import dissect
from gandissect.dissection.progress import _load_progress
from gandissect.dissection.results import LayerResult, load_results

torch.set_num_threads(1)

#: seconds to wait for the cluster to have both workers (a killed one replaced), on a busy machine
READY_SECONDS = 120


@pytest.fixture(scope="module")
def cluster_client() -> Iterator[distributed.Client]:
    """A client of a LocalCluster of two worker processes, closed (with the cluster) at the
    end of the module whatever happens."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        yield c


@pytest.fixture
def client(cluster_client: distributed.Client) -> distributed.Client:
    """The module's client, once its cluster has two running workers."""
    ready(cluster_client)
    return cluster_client


def ready(client: distributed.Client, gone: int | None = None) -> None:
    """Wait until the cluster has two workers that answer (and none is the process ``gone``)."""
    end = time.monotonic() + READY_SECONDS
    seen: Any = None
    while True:
        try:
            client.wait_for_workers(2, timeout=max(1.0, end - time.monotonic()))
            seen = pids = worker_pids(client)
            if len(pids) == 2 and gone not in pids.values():
                return
        except (OSError, TimeoutError) as e:       # a worker died while we asked it
            seen = e
        assert time.monotonic() < end, f"the cluster did not get its two workers back: {seen!r}"
        time.sleep(0.2)


def worker_pids(client: distributed.Client) -> dict[str, int]:
    return client.run(os.getpid)


def our_plugins(client: distributed.Client) -> dict[str, list[str]]:
    """Worker -> names of gandissect's worker plugins installed there."""
    return client.run(lambda dask_worker: sorted(n for n in dask_worker.plugins
                                                 if n.startswith("gandissect-")))


def idle(client: distributed.Client, seconds: float = 30.0) -> bool:
    """The cluster holds no task, data or plugin of ours within ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not any(client.processing().values()) and not any(client.has_what().values()) \
                and not any(our_plugins(client).values()):
            return True
        time.sleep(0.2)
    return False


def started(client: distributed.Client) -> list[str]:
    """Keys of the tasks the scheduler started (once per start), as far as its log goes."""
    log = client.run_on_scheduler(lambda dask_scheduler: [
        (str(t[0]), t[2]) for t in dask_scheduler.transition_log])
    return [key for key, state in log if state == "processing"]


def label(key: str) -> str:
    """A task's label: its key without the unique suffix run_tasks adds to each submission."""
    return key.rsplit("-", 1)[0]


def task_runs(client: distributed.Client, prefix: str, before: list[str] | None = None
              ) -> Counter[str]:
    """How often each task labelled ``prefix...`` was started, resubmissions included, not
    counting the keys in ``before`` (started earlier)."""
    old = set(before or ())
    return Counter(label(k) for k in started(client) if k.startswith(prefix) and k not in old)


def lost_scattered(client: distributed.Client) -> list[Any]:
    """Scattered data the scheduler lost with a worker (what used to cancel a run's chunks)."""
    return [e for _, e in client.get_events("all")
            if isinstance(e, dict) and e.get("lost-scattered-tasks")]


def test_dask_equals_one_process_on_planted(client: distributed.Client, gen: Any, seg: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Four chunks per worker thread (at most one per batch); during the run every worker holds the
    models and the round's blank states (two worker plugins: sent once per worker, not with each
    task) and nothing is left afterwards; a task carries its chunk (a few hundred bytes) and the
    names of the two plugins."""
    kw: dict[str, Any] = dict(samples=40, seed=1, batch_size=8)
    one = dissect(gen, seg, "layout", **kw)
    calls: list[tuple[int, int]] = []
    held: list[dict[str, list[str]]] = []
    tasks: list[tuple[int, tuple[Any, ...]]] = []            # (chunk's pickle size, other args)
    submit = client.submit

    def spy(fn: Any, chunk: Any, *args: Any, **kwargs: Any) -> Any:
        tasks.append((len(pickle.dumps(chunk)), args))
        return submit(fn, chunk, *args, **kwargs)
    monkeypatch.setattr(client, "submit", spy)

    def seen(phase: int, done: int) -> None:
        calls.append((phase, done))
        held.append(our_plugins(client))
    assert_identical(one, dissect(gen, seg, "layout", client=client, on_batch=seen, **kw))
    p2 = [d for p, d in calls if p == 2]
    assert len(p2) == 5 and p2[-1] == 40                       # 5 batches -> 5 chunks
    assert all(len(h) == 2 and all(len(names) == 2 for names in h.values()) for h in held)
    everywhere = set.intersection(*(set(names) for h in held for names in h.values()))
    assert len(everywhere) == 1                                # the models', for the whole run
    assert len(tasks) == len(calls)
    assert all(size < 2000 and len(args) == 2 and all(isinstance(a, str) for a in args)
               for size, args in tasks)
    assert idle(client)


@pytest.mark.parametrize("mode,conditioned", [("quantile", False), ("iqr", True)])
def test_dask_equals_one_process_on_tiny_models(client: distributed.Client, mode: str,
                                                conditioned: bool) -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    kw: dict[str, Any] = dict(samples=60, seed=5, batch_size=10, threshold=mode,
                              category_conditioned=conditioned)
    assert_identical(dissect(gen, seg, ["a", "b"], **kw),
                     dissect(gen, seg, ["a", "b"], client=client, **kw))


def test_workers_keep_pass_one_for_pass_two(client: distributed.Client, tmp_path: Path) -> None:
    """With ``cache_mb``, each worker keeps the batches it ran in pass 1 and pass 2's chunks go
    back to it: the generator runs once per batch, on the worker that ran the chunk's pass 1
    (without the cache: again in pass 2), the result is bit-identical either way, and the
    workers hold nothing of the run afterwards."""
    from gandissect.dissection import cluster

    seg = TinySegmenter()
    kw: dict[str, Any] = dict(samples=60, seed=5, batch_size=10)
    one = dissect(TinyGenerator(), seg, ["a", "b"], **kw)
    runs = {}
    for mb in (64, 0):
        log = tmp_path / f"calls-{mb}"
        assert_identical(one, dissect(CountingGenerator(str(log)), seg, ["a", "b"],
                                      client=client, cache_mb=mb, **kw))
        calls = [line.split() for line in log.read_text().splitlines()]
        runs[mb] = [c for c in calls if c[0] != str(os.getpid())]   # not the shape probe
    assert len(runs[64]) == 6                                  # 6 batches, each run once
    assert len({latent for _, latent in runs[64]}) == 6
    assert len(runs[0]) >= 12                                  # every batch in both passes
    by_batch: dict[str, set[str]] = {}
    for pid, latent in runs[0]:
        by_batch.setdefault(latent, set()).add(pid)
    assert set(by_batch) == {latent for _, latent in runs[64]}
    assert client.run(lambda: len(cluster._SCRATCH)) == dict.fromkeys(worker_pids(client), 0)


@pytest.mark.parametrize("pause", [0.0, 4.5])
def test_worker_killed_mid_run_changes_nothing(client: distributed.Client, gen: Any,
                                               seg: Any, pause: float) -> None:
    """After the first chunk (and ``pause`` seconds: more than two intervals of the scheduler's
    memory manager, which dropped replicas of the scattered models when the models were
    scattered, so that a kill then lost their only copy and cancelled the run), a worker is
    killed (SIGKILL), preferably one running a chunk. The scheduler runs its chunks again, the
    nanny restarts it, the replacement gets the models from their plugin, and the result is
    bit-identical (each chunk merged once: no sample lost or counted twice). Only chunks the
    worker held (running, or finished and not yet fetched) run again, never a merged one."""
    kw: dict[str, Any] = dict(samples=64, seed=2, batch_size=8)
    one = dissect(gen, seg, "layout", **kw)
    pids, before = worker_pids(client), started(client)
    killed: list[int] = []
    lost: set[str] = set()
    calls: list[tuple[int, int]] = []

    def kill(phase: int, done: int) -> None:
        calls.append((phase, done))
        if not killed:
            time.sleep(pause)
            busy = [w for w, keys in client.processing().items() if keys]
            held = [w for w, keys in client.has_what().items() if keys]
            victim = (busy or held or list(pids))[0]
            lost.update(label(str(k)) for k in client.processing()[victim])
            lost.update(label(str(k)) for k in client.has_what()[victim])
            killed.append(pids[victim])
            os.kill(killed[0], signal.SIGKILL)
    two = dissect(gen, seg, "layout", client=client, on_batch=kill, **kw)
    assert_identical(one, two)
    # chunks ran again only if lost with the worker (merged chunks are forgotten at once)
    runs = task_runs(client, "dissect-", before)
    assert {chunk for chunk, n in runs.items() if n > 1} <= lost
    p1 = [d for p, d in calls if p == 1]
    assert p1[:8] == sorted(p1[:8]) and p1[7] == 64            # each chunk of round 1 once
    assert not lost_scattered(client)
    ready(client, gone=killed[0])                              # it did die (and was replaced)
    assert idle(client)


def test_plugin_reaches_a_replaced_worker(client: distributed.Client) -> None:
    """What installed_on_workers installs is on a worker that replaces a killed one, and
    gone from every worker after the block."""
    with installed_on_workers(client, b"payload") as name:
        victim = next(iter(worker_pids(client).values()))
        os.kill(victim, signal.SIGKILL)
        ready(client, gone=victim)
        assert set(client.run(installed, name).values()) == {b"payload"}
    assert not any(our_plugins(client).values())


def square(x: int) -> int:
    return x * x


def slow_square(x: int) -> int:
    time.sleep(0.5)
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def die_once(x: int, marker: str) -> int:
    """Kill the worker process running this the first time (``marker`` remembers)."""
    if x == 1 and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def test_run_tasks_resubmits_cancelled_tasks(client: distributed.Client,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancelled task is submitted again; every item's result arrives exactly once."""
    submit, cancelled = client.submit, list[str]()

    def cancel_first_two(fn: Any, x: int, *args: Any, **kw: Any) -> Any:
        fut = submit(fn, x, *args, **kw)
        if x == 2 and len(cancelled) < 2:
            cancelled.append(str(fut.key))
            fut.cancel()
        return fut
    monkeypatch.setattr(client, "submit", cancel_first_two)
    got = list(run_tasks(client, slow_square, [0, 1, 2, 3], label=lambda x: f"sq-{x}"))
    assert sorted(got) == [(0, 0), (1, 1), (2, 4), (3, 9)] and len(cancelled) == 2
    assert idle(client)


def test_run_tasks_gives_up_naming_the_task(client: distributed.Client,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    submit = client.submit

    def cancel_two(fn: Any, x: int, *args: Any, **kw: Any) -> Any:
        fut = submit(fn, x, *args, **kw)
        if x == 2:
            fut.cancel()
        return fut
    monkeypatch.setattr(client, "submit", cancel_two)
    with pytest.raises(TaskLostError, match=r"sq-2: lost 2 times on the Dask cluster.*"
                                            r"CancelledError"):
        list(run_tasks(client, square, [0, 1, 2, 3], label=lambda x: f"sq-{x}", retries=1))
    assert idle(client)


def test_run_tasks_raises_the_tasks_own_error_once(client: distributed.Client) -> None:
    with pytest.raises(ValueError, match="three"):
        list(run_tasks(client, fail_on_three, list(range(6)), label=lambda x: f"f-{x}"))
    assert task_runs(client, "f-3") == {"f-3": 1}
    assert idle(client)


def test_run_tasks_resubmits_after_killed_worker(client: distributed.Client,
                                                 tmp_path: Path) -> None:
    """With no failure allowed, the scheduler gives up on a task whose worker died
    (KilledWorker); run_tasks submits it again, and it succeeds on the replacement."""
    assert client.cluster is not None
    scheduler = client.cluster.scheduler                   # in this process (LocalCluster)
    allowed, scheduler.allowed_failures = scheduler.allowed_failures, 0
    try:
        got = dict(run_tasks(client, die_once, [0, 1, 2], str(tmp_path / "died"),
                             label=lambda x: f"die-{x}"))
    finally:
        scheduler.allowed_failures = allowed
    assert got == {0: 0, 1: 1, 2: 4} and (tmp_path / "died").exists()
    ready(client)
    assert idle(client)


def test_client_gone_mid_run_resumes_without_cluster(client: distributed.Client,
                                                     tmp_path: Path) -> None:
    """The run stops after its first finished chunk (as when the client goes away): the saved
    state lists that chunk, the cluster drops the rest, and one process finishes the run with
    the uninterrupted result."""
    gen, seg = TinyGenerator(), TinySegmenter()
    kw: dict[str, Any] = dict(samples=100, seed=9, batch_size=20)
    full = dissect(gen, seg, ["a", "b"], **kw)

    def gone(phase: int, done: int) -> None:
        raise Interrupt
    with pytest.raises(Interrupt):
        dissect(gen, seg, ["a", "b"], out=tmp_path, client=client, on_batch=gone, **kw)
    with safe_open(str(tmp_path / "state.safetensors"), "pt") as f:
        phase, done = _load_progress(f.metadata())
    assert phase == 1 and done in ([(a, a + 20)] for a in range(0, 100, 20))  # one chunk each
    assert idle(client)
    seen: list[tuple[int, int]] = []
    resumed = dissect(gen, seg, ["a", "b"], out=tmp_path,
                      on_batch=lambda p, d: seen.append((p, d)), **kw)
    kept = done[0][1] - done[0][0]
    assert seen[0] == (1, kept + 20) and seen[-1] == (2, 100)  # continued after the kept chunk
    assert_identical(full, resumed)


def test_client_and_executor_mixups_are_refused(client: distributed.Client) -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    with pytest.raises(TypeError, match="pass it as client="):
        dissect(gen, seg, "b", samples=4, seed=0, executor=client)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="client= takes a distributed.Client"):
        dissect(gen, seg, "b", samples=4, seed=0, client=object())


# ---------------------------------------------------------------------------- command line
ARGS = ["dissect", "--model", "planted", "--segmenter", "planted", "--layer", "layout",
        "--samples", "24", "--batch-size", "8", "--seed", "3", "--no-report", "--no-progress"]


def planted_24(gen: Any, seg: Any) -> dict[str, LayerResult]:
    return dissect(gen, seg, "layout", samples=24, seed=3, batch_size=8)


def test_cli_scheduler(client: distributed.Client, gen: Any, seg: Any, tmp_path: Path) -> None:
    address = client.scheduler_info()["address"]
    assert main([*ARGS, "--out", str(tmp_path), "--scheduler", address]) == 0
    assert_identical(planted_24(gen, seg), load_results(tmp_path))
    assert idle(client)


@pytest.mark.skipif(not HAVE_PROC, reason="reads /proc")
def test_cli_local_cluster_is_closed_at_the_end(gen: Any, seg: Any, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``--cluster local:1`` runs the chunks on a new cluster's worker process, which is gone
    when the command returns."""
    import gandissect.dissection.engine as engine
    used: list[int] = []
    real = engine.dissect

    def spy(*args: Any, **kw: Any) -> dict[str, LayerResult]:
        used.extend(kw["client"].run(os.getpid).values())
        return real(*args, **kw)
    monkeypatch.setattr(engine, "dissect", spy)
    before = children_of(os.getpid())
    assert main([*ARGS, "--out", str(tmp_path), "--cluster", "local:1"]) == 0
    assert_identical(planted_24(gen, seg), load_results(tmp_path))
    assert len(used) == 1 and used[0] not in before
    end = time.monotonic() + 10
    while children_of(os.getpid()) - before and time.monotonic() < end:
        time.sleep(0.1)
    assert not children_of(os.getpid()) - before


@pytest.mark.parametrize("spec", ["local", "local:0", "local:x", "tcp://h:1", "2"])
def test_cli_bad_cluster_spec(spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    import models
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("loaded a model"))
    assert main([*ARGS, "--out", str(tmp_path), "--cluster", spec]) == 2
    err = capsys.readouterr().err
    assert f"--cluster {spec!r}: expected local:N" in err and "--scheduler" in err


def test_cli_unreachable_scheduler(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:                         # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    t0 = time.monotonic()
    assert main([*ARGS, "--out", str(tmp_path), "--scheduler", address,
                 "--scheduler-timeout", "2"]) == 2
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert f"cannot reach the Dask scheduler at {address} within 2 s" in err


def test_cli_scheduler_without_workers(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with distributed.LocalCluster(n_workers=0, processes=False,
                                  dashboard_address=":0") as empty:
        assert main([*ARGS, "--out", str(tmp_path), "--scheduler", empty.scheduler_address,
                     "--scheduler-timeout", "1"]) == 2
    assert f"the Dask scheduler at {empty.scheduler_address} has no workers" in \
        capsys.readouterr().err


def test_cli_without_distributed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)     # import distributed fails
    assert main([*ARGS, "--out", str(tmp_path), "--cluster", "local:2"]) == 2
    assert "pip install 'gandissect[dask]'" in capsys.readouterr().err


def test_cli_workers_and_cluster_together_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ARGS, "--out", str(tmp_path), "--cluster", "local:2", "--workers", "2"]) == 2
    assert "--cluster local:N" in capsys.readouterr().err
    assert main([*ARGS, "--out", str(tmp_path), "--cluster", "local:2", "--scheduler",
                 "tcp://h:1"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_PROC, reason="reads /proc")
def test_killed_cli_run_leaves_no_dask_workers(tmp_path: Path) -> None:
    """``kill -9`` of ``gandissect dissect --cluster local:2`` while its workers run: they
    (and multiprocessing's resource tracker) are gone within 10 s."""
    cli = [sys.executable, "-m", "gandissect", *ARGS, "--out", str(tmp_path), "--cluster",
           "local:2"]
    cli[cli.index("--samples") + 1] = "1000000"
    parent = subprocess.Popen(cli, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 180
        while len(workers := {p for p in children_of(parent.pid)
                              if "spawn_main" in cmdline(p)}) < 2:
            assert parent.poll() is None, parent.communicate()[1]
            assert time.monotonic() < end, "the cluster did not start within 180 s"
            time.sleep(0.2)
        time.sleep(2.0)                                 # let them connect and take chunks
        kids = children_of(parent.pid)
        assert workers <= kids
    finally:
        kill9(parent)
    assert not wait_gone(kids, 10.0), "orphaned Dask worker processes"
