"""Serving many users with one painter: render requests of concurrent threads share forward
passes (:class:`Batcher`), and what is kept for them is bounded (:class:`LRU` for rendered
images, :class:`ImageFiles` for the PNG files a web page fetches).

A :class:`Batcher` turns ``fn(items) -> results`` (one call per batch) into a blocking call that
many threads may make at once: the first caller becomes the *leader*, waits ``window`` seconds
(or until ``max_batch`` items are queued) and runs everything queued as one batch; the others
wait for their results. Calls that arrive while a batch runs form the next batch, so under load
batches fill by themselves. The items of one call always run in the same batch, in order.

>>> seen = []
>>> double = Batcher(lambda xs: seen.append(len(xs)) or [2 * x for x in xs], max_batch=8)
>>> double([1, 2, 3]), seen
([2, 4, 6], [3])
>>> cache = LRU(max_items=2)
>>> cache.put("a", 1); cache.put("b", 2); _ = cache.get("a"); cache.put("c", 3)
>>> sorted(cache.keys())
['a', 'c']
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from PIL import Image

from ..intervention.edit import Edit

#: Most images of concurrent requests a painter renders in one forward pass.
MAX_BATCH = 16
#: Bytes of rendered images a painter keeps for reuse (undo, the image before a stroke,
#: thumbnails): some 680 images of 64 px, a few for each of hundreds of users.
CACHE_BYTES = 8 * 2 ** 20

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")
R = TypeVar("R")


class LRU(Generic[K, V]):
    """A thread-safe mapping of at most ``max_items`` entries and ``max_bytes`` bytes (each
    value weighs ``size(value)``); a put beyond either drops the least recently used entries
    (never the one just put), calling ``on_evict(key, value)`` for each."""

    def __init__(self, max_items: int, max_bytes: int | None = None,
                 size: Callable[[V], int] | None = None,
                 on_evict: Callable[[K, V], None] | None = None) -> None:
        if max_items < 1 or (max_bytes is not None and max_bytes < 1):
            raise ValueError(f"an LRU needs max_items >= 1 and max_bytes >= 1 (or None), got "
                             f"{max_items} and {max_bytes}")
        self.max_items, self.max_bytes = int(max_items), max_bytes
        self._size = size or (lambda _v: 0)
        self._on_evict = on_evict
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return None
            self._data.move_to_end(key)
            return hit[0]

    def put(self, key: K, value: V) -> None:
        """Store ``value`` under ``key`` (replacing any), then evict down to the limits."""
        weight = int(self._size(value))
        evicted: list[tuple[K, V]] = []
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._data[key] = (value, weight)
            self._bytes += weight
            while len(self._data) > 1 and (len(self._data) > self.max_items or (
                    self.max_bytes is not None and self._bytes > self.max_bytes)):
                k, (v, w) = self._data.popitem(last=False)
                self._bytes -= w
                evicted.append((k, v))
        if self._on_evict is not None:
            for k, v in evicted:
                self._on_evict(k, v)

    def pop(self, key: K) -> V | None:
        """Remove ``key`` (no ``on_evict``); its value, or None."""
        with self._lock:
            hit = self._data.pop(key, None)
            if hit is None:
                return None
            self._bytes -= hit[1]
            return hit[0]

    def keys(self) -> list[K]:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._data)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data


class _Ticket(Generic[T, R]):
    """One call's items and, once its batch ran, their results or the error."""

    def __init__(self, items: list[T]) -> None:
        self.items = items
        self.results: list[R] = []
        self.error: BaseException | None = None
        self.done = False


