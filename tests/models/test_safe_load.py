"""Checkpoint loading never runs pickled code unless asked, and reports broken files clearly
(one check and message format for every loader that verifies a state dict)."""

from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from models.safe_load import (
    DEFAULT_HINT,
    CheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    load_into,
    unwrap_state_dict,
)
from models.toyworld.concepts import LEAVES
from models.toyworld_gan import ToyworldGenerator, load_generator
from segmenters.toyworld import WEIGHTS_FORMAT, ToyworldUNet, load_weights


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


def _segmenter_file(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file(state, str(path), metadata={"format": WEIGHTS_FORMAT, "widths": "4,8",
                                          "leaves": ",".join(LEAVES)})
    load_weights(path)


def _gan_file(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file(state, str(path))
    load_generator(weights=path)


def _toy_net() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))


#: The three ways a state dict gets checked: (model, load(state, path), what, hint fragment).
LOADERS: dict[str, tuple[Callable[[], nn.Module], Callable[[dict[str, torch.Tensor], Path], None],
                         str, str]] = {
    "load_into": (_toy_net, lambda sd, path: load_into(_toy_net(), sd, "toy net", path=path),
                  "toy net", DEFAULT_HINT),
    "toyworld_gan": (ToyworldGenerator, _gan_file, "Toyworld generator",
                     "re-export it with `python -m models.train_toyworld_gan"),
    "toyworld_segmenter": (lambda: ToyworldUNet((4, 8)), _segmenter_file,
                           "the Toyworld segmenter U-Net (widths (4, 8))",
                           "re-run the training command `python -m segmenters.train_toyworld"),
}


@pytest.mark.parametrize("via", sorted(LOADERS))
def test_every_loader_reports_all_problems_one_way(tmp_path: Path, via: str) -> None:
    """load_into and both Toyworld loaders share one check and one message: the file, the
    model, every problem with its keys, and what to do."""
    make, load, what, hint = LOADERS[via]
    state = make().state_dict()
    gone, reshaped, nan = [k for k, v in state.items() if v.is_floating_point()][:3]
    shape = list(state[reshaped].shape)
    bad = {k: v.clone() for k, v in state.items() if k != gone}
    bad[reshaped] = torch.zeros(shape[0] + 1, *shape[1:])
    bad[nan] = torch.full_like(state[nan], float("nan"))
    bad["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    with pytest.raises(CheckpointError) as info:
        load(bad, path)
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working
    problems, _, todo = str(info.value).partition(". To fix: ")
    assert problems == (f"checkpoint {str(path)!r} does not match {what}: missing keys: {gone} | "
                        f"unexpected keys: extra.weight | mismatched shapes: {reshaped}: "
                        f"checkpoint {[shape[0] + 1, *shape[1:]]} vs model {shape} | "
                        f"non-finite values (NaN or inf) in: {nan}")
    assert todo.startswith(hint)


def test_load_into_optional_keys_listing_and_default_message() -> None:
    net = _toy_net()
    with pytest.raises(CheckpointError) as info:
        load_into(net, {"1.bias": torch.ones(1)}, "toy net")
    assert str(info.value) == ("checkpoint does not match toy net: missing keys: 0.bias, "
                               f"0.weight, 1.weight. To fix: {DEFAULT_HINT}")
    many = {f"x{i}": torch.ones(1) for i in range(10)}
    with pytest.raises(CheckpointError, match=r"unexpected keys: x0, x1, .*x7 \.\.\. \(\+2 more\)"):
        load_into(net, dict(net.state_dict(), **many), "toy net")
    good = {k: torch.full_like(v, 0.5) for k, v in net.state_dict().items() if k != "1.bias"}
    load_into(net, good, "toy net", optional=["1.bias"])
    assert torch.equal(net.state_dict()["0.weight"], torch.full((3, 2), 0.5))


def test_float16_checkpoints_cast_unless_exact_dtypes() -> None:
    net = _toy_net()
    half = {k: torch.full_like(v, 0.25, dtype=torch.float16) for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"mismatched dtypes: 0.bias: checkpoint "
                                              r"torch.float16 vs model torch.float32; 0.weight"):
        load_into(net, half, "toy net", exact_dtypes=True)
    load_into(net, half, "toy net")
    assert net[0].weight.dtype == torch.float32 and (net[0].weight == 0.25).all()


def test_integer_tensors_in_place_of_float_weights_are_refused() -> None:
    """ProGAN, StyleGAN2 and BigGAN (all through load_into) refuse integer or bool tensors
    where the model has float weights, instead of loading them silently."""
    from models import biggan, progan, stylegan2

    cases = [
        (progan.ProGAN([8, 8, 4], seed=0).state_dict(), progan.from_state_dict),
        (stylegan2.StyleGAN2(16, 8, 1, [8, 8, 4]).state_dict(), stylegan2.from_state_dict),
        (biggan.BigGAN([(False, 16, 8), (True, 8, 4), (False, 4, 2), (True, 2, 1)], channel_width=4,
                       z_dim=8, num_classes=10, attention=2).state_dict(), biggan.from_state_dict),
    ]
    for sd, load in cases:
        key = next(k for k, v in sd.items() if v.is_floating_point() and v.dim() >= 2)
        bad = dict(sd, **{key: sd[key].round().to(torch.int64)})
        with pytest.raises(CheckpointError, match=r"integer or bool tensors .*" + key):
            load(bad)
        load(dict(sd, **{key: sd[key].half()}))  # float16 still casts (shipped weights)
