"""The ``gandissect artifacts`` subcommand: rank a layer's units as artifact causes, then ablate
the top-k beside k random and the k lowest-scoring units and measure realism.

Example::

    gandissect artifacts --model toyworld --layer layer6 --out results/artifacts

Scores units on ``--samples`` latents of ``--seed``; the removal study uses ``--eval-samples``
latents of ``--eval-seed`` (default ``--seed + 1``) and measures the unedited generator on
``--eval-seed + 1`` too (seed-to-seed noise); random-k is ``--random-draws`` draws (mean, SD).

Writes ``DIR/artifacts.json`` (ranking, scores, realism-vs-k table), ``DIR/removal.png``,
``DIR/unit_<u>_top.png`` (top images of the highest-scoring units) and ``DIR/before.png`` /
``DIR/after_top<k>.png`` (the same samples before and after ablating the top-k units).

``--cluster local:N`` or ``--scheduler tcp://HOST:PORT`` (``pip install 'gandissect[dask]'``)
run the per-unit scores' top-set images and verification measurements (method ``effect``) as
tasks on a Dask cluster: the same scores as one process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts.removal import METHODS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``artifacts`` parser to ``subparsers``."""
    p = subparsers.add_parser(
        "artifacts", help="find units that cause unrealistic output and remove them",
        description="Score every unit of a layer as an artifact cause (default 'effect': the "
                    "predicted drop of the whole generator's FID when the unit alone is set to "
                    "its mean, verified by measurement for the best candidates), then remove "
                    "the top-k / random-k (several draws) / bottom-k units and measure realism "
                    "on evaluation samples of another seed.")
    p.add_argument("--model", default="toyworld", help="generator name (see models.available())")
    p.add_argument("--layer", default="layer4")
    p.add_argument("--samples", type=int, default=1000, help="samples for the per-unit scores")
    p.add_argument("--eval-samples", type=int, default=2000,
                   help="samples per realism measurement in the removal study")
    p.add_argument("--seed", type=int, default=0, help="latent seed of the scoring samples")
    p.add_argument("--eval-seed", type=int, default=None,
                   help="latent seed of the removal study's samples (default: --seed + 1); "
                        "the unedited generator is also measured on --eval-seed + 1 (noise)")
    p.add_argument("--measure", choices=("fid", "discriminator"), default="fid")
    p.add_argument("--method", choices=METHODS, default="effect")
    p.add_argument("--replace", choices=("mean", "zero"), default="mean",
                   help="what a removed unit is set to: its mean activation or 0")
    p.add_argument("--top", type=int, default=None, help="images in each unit's top set")
    p.add_argument("--pool", type=int, default=10,
                   help="effect method: verify the best POOL units of each screen by measurement")
    p.add_argument("--verify-samples", type=int, default=500,
                   help="effect method: scoring samples per verification measurement")
    p.add_argument("--random-draws", type=int, default=5,
                   help="random unit sets per k in the removal study")
    p.add_argument("--ks", default="5,10,20", help="comma-separated k values")
    p.add_argument("--reference-samples", type=int, default=2000,
                   help="rendered held-out scenes for the FID reference statistics")
    p.add_argument("--checkpoint", default=None,
                   help="Toyworld only: read G (EMA) and D from a training checkpoint "
                        "(runs/gan/checkpoint.pt) instead of the shipped weights")
    p.add_argument("--plant", default=None,
                   help="ground-truth demo: comma-separated units of --layer that get planted "
                        "checkerboard artifacts (gandissect.artifacts.plant) before the search")
    p.add_argument("--batch-size", type=int, default=100)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cluster", metavar="local:N", default=None,
                       help="score units (method effect) on a Dask cluster of N worker processes "
                            "(one thread each) started for the scoring; the same scores (needs "
                            "gandissect[dask])")
    where.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="score units on the running Dask cluster whose scheduler is at "
                            "ADDRESS (tcp://HOST:PORT)")
    p.add_argument("--scheduler-timeout", type=float, default=10.0,
                   help="seconds to wait for --scheduler and its first worker (default 10)")
    p.add_argument("--out", default="results/artifacts")
    p.add_argument("--json", action="store_true", help="print the JSON result")
    p.set_defaults(func=run)


#: Generators that draw Toyworld scenes (the FID measure's reference distribution).
TOYWORLD_MODELS = ("toyworld", "planted")


