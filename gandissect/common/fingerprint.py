"""Content fingerprints of models: cache and resume keys that change when weights change."""

from __future__ import annotations

import hashlib
from typing import Any

import torch


def fingerprint(*objects: Any) -> str:
    """Short SHA-256 (12 hex digits) of the class names and weights of ``objects``.

    Each object contributes its class name and the state dict of every ``nn.Module`` it is or
    holds directly as an attribute (e.g. a segmenter wrapping a network), names and bytes in
    sorted order. Equal weights give equal fingerprints on any device; replacing any weight
    changes it. Objects without modules (a rule-based segmenter) contribute their class name.
    """
    h = hashlib.sha256()
    for obj in objects:
        h.update(type(obj).__name__.encode())
        modules = [obj] if isinstance(obj, torch.nn.Module) else [
            v for _, v in sorted(vars(obj).items()) if isinstance(v, torch.nn.Module)]
        for module in modules:
            for name, t in sorted(module.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


__all__ = ["fingerprint"]
