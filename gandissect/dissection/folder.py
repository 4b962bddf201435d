"""A dissection run's output folder: an exclusive lock held for the run's duration
(:func:`locked`), atomic writes through temporary files with unique names (:func:`temp_path`,
:func:`atomic_write_bytes`), and removal of the temporaries that dead runs left behind.

The lock is ``fcntl.flock`` on ``<folder>/.lock`` (non-blocking; the file holds the holder's
PID, and stays when the run ends). Where ``fcntl`` does not exist (Windows) or the file system
refuses ``flock``, runs are not locked (a warning says so in the second case).
"""

from __future__ import annotations

import os
import re
import secrets
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .config import DissectLockedError

try:
    import fcntl
except ImportError:                                       # Windows: no lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "atomic_write_bytes", "locked", "remove_stale_temps", "temp_path"]

LOCK_NAME = ".lock"
#: temporaries of atomic writes: ``.<name>.tmp<pid>-<random>`` (and the older ``.<name>.tmp``
#: and ``.<name>.tmp<pid>``)
_TEMP = re.compile(r"^\..+\.tmp(\d*)(?:-[0-9a-f]+)?$")


def temp_path(path: Path) -> Path:
    """A new empty file beside ``path``, named ``.<name>.tmp<pid>-<random>``, for an atomic
    write of ``path``: no two writes (of any thread or process) share it. Created like any
    file (mode 0o666 less the umask), so the file it replaces keeps the usual permissions."""
    while True:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)                                   # POSIX only: signal 0 just checks
    except ProcessLookupError:
        return False
    except PermissionError:                               # exists, owned by another user
        return True
    except OverflowError:
        return False
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the atomic-write temporaries in ``folder`` whose writer is gone (its PID is not a
    live process, or the name has no PID); return them. Call it only under the lock."""
    if fcntl is None:                     # no lock to rely on, and os.kill(pid, 0) would kill
        return []
    removed = []
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m and p.is_file() and not (m.group(1) and _alive(int(m.group(1)))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _holder(fd: int) -> str:
    """The PID written in a lock file, as text (``unknown`` while it is being written)."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    if not text.isdigit():
        return "unknown"
    return f"{text} (this process)" if int(text) == os.getpid() else text


@contextmanager
def locked(folder: Path | None) -> Iterator[None]:
    """Hold ``folder``'s exclusive lock (creating the folder) until the block ends or raises,
    with stale temporaries removed first; :class:`DissectLockedError` naming the holder's PID
    if another run holds it. ``None``: no folder, nothing to lock."""
    if folder is None or fcntl is None:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            raise DissectLockedError(
                f"{folder} is in use by another dissection run (PID {_holder(fd)}); wait for "
                f"it to end, or give another output folder") from None
        except OSError as e:                              # e.g. a file system without flock
            warnings.warn(f"cannot lock {folder / LOCK_NAME} ({e}); running without a lock: "
                          f"do not start another run into {folder}", stacklevel=4)
            held = False
        if not held:
            yield
            return
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            remove_stale_temps(folder)
            yield
        finally:
            # explicit unlock: also releases it where forked children share the descriptor
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
