"""Load checkpoints without executing code from them, and check them against a model.

``.safetensors`` files are read with :mod:`safetensors`; ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt``
files with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers.
A checkpoint that needs any other pickled object (a class whose unpickling could run code) is
refused with :class:`UnsafeCheckpointError` unless ``trust_pickle=True``, which warns and then
unpickles it fully: do that only for files from a source you trust.

>>> import tempfile, os, torch
>>> path = os.path.join(tempfile.mkdtemp(), "w.pth")
>>> torch.save({"w": torch.ones(2)}, path)
>>> load_checkpoint(path)["w"].tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import argparse
import pickle
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Globals allowed besides tensors and plain containers: rebuilding them runs no user code.
#: (``argparse.Namespace`` appears in training checkpoints that store their ``args``.)
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

#: Suffixes read with ``torch.load``; ``.safetensors`` is read with safetensors.
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".tar")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model it is loaded into."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint needs arbitrary pickle code execution to load, and the user did not opt in."""


def load_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """The object stored in ``path`` (usually a dict of tensors), on the CPU.

    Raises :class:`CheckpointError` for a missing, empty, truncated or unreadable file and
    :class:`UnsafeCheckpointError` for a pickle that needs code execution (unless
    ``trust_pickle=True``, which emits a warning and loads it with ``weights_only=False``).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist or is not a file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(p)!r} is empty (0 bytes); delete it and "
                              "download it again")
    if p.suffix == ".safetensors":
        return _load_safetensors(p)
    if p.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"checkpoint {str(p)!r} has unknown suffix {p.suffix!r}; expected "
                              f".safetensors or one of {', '.join(TORCH_SUFFIXES)}")
    return _load_torch(p, trust_pickle)


def _load_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors checkpoint {str(p)!r} (truncated or "
                              f"not a safetensors file?): {exc}") from exc


def _load_torch(p: Path, trust_pickle: bool) -> Any:
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _is_weights_only_refusal(exc):
            raise CheckpointError(f"cannot unpickle checkpoint {str(p)!r} (truncated or "
                                  f"corrupt?): {_first_line(exc)}") from exc
        culprit = _culprit(exc)
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"checkpoint {str(p)!r} contains pickled Python objects{culprit} whose loading "
                "can execute arbitrary code, so it was refused. Convert it to .safetensors or a "
                "plain state_dict on a machine you trust, or pass trust_pickle=True "
                "(CLI: --trust-pickle) only if you trust its source.") from exc
        warnings.warn(f"loading {str(p)!r} with full pickle (trust_pickle=True){culprit}: this "
                      "runs any code the file contains", UserWarning, stacklevel=3)
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc2:  # corrupt file: report, whatever unpickling raised
            raise CheckpointError(f"cannot load checkpoint {str(p)!r}: {exc2}") from exc2
    except Exception as exc:  # torch raises many kinds (RuntimeError, EOFError, KeyError...)
        raise CheckpointError(f"cannot read checkpoint {str(p)!r} (truncated or corrupt?): "
                              f"{_first_line(exc)}") from exc


def _is_weights_only_refusal(exc: BaseException) -> bool:
    text = str(exc)
    return "Weights only load failed" in text or "Unsupported global" in text


def _culprit(exc: BaseException) -> str:
    found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
    return f" (needs {found[0]})" if found else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unwrap_state_dict(obj: Any, prefer: Sequence[str] = ("state_dict",),
                      strip_prefix: str = "module.") -> dict[str, torch.Tensor]:
    """The flat ``name -> tensor`` dict inside a loaded checkpoint.

    If ``obj`` is a dict holding one of the keys in ``prefer`` (checked in order) whose value
    is a dict, that inner dict is used (e.g. ``{"g_ema": {...}, "latent_avg": ...}``). Non-tensor
    entries of the result are an error; a leading ``strip_prefix`` (DataParallel) is removed.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, expected a dict of "
                              "tensors (a state_dict)")
    for key in prefer:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint entries {bad[:5]} are not tensors; expected a "
                              f"state_dict (or a dict with one of the keys {list(prefer)})")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        out[k[len(strip_prefix):] if strip_prefix and k.startswith(strip_prefix) else k] = v
    return out


def _listing(items: Iterable[str], limit: int = 8, sep: str = ", ") -> str:
    ks = sorted(items)
    more = f" ... (+{len(ks) - limit} more)" if len(ks) > limit else ""
    return sep.join(ks[:limit]) + more


#: What to do when a checkpoint does not fit its model (callers with a better fix pass ``hint``).
DEFAULT_HINT = "check that the file is the checkpoint for this architecture and configuration"


def _state_dict_problems(module: nn.Module, state_dict: Mapping[str, torch.Tensor],
                         optional: Iterable[str], exact_dtypes: bool) -> list[str]:
    """What keeps ``state_dict`` from loading into ``module`` (see :func:`load_into`), one
    entry per kind of problem; empty when it fits."""
    own = module.state_dict()
    missing = set(own) - set(state_dict) - set(optional)
    unexpected = set(state_dict) - set(own)
    shared = [k for k in state_dict if k in own]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    shapes = [f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(own[k].shape)}"
              for k in shared if state_dict[k].shape != own[k].shape]
    if shapes:
        problems.append(f"mismatched shapes: {_listing(shapes, 5, '; ')}")
    if exact_dtypes:
        dtypes = [f"{k}: checkpoint {state_dict[k].dtype} vs model {own[k].dtype}"
                  for k in shared if state_dict[k].dtype != own[k].dtype]
        if dtypes:
            problems.append(f"mismatched dtypes: {_listing(dtypes, 5, '; ')}")
    else:  # float16 -> float32 is a cast; integers where weights are floats are not weights
        ints = [f"{k}: checkpoint {state_dict[k].dtype} vs model {own[k].dtype}"
                for k in shared if own[k].is_floating_point()
                and not (state_dict[k].is_floating_point() or state_dict[k].is_complex())]
        if ints:
            problems.append(f"integer or bool tensors where the model has float weights "
                            f"(a corrupt or wrongly converted checkpoint): "
                            f"{_listing(ints, 5, '; ')}")
    nonfinite = [k for k, v in state_dict.items()
                 if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        problems.append(f"non-finite values (NaN or inf) in: {_listing(nonfinite)}")
    return problems


def load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str,
              optional: Iterable[str] = (), *, path: str | Path | None = None,
              hint: str = DEFAULT_HINT, exact_dtypes: bool = False) -> None:
    """Copy ``state_dict`` into ``module`` after checking that it fits.

    Checked: every key of ``module.state_dict()`` is present except those in ``optional``
    (which keep their initial values), no extra key, equal shapes, equal dtypes (only with
    ``exact_dtypes``; otherwise loading casts, e.g. float16 files into float32 models, but
    integer or bool tensors in place of float weights are refused), no NaN or inf in
    floating-point tensors. Otherwise raises :class:`CheckpointError` naming the
    file ``path`` (when given), ``what`` (e.g. ``"ProGAN 256x256"``), every kind of problem
    found with the keys concerned, and ``hint``: what to do about it.
    """
    problems = _state_dict_problems(module, state_dict, optional, exact_dtypes)
    if problems:
        source = f"checkpoint {str(path)!r}" if path is not None else "checkpoint"
        raise CheckpointError(f"{source} does not match {what}: " + " | ".join(problems) +
                              f". To fix: {hint}")
    module.load_state_dict(dict(state_dict), strict=False)


__all__ = ["CheckpointError", "DEFAULT_HINT", "SAFE_GLOBALS", "UnsafeCheckpointError",
           "load_checkpoint", "load_into", "unwrap_state_dict"]
