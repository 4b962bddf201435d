"""Interventions as data: :class:`Edit` describes one change to a layer's units, applied by one rule

    A' = A * (1 - alpha * m) + r * alpha * m      (on the edit's units only)

with ``alpha`` per unit (or one scalar), ``m`` a spatial mask at the layer's resolution (1
everywhere by default) and ``r`` the replacement value (0 ablates; a high activation inserts).

Edits are temporary by default::

    with intervene(generator, Edit("layout", [3, 17])):
        images = generator(z)          # units 3 and 17 switched off
    images = generator(z)              # the generator is exactly as before

Persistent edits are explicit: ``handle = apply_edits(generator, edit)`` then ``handle.remove()``
or ``clear_edits(generator)``.

Mask rule: a mask is ``[h, w]`` (all samples) or ``[n, h, w]`` (one per sample) with values in
[0, 1] (bool allowed). A mask whose ``(h, w)`` differs from the layer's is resized by
:func:`resize_mask`: shrinking by integer factors averages each layer cell's footprint exactly
(``mode="area"``); any other size is resized bilinearly (``align_corners=False``, antialiased
when shrinking); the result is clamped to [0, 1]. Nothing is resized silently in another way.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..common.hooks import EditFn, Trace, check_feature_map, resolve_layer

#: A per-unit coefficient: one scalar for all units, or one value per unit.
Coefficient = float | Sequence[float] | torch.Tensor


def _unit_index(u: object) -> int:
    """``u`` as a unit index: ints, numpy integers and integer tensors; bools, floats (even
    ``2.0``) and strings are refused rather than truncated or parsed."""
    if isinstance(u, bool | np.bool_) or (isinstance(u, torch.Tensor) and u.dtype == torch.bool):
        raise TypeError(f"unit indices must be integers, got the bool {u!r}")
    try:
        return operator.index(u)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"unit indices must be integers, got {u!r} ({type(u).__name__})"
                        ) from None


def _check_finite(name: str, t: torch.Tensor, units: Sequence[int]) -> None:
    """Raise a ValueError if ``t`` (one value per unit) holds NaN or infinity: it would make
    the edited images non-finite."""
    values = t.detach()
    bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(f"unit {units[i]}: {float(values[i])}" for i in bad[:5])
        raise ValueError(f"Edit {name} must be finite, got {shown}"
                         + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""))


def _as_vector(name: str, value: Coefficient, k: int) -> torch.Tensor:
    """``value`` as a float tensor of shape ``[k]`` (a scalar is broadcast); keeps autograd."""
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=torch.float32)
    if not t.is_floating_point():
        t = t.float()
    if t.dim() == 0:
        return t.expand(k)
    if t.dim() != 1 or t.shape[0] != k:
        raise ValueError(f"Edit {name} must be a scalar or have one value per unit ({k}), got "
                         f"shape {list(t.shape)}")
    return t


@dataclass(frozen=True, eq=False)
class Edit:
    """Change ``units`` of ``layer`` by ``A' = A*(1 - alpha*m) + replacement*alpha*m``.

    ``alpha`` and ``replacement`` are scalars or per-unit (length ``len(units)``); tensors are
    used as given (so an ``alpha`` that requires grad can be optimised); both must be finite.
    ``units`` are integers (int, numpy or torch integers; bools and floats are refused).
    ``mask`` is ``None`` (everywhere), ``[h, w]`` or ``[n, h, w]`` in [0, 1]; see the module
    docs for resizing.
    """

    layer: str
    units: Sequence[int]  # stored as a tuple of ints
    alpha: Coefficient = 1.0
    replacement: Coefficient = 0.0
    mask: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise TypeError(f"Edit layer must be a layer name (str), got {self.layer!r}")
        single = (not isinstance(self.units, Iterable) or isinstance(self.units, str)
                  or getattr(self.units, "ndim", 1) == 0)  # one unit, or a 0-d array/tensor
        raw = [self.units] if single else list(self.units)
        units = tuple(_unit_index(u) for u in raw)
        if not units:
            raise ValueError("Edit needs at least one unit")
        if min(units) < 0:
            raise ValueError(f"unit indices must be >= 0, got {sorted(set(units))}")
        if len(set(units)) != len(units):
            raise ValueError(f"duplicate unit indices in {list(units)}")
        object.__setattr__(self, "units", units)
        alpha = _as_vector("alpha", self.alpha, len(units))
        _check_finite("alpha", alpha, units)
        if not alpha.requires_grad and ((alpha < 0).any() or (alpha > 1).any()):
            raise ValueError(f"Edit alpha must lie in [0, 1], got {alpha.tolist()}")
        _check_finite("replacement", _as_vector("replacement", self.replacement, len(units)), units)
        if self.mask is not None:
            mask = torch.as_tensor(self.mask)
            if mask.dim() not in (2, 3):
                raise ValueError(f"Edit mask must be [h, w] or [n, h, w], got shape "
                                 f"{list(mask.shape)}")
            mask = mask.float()
            ok = bool(torch.isfinite(mask).all()) and (not mask.numel() or (
                mask.min() >= 0 and mask.max() <= 1))
            if not ok:
                raise ValueError("Edit mask values must lie in [0, 1]")
            object.__setattr__(self, "mask", mask)

    def layer_mask(self, n: int, h: int, w: int, device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor | None:
        """The mask as ``[1 or n, 1, h, w]`` at the layer's resolution (``None`` = everywhere)."""
        if self.mask is None:
            return None
        m = self.mask if self.mask.dim() == 3 else self.mask[None]
        if m.shape[0] not in (1, n):
            raise ValueError(f"Edit mask on layer {self.layer!r} has {m.shape[0]} per-sample "
                             f"masks but the batch has {n} samples; give one [h, w] mask or one "
                             "per sample")
        m = m[:, None].to(device=device, dtype=torch.float32)
        return resize_mask(m, h, w).to(dtype)

    def check_layer(self, units: int, h: int, w: int) -> None:
        """Raise a clear ValueError if this edit does not fit a layer of ``units`` x h x w."""
        bad = [u for u in self.units if u >= units]
        if bad:
            raise ValueError(f"layer {self.layer!r} has {units} units (valid indices "
                             f"0..{units - 1}); edit asks for units {bad}")
        del h, w  # any mask size is resized by the documented rule

    def apply(self, output: torch.Tensor) -> torch.Tensor:
        """The edited feature map (a new tensor; ``output`` is not modified)."""
        n, c, h, w = output.shape
        self.check_layer(c, h, w)
        k = len(self.units)
        idx = torch.tensor(self.units, device=output.device)
        alpha = _as_vector("alpha", self.alpha, k).to(output.device, output.dtype).view(1, k, 1, 1)
        r = _as_vector("replacement", self.replacement, k).to(output.device, output.dtype)
        r = r.view(1, k, 1, 1)
        m = self.layer_mask(n, h, w, output.device, output.dtype)
        coef = alpha if m is None else alpha * m
        sel = output.index_select(1, idx)
        return output.index_copy(1, idx, sel * (1 - coef) + r * coef)


