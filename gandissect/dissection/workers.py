"""Where the chunks of a dissection round run (see :mod:`gandissect.dissection.engine`): a spawn
process pool :func:`~gandissect.dissection.engine.dissect` makes, a caller's
:class:`concurrent.futures.Executor`, or a Dask cluster (``client=``).

A chunk (:class:`_Chunk`) is a range of whole batches of one round with the round's blank
statistics; :func:`_work` runs it and returns its state dict, which the parent merges
(:func:`_run_chunks`). The models travel once per worker, not with every chunk, except to a
plain caller's executor: the own pool's initializer installs them, and on Dask they are
scattered to every worker once (``broadcast=True``) and each task gets a reference (so do each
round's blank states there).

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
from dataclasses import dataclass
from typing import Any

import torch

from .batches import _Run, _run_span
from .config import DissectConfig
from .layer_stats import _LayerState
from .progress import Range, _split

#: per worker thread: (key, (generator, segmenter)) of the last models unpickled there
_WORKER = threading.local()

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
    states: dict[str, dict[str, torch.Tensor]]         #: layer -> blank_state() of the round
    guess: tuple[float, float]                         #: the parent's cut guess factors
    threads: int | None = None        #: torch threads to set in the worker (None: leave them)


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
          blank: dict[str, dict[str, torch.Tensor]] | None = None
          ) -> dict[str, dict[str, torch.Tensor]]:
    """Worker entry point: the final (CPU) state of each layer after ``chunk``'s samples,
    started from the round's blank states (``blank``, or else ``chunk.states``). ``models`` is
    the pickled (generator, segmenter), or None where the pool's initializer installed them."""
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
    for name, (units, src) in chunk.shapes.items():
        states[name] = run.new_state(units, src, chunk.guess)
        start = (blank if blank is not None else chunk.states)[name]
        states[name].load({k: v.to(run.dev) for k, v in start.items()})
    with torch.no_grad():
        _run_span(run, states, chunk.phase, chunk.start, chunk.stop, seen=0)
    return {name: {k: v.cpu() for k, v in st.state_dict().items()}
            for name, st in states.items()}


def _is_dask_client(obj: object) -> bool:
    """``obj`` looks like a ``distributed.Client`` (checked without importing distributed)."""
    return type(obj).__module__.startswith("distributed") and hasattr(obj, "scatter") \
        and hasattr(obj, "get_executor")


class _Pool:
    """Where the chunks run: a Dask ``client``, a caller's ``executor``, or a spawn process pool
    made on first use (and shut down by :meth:`close`, cancelling chunks not yet started)."""

    def __init__(self, run: _Run, workers: int, executor: Executor | None,
                 threads_per_worker: int, client: Any = None) -> None:
        self.run, self.workers, self.threads = run, workers, threads_per_worker
        self.executor, self.client = executor, client
        self.own = executor is None and client is None
        self.key, self.models = "", b""
        self.models_arg: Any = None

    def chunks(self) -> int:
        """Chunks per round: two per worker (on Dask without ``workers > 1``: per worker
        thread the cluster has now)."""
        if self.client is not None and self.workers == 1:
            return 2 * max(1, sum(self.client.nthreads().values()))
        return 2 * self.workers

    def start(self) -> tuple[Executor, Any]:
        """The executor and what :func:`_work` gets as ``models``: ``None`` for the own pool
        (its initializer installs them once per worker), a reference to the copy scattered to
        every Dask worker, or the pickle itself for a caller's executor."""
        if not self.models:
            try:
                self.models = pickle.dumps((self.run.generator, self.run.segmenter))
            except Exception as e:
                raise ValueError(f"dissect with workers needs a picklable generator and "
                                 f"segmenter: {e}") from e
            self.key = hashlib.sha256(self.models).hexdigest()
        if self.executor is None and self.client is not None:
            self.models_arg = self.client.scatter(self.models, broadcast=True, hash=False)
            self.executor = self.client.get_executor(pure=False)
        elif self.executor is None:
            self.executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.key, self.models, self.threads, os.getpid()))
        assert self.executor is not None
        if self.client is not None:
            return self.executor, self.models_arg
        return self.executor, None if self.own else self.models

    def close(self) -> None:
        """Shut the own pool down; on Dask, cancel what is left and release the models."""
        if self.client is not None and self.executor is not None:
            self.executor.shutdown(wait=False)
            if self.models_arg is not None:
                self.models_arg.release()
            self.executor = self.models_arg = None
        elif self.own and self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


def _run_chunks(pool: _Pool, states: dict[str, _LayerState], phase: int, todo: list[Range],
                finished: Callable[[int, int], None]) -> None:
    """Run ``todo`` of this round on ``pool``, two chunks per worker, and merge each chunk's
    statistics into ``states`` as it finishes (then ``finished(start, stop)``). On any error
    (a worker's is re-raised here), chunks not yet started are cancelled."""
    if not todo:
        return
    executor, models = pool.start()
    cfg = pool.run.cfg
    blank = {k: st.blank_state() for k, st in states.items()}
    shapes = {k: (st.units, st.src) for k, st in states.items()}
    guess = next(iter(states.values())).guess
    threads, blank_arg = None, None
    if pool.client is not None:
        # the round's blank states (MBs of mostly zeros) also go to each worker once, not
        # with every task
        threads = pool.threads
        blank_arg = pool.client.scatter([blank], broadcast=True, hash=False)[0]
    futures: dict[Future[dict[str, dict[str, torch.Tensor]]], Range] = {}
    try:
        for a, b in _split(todo, cfg.batch_size, pool.chunks()):
            chunk = _Chunk(pool.key, cfg, str(pool.run.dev), phase, a, b, shapes,
                           {} if blank_arg is not None else blank, guess, threads)
            futures[executor.submit(_work, chunk, models, blank_arg)] = (a, b)
        for fut in as_completed(futures):
            result, (a, b) = fut.result(), futures.pop(fut)
            # forget the chunk before anything else runs (on Dask its result then leaves the
            # worker: a worker lost later costs only chunks not merged yet)
            del fut
            for k, state in result.items():
                states[k].merge(state)
            del result
            finished(a, b)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
