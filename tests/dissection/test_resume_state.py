"""The saved resume state is verified: a damaged, truncated or empty ``state.safetensors`` is
refused with a clear error naming the file; a state without a checksum (saved before there were
checksums) resumes with a warning; an intact one resumes to the uninterrupted result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny import Interrupt, TinyGenerator, TinySegmenter

from gandissect.dissection.config import DissectStateError
from gandissect.dissection.engine import dissect
from gandissect.dissection.progress import CHECKSUM_KEY

torch.set_num_threads(1)

KW: dict[str, Any] = dict(samples=100, seed=9, batch_size=20)


def killed_run(folder: Path, stop_at: tuple[int, int] = (1, 40)) -> Path:
    """Dissect the tiny model into ``folder``, killed after ``stop_at`` (pass, samples done);
    the saved state's path."""
    def kill(phase: int, done: int) -> None:
        if (phase, done) == stop_at:
            raise Interrupt
    with pytest.raises(Interrupt):
        dissect(TinyGenerator(), TinySegmenter(), ["a", "b"], out=folder, checkpoint_seconds=0.0,
                on_batch=kill, **KW)
    path = folder / "state.safetensors"
    assert path.is_file()
    return path


def resume(folder: Path) -> Any:
    return dissect(TinyGenerator(), TinySegmenter(), ["a", "b"], out=folder, **KW)


def data_offset(path: Path) -> int:
    """Where a safetensors file's tensor data starts (after the 8-byte length and header)."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_flipped_byte_in_tensor_data_is_refused(tmp_path: Path, where: float) -> None:
    path = killed_run(tmp_path)
    data = bytearray(path.read_bytes())
    start = data_offset(path)
    data[start + int(where * (len(data) - start))] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DissectStateError, match="fails its checksum") as e:
        resume(tmp_path)
    assert str(path) in str(e.value) and "delete it" in str(e.value)


def test_changed_progress_in_metadata_is_refused(tmp_path: Path) -> None:
    """The checksum covers the metadata too: a state claiming more finished samples than it
    holds is refused."""
    path = killed_run(tmp_path)
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert json.loads(meta["done"]) == [[0, 40]]
    meta["done"] = json.dumps([[0, 80]])
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(DissectStateError, match="fails its checksum"):
        resume(tmp_path)


@pytest.mark.parametrize("keep", [0, 5, 100, -7])
def test_empty_or_truncated_state_is_refused(tmp_path: Path, keep: int) -> None:
    path = killed_run(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(DissectStateError, match="damaged or incomplete") as e:
        resume(tmp_path)
    assert str(path) in str(e.value) and str(tmp_path) in str(e.value)


def test_state_of_another_run_is_refused(tmp_path: Path) -> None:
    """A (verified) state copied from a run with other arguments is not resumed."""
    path = killed_run(tmp_path / "one")
    other = tmp_path / "two"
    dissect(TinyGenerator(), TinySegmenter(), ["a", "b"], out=other, samples=100, seed=10,
            batch_size=20)
    (other / "state.safetensors").write_bytes(path.read_bytes())
    with pytest.raises(DissectStateError, match="other arguments"):
        dissect(TinyGenerator(), TinySegmenter(), ["a", "b"], out=other, samples=100, seed=10,
                batch_size=20)


@pytest.mark.parametrize("stop_at", [(1, 40), (2, 60)])
def test_intact_state_resumes_to_uninterrupted_result(tmp_path: Path,
                                                      stop_at: tuple[int, int]) -> None:
    full = dissect(TinyGenerator(), TinySegmenter(), ["a", "b"], **KW)
    path = killed_run(tmp_path, stop_at)
    with safe_open(str(path), "pt") as f:
        assert len(f.metadata()[CHECKSUM_KEY]) == 64
    resumed = resume(tmp_path)
    for layer in ["a", "b"]:
        for key in ["thresholds", "iou", "intersection", "above", "topk_indices"]:
            assert np.array_equal(getattr(full[layer], key), getattr(resumed[layer], key))


def test_state_without_checksum_resumes_with_a_warning(tmp_path: Path) -> None:
    """A state saved before checksums existed is accepted (unverified) with a warning that
    names the file, and resumes to the uninterrupted result."""
    full = dissect(TinyGenerator(), TinySegmenter(), ["a", "b"], **KW)
    path = killed_run(tmp_path)
    with safe_open(str(path), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != CHECKSUM_KEY}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata=meta)
    with pytest.warns(UserWarning, match="no checksum") as w:
        resumed = resume(tmp_path)
    assert str(path) in str(w[0].message)
    assert np.array_equal(full["b"].iou, resumed["b"].iou)
