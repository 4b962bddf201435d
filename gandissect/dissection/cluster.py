"""Dask clusters for ``dissect(..., client=...)`` and the other commands that fan out: a local
cluster started for one run (``local:N``) or a running cluster reached through its scheduler's
address (what ``--cluster`` and ``--scheduler`` use); payloads such as the pickled models
installed once on every worker, replacements included (:func:`installed_on_workers`,
:func:`models_on_workers`); and
tasks whose results arrive exactly once each, resubmitted when the cluster loses them
(:func:`run_tasks`).

Needs the optional ``distributed`` package (``pip install 'gandissect[dask]'``), imported only
here and only when a cluster is asked for.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pickle
import re
import sys
import threading
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import CancelledError
from contextlib import closing, contextmanager, suppress
from types import ModuleType
from typing import Any

INSTALL = "pip install 'gandissect[dask]'"


def require_distributed() -> ModuleType:
    """The ``distributed`` module, or an :class:`ImportError` that says how to install it."""
    try:
        import distributed
    except ImportError as e:
        raise ImportError(f"running on a Dask cluster needs the distributed package: {INSTALL} "
                          f"(on the machines of the workers too)") from e
    return distributed


def parse_cluster(spec: str) -> int:
    """The number of worker processes of a ``local:N`` cluster spec (N >= 1).

    >>> parse_cluster("local:2")
    2
    """
    m = re.fullmatch(r"local:([0-9]+)", spec.strip())
    if m is None or int(m.group(1)) < 1:
        raise ValueError(f"--cluster {spec!r}: expected local:N with N >= 1 worker processes "
                         f"(e.g. local:2); for a running cluster, give --scheduler "
                         f"tcp://HOST:PORT instead")
    return int(m.group(1))


@contextmanager
def dask_client(cluster: str | None = None, scheduler: str | None = None,
                timeout: float = 10.0) -> Iterator[Any]:
    """A ``distributed.Client`` for the length of the ``with`` block: on a new
    ``LocalCluster`` of N worker processes with one thread each (``cluster="local:N"``,
    closed at the end), or on the running cluster whose scheduler is at ``scheduler``
    (``tcp://HOST:PORT``; a :class:`ConnectionError` naming it when it cannot be reached, or
    has no worker, within ``timeout`` seconds). Exactly one of the two."""
    if (cluster is None) == (scheduler is None):
        raise ValueError("give either a cluster spec (local:N) or a scheduler address")
    n = parse_cluster(cluster) if cluster is not None else 0
    distributed = require_distributed()
    if cluster is not None:
        import dask

        # the workers' statistical profiler (stack samples every 10 ms, for the dashboard's
        # profile page) costs the forward passes a few percent: off on a cluster of our own
        with dask.config.set({"distributed.worker.profile.enabled": False}), \
                distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                         dashboard_address=":0") as local, \
                distributed.Client(local) as client:
            yield client
        return
    hint = f"is a scheduler running there (`dask scheduler`), with workers (`dask worker " \
           f"{scheduler}`)?"
    try:
        client = distributed.Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as e:
        raise ConnectionError(f"cannot reach the Dask scheduler at {scheduler} within "
                              f"{timeout:g} s ({e}); {hint}") from e
    with client:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (OSError, TimeoutError) as e:
            raise ConnectionError(f"the Dask scheduler at {scheduler} has no workers after "
                                  f"{timeout:g} s; {hint}") from e
        yield client


# ------------------------------------------------------------------ models and tasks on Dask
#: resubmissions of one task whose run was lost (cancelled, or its workers killed) before
#: :func:`run_tasks` gives up with a :class:`TaskLostError`
RETRIES = 3

#: on a Dask worker: name -> payload of each :func:`installed_on_workers` block now open
_PAYLOADS: dict[str, bytes] = {}

#: per worker thread: (name, object) of the payload :func:`installed_object` unpickled last
_THREAD = threading.local()

#: on a Dask worker: name -> object :func:`worker_scratch` made for an open installation
_SCRATCH: dict[str, Any] = {}
_SCRATCH_LOCK = threading.Lock()


class TaskLostError(RuntimeError):
    """A task's run was lost more often than :func:`run_tasks` retries it (worker killed,
    task cancelled): the cluster cannot run it; the message names the task and the cause."""


#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`tune_malloc` sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES = 32 * 2**20, 64 * 2**20


@functools.cache
def tune_malloc() -> bool:
    """On a Dask worker started by a nanny, undo the slow allocations of its default
    environment, once per process; True if it did.

    A nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (``distributed.nanny.
    pre-spawn-environ``), which also fixes glibc's mmap threshold at 128 KB: every tensor of a
    forward pass is then a fresh ``mmap`` and page faults, and the bundled GAN + segmenter run
    about 1.4x slower (measured: 8.2 s against 5.8 s for 4 batches of 100). This restores
    large thresholds with ``mallopt`` (buffers up to 32 MB are reused; up to 64 MB of free
    memory stays with the process). Nothing happens without that variable, or off glibc."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError):                    # no libc, or not glibc
        return False


