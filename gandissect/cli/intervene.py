"""CLI subcommands ``ablate`` and ``insert``: measure the causal effect of a unit set on a concept.

``gandissect ablate --model planted --segmenter planted --layer layout --concept tree
--top-k 2 --rank-by ace --samples 200 --seed 0 --out results/ablate --json``
writes ``result.json``, ``effect_vs_k.png`` (top-k vs random units), ``before_after.png``
(rows: original, edited, random units edited) and, for ``insert --heatmap``, ``heatmap.png``.

``--top-k`` ranks units on other samples than the effect is measured on: ace and optimized
rankings use ``--rank-samples`` latents of ``--rank-seed`` (default ``--seed + 1``), an iou
ranking the dissection's own seed (refused when it is ``--seed``); ``result.json`` records both
(``ranked_on``, ``measured_on``).

``--cluster local:N`` or ``--scheduler tcp://HOST:PORT`` (needs ``pip install
'gandissect[dask]'``) run the ace ranking's single-unit ablations as tasks on a Dask cluster
(models sent once per worker); the ranking is the same as without.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.imaging import make_grid, save_png, to_uint8
from ..common.jsonsafe import strict_json
from ..intervention.causal import causal_effect, random_units, unit_statistics
from ..intervention.edit import Edit, intervene, layer_shape
from ..intervention.ranking import (
    UnitRanking,
    default_ks,
    effect_sweep,
    optimize_alpha,
    plot_sweep,
    rank_by_iou,
    single_unit_ace,
)


def parse_units(text: str) -> list[int]:
    """``"3,17"`` -> ``[3, 17]`` with a clear error for anything else."""
    try:
        units = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--units must be comma-separated unit indices like 3,17; got {text!r}"
                         ) from None
    if not units:
        raise ValueError("--units is empty; give unit indices like 3,17")
    return units


def load_mask(args: argparse.Namespace, h: int, w: int) -> torch.Tensor | None:
    """The spatial mask from ``--box y0,x0,y1,x1`` (layer cells, end exclusive) or ``--mask``
    (a ``.npy`` array in [0, 1] or a grayscale PNG, any size; resized by the Edit rule)."""
    if args.box and args.mask:
        raise ValueError("give --box or --mask, not both")
    if args.box:
        try:
            y0, x0, y1, x1 = (int(t) for t in args.box.split(","))
        except ValueError:
            raise ValueError(f"--box must be y0,x0,y1,x1 (layer cells), got {args.box!r}"
                             ) from None
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(f"--box {args.box} does not fit the layer grid {h}x{w} "
                             "(need 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w)")
        m = torch.zeros(h, w)
        m[y0:y1, x0:x1] = 1.0
        return m
    if args.mask:
        path = Path(args.mask)
        if not path.exists():
            raise FileNotFoundError(f"mask file {path} does not exist")
        try:
            if path.suffix == ".npy":
                arr = np.load(path, allow_pickle=False).astype(np.float32)
            else:
                from PIL import Image

                with Image.open(path) as im:
                    arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        except (OSError, ValueError, EOFError) as exc:  # PIL's UnidentifiedImageError is OSError
            raise ValueError(f"--mask {path} is not a readable mask: give a .npy array in "
                             f"[0, 1] or a grayscale image such as a PNG ({exc})") from None
        mask = torch.from_numpy(arr)
        Edit(args.layer, [0], mask=mask)  # validates dimensions and range
        return mask
    return None


def _dissect_command(folder: Path, layer: str) -> str:
    """The ``gandissect dissect`` command that makes ``folder`` (from its config.json when
    readable, else with placeholders)."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
        return (f"gandissect dissect --model {cfg['model_name'] or 'MODEL'} --segmenter "
                f"{cfg['segmenter_name'] or 'SEGMENTER'} "
                + " ".join(f"--layer {name}" for name in cfg["layers"])
                + f" --samples {cfg['samples']} --seed {cfg['seed']} --out {folder}")
    except (OSError, ValueError, KeyError, TypeError):
        return f"gandissect dissect --model MODEL --segmenter SEGMENTER --layer {layer} " \
               f"--out {folder}"


