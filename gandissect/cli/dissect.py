"""The ``gandissect dissect`` subcommand: dissect layers of a generator, resumably.

Example::

    gandissect dissect --model toyworld --segmenter toyworld --layer layer4 --samples 1000 \\
        --seed 1 --out results/toyworld-layer4

Statistics are saved into ``--out`` as the run goes (atomically); running the same command again
after an interruption continues from the last save and ends with exactly the uninterrupted
result. A folder holding a run with other arguments is refused, and so is a folder another run
is using (it is locked while a run lasts) or whose saved state is damaged (it carries a
checksum; a state saved before checksums existed resumes with a warning): each exits with 3 and
says what to do. ``--workers N`` runs each pass over N spawned processes (one torch thread
each) with a bit-identical result; a run may be resumed with another ``--workers``.
``--cluster local:N`` runs it on a Dask cluster of N worker processes started for the run and
closed at the end, ``--scheduler tcp://HOST:PORT`` on a running Dask cluster (both need
``pip install 'gandissect[dask]'``); the result is the same, and a run may be resumed with or
without a cluster.

Network Dissection of a classifier on a probe set (``--probe`` instead of ``--segmenter``)::

    gandissect dissect --model toyworld-classifier --probe toyworld --layer conv3 \
        --layer conv5 --samples 2000 --out results/classifier

``--probe toyworld`` is the first ``--samples`` Toyworld scenes of the probe seed (typed
scenes, balanced over the six scene types, with whole-image scene labels; ``toyworld:colors``
adds Broden's per-pixel colour category), ``broden:PATH`` a
Broden folder (all its images unless ``--samples`` is smaller). Probe runs default to
Network Dissection's q = 0.005 and category-conditioned IoU (``--plain-iou`` turns it off).
``--rotate SEED`` dissects every layer in a random orthogonal basis (the random-rotation
baseline): compare its interpretable-unit counts with the unrotated run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

import torch


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dissect`` parser to ``subparsers``."""
    p = subparsers.add_parser(
        "dissect", help="label each unit of generator layers with a concept (IoU, resumable)",
        description="Dissect layers of a generator: per unit, the concept whose segmentation "
                    "best matches the unit's thresholded, upsampled activation (IoU). Writes "
                    "results (safetensors + JSON), dissect.json, plots and report.html to --out.")
    p.add_argument("--model", required=True,
                   help="generator name (see `gandissect models`), or FAMILY:PATH for a local "
                        "checkpoint; with --probe a classifier (see `gandissect classifiers`)")
    from gandissect.cli import add_load_options

    add_load_options(p)
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--segmenter", help="segmenter name (see `gandissect segmenters`)")
    labels.add_argument("--probe", metavar="toyworld[:colors]|broden:PATH",
                        help="dissect a classifier on a probe set with ground-truth masks "
                             "instead (Network Dissection)")
    p.add_argument("--rotate", type=int, default=None, metavar="SEED",
                   help="dissect each layer after a random orthogonal rotation of its units "
                        "(seeded): the random-rotation baseline")
    p.add_argument("--plain-iou", action="store_true",
                   help="with --probe: plain IoU instead of the category-conditioned default")
    p.add_argument("--layer", action="append", required=True, dest="layers",
                   help="layer to dissect (repeat for several)")
    p.add_argument("--samples", type=int, default=None,
                   help="number of generated samples (default 1000), or of probe images "
                        "(default: toyworld 2000, broden all)")
    p.add_argument("--seed", type=int, default=1, help="latent seed (sample i depends only on "
                   "(seed, i))")
    p.add_argument("--out", required=True, help="output folder (also holds the resume state)")
    p.add_argument("--quantile", type=float, default=None,
                   help="top fraction of activations above the unit threshold (default 0.01; "
                        "0.005 with --probe)")
    p.add_argument("--threshold", choices=("quantile", "iqr"), default="quantile",
                   help="quantile: one threshold per unit; iqr: per unit and concept, "
                        "maximising I(A;S)/H(A,S)")
    p.add_argument("--category-conditioned", action="store_true",
                   help="count IoU only over images where the concept's category is present")
    p.add_argument("--iou-threshold", type=float, default=0.04,
                   help="a unit is interpretable when its best IoU exceeds this")
    p.add_argument("--seg-resolution", type=int, default=None,
                   help="resize masks to this side length (default: segmenter output size)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: forward passes under bfloat16 autocast (faster on GPUs and "
                        "CPUs with native bfloat16, much slower where it is emulated); the "
                        "statistics stay exact on what they compute (default float32)")
    p.add_argument("--cache-mb", type=float, default=512,
                   help="in one process, keep up to this many MB of pass 1's activations and "
                        "masks so that pass 2 does not run the models again (same result; "
                        "0: memory independent of --samples; default 512)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (spawned, one torch thread each); every pass is split "
                        "into chunks of samples across them; the result is bit-identical to "
                        "--workers 1, and an interrupted run may resume with another count "
                        "(default 1: this process)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cluster", metavar="local:N", default=None,
                       help="run the chunks on a Dask cluster of N worker processes (one thread "
                            "each) started for this run (needs gandissect[dask])")
    where.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="run the chunks on the running Dask cluster whose scheduler is at "
                            "ADDRESS, e.g. tcp://HOST:8786 (needs gandissect[dask] here and on "
                            "the workers, with the same torch)")
    p.add_argument("--scheduler-timeout", type=float, default=10.0,
                   help="seconds to wait for --scheduler and its first worker (default 10)")
    p.add_argument("--checkpoint-seconds", type=float, default=30.0,
                   help="save statistics at least this often (seconds)")
    p.add_argument("--report-units", type=int, default=None,
                   help="show at most this many units per layer in report.html")
    p.add_argument("--no-report", action="store_true", help="skip dissect.json/report.html")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute the subcommand; returns the process exit code."""
    from gandissect.cli import load_model_and_segmenter
    from gandissect.dissection.config import (
        DissectLockedError,
        DissectMismatchError,
        DissectStateError,
    )
    from gandissect.dissection.engine import dissect
    from gandissect.dissection.report import write_report

    if args.probe is None and args.plain_iou:
        raise ValueError("--plain-iou is for --probe runs (generator runs use plain IoU unless "
                         "--category-conditioned)")
    if args.samples is not None and args.samples < 1:
        raise ValueError(f"need --samples >= 1, got {args.samples}")
    if args.batch_size < 1 or args.workers < 1:
        raise ValueError(f"need --batch-size and --workers >= 1, got {args.batch_size} and "
                         f"{args.workers}")
    cluster = _cluster(args)
    if args.probe is not None:
        gen, seg = load_classifier_and_probe(args)
        samples = len(seg) if args.samples is None else args.samples
        quantile = 0.005 if args.quantile is None else args.quantile
        conditioned = not args.plain_iou
        seg_name = args.probe
    else:
        gen, seg = load_model_and_segmenter(args)
        samples = 1000 if args.samples is None else args.samples
        quantile = 0.01 if args.quantile is None else args.quantile
        conditioned = args.category_conditioned
        seg_name = args.segmenter
    model_name = args.model
    if args.rotate is not None:
        from gandissect.dissection.rotation import Rotated, layer_units

        example = seg.images(0, 1).to(args.device) if args.probe is not None else \
            gen.sample_latents(1, 0, 0)
        gen = Rotated(gen, args.layers, seed=args.rotate,
                      units=[layer_units(gen, layer, example) for layer in args.layers])
        model_name = f"{args.model} (rotated, seed {args.rotate})"
    try:
        with cluster as client, torch.no_grad():
            results = dissect(
                gen, seg, args.layers, samples=samples, seed=args.seed,
                quantile=quantile, batch_size=args.batch_size,
                seg_resolution=args.seg_resolution, device=args.device,
                threshold=args.threshold, category_conditioned=conditioned,
                iou_threshold=args.iou_threshold, out=args.out,
                checkpoint_seconds=args.checkpoint_seconds, progress=not args.no_progress,
                workers=args.workers, client=client, model_name=model_name,
                segmenter_name=seg_name, dtype=args.dtype, cache_mb=args.cache_mb)
    except (DissectMismatchError, DissectLockedError, DissectStateError) as e:
        # exit 3: the folder holds or serves another run, or its saved state is damaged
        print(f"gandissect dissect: error: {e}", file=sys.stderr)
        return 3
    except ConnectionError as e:                 # --scheduler unreachable or without workers
        print(f"gandissect dissect: error: {e}", file=sys.stderr)
        return 2
    for name, r in results.items():
        print(f"{name}: {int(r.interpretable.sum())}/{r.units} units interpretable "
              f"(IoU > {r.iou_threshold:g})")
        top = sorted(range(r.units), key=lambda u: -r.best_iou[u])[:5]
        for u in top:
            print(f"  unit {u:4d}  {r.unit_labels[u]:12s} IoU {r.best_iou[u]:.3f}")
    if not args.no_report:
        if args.probe is not None:
            from gandissect.dissection.probe import ProbeModel

            gen = ProbeModel(gen, seg)
        path = write_report(results, args.out, generator=gen, seed=args.seed,
                            max_units=args.report_units)
        print(f"report: {path}")
    return 0


#: default number of Toyworld probe scenes
TOYWORLD_PROBE_SAMPLES = 2000


def load_classifier_and_probe(args: argparse.Namespace) -> tuple[Any, Any]:
    """The classifier ``args.model`` (``NAME`` or ``NAME:PATH``, see
    ``models.classifiers.load_classifier``) and the probe set ``args.probe``: ``toyworld``
    (typed scenes with scene labels; ``--samples`` of them, default
    :data:`TOYWORLD_PROBE_SAMPLES`), ``toyworld:colors`` (the same with Broden's 11 per-pixel
    colour labels) or ``broden:PATH``."""
    from gandissect.common.specs import split_spec
    from gandissect.probes.broden import BrodenProbe
    from gandissect.probes.toyworld import ToyworldProbe
    from models.classifiers import CLASSIFIERS, load_classifier

    name, kw = split_spec(args.model)
    if name not in CLASSIFIERS:
        raise ValueError(f"--probe dissects a classifier, and {name!r} is not one; known "
                         f"classifiers: {', '.join(CLASSIFIERS)} (generators are dissected "
                         f"with --segmenter)")
    model = load_classifier(name, path=kw.get("path"), device=args.device,
                            trust_pickle=bool(getattr(args, "trust_pickle", False)))
    kind, _, rest = args.probe.partition(":")
    if kind == "toyworld" and rest in ("", "colors"):    # rendered at the model's input size
        probe: Any = ToyworldProbe(size=args.samples or TOYWORLD_PROBE_SAMPLES, typed=True,
                                   scene_labels=True, colors=rest == "colors",
                                   resolution=int(getattr(model, "input_size", 64)))
    elif kind == "broden" and rest:
        probe = BrodenProbe(rest)
    else:
        raise ValueError(f"--probe {args.probe!r}: expected toyworld or broden:PATH (a Broden "
                         f"folder with index.csv and images/), or toyworld:colors")
    return model, probe


def _cluster(args: argparse.Namespace) -> contextlib.AbstractContextManager[Any]:
    """What ``--cluster`` / ``--scheduler`` ask for, checked before any work (a bad spec, or
    distributed not installed, raise here): a context giving a Dask client, or None."""
    if args.cluster is None and args.scheduler is None:
        return contextlib.nullcontext(None)
    from gandissect.dissection.cluster import dask_client, parse_cluster, require_distributed

    if args.workers > 1:
        raise ValueError("--workers starts local processes; with --cluster or --scheduler the "
                         "Dask workers run the chunks (for N local Dask workers: --cluster "
                         "local:N)")
    if args.cluster is not None:
        parse_cluster(args.cluster)
    require_distributed()
    return dask_client(args.cluster, args.scheduler, timeout=args.scheduler_timeout)
