"""GANPaint app driven through gradio_client on a live server (planted model, exact), and
its bounds under many sessions: no mixing, capped history, capped image files."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import app
import segmenters
from gandissect.common.imaging import to_uint8
from gandissect.paint.canvas import decode_mask, mask_data_url
from gandissect.paint.painter import History

gradio_client = pytest.importorskip("gradio_client")
BUILD = {"samples": 100, "candidates": 8, "ace_samples": 8}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app on the planted model, launched on a free port (``demo.ganpaint_url``)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GANDISSECT_CACHE", str(tmp_path_factory.mktemp("cache")))
    demo = app.build_app("planted", "planted", "layout", **BUILD)
    demo.queue(default_concurrency_limit=2)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                quiet=True)
    demo.ganpaint_url = f"http://127.0.0.1:{port}/"
    try:
        yield demo
    finally:
        demo.close()
        mp.undo()


@pytest.fixture(scope="module")
def url(demo: Any) -> str:
    return str(demo.ganpaint_url)


def client(url: str) -> Any:
    # plain http: no TLS to verify (verifying loads the CA bundle on every request)
    return gradio_client.Client(url, verbose=False, ssl_verify=False)


def editor_value(tmp: Path, mask: np.ndarray, name: str) -> str:
    """The paint canvas's mask as the app receives it: an RGBA PNG data URL (painted = alpha
    255), 256 px."""
    return mask_data_url(mask)


def read(path: str) -> torch.Tensor:
    """A 256 px result image as the 64 px [1, 3, H, W] tensor in [-1, 1]."""
    arr = np.asarray(Image.open(path).convert("RGB"))[::app.SCALE, ::app.SCALE]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def tree_fraction(path: str, region: np.ndarray) -> float:
    seg = segmenters.load("planted")
    masks = seg.segment(read(path))[0, seg.label_index("tree")].numpy()
    return float(masks[region].mean())


def paint(c: Any, tmp: Path, seed: int, mask256: np.ndarray, mode: str, concept: str = "tree",
          name: str = "m") -> tuple[Any, ...]:
    return c.predict(editor_value(tmp, mask256, name), seed, concept, mode, 4, 1.0,
                     api_name="/paint")


def find_seed(c: Any, want_trees: bool, region: np.ndarray) -> tuple[int, str]:
    for seed in range(40):
        image = c.predict(seed, api_name="/image")[0]
        frac = tree_fraction(image, region)
        if (frac > 0.12) if want_trees else (frac < 0.1):
            return seed, image
    raise AssertionError("no suitable seed")


def test_remove_and_draw_trees(url: str, tmp_path: Path) -> None:
    c = client(url)
    region = np.zeros((64, 64), bool)
    region[16:48, 16:48] = True
    mask256 = np.kron(region, np.ones((4, 4), bool)).astype(bool)
    seed, before = find_seed(c, True, region)
    out = paint(c, tmp_path, seed, mask256, "remove")
    assert tree_fraction(out[0], region) < 0.5 * tree_fraction(before, region)
    assert "remove tree" in out[3]
    assert len(out[2]["data"]) == 1
    seed, before = find_seed(c, False, region)
    out = paint(c, tmp_path, seed, mask256, "draw")
    assert tree_fraction(out[0], region) > 0.7
    # undo restores the image, redo re-applies
    undone = c.predict(seed, api_name="/undo")
    assert np.array_equal(read(undone[0]), read(before))
    redone = c.predict(seed, api_name="/redo")
    assert np.array_equal(read(redone[0]), read(out[0]))


def test_empty_stroke_and_bad_units(url: str, tmp_path: Path) -> None:
    c = client(url)
    base = c.predict(3, api_name="/image")
    out = paint(c, tmp_path, 3, np.zeros((256, 256), bool), "remove")
    assert "empty stroke" in out[3]
    assert np.array_equal(read(out[0]), read(base[0]))
    odd = np.zeros((77, 301), bool)
    odd[10:40, 50:200] = True  # odd editor size: resized, not a crash
    out = paint(c, tmp_path, 3, odd, "remove", concept="sky", name="odd")
    assert "remove sky" in out[3]
    ed = editor_value(tmp_path, np.ones((256, 256), bool), "all")
    out = c.predict(ed, 3, "layout", "3, oops", "remove", 1.0, api_name="/paint_units")
    assert "whole numbers" in out[3]


def test_bad_masks_and_inputs_get_a_message(url: str, tmp_path: Path) -> None:
    """Nothing crashes the session: each bad input is said in the status, image unchanged."""
    c = client(url)
    base = c.predict(5, api_name="/image")
    for bad, says in (("data:image/png;base64,!!!", "could not read"),
                      ("data:image/png;base64,aGVsbG8=", "could not read"),
                      ("hello", "data URL")):
        out = c.predict(bad, 5, "tree", "draw", 4, 1.0, api_name="/paint")
        assert says in out[3], out[3]
        assert np.array_equal(read(out[0]), read(base[0]))
    full = np.ones((256, 256), bool)
    out = c.predict(mask_data_url(full), 5, "no-such", "draw", 4, 1.0, api_name="/paint")
    assert "no brush for concept" in out[3]
    out = c.predict(mask_data_url(full), 5, "tree", "draw", 4, 1.0, api_name="/paint")
    assert "stroke 1: draw tree" in out[3]
    assert [r[6] for r in out[2]["data"]] == ["layout"]  # the layer column


def test_two_clients_keep_separate_histories(url: str, tmp_path: Path) -> None:
    a, b = client(url), client(url)
    a.predict(1, api_name="/image")
    b.predict(2, api_name="/image")
    full = np.ones((256, 256), bool)
    out_a = paint(a, tmp_path, 1, full, "remove", concept="sky", name="a")
    out_b1 = paint(b, tmp_path, 2, full, "remove", concept="grass", name="b1")
    out_b2 = paint(b, tmp_path, 2, full, "remove", concept="sky", name="b2")
    assert [r[1] for r in out_a[2]["data"]] == ["sky"]
    assert [r[1] for r in out_b1[2]["data"]] == ["grass"]
    assert [r[1] for r in out_b2[2]["data"]] == ["grass", "sky"]
    assert [r[1] for r in a.predict(1, api_name="/undo")[2]["data"]] == []
    assert len(b.predict(2, api_name="/undo")[2]["data"]) == 1


def square(i: int) -> np.ndarray:
    """A 256 px mask: a square at a place of its own for each ``i``."""
    m = np.zeros((256, 256), bool)
    y, x = 24 + 40 * (i % 5), 24 + 36 * (i // 5 % 5)
    m[y:y + 72, x:x + 72] = True
    return m


def test_concurrent_sessions_never_mix(demo: Any, url: str) -> None:
    """Six sessions paint at once, each its own image, concepts and places; every answer shows
    that session's own image (equal to rendering its own strokes alone) and strokes, and the
    server did render them in shared forward passes."""
    painter = demo.ganpaint_job.painter
    assert demo.ganpaint_job.wait(600)
    concepts = painter.concepts
    n, steps = 6, 3
    plans = [[(concepts[(i + k) % len(concepts)], ("remove", "draw")[(i + k) % 2], square(i + k))
              for k in range(steps)] for i in range(n)]
    answers: list[list[Any]] = [[] for _ in range(n)]
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def user(i: int) -> None:
        try:
            c = client(url)
            seed = 20 + i
            start.wait()
            c.predict(seed, api_name="/image")
            for concept, mode, mask in plans[i]:
                answers[i].append(c.predict(mask_data_url(mask), seed, concept, mode, 4, 1.0,
                                            api_name="/paint"))
            answers[i].append(c.predict(seed, api_name="/undo"))
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)

    before = painter.batcher.largest
    threads = [threading.Thread(target=user, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(n):
        strokes = tuple(painter.stroke(c, m, decode_mask(mask_data_url(mask)), 4, 1.0)
                        for c, m, mask in plans[i])
        for k, out in enumerate(answers[i]):
            active = strokes[:k + 1] if k < steps else strokes[:steps - 1]  # last: undo
            want = to_uint8(painter.render_tensor(20 + i, active))[0]
            shown = np.asarray(Image.open(out[0]).convert("RGB"))[::app.SCALE, ::app.SCALE]
            assert np.array_equal(shown, want), f"session {i}, answer {k}: another image"
            canvas = decode_canvas(out[1]["src"])
            assert np.array_equal(canvas, want), f"session {i}, answer {k}: canvas"
            assert [r[1] for r in out[2]["data"]] == [c for c, _m, _x in plans[i]][:len(active)]
    print(f"\nlargest batch {painter.batcher.largest}, {painter.batcher.batches} batches of "
          f"{painter.batcher.items} images")
    assert max(before, painter.batcher.largest) > 1, "no forward pass was shared"


def decode_canvas(src: str) -> np.ndarray:
    import base64
    import io

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
                      .convert("RGB"))


def test_full_history_is_refused(demo: Any) -> None:
    """A history at its cap: the stroke is not applied, the status says why, the image and
    the history stay."""
    painter = demo.ganpaint_job.painter
    fns = {f.api_name: f for f in demo.fns.values()}
    mask = mask_data_url(square(0))
    strokes = tuple(painter.stroke("tree", "remove", decode_mask(mask), 4) for _ in range(2))
    full = History(strokes, 2, limit=2)
    with pytest.warns(UserWarning):
        out = fns["paint"].fn(mask, 4, "sky", "remove", 4, 1.0, full, "")
    assert out[2] is full and "not applied: at most 2 strokes" in out[4]
    assert np.array_equal(np.asarray(Image.open(out[0]))[::app.SCALE, ::app.SCALE],
                          painter.render(4, strokes))


def test_image_files_stay_bounded(demo: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With room for 4 files, 10 images sent: 4 files stay in the app's folder (inside
    Gradio's cache, so never copied), and Gradio forgets the removed ones."""
    monkeypatch.setattr(app, "MAX_FILES", 4)
    small = app.build_app(painter=demo.ganpaint_job.painter)
    files = small.ganpaint_files
    fns = {f.api_name: f for f in small.fns.values()}
    from gradio.state_holder import SessionState

    state = SessionState(small)

    async def run() -> list[str]:
        sent = []
        for seed in range(10):
            out = await small.process_api(fns["image"], [seed, None, ""], state=state)
            sent.append(out["data"][0]["path"])
        return sent

    try:
        sent = asyncio.run(run())
        on_disk = sorted(str(p) for p in files.folder.iterdir())
        assert on_disk == sorted(sent[-4:]) and len(files) == 4
        remembered = {f for fs in small.temp_file_sets for f in fs
                      if f.startswith(str(files.folder))}
        assert remembered == set(sent[-4:])
        assert Path(files.folder).parent == Path(small.GRADIO_CACHE)
    finally:
        small.ganpaint_job.stop(120)
        files.close()
