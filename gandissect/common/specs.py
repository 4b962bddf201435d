"""``NAME`` or ``NAME:PATH`` specs of models and segmenters (command line, app)."""

from __future__ import annotations

from typing import Any


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` -> ``(name, {})``; ``"name:path"`` -> ``(name, {"path": path})``.

    The path may be a local file or folder, or a hub id (``segformer:nvidia/segformer-b0-...``).

    >>> split_spec("toyworld")
    ('toyworld', {})
    >>> split_spec("segformer:/data/segformer-b0")
    ('segformer', {'path': '/data/segformer-b0'})
    """
    name, sep, path = spec.partition(":")
    if sep and not path:
        raise ValueError(f"{spec!r} names no path after ':'; use NAME or NAME:PATH")
    return name, ({"path": path} if sep else {})
