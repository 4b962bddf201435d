"""Where the chunks of a dissection round run (see :mod:`gandissect.dissection.engine`): a spawn
process pool :func:`~gandissect.dissection.engine.dissect` makes, a caller's
:class:`concurrent.futures.Executor`, or a Dask cluster (``client=``).

A chunk (:class:`_Chunk`) is a range of whole batches of one round with the round's blank
statistics; :func:`_work` runs it and returns its state dict, which the parent merges
(:func:`_run_chunks`). The models travel once per worker, not with every chunk, except to a
plain caller's executor: the own pool's initializer installs them, and on Dask a worker plugin
installs them on every worker, also on one that replaces a killed worker
(:func:`~gandissect.dissection.cluster.installed_on_workers`; so do each round's blank states),
and a task carries only its sample range and the names of both. On Dask a chunk whose task was
lost is submitted again and merged once (:func:`~gandissect.dissection.cluster.run_tasks`).

Workers of the own pool exit when the parent process dies, also when it is killed
(:func:`_die_with_parent`): a killed ``--workers N`` run leaves no orphans holding the models'
memory.
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from contextlib import ExitStack, closing
from dataclasses import dataclass
from typing import Any

import torch

from .batches import _BatchCache, _Run, _run_span
from .cluster import installed, installed_on_workers, run_tasks, worker_address, worker_scratch
from .config import DissectConfig
from .layer_stats import _LayerState
from .progress import Range, _split

#: per worker thread: (key, (generator, segmenter)) of the last models unpickled there
_WORKER = threading.local()

#: chunks per worker thread of a round on Dask (:meth:`_Pool.chunks`)
DASK_CHUNKS_PER_THREAD = 4

#: ``prctl`` option: signal this process when its parent (thread) dies (linux/prctl.h)
PR_SET_PDEATHSIG = 1

#: seconds between two checks of the parent process in :func:`_die_with_parent`'s thread
PARENT_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class _Chunk:
    """One chunk of one round, as sent to a worker (the models travel separately)."""

    key: str                          #: identifies the models (sha256 of their pickle)
    cfg: DissectConfig
    device: str
    phase: int
    start: int
    stop: int
    shapes: dict[str, tuple[int, tuple[int, int]]]     #: layer -> (units, (h, w))
    states: dict[str, dict[str, Any]]  #: layer -> _pack-ed blank_state() of the round ({} on Dask)
    guess: tuple[float, float]                         #: the parent's cut guess factors
    threads: int | None = None        #: torch threads to set in the worker (None: leave them)
    cache_mb: float = 0               #: on Dask: MB of pass-1 batches each worker keeps


#: integer tensors with at least this many elements travel as their nonzero entries (_pack)
PACK_MIN_ELEMENTS = 4096


def _pack(states: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, Any]]:
    """``states`` (layer -> state dict) for the way to or from a worker: an integer or bool
    tensor of at least :data:`PACK_MIN_ELEMENTS` whose nonzero entries take less room than the
    tensor becomes ``("sparse", shape, flat indices, values)`` (all zero: no indices); other
    tensors stay. :func:`_unpack` gives back equal tensors (floats are never packed, so even
    ``-0.0`` survives). Pass-2 counts and mostly-zero blank states shrink several times."""
    out: dict[str, dict[str, Any]] = {}
    for name, state in states.items():
        packed: dict[str, Any] = {}
        for k, t in state.items():
            small = t.numel() < PACK_MIN_ELEMENTS or t.is_floating_point() or t.is_complex()
            nnz = 0 if small else int(torch.count_nonzero(t))
            if small or nnz * (8 + t.element_size()) >= t.numel() * t.element_size():
                packed[k] = t
                continue
            flat = t.reshape(-1)
            idx = torch.nonzero(flat).reshape(-1)
            packed[k] = ("sparse", tuple(t.shape), idx, flat[idx].clone())
        out[name] = packed
    return out


def _unpack(states: dict[str, dict[str, Any]]) -> dict[str, dict[str, torch.Tensor]]:
    """Inverse of :func:`_pack`."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, packed in states.items():
        state = {}
        for k, v in packed.items():
            if isinstance(v, tuple):
                _, shape, idx, values = v
                t = torch.zeros(int(torch.Size(shape).numel()), dtype=values.dtype)
                t[idx] = values
                v = t.reshape(shape)
            state[k] = v
        out[name] = state
    return out


def _install_models(key: str, models: bytes) -> tuple[Any, Any]:
    """Unpickle ``models`` once per worker thread (cached under ``key``)."""
    if getattr(_WORKER, "key", None) != key:
        _WORKER.models = pickle.loads(models)
        _WORKER.key = key
    return _WORKER.models


