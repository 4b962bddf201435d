"""dissect() over worker processes: bit-identical to one process, resumable with another worker
count, clear errors, no pool left behind.

Spawned workers import torch (~2 s each on a busy 2-core machine), so most tests share one
module-wide spawn pool through the ``executor`` hook; the ``workers=N`` path (dissect's own
pool) is tested where it matters: equality, worker errors, shut-down processes, and workers
that exit when their parent is killed.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from procs import HAVE_PROC, children_of, kill9, proc_stat, wait_gone
from tiny import Interrupt, TinyGenerator, TinySegmenter, assert_identical

import segmenters
from gandissect.dissection.engine import dissect
from gandissect.dissection.progress import _gaps, _load_progress, _split
from gandissect.dissection.results import LayerResult

torch.set_num_threads(1)

def children() -> set[int]:
    return {p.pid for p in multiprocessing.active_children() if p.pid is not None}


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    """Two spawned workers with one torch thread each, shared by this module's tests."""
    ex = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,))
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def test_split_covers_todo_in_whole_batches() -> None:
    assert _gaps([(16, 48), (64, 72)], 101) == [(0, 16), (48, 64), (72, 101)]
    assert _gaps([], 10) == [(0, 10)] and _gaps([(0, 10)], 10) == []
    todo = [(0, 16), (48, 72), (80, 101)]
    chunks = _split(todo, 8, 4)
    assert all(a % 8 == 0 for a, _ in chunks) and len(chunks) == 5     # one cut at a gap
    assert sorted(s for a, b in chunks for s in range(a, b)) == \
        [s for a, b in todo for s in range(a, b)]
    assert _split([(0, 40)], 8, 4) == [(0, 16), (16, 24), (24, 32), (32, 40)]
    assert _split([(0, 7)], 8, 4) == [(0, 7)]


def test_workers_equal_one_process_on_planted(gen: Any, seg: Any) -> None:
    kw: dict[str, Any] = dict(samples=40, seed=1, batch_size=8)
    one = dissect(gen, seg, "layout", **kw)
    before = children()
    calls: list[tuple[int, int]] = []
    two = dissect(gen, seg, "layout", workers=2, progress=True,
                  on_batch=lambda p, d: calls.append((p, d)), **kw)
    assert_identical(one, two)
    # one call per finished chunk (5 batches -> 4 chunks per round), counting the round's
    # samples; pass 1 takes two rounds here (also in one process: unit 8 is mostly zeros)
    p1, p2 = ([d for p, d in calls if p == k] for k in (1, 2))
    assert [p for p, _ in calls] == sorted(p for p, _ in calls)
    assert len(p1) == 8 and p1[3::4] == [40, 40] and p1 == sorted(p1[:4]) + sorted(p1[4:])
    assert len(p2) == 4 and p2 == sorted(p2) and p2[-1] == 40
    assert children() <= before                              # the pool's processes are gone