@functools.cache
def _install_class() -> type:
    """The worker plugin class of :func:`installed_on_workers` (made on first use, since it
    derives from ``distributed``'s ``WorkerPlugin``; pickled by reference as ``_Install`` of
    this module, found again through the module's ``__getattr__``)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class _Install(WorkerPlugin):
        """Puts ``payload`` into this module's ``_PAYLOADS`` on each worker (setup) and takes
        it out again (teardown, when the plugin is unregistered)."""

        def __init__(self, name: str, payload: bytes) -> None:
            self.name, self.payload = name, payload

        def setup(self, worker: Any) -> None:
            tune_malloc()
            _PAYLOADS[self.name] = self.payload

        def teardown(self, worker: Any) -> None:
            _PAYLOADS.pop(self.name, None)
            with _SCRATCH_LOCK:
                _SCRATCH.pop(self.name, None)

    _Install.__module__, _Install.__qualname__ = __name__, "_Install"
    return _Install


def __getattr__(name: str) -> Any:
    """``_Install`` (the worker plugin class) is made on first access, so that importing this
    module does not import ``distributed``."""
    if name == "_Install":
        return _install_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextmanager
def installed_on_workers(client: Any, payload: bytes) -> Iterator[str]:
    """Install ``payload`` on every worker of ``client``'s cluster for the ``with`` block, also
    on workers that join or are restarted during it (a Dask worker plugin, which the scheduler
    gives every worker when it registers); yield its name, for :func:`installed` in a task.

    The bytes travel once per worker (unlike ``client.scatter``, whose replicas the scheduler's
    memory manager may drop, and whose only copy dies with its worker, cancelling every task
    that needs it)."""
    name = f"gandissect-{uuid.uuid4().hex}"
    client.register_plugin(_install_class()(name, payload), name=name)
    try:
        yield name
    finally:
        # best effort: a client or cluster that is already gone holds nothing of ours
        with suppress(Exception):
            client.unregister_worker_plugin(name)


def installed(name: str) -> bytes:
    """In a task on a Dask worker: the payload :func:`installed_on_workers` put there as
    ``name``."""
    try:
        return _PAYLOADS[name]
    except KeyError:
        raise RuntimeError(f"this Dask worker has no payload {name!r} (installed_on_workers "
                           f"ended, or the task was not sent by gandissect)") from None


def worker_scratch(name: str, make: Callable[[], Any]) -> Any:
    """In a task on a Dask worker: this worker process's object for the installation ``name``
    (made by ``make()`` on first use, shared by the worker's threads, so it must be
    thread-safe); dropped on the worker when the installation ends, or with the worker. For
    state that later tasks of the same run may reuse, e.g. a cache: a later task must not
    count on finding it (it may run on another worker)."""
    installed(name)                              # the installation is open on this worker
    with _SCRATCH_LOCK:
        if name not in _SCRATCH:
            _SCRATCH[name] = make()
        return _SCRATCH[name]


def worker_address() -> str:
    """In a task on a Dask worker: that worker's address (for :func:`run_tasks`' ``where``)."""
    from distributed import get_worker

    return str(get_worker().address)


def installed_object(name: str) -> Any:
    """:func:`installed` unpickled, once per worker thread (the last one is kept: models
    holding hooks must not be shared between threads)."""
    if getattr(_THREAD, "name", None) != name:
        _THREAD.obj = pickle.loads(installed(name))
        _THREAD.name = name
    return _THREAD.obj


def run_tasks(client: Any, fn: Callable[..., Any], items: Sequence[Any], *args: Any,
              label: Callable[[Any], str] = str, retries: int = RETRIES,
              where: Callable[[int], str | None] | None = None
              ) -> Generator[tuple[int, Any], None, None]:
    """Run ``fn(item, *args)`` for each of ``items`` as a task on ``client``'s cluster and
    yield ``(index, result)`` as each finishes: every index exactly once, whatever the cluster
    loses on the way. ``args`` should be small (e.g. names from :func:`installed_on_workers`).

    A task whose worker dies is run again by the scheduler (up to its ``allowed-failures``);
    a task cancelled (e.g. a dependency or the client's connection lost) or failed with
    ``KilledWorker`` is submitted again, at most ``retries`` times, then a
    :class:`TaskLostError` names ``label(item)`` and the last cause. An exception raised by
    ``fn`` itself propagates unchanged (it would happen again). A result's future is released
    before it is yielded (its data leaves the worker); tasks still running when the generator
    is closed, or raises, are cancelled. Use it in ``contextlib.closing`` when the loop may
    stop early. ``where(i)``, if given, names a worker address item ``i`` should preferably
    run on (e.g. where an earlier task left its data in :func:`worker_scratch`); the cluster
    may still run it elsewhere (a loose restriction), which must give the same result."""
    distributed = require_distributed()
    from distributed import KilledWorker

    def submit(i: int) -> Any:
        home = where(i) if where is not None else None
        place: dict[str, Any] = {"workers": [home], "allow_other_workers": True} if home else {}
        return client.submit(fn, items[i], *args, pure=False,
                             key=f"{label(items[i])}-{uuid.uuid4().hex}", **place)

    index = {submit(i): i for i in range(len(items))}
    lost = [0] * len(items)
    pending = distributed.as_completed(list(index))
    try:
        for fut in pending:
            i = index.pop(fut)
            cause: BaseException | None = None
            if fut.status == "error" and isinstance(fut.exception(), KilledWorker):
                cause = fut.exception()
            elif fut.status == "cancelled":
                cause = CancelledError(f"cancelled: {fut.key}")
            else:
                try:
                    result = fut.result()        # fn's own exception propagates from here
                except CancelledError as e:      # lost between finishing and fetching
                    cause = e
            del fut                              # released: its result leaves the worker
            if cause is None:
                yield i, result
                del result
                continue
            lost[i] += 1
            if lost[i] > retries:
                raise TaskLostError(f"{label(items[i])}: lost {lost[i]} times on the Dask "
                                    f"cluster, giving up; last cause: "
                                    f"{type(cause).__name__}: {cause}") from cause
            new = submit(i)
            index[new] = i
            pending.add(new)
    finally:
        if index:
            client.cancel(list(index))


def _with_models(item: Any, fn: Callable[..., Any], name: str, threads: int | None,
                 *args: Any) -> Any:
    """Task of :func:`map_on_cluster`: ``fn(models, item, *args)`` with the models installed
    on this worker as ``name`` (unpickled once per worker thread), ``threads`` torch threads."""
    import torch

    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return fn(installed_object(name), item, *args)


@contextmanager
def models_on_workers(client: Any, models: Any
                      ) -> Iterator[Callable[..., Generator[tuple[int, Any], None, None]]]:
    """For the ``with`` block, ``models`` pickled once and installed on every worker of
    ``client``'s cluster (:func:`installed_on_workers`); yields ``run(fn, items, *args,
    label=str, threads=1, retries=RETRIES)``, which runs ``fn(models, item, *args)`` for each
    of ``items`` as tasks, like :func:`map_on_cluster` (several rounds of tasks share one
    installation)."""
    with installed_on_workers(client, pickle.dumps(models)) as name:
        def run(fn: Callable[..., Any], items: Sequence[Any], *args: Any,
                label: Callable[[Any], str] = str, threads: int | None = 1,
                retries: int = RETRIES) -> Generator[tuple[int, Any], None, None]:
            return run_tasks(client, _with_models, items, fn, name, threads, *args,
                             label=label, retries=retries)
        yield run


def map_on_cluster(client: Any, models: Any, fn: Callable[..., Any], items: Sequence[Any],
                   *args: Any, label: Callable[[Any], str] = str, threads: int | None = 1,
                   retries: int = RETRIES) -> Generator[tuple[int, Any], None, None]:
    """``fn(models, item, *args)`` for each of ``items`` as tasks on ``client``'s cluster,
    yielding ``(index, result)`` once per item as they finish (:func:`run_tasks`: lost tasks
    run again). ``models`` (e.g. ``(generator, segmenter)``) is pickled once and installed on
    every worker for as long as the generator runs (:func:`installed_on_workers`; unpickled
    once per worker thread), never sent with a task; ``fn`` must be importable on the workers
    (a module-level function) and each task sets ``threads`` torch threads (None: leave them).
    Close the generator (``contextlib.closing``) when the loop may stop early."""
    with models_on_workers(client, models) as run, \
            closing(run(fn, items, *args, label=label, threads=threads,
                        retries=retries)) as results:
        yield from results


def check_client(client: Any, what: str) -> None:
    """Raise a :class:`TypeError` unless ``client`` is None or looks like a
    ``distributed.Client`` (``what`` names the function that got it)."""
    if client is not None and not (type(client).__module__.startswith("distributed")
                                   and hasattr(client, "submit")
                                   and hasattr(client, "register_plugin")):
        raise TypeError(f"{what}: client= takes a distributed.Client, got "
                        f"{type(client).__name__}")


def client_threads(client: Any) -> int:
    """Worker threads the cluster of ``client`` has now (at least 1)."""
    return max(1, sum(client.nthreads().values()))