def _die_with_parent(parent: int, prctl: bool = True) -> None:
    """Make this process exit when the process ``parent`` (the one that started it) dies, even
    by SIGKILL: on Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (``prctl``; it fires when the
    parent *thread* that started this process ends), and everywhere a daemon thread that
    checks ``os.getppid()`` every :data:`PARENT_POLL_SECONDS` and calls ``os._exit`` once this
    process has been re-parented. Exits at once if ``parent`` is already gone."""
    if prctl and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):            # no libc or no prctl: the thread remains
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)
    threading.Thread(target=watch, name="gandissect-parent-watch", daemon=True).start()


def _init_worker(key: str, models: bytes, threads: int, parent: int) -> None:
    """Initializer of the process pool :func:`dissect` makes: exit with ``parent``, threads,
    then the models."""
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    _install_models(key, models)


def _work(chunk: _Chunk, models: bytes | None = None,
          blank: dict[str, dict[str, torch.Tensor]] | None = None,
          cache: Callable[[], _BatchCache] | None = None
          ) -> dict[str, dict[str, Any]]:
    """Worker entry point: the final (CPU) state of each layer after ``chunk``'s samples,
    started from the round's blank states (``blank``, or else ``chunk.states``). ``models`` is
    the pickled (generator, segmenter), or None where the pool's initializer installed them.
    ``cache()`` gives the worker's cache of pass-1 batches for this run (not on a probe set).
    The states come :func:`_pack`-ed (the parent unpacks them before merging)."""
    if models is not None:
        generator, segmenter = _install_models(chunk.key, models)
    elif getattr(_WORKER, "key", None) == chunk.key:
        generator, segmenter = _WORKER.models
    else:
        raise RuntimeError("dissect worker has no models (chunk sent without them to a worker "
                           "that was not started by dissect())")
    if chunk.threads is not None and torch.get_num_threads() != chunk.threads:
        torch.set_num_threads(chunk.threads)
    run = _Run.make(generator, segmenter, chunk.cfg, chunk.device)
    states = {}
    starts = blank if blank is not None else _unpack(chunk.states)
    for name, (units, src) in chunk.shapes.items():
        states[name] = run.new_state(units, src, chunk.guess)
        start = starts[name]
        states[name].load({k: v.to(run.dev) for k, v in start.items()})
    kept = cache() if cache is not None and run.probe is None else None
    with torch.no_grad():
        _run_span(run, states, chunk.phase, chunk.start, chunk.stop, seen=0, cache=kept)
    return _pack({name: {k: v.cpu() for k, v in st.state_dict().items()}
                  for name, st in states.items()})


def _work_installed(chunk: _Chunk, models: str, blank: str
                    ) -> tuple[dict[str, dict[str, Any]], str]:
    """Dask task: :func:`_work` with the models and the round's blank states that
    :func:`~gandissect.dissection.cluster.installed_on_workers` put on this worker as
    ``models`` and ``blank`` (the blank states unpickled afresh: a chunk accumulates into
    them), and this worker's address. With ``chunk.cache_mb``, the worker keeps up to that
    many MB of pass-1 batches for the run (:func:`~gandissect.dissection.cluster.worker_scratch`
    of ``models``, dropped when the run ends), which later rounds of the same chunk read when
    they run on this worker again."""
    budget = int(chunk.cache_mb * 2**20)
    cache = (lambda: worker_scratch(models, lambda: _BatchCache(budget))) if budget else None
    return _work(chunk, installed(models), _unpack(pickle.loads(installed(blank))), cache), \
        worker_address()


def _is_dask_client(obj: object) -> bool:
    """``obj`` looks like a ``distributed.Client`` (checked without importing distributed)."""
    return type(obj).__module__.startswith("distributed") and hasattr(obj, "scatter") \
        and hasattr(obj, "get_executor")


