"""Checkpoint loading never runs pickled code unless asked, and reports broken files clearly."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from models.safe_load import (
    CheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    load_into,
    unwrap_state_dict,
)


class _Payload:
    """Unpickling this runs os.system, which would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_plain_state_dict_pth_and_safetensors(tmp_path: Path) -> None:
    sd = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.int64)}
    torch.save(sd, tmp_path / "w.pth")
    save_file(sd, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        got = load_checkpoint(tmp_path / name)
        assert set(got) == {"a", "b"}
        assert torch.equal(got["a"], sd["a"]) and torch.equal(got["b"], sd["b"])


def test_legacy_format_and_namespace_args_load(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(3)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert load_checkpoint(tmp_path / "old.pt")["w"].tolist() == [1.0, 1.0, 1.0]
    torch.save({"g_ema": {"w": torch.ones(1)}, "args": argparse.Namespace(size=256)},
               tmp_path / "train.pt")
    got = load_checkpoint(tmp_path / "train.pt")
    assert got["args"].size == 256


@pytest.mark.parametrize("via", ["torch.save", "pickle.dump"])
def test_malicious_pickle_refused_and_not_executed(tmp_path: Path, via: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    obj = {"w": torch.ones(2), "x": _Payload(marker)}
    if via == "torch.save":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    with pytest.raises(UnsafeCheckpointError, match="trust_pickle=True"):
        load_checkpoint(path)
    assert not marker.exists()


def test_trust_pickle_warns_and_loads(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"x": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.warns(UserWarning, match="trust_pickle"):
        load_checkpoint(tmp_path / "evil.pth", trust_pickle=True)
    assert marker.exists()  # the opt-in really is full unpickling


@pytest.mark.parametrize("name,legacy", [("t.pth", False), ("t.pt", True),
                                         ("t.safetensors", False)])
def test_truncated_files_raise_checkpoint_error(tmp_path: Path, name: str, legacy: bool) -> None:
    sd = {"w": torch.randn(64, 64)}
    full = tmp_path / ("full" + Path(name).suffix)
    if name.endswith(".safetensors"):
        save_file(sd, str(full))
    else:
        torch.save(sd, full, _use_new_zipfile_serialization=not legacy)
    data = full.read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        load_checkpoint(tmp_path / name)


def test_missing_empty_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pth")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown suffix"):
        load_checkpoint(tmp_path / "w.npz")
    (tmp_path / "junk.pth").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pth")


def test_unwrap_state_dict() -> None:
    inner = {"module.a": torch.ones(1)}
    assert list(unwrap_state_dict({"g_ema": inner, "latent": torch.ones(1)},
                                  prefer=("g_ema",))) == ["a"]
    with pytest.raises(CheckpointError, match="not tensors"):
        unwrap_state_dict({"a": torch.ones(1), "b": 3})
    with pytest.raises(CheckpointError, match="expected a dict"):
        unwrap_state_dict([torch.ones(1)])


def test_load_into_names_missing_unexpected_and_shapes() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    sd.pop("1.bias")
    sd["2.weight"] = torch.ones(1)
    sd["0.weight"] = torch.ones(5, 2)
    with pytest.raises(CheckpointError) as info:
        load_into(net, sd, "toy net")
    msg = str(info.value)
    assert "missing keys: 1.bias" in msg and "unexpected keys: 2.weight" in msg
    assert "0.weight: checkpoint [5, 2] vs model [3, 2]" in msg and "toy net" in msg
    good = {k: torch.full_like(v, 0.5) for k, v in net.state_dict().items() if k != "1.bias"}
    load_into(net, good, "toy net", optional=["1.bias"])
    assert torch.equal(net.state_dict()["0.weight"], torch.full((3, 2), 0.5))