def test_guess_failing_in_workers_is_redone_identically(
        pool: ProcessPoolExecutor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A small random-weights Toyworld GAN; cut guesses forced too high in the parent travel to
    the workers, so pass 1 needs another round there too; the result never changes, also when
    the pool is killed inside that round and one process resumes."""
    from models.toyworld_gan import ToyworldGenerator
    torch.manual_seed(0)
    gen, seg = ToyworldGenerator().eval(), segmenters.load("color")
    kw: dict[str, Any] = dict(samples=24, seed=2, batch_size=8, seg_resolution=32)
    default = dissect(gen, seg, ["layer3", "layer5"], **kw)
    mod = importlib.import_module("gandissect.dissection.engine")
    monkeypatch.setattr(mod, "FIRST_GUESS_FACTOR", 0.05)
    monkeypatch.setattr(mod, "GUESS_FACTOR", 0.05)
    calls: list[int] = []
    sharded = dissect(gen, seg, ["layer3", "layer5"], executor=pool, workers=2,
                      on_batch=lambda p, d: calls.append(p), **kw)
    assert calls.count(1) == 2 * 3                       # 3 chunks (one batch each), 2 rounds
    assert_identical(default, sharded)

    def kill(phase: int, done: int) -> None:
        calls.append(phase)
        if calls.count(1) == 4:                          # first chunk of the second round
            raise Interrupt
    calls.clear()
    with pytest.raises(Interrupt):
        dissect(gen, seg, ["layer3", "layer5"], executor=pool, workers=2, out=tmp_path,
                on_batch=kill, **kw)
    assert_identical(default, dissect(gen, seg, ["layer3", "layer5"], out=tmp_path, **kw))


@pytest.mark.parametrize("mode,conditioned", [("iqr", False), ("quantile", True), ("iqr", True)])
@pytest.mark.parametrize("model", ["tiny", "planted"])
def test_iqr_and_category_conditioned(pool: ProcessPoolExecutor, gen: Any, seg: Any, model: str,
                                      mode: str, conditioned: bool) -> None:
    """(The tiny segmenter's 'color' category is absent from some images.)"""
    layers = ["a", "b"] if model == "tiny" else ["layout"]
    if model == "tiny":
        gen, seg = TinyGenerator(), TinySegmenter()
    kw: dict[str, Any] = dict(samples=60, seed=5, batch_size=25, threshold=mode,
                              category_conditioned=conditioned)
    assert_identical(dissect(gen, seg, layers, **kw),
                     dissect(gen, seg, layers, executor=pool, workers=2, **kw))


def test_nan_in_a_worker_is_a_clear_error_and_stops_the_pool() -> None:
    gen = TinyGenerator()
    bad = TinyGenerator(nan_latent=gen.sample_latents(10, 0)[7])   # sample 7: third chunk
    before = children()
    with pytest.raises(ValueError, match="layer 'b' produced NaN or inf activations for sample 7"):
        dissect(bad, TinySegmenter(), "b", samples=10, seed=0, batch_size=2, workers=2)
    assert children() <= before


def test_unpicklable_models_are_refused_clearly() -> None:
    seg = TinySegmenter()
    seg.hook = lambda: None  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="needs a picklable generator and segmenter"):
        dissect(TinyGenerator(), seg, "b", samples=4, seed=0, workers=2)


@pytest.mark.parametrize("kill_with,resume_with,stop", [
    (2, 1, (1, 1)),            # pool killed after its first chunk of pass 1, one process resumes
    (1, 2, (2, 3)),            # one process killed in pass 2 (third batch), the pool resumes
    (2, 2, (2, 2)),            # pool killed after two chunks of pass 2, the pool resumes
])
def test_interrupted_and_resumed_with_other_workers_equals_uninterrupted(
        pool: ProcessPoolExecutor, tmp_path: Path, kill_with: int, resume_with: int,
        stop: tuple[int, int]) -> None:
    gen, seg = TinyGenerator(), TinySegmenter()
    kw: dict[str, Any] = dict(samples=100, seed=9, batch_size=20)
    full = dissect(gen, seg, ["a", "b"], **kw)

    def run(workers: int, on_batch: Any = None) -> dict[str, LayerResult]:
        par: dict[str, Any] = dict(executor=pool, workers=2) if workers > 1 else {}
        return dissect(gen, seg, ["a", "b"], out=tmp_path, checkpoint_seconds=0.0,
                       on_batch=on_batch, **par, **kw)
    calls, killed_at = 0, 0

    def kill(phase: int, done: int) -> None:
        nonlocal calls, killed_at
        calls += phase == stop[0]
        if calls == stop[1]:
            killed_at = done
            raise Interrupt
    with pytest.raises(Interrupt):
        run(kill_with, kill)
    assert (tmp_path / "state.safetensors").exists()
    seen: list[tuple[int, int]] = []
    resumed = run(resume_with, lambda p, d: seen.append((p, d)))
    assert seen[0][0] == stop[0] and seen[0][1] > killed_at             # continued
    assert_identical(full, resumed)
    assert not (tmp_path / "state.safetensors").exists()


class SlowOn(TinyGenerator):
    """:class:`TinyGenerator` (same weights) that takes half a second longer on batches holding
    the latent ``slow``."""

    def __init__(self, slow: torch.Tensor) -> None:
        super().__init__()
        self.slow = slow

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if bool((z == self.slow).all(1).any()):
            time.sleep(0.5)
        return super().forward(z)


def test_resume_from_chunks_finished_out_of_order(tmp_path: Path) -> None:
    """Chunk 2 of 4 finishes first and the run is killed: the saved round has a gap before and
    after it; one process fills both gaps and ends exactly like an uninterrupted run. (Any
    Executor works, threads too: each thread unpickles its own copy of the models.)"""
    gen, seg = TinyGenerator(), TinySegmenter()
    kw: dict[str, Any] = dict(samples=100, seed=9, batch_size=20)
    full = dissect(gen, seg, ["a", "b"], **kw)
    slow = SlowOn(gen.sample_latents(1, 9)[0])

    def kill(phase: int, done: int) -> None:
        raise Interrupt
    with ThreadPoolExecutor(2) as ex, pytest.raises(Interrupt):
        dissect(slow, seg, ["a", "b"], out=tmp_path, executor=ex, workers=2, on_batch=kill,
                **kw)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "state.safetensors"), "pt") as f:
        assert _load_progress(f.metadata()) == (1, [(40, 60)])
    seen: list[tuple[int, int]] = []
    resumed = dissect(slow, seg, ["a", "b"], out=tmp_path, checkpoint_seconds=0.0,
                      on_batch=lambda p, d: seen.append((p, d)), **kw)
    assert seen[:4] == [(1, 40), (1, 60), (1, 80), (1, 100)]
    assert_identical(full, resumed)


def test_cli_workers(tmp_path: Path, gen: Any, seg: Any,
                     capsys: pytest.CaptureFixture[str]) -> None:
    from gandissect.cli import main
    from gandissect.dissection.results import load_results
    args = ["dissect", "--model", "planted", "--segmenter", "planted", "--layer", "layout",
            "--samples", "24", "--batch-size", "8", "--seed", "3", "--no-report", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "zero"), "--workers", "0"]) == 2
    assert "--workers: must be >= 1" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    one = dissect(gen, seg, "layout", samples=24, seed=3, batch_size=8)
    assert_identical(one, load_results(tmp_path / "two"))


