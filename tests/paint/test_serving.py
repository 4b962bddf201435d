"""Serving many users: batched renders equal unbatched ones, concurrent requests get their own
images, and what is kept (history, rendered images, image files) is bounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import models
from gandissect.common.imaging import to_uint8
from gandissect.paint.painter import (
    MAX_STROKES,
    History,
    HistoryFullError,
    Painter,
    Stroke,
)
from gandissect.paint.serving import LRU, Batcher, ImageFiles


def strokes_for(painter: Painter, seed: int, count: int) -> tuple[Stroke, ...]:
    """``count`` random strokes (draw and remove, random units and masks) of ``seed``."""
    n, h, w = painter.layer_shape()
    rng = np.random.Generator(np.random.PCG64(seed))
    out = []
    for k in range(count):
        units = tuple(int(u) for u in rng.choice(n, 4, replace=False))
        mask = (rng.random((h, w)) > 0.4).astype(np.float32)
        values = tuple(float(v) for v in 2 + 3 * rng.random(4))
        out.append(Stroke("x", ("draw", "remove")[k % 2], painter.layer, units, values,
                          float(rng.uniform(0.5, 1.0)), 4, mask))
    return tuple(out)


def items_for(painter: Painter, count: int) -> list[tuple[int, tuple[Stroke, ...]]]:
    """Distinct requests: seeds 3k, k % 4 strokes each."""
    return [(3 * k, strokes_for(painter, k, k % 4)) for k in range(count)]


@pytest.fixture(scope="module")
def planted(gen: Any) -> Painter:
    return Painter(gen, layer="layout")


def test_batched_render_equals_each_alone_planted(planted: Painter) -> None:
    """The planted generator's ops do not depend on the batch: bit for bit."""
    items = items_for(planted, 6)
    batch = planted.render_batch(items)
    alone = torch.cat([planted.render_batch([item]) for item in items])
    assert torch.equal(batch, alone)
    assert not torch.equal(batch[1], planted.render_tensor(3))  # the strokes did act


def test_batched_render_equals_each_alone_toyworld() -> None:
    """The bundled GAN's batched convolutions round differently: equal within float
    tolerance, and the uint8 images within one level."""
    painter = Painter(models.load("toyworld"), layer="layer4")
    items = items_for(painter, 5)
    batch = painter.render_batch(items)
    alone = torch.cat([painter.render_tensor(seed, strokes) for seed, strokes in items])
    assert float((batch - alone).abs().max()) < 1e-4
    levels = np.abs(to_uint8(batch).astype(int) - to_uint8(alone).astype(int))
    assert levels.max() <= 1 and (levels > 0).mean() < 1e-3
    plain = painter.render_tensor(items[2][0])
    assert float((alone[2:3] - plain).abs().max()) > 0.1  # the strokes did act


def test_concurrent_requests_get_their_own_images(gen: Any) -> None:
    """Eight threads ask at once; their renders share forward passes (a wide window makes
    sure), and each gets exactly the image of its own request."""
    painter = Painter(gen, layer="layout")
    painter.batcher.window = 0.3
    items = items_for(painter, 8)
    expected = [to_uint8(painter.render_batch([item]))[0] for item in items]
    got: list[Any] = [None] * len(items)
    start = threading.Barrier(len(items))

    def user(i: int) -> None:
        start.wait()
        got[i] = painter.render_many([items[i]])[0]

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert painter.batcher.largest > 1, "no batch formed"
    assert painter.batcher.batches < len(items)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert np.array_equal(g, e), f"request {i} got another image"
    assert not any(np.shares_memory(got[0], g) for g in got[1:])  # the cache weighs each
    # rendered once: asking again is a cache hit (the same, read-only array)
    again = painter.render_many([items[3]])[0]
    assert again is got[3] and not again.flags.writeable


def test_render_cache_is_bounded(gen: Any) -> None:
    one = 64 * 64 * 3
    painter = Painter(gen, layer="layout", cache_bytes=3 * one)
    for seed in range(10):
        painter.render(seed)
    assert len(painter.cache) == 3 and painter.cache.nbytes == 3 * one
    assert [k[0] for k in painter.cache.keys()] == [7, 8, 9]


def test_stroke_keys_follow_content(planted: Painter) -> None:
    a, b = strokes_for(planted, 1, 2)
    same = Stroke(a.label, a.mode, a.layer, a.units, a.replacement, a.alpha, a.strength,
                  a.mask.copy())
    assert same.key == a.key and a.key != b.key
    moved = Stroke(a.label, a.mode, a.layer, a.units, a.replacement, a.alpha, a.strength,
                   np.roll(a.mask, 1, axis=0))
    assert moved.key != a.key
    assert a.edit() is a.edit()  # made once