def _load(args: argparse.Namespace) -> tuple[Any, nn.Module | None]:
    """The generator and its discriminator (``None`` when the model has none)."""
    if args.checkpoint:
        if args.model != "toyworld":
            raise ValueError("--checkpoint only applies to --model toyworld")
        from models.toyworld_gan import ToyworldDiscriminator, ToyworldGenerator

        path = Path(args.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"--checkpoint {path} does not exist or is not a file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to read means a bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(f"--checkpoint {path} is not a readable PyTorch checkpoint "
                             f"({type(exc).__name__}{': ' + first if first else ''}); give a "
                             "checkpoint written by python -m models.train_toyworld_gan") from None
        if not isinstance(state, dict) or not {"g_ema", "d"} <= set(state):
            raise ValueError(f"{args.checkpoint} is not a Toyworld GAN training checkpoint "
                             "(needs keys g_ema and d)")
        settings = state.get("settings", {}) if isinstance(state.get("settings"), dict) else {}
        try:
            tgen = ToyworldGenerator(upsample=str(settings.get("upsample", "transpose")))
        except ValueError as exc:
            raise ValueError(f"{args.checkpoint}: settings.upsample: {exc}") from None
        tdisc = ToyworldDiscriminator(mbstd_group=int(settings.get("mbstd_group", 0)))
        try:
            tgen.load_state_dict(state["g_ema"])
            tdisc.load_state_dict(state["d"])
        except RuntimeError as exc:
            raise ValueError(f"{args.checkpoint} does not fit the Toyworld GAN of this version "
                             f"({str(exc).splitlines()[0]}); use a checkpoint written by "
                             "python -m models.train_toyworld_gan") from None
        for part, net in (("g_ema", tgen), ("d", tdisc)):
            bad = [k for k, v in net.state_dict().items()
                   if v.is_floating_point() and not bool(torch.isfinite(v).all())]
            if bad:
                raise ValueError(f"--checkpoint {path}: {part} holds NaN or infinite weights "
                                 f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                                 "the training diverged, use an earlier checkpoint")
        return tgen.eval(), tdisc.eval()
    import models

    gen = models.load(args.model)
    disc: nn.Module | None = None
    if args.model == "toyworld":
        from models.toyworld_gan import load_discriminator

        disc = load_discriminator() if args.measure == "discriminator" else None
    elif args.measure == "discriminator":
        raise ValueError(f"model {args.model!r} has no bundled discriminator; use "
                         "--measure fid")
    return gen, disc


