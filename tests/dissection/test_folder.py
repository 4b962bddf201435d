"""The output folder: one run at a time (an exclusive lock naming the holder's PID, released
when a run ends or raises, also with workers), unique temporary names for every atomic write,
and dead runs' temporaries removed when the lock is taken."""

from __future__ import annotations

import fcntl
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import Interrupt, TinyGenerator, TinySegmenter

from gandissect.dissection import folder as folder_mod
from gandissect.dissection.config import DissectLockedError
from gandissect.dissection.engine import dissect
from gandissect.dissection.folder import LOCK_NAME, locked, remove_stale_temps, temp_path

torch.set_num_threads(1)

KW: dict[str, Any] = dict(samples=40, seed=3, batch_size=10)


def run(out: Path, **kw: Any) -> Any:
    return dissect(TinyGenerator(), TinySegmenter(), ["a", "b"], out=out, **{**KW, **kw})


def is_free(folder: Path) -> bool:
    """Nobody holds ``folder``'s lock (tried as another process would: a new descriptor)."""
    fd = os.open(folder / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_folder_locked_by_another_process_is_refused(tmp_path: Path) -> None:
    """The lock as another process holds it (its own descriptor, its PID in the file)."""
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        with pytest.raises(DissectLockedError, match=r"in use by another dissection run "
                                                     r"\(PID 4242\)"):
            run(tmp_path)
        assert not (tmp_path / "config.json").exists()            # nothing touched
    finally:
        os.close(fd)                                               # the other run ends
    assert run(tmp_path)["b"].iou.shape == (6, 4)


def test_second_run_while_the_first_runs_is_refused(tmp_path: Path) -> None:
    """A run paused in its first batch holds the folder; a second run into it is refused with
    the first's PID; once the first ends, the second runs (and reuses its results)."""
    paused, resume = threading.Event(), threading.Event()
    first: dict[str, Any] = {}

    def pause(phase: int, done: int) -> None:
        paused.set()
        assert resume.wait(60)

    thread = threading.Thread(target=lambda: first.update(run(tmp_path, on_batch=pause)))
    thread.start()
    try:
        assert paused.wait(60)
        with pytest.raises(DissectLockedError, match=rf"\(PID {os.getpid()} \(this process\)\)"):
            run(tmp_path)
        assert not is_free(tmp_path)
    finally:
        resume.set()
        thread.join(60)
    assert first and is_free(tmp_path)
    again = run(tmp_path)
    assert (again["b"].iou == first["b"].iou).all()


@pytest.mark.parametrize("how", ["one process", "thread pool", "spawned workers"])
def test_lock_is_released_when_a_run_raises(tmp_path: Path, how: str) -> None:
    def kill(phase: int, done: int) -> None:
        raise Interrupt
    with ThreadPoolExecutor(2) as pool:
        options: dict[str, dict[str, Any]] = {
            "one process": {}, "thread pool": {"executor": pool}, "spawned workers": {"workers": 2}}
        kw = options[how]
        with pytest.raises(Interrupt):
            run(tmp_path, on_batch=kill, checkpoint_seconds=0.0, **kw)
    assert is_free(tmp_path)
    run(tmp_path)                                      # resumes, in this process
    assert is_free(tmp_path) and (tmp_path / "results.json").exists()


def test_stale_temporaries_are_removed_when_the_lock_is_taken(tmp_path: Path) -> None:
    dead = 99_999_999                          # above any pid_max: no such process
    stale = [".state.safetensors.tmp", f".results.json.tmp{dead}-0a1b2c3d",
             f".a.safetensors.tmp{dead}", f".config.json.tmp{dead}-ff"]
    alive = [f".results.json.tmp{os.getpid()}-12345678", "notes.tmp", ".tmpfile", "a.tmp1-x"]
    for name in stale + alive:
        (tmp_path / name).write_bytes(b"x")
    with locked(tmp_path):
        left = {p.name for p in tmp_path.iterdir()}
    assert left == set(alive) | {LOCK_NAME}
    assert remove_stale_temps(tmp_path) == []


def test_every_atomic_write_has_its_own_temporary(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every save of a run (state checkpoints after each batch, results, config) goes through
    a temporary of its own, which names this process, and none is left behind."""
    sources: list[str] = []
    real = os.replace

    def spy(src: Any, dst: Any) -> None:
        sources.append(Path(src).name)
        real(src, dst)
    monkeypatch.setattr(os, "replace", spy)
    monkeypatch.setattr(Path, "replace", lambda self, dst: spy(self, dst))
    run(tmp_path, checkpoint_seconds=0.0)
    assert len(sources) > 10 and len(set(sources)) == len(sources)
    assert all(f".tmp{os.getpid()}-" in s for s in sources)
    assert sum(s.startswith(".state.safetensors.tmp") for s in sources) >= 8
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_temp_path_is_unique_and_a_new_file(tmp_path: Path) -> None:
    names = {temp_path(tmp_path / "x.json") for _ in range(100)}
    assert len(names) == 100 and all(p.is_file() and p.stat().st_size == 0 for p in names)


def test_without_fcntl_runs_are_not_locked(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Where there is no fcntl (Windows) the folder is still made and nothing is removed."""
    monkeypatch.setattr(folder_mod, "fcntl", None)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".state.safetensors.tmp").write_bytes(b"x")
    with locked(tmp_path / "out"), locked(tmp_path / "out"):
        pass
    with locked(tmp_path / "new"):
        assert (tmp_path / "new").is_dir()
    assert (tmp_path / "out" / ".state.safetensors.tmp").exists()
