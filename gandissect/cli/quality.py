"""The ``gandissect gan-quality`` subcommand: segmentation-based quality of a generator.

Example::

    gandissect gan-quality --model toyworld --segmenter toyworld --samples 2000 --seed 0 --json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``gan-quality`` parser to ``subparsers``."""
    p = subparsers.add_parser(
        "gan-quality",
        help="Frechet distance of concept-fraction vectors: generated vs rendered scenes",
        description="Compare the per-image concept pixel fractions (as seen by a segmenter) of a "
                    "generator's samples with rendered Toyworld scenes of a held-out seed; "
                    "reports FSD beside its sampling floor and an untrained generator's value.")
    p.add_argument("--model", default="toyworld", help="generator name (see models.available())")
    from gandissect.cli import add_load_options

    add_load_options(p)
    p.add_argument("--segmenter", default="toyworld",
                   help="segmenter name (see segmenters.available())")
    p.add_argument("--samples", type=int, default=2000, help="images per set (>= 2)")
    p.add_argument("--seed", type=int, default=0, help="latent seed of the generated samples")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute the subcommand; returns the process exit code."""
    from gandissect.artifacts.quality import format_table, gan_quality
    from gandissect.cli import load_model_and_segmenter

    if args.samples < 2:  # --batch-size >= 1 and --samples >= 1 are checked by the parser
        raise ValueError(f"--samples must be >= 2 (a covariance needs two images), got "
                         f"{args.samples}")
    gen, seg = load_model_and_segmenter(args)
    with torch.no_grad():
        result = gan_quality(gen, seg, samples=args.samples, seed=args.seed,
                             batch_size=args.batch_size, progress=not args.no_progress)
    result["model"], result["segmenter"] = args.model, args.segmenter
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``gan-quality`` standalone (``python -m gandissect.cli.quality ...``): the same as
    ``gandissect gan-quality ...``, with the same checks and error messages."""
    from gandissect.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["gan-quality"]:  # the form this entry point used to require
        args = args[1:]
    return cli_main(["gan-quality", *args])


if __name__ == "__main__":
    raise SystemExit(main())