def _int_list(option: str, text: str, minimum: int) -> list[int]:
    """``"5,10"`` -> ``[5, 10]``, each >= ``minimum``, with a clear error for anything else."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated integers like 5,10; got {text!r}"
                         ) from None
    if not values or min(values) < minimum:
        raise ValueError(f"{option} needs integers >= {minimum}, got {text!r}")
    return values


def _cluster(args: argparse.Namespace) -> contextlib.AbstractContextManager[Any]:
    """What ``--cluster`` / ``--scheduler`` ask for, checked before any model is loaded (a bad
    spec, a method that runs here, or distributed missing raise here): a context giving a
    Dask client, or None."""
    if args.cluster is None and args.scheduler is None:
        return contextlib.nullcontext(None)
    from ..dissection.cluster import dask_client, parse_cluster, require_distributed

    if args.method != "effect":
        raise ValueError(f"--cluster and --scheduler run the 'effect' method's per-unit work on "
                         f"a Dask cluster; --method {args.method} runs in this process")
    if args.cluster is not None:
        parse_cluster(args.cluster)
    require_distributed()
    return dask_client(args.cluster, args.scheduler, timeout=args.scheduler_timeout)


def run(args: argparse.Namespace) -> int:
    """Execute the subcommand; returns the process exit code."""
    import segmenters

    from ..artifacts.realism import (
        DiscriminatorMeasure,
        FIDMeasure,
        SegmenterFeatures,
        check_fid_samples,
        limit_numpy_blas_threads,
    )
    from ..artifacts.removal import artifact_scores, plot_removal, removal_edit, removal_study
    from ..common.imaging import make_grid, save_png, to_uint8
    from ..intervention.edit import intervene

    torch.set_num_threads(1)
    limit_numpy_blas_threads(1)
    ks = _int_list("--ks", args.ks, minimum=1)
    eval_seed = args.seed + 1 if args.eval_seed is None else args.eval_seed
    noise_seed = eval_seed + 1
    if args.seed in (eval_seed, noise_seed):
        raise ValueError(f"--eval-seed {eval_seed} (and {noise_seed}, the noise seed) must "
                         f"differ from --seed {args.seed}: the removal study must not reuse the "
                         "samples that chose the units")
    cluster = _cluster(args)
    gen, disc = _load(args)
    if args.measure == "fid" and args.model not in TOYWORLD_MODELS:
        print(f"warning: the FID reference is rendered Toyworld scenes (features of the Toyworld "
              f"segmenter), so it measures realism only for generators of Toyworld scenes, not "
              f"for {args.model!r}", file=sys.stderr)
    if args.layer not in gen.layer_names:
        raise ValueError(f"unknown layer {args.layer!r}; valid layers: "
                         f"{', '.join(gen.layer_names)}")
    clean = gen
    planted_units: list[int] = []
    if args.plant:
        from ..artifacts.plant import plant_artifacts

        planted_units = _int_list("--plant", args.plant, minimum=0)
        gen = plant_artifacts(gen, args.layer, planted_units)
    measure: FIDMeasure | DiscriminatorMeasure
    if args.measure == "fid":
        feats = SegmenterFeatures.from_segmenter(segmenters.load("toyworld"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_fid_samples(args.eval_samples, feats.dim)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        measure = FIDMeasure(feats, args.reference_samples, batch_size=args.batch_size)
    else:
        measure = DiscriminatorMeasure(disc, args.batch_size)
    out = Path(args.out)
    t0 = time.time()
    print(f"scoring {args.layer} units ({args.method}, {args.samples} samples of seed "
          f"{args.seed})...", file=sys.stderr)
    try:
        with cluster as client:
            scores = artifact_scores(gen, args.layer, measure, args.samples, args.seed,
                                     args.method, args.top, args.batch_size, args.replace,
                                     args.pool, args.verify_samples, client=client)
    except ConnectionError as e:                 # --scheduler unreachable or without workers
        raise ValueError(str(e)) from e
    t_scores = time.time() - t0
    ranking = scores.ranking()
    print(f"removal study ({args.eval_samples} samples of seed {eval_seed}, "
          f"{args.random_draws} random draws per k)...", file=sys.stderr)
    study = removal_study(gen, args.layer, ranking, measure, ks, args.eval_samples, eval_seed,
                          random_draws=args.random_draws, replacement=scores.replacement,
                          noise_seed=noise_seed, replace=args.replace)
    t_total = time.time() - t0
    extra: dict[str, Any] = {}
    if planted_units:
        extra = {"planted_units": planted_units,
                 "planted_ranks": [ranking.index(u) for u in planted_units],
                 "unplanted_baseline": measure.score(clean, args.eval_samples, eval_seed)}
    plot_removal(study, out / "removal.png")
    with torch.no_grad():
        for u in ranking[:5]:
            idx = scores.top_samples[u][:8].tolist()
            z = torch.cat([gen.sample_latents(1, args.seed, i) for i in idx])
            save_png(make_grid(to_uint8(gen(z).clamp(-1, 1)), ncol=8, scale=2),
                     out / f"unit_{u}_top.png")
        z = gen.sample_latents(16, eval_seed)
        save_png(make_grid(to_uint8(gen(z).clamp(-1, 1)), ncol=8, scale=2), out / "before.png")
        k = max(ks)
        with intervene(gen, removal_edit(args.layer, ranking[:k], scores.replacement)):
            after = gen(z).clamp(-1, 1)
        save_png(make_grid(to_uint8(after), ncol=8, scale=2), out / f"after_top{k}.png")
    result = {"model": args.model, "checkpoint": args.checkpoint, "seed": args.seed,
              "eval_seed": eval_seed, "eval_samples": args.eval_samples,
              "scores": scores.to_dict(), "removal": study.to_dict(), **extra,
              "seconds": {"scores": round(t_scores, 1), "total": round(t_total, 1)}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "artifacts.json").write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"top artifact units of {args.layer}: {ranking[:10]}")
        print(study.table())
        if planted_units:
            print(f"planted units {planted_units} ranked {extra['planted_ranks']}; "
                  f"unplanted generator: {extra['unplanted_baseline']:.4f}")
        print(f"seconds: scoring {t_scores:.0f}, total {t_total:.0f}")
    print(f"wrote {out}/artifacts.json, removal.png, unit_*_top.png, before.png, "
          f"after_top{max(ks)}.png", file=sys.stderr)
    return 0
