"""What a dissection run has done and how it resumes: the finished sample ranges of a round,
their split into worker chunks of whole batches, the saved state (statistics and progress) and
the output folder's config check (see :mod:`gandissect.dissection.engine`).

The saved state (``state.safetensors``) carries a SHA-256 of its contents in its metadata
(:func:`_state_digest`); :func:`_load_state` refuses a state that fails it, or that is empty,
truncated or unreadable, with :class:`DissectStateError` (naming the file: delete it, or the
folder, to start again). A state saved before checksums existed is resumed unverified, with a
warning: it is as trustworthy as it was when that version wrote it, and refusing it would throw
away the run's progress.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import DissectConfig, DissectMismatchError, DissectStateError
from .folder import atomic_write_bytes, temp_path
from .layer_stats import _LayerState

Range = tuple[int, int]

#: metadata entry of a saved state holding :func:`_state_digest`
CHECKSUM_KEY = "sha256"


def _add_range(done: list[Range], a: int, b: int) -> list[Range]:
    """``done`` (sorted disjoint sample ranges ``[a, b)``) with ``[a, b)`` added, merged."""
    out: list[Range] = []
    for lo, hi in sorted([*done, (a, b)]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _gaps(done: list[Range], n: int) -> list[Range]:
    """The ranges of ``0..n-1`` not in ``done``."""
    out, s = [], 0
    for a, b in sorted(done):
        if a > s:
            out.append((s, a))
        s = max(s, b)
    return out + [(s, n)] if s < n else out


def _split(todo: list[Range], batch_size: int, parts: int) -> list[Range]:
    """Cut ``todo`` (ranges starting at multiples of ``batch_size``) into ``parts`` contiguous
    chunks of whole batches (fewer if there are fewer batches; more where a chunk would span a
    gap), as equal as can be: every chunk's batches are those of a one-process run."""
    batches = [(s, min(s + batch_size, b)) for a, b in todo for s in range(a, b, batch_size)]
    k = min(max(1, parts), len(batches))
    out: list[tuple[int, int, int]] = []                  # (start, stop, group)
    for i, (s, e) in enumerate(batches):
        group = i * k // len(batches)
        if out and out[-1][2] == group and out[-1][1] == s:
            out[-1] = (out[-1][0], e, group)
        else:
            out.append((s, e, group))
    return [(s, e) for s, e, _ in out]


def _state_digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """SHA-256 (hex) of a saved state: each tensor in key order (key, dtype, shape, then its
    bytes), then the other metadata entries (config, phase, finished ranges) in key order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    h.update(json.dumps(sorted((k, v) for k, v in meta.items() if k != CHECKSUM_KEY)).encode())
    return h.hexdigest()


def _save_state(path: Path, cfg: DissectConfig, phase: int, done: list[Range],
                layers: dict[str, _LayerState]) -> None:
    tensors = {f"{name}/{k}": v.contiguous().cpu()
               for name, st in layers.items() for k, v in st.state_dict().items()}
    meta = {"config": json.dumps(asdict(cfg)), "phase": str(phase),
            "done": json.dumps([list(r) for r in done])}
    meta[CHECKSUM_KEY] = _state_digest(tensors, meta)
    tmp = temp_path(path)
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_state(path: Path, cfg: DissectConfig
                ) -> tuple[int, list[Range], dict[str, torch.Tensor]]:
    """Phase, finished ranges and tensors of the state saved at ``path`` by a run of ``cfg``,
    checked against its checksum (see the module docstring)."""
    again = f"delete it (or the folder {path.parent}) to start the run again"
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:            # empty, truncated, not safetensors
        raise DissectStateError(f"the saved resume state {path} is damaged or incomplete "
                                f"({e}); {again}") from e
    if CHECKSUM_KEY not in meta:
        warnings.warn(f"the saved resume state {path} has no checksum (saved by an older "
                      f"gandissect); resuming from it unverified. If the result looks wrong, "
                      f"{again}", stacklevel=4)
    elif meta[CHECKSUM_KEY] != _state_digest(tensors, meta):
        raise DissectStateError(f"the saved resume state {path} fails its checksum (it changed "
                                f"or was damaged after it was saved); {again}")
    try:
        phase, done = _load_progress(meta)
        theirs = json.loads(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise DissectStateError(f"the saved resume state {path} has unreadable progress "
                                f"({e!r}); {again}") from e
    if theirs != json.loads(json.dumps(asdict(cfg))):
        raise DissectStateError(f"the saved resume state {path} belongs to a run with other "
                                f"arguments than {path.parent / 'config.json'}; {again}")
    return phase, done, tensors


def _load_progress(meta: dict[str, str]) -> tuple[int, list[Range]]:
    """Phase and sample ranges done in the current round, from a saved state's metadata."""
    if "done" in meta:
        return int(meta["phase"]), [(int(a), int(b)) for a, b in json.loads(meta["done"])]
    nxt = int(meta["next_sample"])                     # states saved before workers existed
    return int(meta["phase"]), [(0, nxt)] if nxt else []


def _check_folder(folder: Path, cfg: DissectConfig) -> None:
    cfg_path = folder / "config.json"
    mine = asdict(cfg)
    if cfg_path.exists():
        theirs = json.loads(cfg_path.read_text())
        for f in fields(DissectConfig):      # settings added since that run: their defaults
            if f.default is not MISSING:
                theirs.setdefault(f.name, json.loads(json.dumps(f.default)))
        if theirs != json.loads(json.dumps(mine)):
            diff = sorted(k for k in set(mine) | set(theirs) if json.loads(json.dumps(
                mine.get(k))) != theirs.get(k))
            raise DissectMismatchError(
                f"{folder} holds a dissection run with other arguments (differs in: "
                f"{', '.join(diff)}); use another output folder, or delete {folder} to start over")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cfg_path, json.dumps(mine, indent=1).encode())
