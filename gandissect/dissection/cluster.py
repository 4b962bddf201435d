"""Dask clusters for ``dissect(..., client=...)``: a local cluster started for one run
(``local:N``) or a running cluster reached through its scheduler's address; what
``gandissect dissect --cluster`` and ``--scheduler`` use.

Needs the optional ``distributed`` package (``pip install 'gandissect[dask]'``), imported only
here and only when a cluster is asked for.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
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
        with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
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
