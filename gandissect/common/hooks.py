"""Capture or edit the outputs of named layers with a context manager.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU())
>>> with Trace(net, ["0"], stop=True) as tr:
...     _ = net(torch.ones(1, 1, 2, 2))
>>> tuple(tr["0"].shape)
(1, 2, 2, 2)

Hooks are removed when the ``with`` block ends, also when the forward pass raises.
With ``stop=True`` the forward pass ends (silently) right after the last requested layer ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

#: ``edit(layer_name, output) -> new_output``; called on the layer's output during the forward pass.
EditFn = Callable[[str, torch.Tensor], torch.Tensor]


class _StopForward(Exception):
    """Raised inside a hook to end the forward pass early; swallowed by :class:`Trace`."""


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); CPU when it has neither."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule ``name`` of ``model``; a wrong name raises a ValueError listing valid ones.

    Uses ``model.layer(name)`` when the model provides it (the gandissect Generator protocol).
    """
    layer_fn = getattr(model, "layer", None)
    if callable(layer_fn):
        module = layer_fn(name)
        if not isinstance(module, nn.Module):
            raise TypeError(f"{type(model).__name__}.layer({name!r}) did not return a module")
        return module
    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        raise ValueError(f"unknown layer {name!r} for {type(model).__name__}; valid layers: "
                         f"{', '.join(names)}")
    return model.get_submodule(name)


def check_feature_map(name: str, output: Any) -> torch.Tensor:
    """Validate that a layer output is an ``N x C x H x W`` tensor; return it."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"layer {name!r} returned {type(output).__name__}, expected a tensor "
                        "[N, C, H, W]; hook a submodule that outputs a single feature map")
    if output.dim() != 4:
        raise ValueError(f"layer {name!r} output has shape {list(output.shape)}, expected a "
                         "feature map [N, C, H, W]; pick a convolutional layer")
    return output


class Trace:
    """Record (and optionally edit) the outputs of ``layers`` of ``model`` during forward passes.

    ``tr[name]`` is the (possibly edited) output of the last forward pass, detached unless
    ``detach=False``. ``edit(name, output)`` may return a replacement output. ``stop=True`` ends
    the forward pass after the last requested layer; the model's return value is then unavailable.
    Outputs must be ``[N, C, H, W]`` feature maps unless ``check_shape=False``.
    """

    def __init__(self, model: nn.Module, layers: str | Sequence[str], *,
                 edit: EditFn | None = None, stop: bool = False, retain: bool = True,
                 detach: bool = True, check_shape: bool = True) -> None:
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise ValueError("Trace needs at least one layer name")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate layer names in {names}")
        self.model = model
        self.layers = names
        self.modules = {n: resolve_layer(model, n) for n in names}
        self.edit = edit
        self.stop = stop
        self.retain = retain
        self.detach = detach
        self.check_shape = check_shape
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._seen: set[str] = set()

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            if self.check_shape:
                check_feature_map(name, output)
            if self.edit is not None:
                output = self.edit(name, output)
                if self.check_shape:
                    check_feature_map(name, output)
            if self.retain:
                self.outputs[name] = output.detach() if self.detach else output
            self._seen.add(name)
            if self.stop and len(self._seen) == len(self.layers):
                self._seen.clear()
                raise _StopForward
            return output
        return hook

    def __enter__(self) -> Trace:
        try:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        self.close()
        self._seen.clear()
        return exc_type is not None and issubclass(exc_type, _StopForward)

    def close(self) -> None:
        """Remove all hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.outputs:
            raise KeyError(f"no output recorded for layer {name!r}; traced layers: "
                           f"{', '.join(self.layers)} (did the forward pass run?)")
        return self.outputs[name]

    def __contains__(self, name: object) -> bool:
        return name in self.outputs


def run_to_layers(model: nn.Module, layers: Sequence[str], *args: Any,
                  **kwargs: Any) -> dict[str, torch.Tensor]:
    """Run ``model(*args)`` only as far as needed to record ``layers``; return their outputs."""
    with Trace(model, layers, stop=True) as tr:
        model(*args, **kwargs)
    missing = [n for n in layers if n not in tr]
    if missing:
        raise RuntimeError(f"layers {missing} did not run during the forward pass")
    return {n: tr[n] for n in layers}
