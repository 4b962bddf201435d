"""The ``gandissect`` command line (also ``python -m gandissect``). Each group of subcommands
lives in its own module of this package exposing ``register(subparsers)``; the ones that need
only the renderer and the registries live here."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.imaging import label_palette, make_grid, masks_to_label_image, save_png, to_uint8
from ..common.specs import split_spec

#: Modules that add subcommands (each exposes ``register(subparsers)``).
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "gandissect.cli.dissect",
    "gandissect.cli.quality",
    "gandissect.cli.zoo",
    "gandissect.cli.intervene",
    "gandissect.cli.app",
    "gandissect.cli.artifacts",
    "gandissect.cli.classifier",
    "gandissect.cli.sequence",
)


#: Integer options that count or size something: every subcommand refuses values below 1 for
#: them (an argparse error, exit 2) instead of running on a silently replaced value.
COUNT_OPTIONS: frozenset[str] = frozenset({
    "samples", "batch_size", "size", "ncol", "scale", "seg_resolution", "workers",
    "report_units", "top_k", "rank_samples", "sweep_samples", "threads", "heatmap_size",
    "heatmap_samples", "eval_samples", "top", "pool", "verify_samples", "random_draws",
    "reference_samples", "draws", "length"})


def positive_int(text: str) -> int:
    """An argparse ``type`` for :data:`COUNT_OPTIONS`: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _check_counts(parser: argparse.ArgumentParser) -> None:
    """Give every int option of ``parser``'s subcommands named in :data:`COUNT_OPTIONS` the
    :func:`positive_int` type."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _check_counts(sub)
        elif action.type is int and action.dest in COUNT_OPTIONS:
            action.type = positive_int


def check_out_dir(path: str | Path, option: str = "--out") -> Path:
    """Refuse an output folder that cannot be written, before any work: ``path`` must be a
    folder or not exist yet, and the folder that will hold it must be writable (probed with a
    temporary file, so read-only file systems are caught too). Nothing is created."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is a file, not a folder; give a folder path")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {out} lies under {parent}, which is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".gandissect-write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"{option} {out}: cannot write in {parent} ({exc.strerror or exc}); "
                         "give a writable folder") from None
    return out


def add_load_options(p: argparse.ArgumentParser) -> None:
    """Options every command that loads a model or segmenter by name shares."""
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow pickled checkpoints (can run code: only for files you trust)")


def load_model_and_segmenter(args: argparse.Namespace) -> tuple[Any, Any]:
    """``models.load`` and ``segmenters.load`` of ``args.model`` / ``args.segmenter`` on
    ``args.device``. Either may be ``NAME:PATH`` (a local checkpoint, folder or hub id);
    ``args.trust_pickle`` (when present and set) reaches the loaders that read checkpoint files
    (zoo and family models, segmenters given a path).

    Errors (unknown names, missing weights) propagate to :func:`main`, which prints them and
    exits with status 2.
    """
    import models
    import segmenters

    model, model_kw = split_spec(args.model)
    seg, seg_kw = split_spec(args.segmenter)
    if getattr(args, "trust_pickle", False):  # only loaders that read checkpoint files take it
        if model not in models.REGISTRY:
            model_kw["trust_pickle"] = True
        if seg_kw:
            seg_kw["trust_pickle"] = True
    return (models.load(model, device=args.device, **model_kw),
            segmenters.load(seg, device=args.device, **seg_kw))


def _cmd_models(args: argparse.Namespace) -> int:
    import models

    for name, desc in models.available().items():
        print(f"{name:12s} {desc}")
    return 0


def _cmd_segmenters(args: argparse.Namespace) -> int:
    import segmenters

    for name, desc in segmenters.available().items():
        print(f"{name:12s} {desc}")
    return 0


