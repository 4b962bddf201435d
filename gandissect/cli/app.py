"""``gandissect app``: serve the GANPaint app (``app.py`` at the repository root)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

_APP = Path(__file__).resolve().parent.parent.parent / "app.py"


def _load_app() -> object:
    """The ``app`` module (the repository's ``app.py``); clear error if it is not there."""
    if "app" in sys.modules:
        return sys.modules["app"]
    if not _APP.is_file():
        raise FileNotFoundError(f"the GANPaint app ({_APP}) is not installed; run from a "
                                "source checkout of gandissect")
    spec = importlib.util.spec_from_file_location("app", _APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["app"] = module
    spec.loader.exec_module(module)
    return module


def _run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    app = _load_app()
    app.launch(args)  # type: ignore[attr-defined]
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``app`` subcommand (options as ``python app.py``)."""
    p = subparsers.add_parser("app", help="serve the GANPaint app (default 127.0.0.1:7860)")
    add_arguments(p)
    p.set_defaults(func=_run)


def _steps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"steps must be a whole number >= 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The app's options, shared by ``gandissect app`` and ``python app.py``."""
    from . import add_load_options

    parser.add_argument("--model", default="toyworld",
                        help="generator: NAME or NAME:PATH (local checkpoint, folder or hub id)")
    parser.add_argument("--segmenter", default="toyworld", help="segmenter: NAME or NAME:PATH")
    parser.add_argument("--layer", default="layer5")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--inversion-steps", type=_steps, nargs=2, metavar=("OPTIMIZE", "ADAPT"),
                        default=None,
                        help="steps of an uploaded photo's feature optimisation and adaptation "
                             "(default 150 250; fewer: faster, rougher reconstructions)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--cluster", metavar="local:N", default=None,
                       help="build brushes (when none are shipped or cached) on a Dask cluster "
                            "of N worker processes started for the build (needs "
                            "gandissect[dask]); the same brushes")
    where.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="build brushes on the running Dask cluster whose scheduler is at "
                            "ADDRESS (tcp://HOST:PORT)")
    add_load_options(parser)