def read_dissection(folder: str, layer: str) -> Any:
    """The :class:`~gandissect.dissection.results.LayerResult` of ``layer`` in the dissection
    output ``folder``; a missing or damaged file raises a ValueError that names it and says how
    to regenerate the folder."""
    from safetensors import SafetensorError

    from ..dissection.results import LayerResult, layer_filename

    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"--dissection {path} is not a folder; give the output folder of "
                         f"`gandissect dissect` ({_dissect_command(path, layer)})")
    index = path / "results.json"
    if not index.is_file():
        raise ValueError(f"--dissection {path} holds no finished dissection (results.json is "
                         f"missing); run `{_dissect_command(path, layer)}` to finish or redo it")
    redo = f"delete {path} and run `{_dissect_command(path, layer)}` to regenerate it"
    try:
        layers = list(json.loads(index.read_text())["layers"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--dissection {path}: results.json is damaged ({exc!r}); {redo}"
                         ) from None
    if layer not in layers:
        raise ValueError(f"dissection {path} has no layer {layer!r}; it has: "
                         f"{', '.join(map(str, layers))}")
    stem = layer_filename(layer)
    missing = [name for name in (f"{stem}.json", f"{stem}.safetensors")
               if not (path / name).is_file()]
    if missing:
        raise ValueError(f"--dissection {path} is incomplete: {' and '.join(missing)} (layer "
                         f"{layer!r}) missing; {redo}")
    try:
        return LayerResult.load(path, layer)
    except SafetensorError as exc:
        damaged = f"{stem}.safetensors is damaged ({exc})"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        damaged = f"{stem}.json is damaged ({exc!r})"
    raise ValueError(f"--dissection {path}: {damaged}; {redo}")


def rank_seed(args: argparse.Namespace) -> int:
    """The seed whose samples rank units: ``--rank-seed``, by default ``--seed + 1``; never the
    seed the effect is measured on."""
    seed = args.seed + 1 if args.rank_seed is None else args.rank_seed
    if seed == args.seed:
        raise ValueError(f"--rank-seed {seed} must differ from --seed {args.seed}: units ranked "
                         "on the samples they are measured on overstate their effect")
    return int(seed)


def _ranking(args: argparse.Namespace, gen: Any, seg: Any, rank_samples: int
             ) -> tuple[UnitRanking, dict[str, Any]]:
    """The ranking for ``--top-k`` and what it was computed on (method, seed, samples)."""
    method = args.rank_by or ("iou" if args.dissection else "ace")
    if method == "iou":
        if not args.dissection:
            raise ValueError("--rank-by iou needs --dissection PATH (the output folder of "
                             "`gandissect dissect`); or use --rank-by ace")
        result = read_dissection(args.dissection, args.layer)
        seed, samples = result.meta.get("seed"), result.meta.get("samples")
        if seed == args.seed:
            raise ValueError(f"the dissection {args.dissection} ranked units on seed {seed}, "
                             f"the seed --seed measures on; give another --seed so that "
                             "ranking and measurement use different samples")
        return rank_by_iou(result, args.concept), {
            "method": "iou", "dissection": str(args.dissection), "seed": seed,
            "samples": samples}
    seed = rank_seed(args)
    ranked_on = {"method": method, "dissection": None, "seed": seed, "samples": rank_samples}
    if method == "ace":
        try:
            with _cluster(args) as client:
                return single_unit_ace(gen, seg, args.concept, args.layer, rank_samples, seed,
                                       batch_size=args.batch_size, client=client), ranked_on
        except ConnectionError as e:             # --scheduler unreachable or without workers
            raise ValueError(str(e)) from e
    return optimize_alpha(gen, seg, args.concept, args.layer, mode="ablate",
                          samples=rank_samples, seed=seed, batch_size=args.batch_size
                          ), ranked_on


@torch.no_grad()
def _grid(gen: Any, edits: list[list[Edit]], n: int, seed: int) -> np.ndarray:
    """Rows: the unedited samples, then each edit set applied to the same latents."""
    z = gen.sample_latents(n, seed)
    rows = [gen(z)]
    for es in edits:
        with intervene(gen, *es):
            rows.append(gen(z))
    return make_grid(to_uint8(torch.cat(rows)), ncol=n, scale=2)


def run(args: argparse.Namespace, mode: str) -> int:
    """Run ``ablate``/``insert`` with ``--threads`` torch threads (restored afterwards)."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return _run(args, mode)
    finally:
        torch.set_num_threads(old)


def _cluster(args: argparse.Namespace) -> contextlib.AbstractContextManager[Any]:
    """A context giving the Dask client ``--cluster`` / ``--scheduler`` ask for, or None."""
    if args.cluster is None and args.scheduler is None:
        return contextlib.nullcontext(None)
    from gandissect.dissection.cluster import dask_client

    return dask_client(args.cluster, args.scheduler, timeout=args.scheduler_timeout)


def _check_cluster(args: argparse.Namespace) -> None:
    """Refuse ``--cluster`` / ``--scheduler`` where nothing would run on the cluster, or
    with a bad spec or without distributed, before any model is loaded."""
    if args.cluster is None and args.scheduler is None:
        return
    from gandissect.dissection.cluster import parse_cluster, require_distributed

    if args.units or (args.rank_by or ("iou" if args.dissection else "ace")) != "ace":
        raise ValueError("--cluster and --scheduler run the single-unit ACE ranking on a Dask "
                         "cluster: use them with --top-k and --rank-by ace")
    if args.cluster is not None:
        parse_cluster(args.cluster)
    require_distributed()


def _run(args: argparse.Namespace, mode: str) -> int:
    """Rank or take units, measure the effect, sweep k, write JSON, plot and grids."""
    from gandissect.cli import load_model_and_segmenter

    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    _check_cluster(args)
    t0 = time.time()
    gen, seg = load_model_and_segmenter(args)
    seg.label_index(args.concept)
    n_units, h, w = layer_shape(gen, args.layer)
    mask = load_mask(args, h, w)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank_samples = args.rank_samples or min(args.samples, 100)
    sweep_samples = args.sweep_samples or min(args.samples, 100)
    ranking, ranked_on = None, None
    if args.units:
        units = parse_units(args.units)
        Edit(args.layer, units).check_layer(n_units, h, w)
        order: list[int] = units
    else:
        if not 1 <= args.top_k <= n_units:
            raise ValueError(f"--top-k must be in 1..{n_units} (units of layer {args.layer!r}), "
                             f"got {args.top_k}")
        ranking, ranked_on = _ranking(args, gen, seg, rank_samples)
        units = ranking.top(args.top_k)
        order = list(ranking.order)
    stats = None
    source = args.replacement
    if mode == "insert":
        con = (seg, args.concept) if source == "concept" else (None, None)
        stats = unit_statistics(gen, args.layer, args.samples, args.seed, q=args.q,
                                segmenter=con[0], concept=con[1], batch_size=args.batch_size)
    res = causal_effect(gen, seg, args.concept, units, args.layer, mode=mode,  # type: ignore[arg-type]
                        samples=args.samples, seed=args.seed, mask=mask,
                        random_baseline=not args.no_random, stats=stats, source=source,
                        batch_size=args.batch_size)
    files = ["result.json"]
    ks = default_ks(len(units))
    name = "units" if ranking is None else ranking.method
    sweep = effect_sweep(gen, seg, args.concept, args.layer, {name: order}, ks,
                         mode=mode, samples=sweep_samples,  # type: ignore[arg-type]
                         seed=args.seed, random_baseline=not args.no_random, stats=stats,
                         batch_size=args.batch_size)
    plot_sweep(sweep, ks, out / "effect_vs_k.png",
               title=f"{mode} {args.concept} @ {args.layer} ({args.model})")
    files.append("effect_vs_k.png")

    def rep(us: list[int]) -> float | torch.Tensor:
        return 0.0 if stats is None else stats.values(us, source)

    grid_edits = [[Edit(args.layer, units, replacement=rep(units), mask=mask)]]
    if not args.no_random:
        rand = random_units(n_units, len(units), units, args.seed)
        grid_edits.append([Edit(args.layer, rand, replacement=rep(rand), mask=mask)])
    save_png(_grid(gen, grid_edits, min(8, args.samples), args.seed), out / "before_after.png")
    files.append("before_after.png")
    heat = None
    if mode == "insert" and args.heatmap:
        from ..intervention.insertion import insertion_heatmap, plot_heatmap

        heat = insertion_heatmap(gen, seg, args.concept, units, args.layer,
                                 samples=args.heatmap_samples, seed=args.seed,
                                 size=args.heatmap_size, stats=stats,
                                 batch_size=args.batch_size)
        plot_heatmap(heat, out / "heatmap.png")
        files.append("heatmap.png")
    result: dict[str, Any] = {
        "command": mode, "model": args.model, "segmenter": args.segmenter,
        "layer": args.layer, "concept": args.concept, "units": units,
        "samples": args.samples, "seed": args.seed, "ranked_on": ranked_on,
        "measured_on": {"seed": args.seed, "samples": args.samples,
                        "sweep_samples": sweep_samples},
        "rank_by": None if ranking is None
        else ranking.method, "ranking": None if ranking is None else ranking.to_dict(
            min(len(ranking.order), max(20, len(units)))),
        "mask": None if mask is None else {"shape": list(mask.shape),
                                           "area": float(mask.float().mean())},
        "replacement": None if stats is None else {
            "source": source, "q": args.q,
            "values": [float(v) for v in stats.values(units, source)]},
        **res.to_dict(),
        "sweep": {"ks": ks, **{k: [e.to_dict() for e in v] for k, v in sweep.items()}},
        "heatmap": None if heat is None else heat.to_dict(),
        "files": files, "seconds": round(time.time() - t0, 2),
    }
    (out / "result.json").write_text(json.dumps(strict_json(result), indent=1))
    if args.json:
        print(json.dumps(strict_json(result), indent=1))
    else:
        e = res.effect
        line = (f"{mode} {args.concept} units {units} @ {args.layer}: concept fraction "
                f"{e.before:.4f} -> {e.after:.4f} ({e.relative:+.1%}, 95% CI "
                f"[{e.ci95[0]:+.4f}, {e.ci95[1]:+.4f}])")
        if res.random is not None:
            line += f"; {len(units)} random units: {res.random.relative:+.1%}"
        print(line)
        print(f"wrote {', '.join(files)} to {out}/")
    return 0


def _add_common(p: argparse.ArgumentParser, mode: str) -> None:
    p.add_argument("--model", default="toyworld",
                   help="generator name (gandissect models), or FAMILY:PATH")
    from gandissect.cli import add_load_options

    add_load_options(p)
    p.add_argument("--segmenter", default="toyworld",
                   help="segmenter name, or NAME:PATH (e.g. segformer:DIR)")
    p.add_argument("--layer", required=True, help="layer to edit")
    p.add_argument("--concept", required=True, help="concept to measure")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--units", help="comma-separated unit indices, e.g. 3,17")
    g.add_argument("--top-k", type=int, help="use the k best units of a ranking")
    p.add_argument("--rank-by", choices=("iou", "ace", "optimized"), default=None,
                   help="ranking for --top-k (default: iou with --dissection, else ace)")
    p.add_argument("--dissection", default=None, help="dissection output folder (for iou; "
                   "its seed must differ from --seed)")
    p.add_argument("--samples", type=int, default=200, help="samples the effect is measured on")
    p.add_argument("--rank-samples", type=int, default=None,
                   help="samples of --rank-seed that rank units (ace, optimized); default "
                        "min(samples, 100)")
    p.add_argument("--sweep-samples", type=int, default=None, help="default min(samples, 100)")
    p.add_argument("--seed", type=int, default=0,
                   help="latent seed of the samples the effect is measured on")
    p.add_argument("--rank-seed", type=int, default=None,
                   help="latent seed of the samples that rank units for --top-k (ace, "
                        "optimized); default --seed + 1, and never --seed, so that units are "
                        "not measured on the samples that chose them; result.json records both "
                        "(ranked_on, measured_on)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--box", default=None, help="edit only in y0,x0,y1,x1 (layer cells)")
    p.add_argument("--mask", default=None, help="edit only inside this mask (.npy or .png)")
    p.add_argument("--no-random", action="store_true", help="skip the random-unit baseline")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cluster", metavar="local:N", default=None,
                       help="rank (--rank-by ace) on a Dask cluster of N worker processes (one "
                            "thread each) started for the ranking; same ranking (needs "
                            "gandissect[dask])")
    where.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="rank (--rank-by ace) on the running Dask cluster whose scheduler "
                            "is at ADDRESS, e.g. tcp://HOST:8786")
    p.add_argument("--scheduler-timeout", type=float, default=10.0,
                   help="seconds to wait for --scheduler and its first worker (default 10)")
    p.add_argument("--out", default=f"results/{mode}")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    if mode == "insert":
        p.add_argument("--replacement", choices=("quantile", "concept"), default="quantile",
                       help="insert each unit's q quantile or its mean where the concept is")
        p.add_argument("--q", type=float, default=0.99)
        p.add_argument("--heatmap", action="store_true",
                       help="also map where insertion succeeds (square at each location)")
        p.add_argument("--heatmap-size", type=int, default=4, help="square side (layer cells)")
        p.add_argument("--heatmap-samples", type=int, default=16)
    else:
        p.set_defaults(replacement="quantile", q=0.99, heatmap=False)
    p.set_defaults(func=lambda args: run(args, mode))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ablate`` and ``insert`` subcommands."""
    _add_common(subparsers.add_parser(
        "ablate", help="switch units off and measure the concept's change (ACE)"), "ablate")
    _add_common(subparsers.add_parser(
        "insert", help="switch units on (optionally in a region) and measure the concept"),
        "insert")
