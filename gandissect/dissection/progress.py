"""What a dissection run has done and how it resumes: the finished sample ranges of a round,
their split into worker chunks of whole batches, the saved state (statistics and progress) and
the output folder's config check (see :mod:`gandissect.dissection.engine`)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import save_file

from .config import DissectConfig, DissectMismatchError
from .layer_stats import _LayerState
from .results import atomic_write_bytes

Range = tuple[int, int]


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


def _save_state(path: Path, cfg: DissectConfig, phase: int, done: list[Range],
                layers: dict[str, _LayerState]) -> None:
    tensors = {f"{name}/{k}": v.contiguous().cpu()
               for name, st in layers.items() for k, v in st.state_dict().items()}
    meta = {"config": json.dumps(asdict(cfg)), "phase": str(phase),
            "done": json.dumps([list(r) for r in done])}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


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
        if theirs != json.loads(json.dumps(mine)):
            diff = sorted(k for k in set(mine) | set(theirs) if json.loads(json.dumps(
                mine.get(k))) != theirs.get(k))
            raise DissectMismatchError(
                f"{folder} holds a dissection run with other arguments (differs in: "
                f"{', '.join(diff)}); use another output folder, or delete {folder} to start over")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cfg_path, json.dumps(mine, indent=1).encode())
