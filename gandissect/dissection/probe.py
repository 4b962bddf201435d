"""Network Dissection of any network on a probe set: the same engine, fed by ground truth.

A *probe set* (see :mod:`gandissect.probes`; duck-typed here, so the engine does not import
it) holds images with exact concept masks: ``labels``, ``categories``, ``image_size``,
``mask_size``, ``len()``, ``images(start, n)`` (float RGB in [0, 1]) and ``masks(start, n)``
(bool ``[n, len(labels), h, w]``). A probe set of non-images (token sequences, say) provides
``inputs(start, n)`` instead of ``images``: whatever its model takes, one row per sample (e.g.
token ids ``[n, T]`` for a model whose layers output ``[n, units, 1, T]`` maps, with masks
``[n, C, 1, T]``). :class:`ProbeModel` puts a model (a classifier, or any
module whose layers output feature maps) and a probe set behind the engine's generator
protocol: "latent" ``i`` is simply sample index ``i`` of the probe set, and the forward pass runs
the model on those probe images. :func:`gandissect.dissection.engine.dissect` then takes the
masks from the probe set instead of a segmenter, so probe-set dissection shares every line of
the statistics, merging, workers and resume with generator dissection.

>>> import torch
>>> from torch import nn
>>> class Probe:
...     labels, categories = ["a"], ["object"]
...     image_size, mask_size = (4, 4), (4, 4)
...     def __len__(self): return 3
...     def images(self, start, n): return torch.zeros(n, 3, 4, 4)
...     def masks(self, start, n): return torch.ones(n, 1, 4, 4, dtype=torch.bool)
>>> is_probe(Probe())
True
>>> m = ProbeModel(nn.Sequential(nn.Conv2d(3, 2, 1)), Probe())
>>> m.sample_latents(2, seed=0, start=1).tolist()
[1, 2]
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from ..common.hooks import module_device, resolve_layer

#: what a probe set provides (see the module docstring), besides ``images`` or ``inputs``
PROBE_ATTRIBUTES = ("labels", "categories", "image_size", "mask_size", "masks", "__len__")


def is_probe(obj: object) -> bool:
    """``obj`` provides the probe-set contract (and is not a segmenter, which labels images)."""
    return all(hasattr(obj, a) for a in PROBE_ATTRIBUTES) and not hasattr(obj, "segment") \
        and (hasattr(obj, "images") or hasattr(obj, "inputs"))


def probe_identity(probe: Any) -> str:
    """A short SHA-256 of what identifies the probe set's content: its class, ``describe()``
    when it has one, its size, labels and categories (a resumed run must see the same data)."""
    desc = probe.describe() if callable(getattr(probe, "describe", None)) else {}
    blob = json.dumps([type(probe).__name__, desc, len(probe), list(probe.labels),
                       list(probe.categories), list(probe.image_size), list(probe.mask_size)],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class ProbeModel(nn.Module):
    """``model`` run on the images of ``probe``, in the engine's generator protocol.

    ``sample_latents(n, seed, start)`` returns the sample indices ``start .. start+n-1`` (the
    probe set's order is fixed, so ``seed`` plays no part); ``forward(indices)`` feeds those
    probe images (float RGB in [0, 1], on the model's device) to ``model`` and returns its
    output; ``layer(name)`` is the model's layer (its own ``layer()`` when it has one, else its
    submodule of that name). ``resolution`` is the probe images' height (the engine only uses
    it for generated images).
    """

    latent_shape: tuple[int, ...] = ()

    def __init__(self, model: nn.Module, probe: Any) -> None:
        super().__init__()
        if not is_probe(probe):
            missing = [a for a in PROBE_ATTRIBUTES if not hasattr(probe, a)]
            if not (hasattr(probe, "images") or hasattr(probe, "inputs")):
                missing.append("images (or inputs)")
            raise TypeError(f"{type(probe).__name__} is not a probe set (missing "
                            f"{', '.join(missing) or 'nothing, but it has segment()'})")
        self.model = model
        self.probe = probe
        self.resolution = int(probe.image_size[0])

    @property
    def layer_names(self) -> list[str]:
        """The model's hookable layers (its ``layer_names``, else its named submodules)."""
        names = getattr(self.model, "layer_names", None)
        return list(names) if names is not None else [n for n, _ in self.model.named_modules()
                                                      if n]

    def layer(self, name: str) -> nn.Module:
        return resolve_layer(self.model, name)

    @property
    def device(self) -> torch.device:
        return module_device(self.model)

    def sample_latents(self, n: int, seed: int, start: int = 0) -> torch.Tensor:
        """Sample indices ``start .. start+n-1`` (int64), checked against the probe's size."""
        if n < 0 or start < 0 or start + n > len(self.probe):
            raise IndexError(f"samples {start}..{start + n - 1} requested from a probe set of "
                             f"{len(self.probe)} images; dissect at most samples={len(self.probe)}")
        return torch.arange(start, start + n, dtype=torch.long)

    def forward(self, indices: torch.Tensor) -> Any:
        """The model's output on probe images ``indices`` (read in one call when consecutive,
        as the engine asks, else one by one); on the probe's ``inputs`` when it has them."""
        idx = indices.reshape(-1).cpu()
        n = int(idx.numel())
        start = int(idx[0]) if n else 0
        inputs = getattr(self.probe, "inputs", None)
        read = inputs if callable(inputs) else self.probe.images
        if torch.equal(idx, torch.arange(start, start + n)):
            images = read(start, n)
        else:
            images = torch.cat([read(int(i), 1) for i in idx])
        if callable(inputs):
            if not isinstance(images, torch.Tensor) or images.shape[:1] != (n,):
                raise ValueError(f"probe set returned inputs of shape "
                                 f"{list(getattr(images, 'shape', []))}, expected {n} rows")
            return self.model(images.to(self.device))
        expect = (n, 3, *self.probe.image_size)
        if not isinstance(images, torch.Tensor) or tuple(images.shape) != expect:
            raise ValueError(f"probe set returned images of shape "
                             f"{list(getattr(images, 'shape', []))}, expected {list(expect)}")
        return self.model(images.float().to(self.device))


def probe_masks(probe: Any, start: int, n: int) -> torch.Tensor:
    """Masks ``[n, C, *mask_size]`` (bool) of probe samples ``start .. start+n-1``, checked."""
    masks = probe.masks(start, n)
    expect = (n, len(probe.labels), *probe.mask_size)
    if not isinstance(masks, torch.Tensor) or tuple(masks.shape) != expect \
            or masks.dtype != torch.bool:
        raise ValueError(f"probe set returned masks {list(getattr(masks, 'shape', []))} "
                         f"({getattr(masks, 'dtype', type(masks).__name__)}), expected "
                         f"{list(expect)} bool")
    return masks