def _cmd_classifiers(args: argparse.Namespace) -> int:
    from models.classifiers import CLASSIFIERS

    for name, desc in CLASSIFIERS.items():
        print(f"{name:20s} {desc}")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    """Render Toyworld scenes, optionally segment them, and write grids and masks."""
    from models.toyworld import CONCEPTS, render_batch

    out = Path(args.out)
    images, masks = render_batch(args.seed, 0, args.samples, args.size)
    leaf_channels = [CONCEPTS.index(c) for c in CONCEPTS if c not in ("tree", "house")]
    save_png(make_grid(to_uint8(images), ncol=args.ncol, scale=args.scale), out / "scenes.png")
    save_png(make_grid(masks_to_label_image(masks, leaf_channels), ncol=args.ncol,
                       scale=args.scale), out / "masks.png")
    np.savez_compressed(out / "scenes.npz", images=images, masks=masks,
                        concepts=np.array(CONCEPTS))
    written = ["scenes.png", "masks.png", "scenes.npz"]
    if args.segmenter:
        import segmenters

        seg = segmenters.load(args.segmenter, device=args.device)
        pred = seg.segment(torch.from_numpy(images)).cpu().numpy()
        chans = [seg.labels.index(c) for c in seg.labels if c not in ("tree", "house")]
        save_png(make_grid(masks_to_label_image(pred, chans), ncol=args.ncol, scale=args.scale),
                 out / f"segmented_{args.segmenter}.png")
        written.append(f"segmented_{args.segmenter}.png")
    legend = {c: list(map(int, rgb)) for c, rgb in zip(CONCEPTS, label_palette(len(CONCEPTS)),
                                                        strict=True)}
    (out / "legend.json").write_text(json.dumps(legend, indent=1))
    print(f"wrote {', '.join(written)} and legend.json for {args.samples} scenes to {out}/")
    return 0


def _cmd_eval_segmenter(args: argparse.Namespace) -> int:
    import segmenters
    from segmenters.evaluate import HELDOUT_SEED, format_robustness, robustness

    try:
        sigmas = tuple(float(s) for s in args.blur.split(","))
    except ValueError:
        raise ValueError(f"--blur takes comma-separated blur sigmas in pixels such as 0,1,1.5; "
                         f"got {args.blur!r}") from None
    if any(not s >= 0 for s in sigmas):
        raise ValueError(f"--blur sigmas must be >= 0, got {args.blur!r}")
    seg = segmenters.load(args.segmenter, device=args.device)
    seed = HELDOUT_SEED if args.seed is None else args.seed
    results = robustness(seg, sigmas, samples=args.samples, seed=seed,
                         batch_size=args.batch_size)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=1))
    elif len(results) > 1:
        print(format_robustness(results))
    else:
        result = results[0]
        blur = f", images blurred with sigma {sigmas[0]:g}" if sigmas[0] else ""
        print(f"{args.segmenter}: mIoU {result['miou']:.4f} over {args.samples} held-out scenes "
              f"(seed {seed}{blur})")
        for concept, iou in result["per_class"].items():
            print(f"  {concept:10s} {iou:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="gandissect", description="Dissect, intervene on and paint with GAN units.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("models", help="list the bundled generators")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("segmenters", help="list the bundled segmenters")
    p.set_defaults(func=_cmd_segmenters)
    p = sub.add_parser("classifiers", help="list the classifiers `dissect --probe` takes")
    p.set_defaults(func=_cmd_classifiers)

    p = sub.add_parser("render", help="render a grid of Toyworld scenes and their masks")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--ncol", type=int, default=8)
    p.add_argument("--scale", type=int, default=2, help="upscaling of each tile in the grid")
    p.add_argument("--segmenter", default=None, help="also segment the scenes with this one")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="results/render")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("eval-segmenter", help="mIoU of a segmenter on held-out Toyworld scenes")
    p.add_argument("--segmenter", default="toyworld")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=None, help="default: the held-out seed")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--blur", default="0", help="Gaussian blur sigma(s) in pixels applied to the "
                   "images first, e.g. 0,1,1.5 for a robustness table (one JSON result each)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_eval_segmenter)

    for name in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    _check_counts(parser)
    return parser


def _check_args(args: argparse.Namespace) -> None:
    """Checks every subcommand shares, before any work: ``--device`` exists on this machine,
    ``--out`` can be written."""
    from models.base import check_device

    if getattr(args, "device", None) is not None:
        check_device(args.device, how="--device cpu")
    if getattr(args, "out", None) is not None:
        check_out_dir(args.out)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush into a closed pipe
    (``gandissect models | head``) raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (tests)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gandissect`` console script; returns the exit status (2 for bad
    arguments or input, with ``gandissect COMMAND: error: ...`` on stderr; 141 when stdout
    is a pipe that closed early)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    try:
        _check_args(args)
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except (ValueError, FileNotFoundError, TypeError, ImportError) as exc:
        print(f"gandissect {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout has gone (e.g. `| head`): stop quietly
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a process a closed pipe ended
    except KeyboardInterrupt:
        print(f"gandissect {args.command}: interrupted", file=sys.stderr)
        return 130