# ------------------------------------------------------------------ no orphans after a kill -9
TESTS = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent),
                                                    os.environ.get("PYTHONPATH", "")])}


#: a dissection with two workers that would run for hours (each batch takes 0.2 s); a worker
#: marks its first batch with an empty file named by its PID in the folder argv[1]
ENDLESS = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from pathlib import Path
    import torch
    from tiny import TinyGenerator, TinySegmenter
    from gandissect.dissection.engine import dissect

    class Slow(TinyGenerator):
        def forward(self, z):
            if multiprocessing.parent_process() is not None:
                Path(sys.argv[1], str(os.getpid())).touch()
            time.sleep(0.2)
            return super().forward(z)

    if __name__ == "__main__":
        torch.set_num_threads(1)
        dissect(Slow(), TinySegmenter(), "b", samples=10**6, seed=0, batch_size=4, workers=2)
""")


@pytest.mark.skipif(not HAVE_PROC, reason="reads /proc")
def test_killed_parent_leaves_no_workers(tmp_path: Path) -> None:
    """``kill -9`` of a ``workers=2`` run while both workers compute: every process it started
    (the two workers, multiprocessing's resource tracker) is gone within 10 s."""
    (tmp_path / "marks").mkdir()
    script = tmp_path / "endless.py"
    script.write_text(ENDLESS)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "marks")], env=ENV,
                              stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 180
        while len(marks := {int(p.name) for p in (tmp_path / "marks").iterdir()}) < 2:
            assert parent.poll() is None, parent.communicate()[1]
            assert time.monotonic() < end, "the workers did not start within 180 s"
            time.sleep(0.2)
        kids = children_of(parent.pid)
        assert marks <= kids                          # the workers run, as children of parent
    finally:
        kill9(parent)
    assert not wait_gone(kids, 10.0), "orphaned worker processes"


#: a child that calls _die_with_parent(argv[1]) with one of its two mechanisms only, prints
#: "ready" and sleeps; the script (its parent) prints the child's PID and sleeps
CHILD = textwrap.dedent("""
    import sys, time
    import gandissect.dissection.workers as w
    if sys.argv[2] == "prctl":
        w.PARENT_POLL_SECONDS = 10**6          # the thread checks once, then sleeps
    w._die_with_parent(int(sys.argv[1]), prctl=sys.argv[2] == "prctl")
    print("ready", flush=True)
    time.sleep(300)
""")
WATCHED = textwrap.dedent("""
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    print(child.pid, flush=True)
    time.sleep(300)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc: Linux")
@pytest.mark.parametrize("mechanism", ["prctl", "poll"])
def test_each_way_of_dying_with_the_parent_works_alone(mechanism: str) -> None:
    """PR_SET_PDEATHSIG alone, and the portable ``os.getppid()`` thread alone, each end a
    process whose parent was killed with SIGKILL."""
    parent = subprocess.Popen([sys.executable, "-c", WATCHED, CHILD, mechanism], env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert (st := proc_stat(child)) is not None and st[1] == parent.pid
    finally:
        kill9(parent)
    assert not wait_gone({child}, 10.0)


def test_states_travel_packed_and_come_back_equal() -> None:
    """_pack keeps floats (even -0.0) and small tensors as they are, sends mostly-zero integer
    tensors as their nonzero entries (all-zero ones as a shape), and _unpack restores every
    tensor exactly (dtype, shape, values)."""
    import pickle

    from gandissect.dissection.workers import PACK_MIN_ELEMENTS, _pack, _unpack

    g = torch.Generator().manual_seed(0)
    sparse = torch.zeros(64, 256, 3, dtype=torch.int64)
    sparse.view(-1)[torch.randperm(sparse.numel(), generator=g)[:500]] = \
        torch.randint(1, 10**12, (500,), generator=g)
    dense = torch.randint(0, 5, (128, 128), generator=g)
    floats = torch.zeros(100, 100)
    floats[0, 0] = -0.0
    state = {"layer": {"zeros": torch.zeros(256, 2048, dtype=torch.int64), "sparse": sparse,
                       "dense": dense, "floats": floats, "mask": torch.rand(80, 80) > 0.99,
                       "small": torch.zeros(PACK_MIN_ELEMENTS - 1, dtype=torch.int64)}}
    packed = _pack(state)
    assert {k for k, v in packed["layer"].items() if isinstance(v, tuple)} == \
        {"zeros", "sparse", "mask"}
    assert len(pickle.dumps(packed)) < len(pickle.dumps(state)) / 10
    back = _unpack(packed)["layer"]
    for k, t in state["layer"].items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t)
    assert torch.equal(back["floats"].view(torch.int32), floats.view(torch.int32))   # -0.0 kept