class Batcher(Generic[T, R]):
    """Runs ``fn`` on batches of the items that threads pass to concurrent calls.

    ``fn(items)`` must return one result per item, in order, and give each item the result it
    would get alone. A batch holds whole calls, at most ``max_batch`` items (a larger call runs
    alone). When a batch of several calls fails, each call is run again alone, so one bad
    request fails only its own caller. ``batches`` and ``items`` count what ran (statistics).
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], max_batch: int = 16,
                 window: float = 0.002) -> None:
        if max_batch < 1 or window < 0:
            raise ValueError(f"max_batch must be >= 1 and window >= 0, got {max_batch}, "
                             f"{window}")
        self.fn, self.max_batch, self.window = fn, int(max_batch), float(window)
        self._cond = threading.Condition()
        self._queue: list[_Ticket[T, R]] = []
        self._queued = 0
        self._busy = False
        self.batches = 0
        self.items = 0
        self.largest = 0

    def __call__(self, items: Sequence[T]) -> list[R]:
        """The results of ``items`` (blocks until their batch has run); raises ``fn``'s error."""
        ticket: _Ticket[T, R] = _Ticket(list(items))
        if not ticket.items:
            return []
        with self._cond:
            self._queue.append(ticket)
            self._queued += len(ticket.items)
            self._cond.notify_all()  # a leader waiting for a full batch counts again
            while not ticket.done and self._busy:
                self._cond.wait()
            leader = not ticket.done
            if leader:
                self._busy = True
        if leader:
            try:
                while not ticket.done:
                    self._run(self._take())
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        if ticket.error is not None:
            raise ticket.error
        return ticket.results

    def _take(self) -> list[_Ticket[T, R]]:
        """The next batch: queued calls in arrival order, after waiting up to ``window``."""
        with self._cond:
            if self.window > 0:
                self._cond.wait_for(lambda: self._queued >= self.max_batch, self.window)
            batch: list[_Ticket[T, R]] = []
            n = 0
            while self._queue and (not batch or n + len(self._queue[0].items) <= self.max_batch):
                t = self._queue.pop(0)
                batch.append(t)
                n += len(t.items)
            self._queued -= n
            self.batches += 1
            self.items += n
            self.largest = max(self.largest, n)
            return batch

    def _run(self, batch: list[_Ticket[T, R]]) -> None:
        try:
            self._call(batch)
            if any(t.error is not None for t in batch) and len(batch) > 1:
                for t in batch:  # isolate the failing call: everyone else still gets results
                    t.error = None
                    self._call([t])
        finally:
            with self._cond:
                for t in batch:
                    if not t.results and t.error is None:
                        t.error = RuntimeError("the batch was interrupted")
                    t.done = True
                self._cond.notify_all()

    def _call(self, batch: list[_Ticket[T, R]]) -> None:
        flat = [item for t in batch for item in t.items]
        try:
            out = list(self.fn(flat))
            if len(out) != len(flat):
                raise RuntimeError(f"the batch function returned {len(out)} results for "
                                   f"{len(flat)} items")
        except Exception as exc:  # noqa: BLE001 - handed to the callers
            for t in batch:
                t.error = exc
            return
        start = 0
        for t in batch:
            t.results, t.error = out[start:start + len(t.items)], None
            start += len(t.items)


def per_sample_edit(edits: Sequence[Sequence[Edit]]) -> Callable[[str, torch.Tensor],
                                                                  torch.Tensor]:
    """A :class:`~gandissect.common.hooks.Trace` edit function that applies to sample ``i``
    alone those of ``edits[i]`` that are on the hooked layer (in order, each by
    :meth:`Edit.apply`): every sample is edited exactly as in a batch of its own, at the cost
    of its own edits only."""
    def edit(name: str, output: torch.Tensor) -> torch.Tensor:
        if output.shape[0] != len(edits):
            raise ValueError(f"{len(edits)} lists of edits for a batch of {output.shape[0]}")
        parts = []
        for i, sample_edits in enumerate(edits):
            x = output[i:i + 1]
            for e in sample_edits:
                if e.layer == name:
                    x = e.apply(x)
            parts.append(x)
        return torch.cat(parts)
    return edit


class ImageFiles:
    """PNG files of images, one per content hash (written completely before their path is
    handed out, never rewritten: a browser may be reading them), at most ``max_files``: writing
    one more removes the least recently handed out and calls ``on_remove(path)`` (e.g. to let a
    web server forget it). :meth:`close` removes the folder."""

    def __init__(self, folder: str | Path | None = None, max_files: int = 512,
                 on_remove: Callable[[str], None] | None = None) -> None:
        root = Path(folder) if folder is not None else None
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="ganpaint-", dir=root))
        self._on_remove = on_remove
        self._files: LRU[str, str] = LRU(max_files, on_evict=self._remove)

    def _remove(self, _digest: str, path: str) -> None:
        Path(path).unlink(missing_ok=True)
        if self._on_remove is not None:
            self._on_remove(path)

    def path(self, image: np.ndarray) -> str:
        """The path of a PNG of uint8 ``image`` (``[H, W]`` or ``[H, W, C]``)."""
        arr = np.ascontiguousarray(image, dtype=np.uint8)
        digest = hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:32]
        path = self._files.get(digest)
        if path is None or not os.path.exists(path):  # new, or removed behind our back
            # a fresh name per write: removing an evicted copy never touches a newer one
            fd, path = tempfile.mkstemp(dir=self.folder, prefix=f"{digest}-", suffix=".png")
            with os.fdopen(fd, "wb") as f:
                Image.fromarray(arr).save(f, format="PNG")
            self._files.put(digest, path)
        return path

    def __len__(self) -> int:
        return len(self._files)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> ImageFiles:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