def test_history_cap(planted: Painter) -> None:
    s = strokes_for(planted, 2, 3)
    h = History(limit=2).push(s[0]).push(s[1])
    assert h.full
    with pytest.raises(HistoryFullError, match="at most 2 strokes"):
        h.push(s[2])
    after_undo = h.undo().push(s[2])  # the undone stroke goes, the new one fits
    assert after_undo.active == (s[0], s[2]) and after_undo.limit == 2
    assert h.reset().limit == 2 and History().limit == MAX_STROKES
    with pytest.raises(ValueError, match="limit 1"):
        History(s[:2], 2, limit=1)
    with pytest.raises(ValueError, match="position 5"):
        History(s[:2], 5)


def test_batcher_batches_whole_calls_in_order() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()

    def fn(xs: list[int]) -> list[int]:
        seen.append(list(xs))
        gate.wait(5)
        return [10 * x for x in xs]

    b: Batcher[int, int] = Batcher(fn, max_batch=5, window=0.0)
    results: dict[int, list[int]] = {}

    def call(i: int, xs: list[int]) -> None:
        results[i] = b(xs)

    first = threading.Thread(target=call, args=(0, [0]))
    first.start()
    while not seen:  # the first batch is running: the next calls queue behind it
        time.sleep(0.01)
    others = [threading.Thread(target=call, args=(i, [i, i + 100])) for i in (1, 2, 3)]
    for t in others:
        t.start()
    while b._queued < 6:
        time.sleep(0.01)
    gate.set()
    for t in [first, *others]:
        t.join()
    assert results == {i: [10 * i, 10 * (i + 100)] for i in (1, 2, 3)} | {0: [0]}
    assert seen[0] == [0] and len(seen) == 3  # [0], then two calls (4 items), then one
    assert sorted(len(s) for s in seen[1:]) == [2, 4] and b.largest == 4
    assert b(list(range(9))) == [10 * x for x in range(9)]  # bigger than a batch: alone
    assert b([]) == []


def test_batcher_isolates_a_failing_call() -> None:
    def fn(xs: list[int]) -> list[int]:
        time.sleep(0.05)
        if any(x < 0 for x in xs):
            raise ValueError(f"negative in {xs}")
        return [x + 1 for x in xs]

    b: Batcher[int, int] = Batcher(fn, max_batch=8, window=0.2)
    out: dict[int, Any] = {}

    def call(x: int) -> None:
        try:
            out[x] = b([x])
        except ValueError as e:
            out[x] = e

    threads = [threading.Thread(target=call, args=(x,)) for x in (1, -1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[1] == [2] and out[2] == [3] and out[3] == [4]
    assert isinstance(out[-1], ValueError) and "[-1]" in str(out[-1])
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(fn, max_batch=0)


def test_lru_limits_and_eviction() -> None:
    gone: list[tuple[str, bytes]] = []
    c: LRU[str, bytes] = LRU(max_items=10, max_bytes=10, size=len,
                             on_evict=lambda k, v: gone.append((k, v)))
    c.put("a", b"1234")
    c.put("b", b"1234")
    assert c.get("a") == b"1234"  # a is now the most recent
    c.put("c", b"1234")  # 12 bytes > 10: b goes
    assert gone == [("b", b"1234")] and c.keys() == ["a", "c"] and c.nbytes == 8
    c.put("big", b"x" * 50)  # alone above the limit: kept, everything else goes
    assert c.keys() == ["big"] and "a" not in c and len(c) == 1
    with pytest.raises(ValueError, match="max_items"):
        LRU(max_items=0)


def test_image_files_are_bounded(tmp_path: Path) -> None:
    removed: list[str] = []
    files = ImageFiles(tmp_path, max_files=3, on_remove=removed.append)
    images = [np.full((4, 4, 3), i, np.uint8) for i in range(6)]
    first = files.path(images[0])
    assert files.path(images[0].copy()) == first  # same content, same file
    paths = [files.path(im) for im in images[1:]]
    on_disk = sorted(str(p) for p in files.folder.iterdir())
    assert on_disk == sorted(paths[-3:]) and len(files) == 3
    assert removed == [first, paths[0], paths[1]]
    assert not Path(first).exists()
    again = files.path(images[0])  # asked again after removal: written anew
    assert Path(again).is_file() and again != first
    Path(again).unlink()  # removed behind its back (e.g. by a cache sweep): written anew
    assert Path(files.path(images[0])).is_file()
    files.close()
    assert not files.folder.exists()
