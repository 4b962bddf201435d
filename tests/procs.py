"""Processes from ``/proc`` (Linux; psutil is not a dependency), for the tests that kill a run
and check that it leaves no process behind, and :func:`released` for the Dask tests
(importable as ``procs``, like ``tiny``)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

HAVE_PROC = Path("/proc/self/stat").exists()


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process from ``/proc/PID/stat``; None if it is gone or
    a zombie (dead, waiting to be reaped)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text[text.rindex(")") + 2:].split()[:2]
    return None if state in "ZX" else (state, int(ppid))


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def children_of(parent: int) -> set[int]:
    """The live child processes of ``parent``."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := proc_stat(int(entry.name))) and st[1] == parent:
            out.add(int(entry.name))
    return out


def wait_gone(pids: set[int], seconds: float) -> set[int]:
    """The ``pids`` still alive after waiting up to ``seconds`` for all of them to end."""
    end = time.monotonic() + seconds
    while (alive := {p for p in pids if proc_stat(p) is not None}) and time.monotonic() < end:
        time.sleep(0.1)
    return alive


def kill9(proc: subprocess.Popen[str]) -> None:
    """SIGKILL ``proc`` and reap it."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def released(client: object, seconds: float = 60.0) -> bool:
    """The Dask ``client``'s cluster holds no data within ``seconds`` (a finished run's results
    are released asynchronously, after the call returned)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not any(client.has_what().values()):  # type: ignore[attr-defined]
            return True
        time.sleep(0.2)
    return False