class _Pool:
    """Where the chunks run: a Dask ``client``, a caller's ``executor``, or a spawn process pool
    made on first use (and shut down by :meth:`close`, cancelling chunks not yet started)."""

    def __init__(self, run: _Run, workers: int, executor: Executor | None,
                 threads_per_worker: int, client: Any = None, cache_mb: float = 0) -> None:
        self.run, self.workers, self.threads = run, workers, threads_per_worker
        self.cache_mb = cache_mb      #: on Dask: MB of pass-1 batches each worker keeps
        self.homes: dict[Range, str] = {}   #: on Dask: chunk -> worker that ran its pass 1
        self.executor, self.client = executor, client
        self.own = executor is None and client is None
        self.key, self.models = "", b""
        self.installed = ""           #: on Dask: name of the models installed on the workers
        self.stack = ExitStack()      #: on Dask: uninstalls them (close)
        self.n_chunks = 0
        self.rounds = 0               #: rounds run on Dask so far (names their tasks)

    def chunks(self) -> int:
        """Chunks per round: two per worker; on Dask four per worker thread the cluster had
        when the first round started (or per worker with ``workers > 1``), since the scheduler
        hands out a worker's first two tasks at once, which with two per thread fixes who runs
        what before anything ran (e.g. 6 of 10 batches on one worker of two). Fixed for the
        run, so a worker lost and not yet replaced does not change where chunks start."""
        if not self.n_chunks:
            if self.client is not None:
                threads = self.workers if self.workers > 1 else \
                    max(1, sum(self.client.nthreads().values()))
                self.n_chunks = DASK_CHUNKS_PER_THREAD * threads
            else:
                self.n_chunks = 2 * self.workers
        return self.n_chunks

    def pickled(self) -> None:
        """Pickle the models once (and their key, the sha256 of that pickle)."""
        if not self.models:
            try:
                self.models = pickle.dumps((self.run.generator, self.run.segmenter))
            except Exception as e:
                raise ValueError(f"dissect with workers needs a picklable generator and "
                                 f"segmenter: {e}") from e
            self.key = hashlib.sha256(self.models).hexdigest()

    def start_dask(self) -> str:
        """On Dask: the name under which the models are installed on every worker (done on
        the first call)."""
        self.pickled()
        if not self.installed:
            self.installed = self.stack.enter_context(
                installed_on_workers(self.client, self.models))
        return self.installed

    def start(self) -> tuple[Executor, bytes | None]:
        """(Not on Dask.) The executor and what :func:`_work` gets as ``models``: ``None`` for
        the own pool (its initializer installs them once per worker), or the pickle itself for
        a caller's executor."""
        self.pickled()
        if self.executor is None:
            self.executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.key, self.models, self.threads, os.getpid()))
        assert self.executor is not None
        return self.executor, None if self.own else self.models

    def close(self) -> None:
        """Shut the own pool down; on Dask, take the models off the workers."""
        if self.client is not None:
            self.stack.close()
            self.installed = ""
        elif self.own and self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


def _run_chunks(pool: _Pool, states: dict[str, _LayerState], phase: int, todo: list[Range],
                finished: Callable[[int, int], None]) -> None:
    """Run ``todo`` of this round on ``pool`` (:meth:`_Pool.chunks` chunks), and merge each chunk's
    statistics into ``states`` as it finishes (then ``finished(start, stop)``). On any error
    (a worker's is re-raised here), chunks not yet started are cancelled."""
    if not todo:
        return
    cfg = pool.run.cfg
    blank = {k: st.blank_state() for k, st in states.items()}
    shapes = {k: (st.units, st.src) for k, st in states.items()}
    guess = next(iter(states.values())).guess
    spans = _split(todo, cfg.batch_size, pool.chunks())
    if pool.client is not None:
        name = pool.start_dask()               # first: it sets pool.key, which chunks carry
        chunks = [_Chunk(pool.key, cfg, str(pool.run.dev), phase, a, b, shapes, {}, guess,
                         pool.threads, pool.cache_mb) for a, b in spans]
        _run_on_dask(pool, states, chunks, name, blank, finished)
        return
    executor, models = pool.start()
    packed = _pack(blank)
    futures: dict[Future[dict[str, dict[str, Any]]], Range] = {}
    try:
        for a, b in spans:
            chunk = _Chunk(pool.key, cfg, str(pool.run.dev), phase, a, b, shapes, packed, guess)
            futures[executor.submit(_work, chunk, models)] = (a, b)
        for fut in as_completed(futures):
            result, (a, b) = _unpack(fut.result()), futures.pop(fut)
            del fut                              # forget the chunk before anything else runs
            for k, state in result.items():
                states[k].merge(state)
            del result
            finished(a, b)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def _run_on_dask(pool: _Pool, states: dict[str, _LayerState], chunks: list[_Chunk], models: str,
                 blank: dict[str, dict[str, torch.Tensor]],
                 finished: Callable[[int, int], None]) -> None:
    """:func:`_run_chunks` on a Dask cluster: the round's blank states (MBs of mostly zeros
    for a large layer) are installed on every worker like the models, and each chunk is a
    task of :func:`~gandissect.dissection.cluster.run_tasks` (with the models installed as
    ``models``): a chunk lost with a worker (or
    cancelled) runs again, and every chunk is merged exactly once, as its result arrives.
    A chunk of a later round goes preferably to the worker that ran the same samples first
    (``pool.homes``), where they may still be cached (``pool.cache_mb``); run elsewhere, it
    computes them again, with the same result."""
    pool.rounds += 1

    def label(c: _Chunk) -> str:                 # e.g. dissect-round2-pass1-0-64
        return f"dissect-round{pool.rounds}-pass{c.phase}-{c.start}-{c.stop}"

    def where(i: int) -> str | None:
        return pool.homes.get((chunks[i].start, chunks[i].stop))
    with installed_on_workers(pool.client, pickle.dumps(_pack(blank))) as blank_name, \
            closing(run_tasks(pool.client, _work_installed, chunks, models, blank_name,
                              label=label, where=where if pool.cache_mb else None)) as results:
        for i, (packed, address) in results:
            result = _unpack(packed)
            del packed
            span = (chunks[i].start, chunks[i].stop)
            pool.homes.setdefault(span, address)
            for k, state in result.items():
                states[k].merge(state)
            del result
            finished(*span)