def ablation(layer: str, units: Sequence[int], mask: torch.Tensor | None = None,
             alpha: Coefficient = 1.0) -> Edit:
    """An edit that switches ``units`` off (replacement 0)."""
    return Edit(layer, tuple(units), alpha=alpha, replacement=0.0, mask=mask)


def insertion(layer: str, units: Sequence[int], values: Coefficient,
              mask: torch.Tensor | None = None, alpha: Coefficient = 1.0) -> Edit:
    """An edit that sets ``units`` to ``values`` (e.g. from :func:`unit_statistics`)."""
    return Edit(layer, tuple(units), alpha=alpha, replacement=values, mask=mask)


def resize_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Resize masks ``[n, 1, H, W]`` to ``[n, 1, h, w]`` by the rule in the module docs."""
    H, W = mask.shape[-2:]
    if (H, W) == (h, w):
        return mask
    if H % h == 0 and W % w == 0:
        out = F.interpolate(mask, size=(h, w), mode="area")
    else:
        out = F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False,
                            antialias=H > h or W > w)
    return out.clamp(0.0, 1.0)


def _check_edits(generator: nn.Module, edits: Sequence[Edit]) -> dict[str, list[Edit]]:
    """Group edits by layer, checking every layer exists (errors list the valid names)."""
    by_layer: dict[str, list[Edit]] = {}
    for e in edits:
        if not isinstance(e, Edit):
            raise TypeError(f"expected Edit objects, got {type(e).__name__}")
        resolve_layer(generator, e.layer)
        by_layer.setdefault(e.layer, []).append(e)
    return by_layer


def layer_shape(generator: nn.Module, layer: str) -> tuple[int, int, int]:
    """``(units, h, w)`` of ``layer``, found by a partial forward pass of one latent.

    Needs a generator with ``sample_latents`` (the gandissect Generator protocol).
    """
    sample = getattr(generator, "sample_latents", None)
    if not callable(sample):
        raise TypeError(f"{type(generator).__name__} has no sample_latents; cannot probe "
                        f"the shape of layer {layer!r}")
    with torch.no_grad(), Trace(generator, layer, stop=True) as tr:
        generator(sample(1, 0))
    out = check_feature_map(layer, tr[layer])
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


def check_edits(generator: nn.Module, *edits: Edit) -> None:
    """Validate edits against the generator before running it: every layer exists and every
    unit index is in range (one partial forward pass per edited layer)."""
    for name, group in _check_edits(generator, edits).items():
        units, h, w = layer_shape(generator, name)
        for e in group:
            e.check_layer(units, h, w)


def _edit_fn(by_layer: dict[str, list[Edit]]) -> EditFn:
    def edit(name: str, output: torch.Tensor) -> torch.Tensor:
        for e in by_layer[name]:
            output = e.apply(output)
        return output
    return edit


class intervene:  # noqa: N801 - used like a function: ``with intervene(g, *edits):``
    """Context manager applying ``edits`` (over one or several layers) while the block runs.

    Layers are checked on entry (a wrong name raises a ValueError listing the valid ones); unit
    indices are checked on entry when ``check=True`` (one partial forward pass per layer) and
    always on every forward pass. Hooks are removed on exit, also after an exception. Several
    edits of one layer are applied in the order given. One object may serve several ``with``
    blocks one after another, but not one inside another (a RuntimeError, hooks untouched).
    """

    def __init__(self, generator: nn.Module, *edits: Edit, check: bool = True) -> None:
        self.generator = generator
        self.edits = edits
        self._by_layer = _check_edits(generator, edits)
        if check and self._by_layer and callable(getattr(generator, "sample_latents", None)):
            check_edits(generator, *edits)
        self._trace: Trace | None = None
        self._active = False

    def __enter__(self) -> intervene:
        if self._active:
            raise RuntimeError("this intervene(...) is already active: it cannot be entered "
                               "again inside its own `with` block; create a new "
                               "intervene(...) per `with`")
        if self._by_layer:
            trace = Trace(self.generator, list(self._by_layer), edit=_edit_fn(self._by_layer),
                          retain=False)
            self._trace = trace.__enter__()  # set only once every hook is attached
        self._active = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._trace is not None:
            self._trace.close()
            self._trace = None
        self._active = False


class EditHandle:
    """A persistent set of edits on a generator; :meth:`remove` takes them off (idempotent)."""

    def __init__(self, generator: nn.Module, edits: Sequence[Edit]) -> None:
        self._ctx: intervene | None = intervene(generator, *edits).__enter__()
        self.generator_ref = weakref.ref(generator)
        self.edits = tuple(edits)

    @property
    def active(self) -> bool:
        return self._ctx is not None

    def remove(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None
        gen = self.generator_ref()
        if gen is not None and self in _PERSISTENT.get(gen, []):
            _PERSISTENT[gen].remove(self)


#: Persistent edit handles per generator (weak keys: a deleted generator drops its entry).
_PERSISTENT: weakref.WeakKeyDictionary[nn.Module, list[EditHandle]] = weakref.WeakKeyDictionary()


def apply_edits(generator: nn.Module, *edits: Edit) -> EditHandle:
    """Apply ``edits`` until ``handle.remove()`` or :func:`clear_edits` (explicitly persistent)."""
    handle = EditHandle(generator, edits)
    _PERSISTENT.setdefault(generator, []).append(handle)
    return handle


def active_edits(generator: nn.Module) -> list[Edit]:
    """The persistent edits currently applied to ``generator``, in order of application."""
    return [e for h in _PERSISTENT.get(generator, []) for e in h.edits]


def clear_edits(generator: nn.Module) -> int:
    """Remove every persistent edit of ``generator``; returns how many handles were removed."""
    handles = list(_PERSISTENT.get(generator, []))
    for h in handles:
        h.remove()
    return len(handles)
