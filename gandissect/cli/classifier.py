"""The ``gandissect class-ablation`` subcommand: which units of a classifier layer each class
depends on, and what zeroing them does to that class and to the others (PNAS 2020).

Example::

    gandissect class-ablation --model toyworld-classifier --layer conv5 \\
        --dissection results/classifier --out results/class-ablation

Units are ranked per class by single-unit ablation on ``--rank-samples`` images of
``--rank-seed``; the top-k / random-k curves are measured on ``--samples`` other images of
``--seed`` (Toyworld typed scenes, balanced over the scene types). With ``--dissection`` (a
``dissect --probe`` folder of the same model) each important unit is shown with its concept.
Writes ``ablation.json`` and ``ablation.png`` to ``--out``.

``gandissect explain`` explains one prediction: the units of a layer that contributed most to
the predicted class (gradient x activation), with their dissected concepts and regions::

    gandissect explain --model toyworld-classifier --layer conv5 \
        --dissection results/classifier --seed 11 --index 3 --out results/explain
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``class-ablation`` parser to ``subparsers``."""
    p = subparsers.add_parser(
        "class-ablation", help="per class, zero a classifier's most important units and "
                               "measure accuracy (vs random units)",
        description="Rank each class's units of a classifier layer by single-unit ablation, "
                    "then zero the top k (and k random units) and measure that class's "
                    "accuracy and the other classes' on held-out Toyworld scenes.")
    p.add_argument("--model", default="toyworld-classifier",
                   help="classifier (toyworld-classifier, or toyworld-classifier:PATH)")
    p.add_argument("--layer", required=True, help="layer whose units are ablated")
    p.add_argument("--samples", type=int, default=600,
                   help="images the curves are measured on (default 600)")
    p.add_argument("--seed", type=int, default=11, help="scene seed of those images")
    p.add_argument("--rank-samples", type=int, default=600,
                   help="images the units are ranked on (default 600)")
    p.add_argument("--rank-seed", type=int, default=12, help="scene seed of those images")
    p.add_argument("--ks", default="1,2,4,8,16,32",
                   help="comma-separated numbers of units to zero (default 1,2,4,8,16,32)")
    p.add_argument("--draws", type=int, default=5, help="random unit sets per k (default 5)")
    p.add_argument("--dissection", default=None,
                   help="dissect --probe output folder of this model: label the units")
    p.add_argument("--ranking", default=None, metavar="ABLATION_JSON",
                   help="reuse the single-unit ranking of an earlier run's ablation.json (same "
                        "model, --layer, --rank-seed and --rank-samples) instead of recomputing "
                        "it (the costly part: one pass per unit)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)

    e = subparsers.add_parser(
        "explain", help="the units (and their concepts) behind one classifier prediction",
        description="For one typed Toyworld scene, the units of a classifier layer that "
                    "contributed most to the predicted class (gradient x activation), with "
                    "their dissected labels and regions. Writes explain.png and explain.json.")
    e.add_argument("--model", default="toyworld-classifier",
                   help="classifier (toyworld-classifier, or toyworld-classifier:PATH)")
    e.add_argument("--layer", required=True)
    e.add_argument("--dissection", required=True,
                   help="dissect --probe output folder of this model (labels and thresholds)")
    e.add_argument("--seed", type=int, default=11, help="scene seed")
    e.add_argument("--index", type=int, default=0, help="scene index (type: index mod 6)")
    e.add_argument("--top", type=int, default=5, help="units to show (default 5)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=run_explain)


def _toyworld_classifier(spec: str, device: str) -> Any:
    """The Toyworld classifier named by ``spec`` (the only one these commands can feed)."""
    from gandissect.common.specs import split_spec
    from models.classifiers import load_classifier

    name, kw = split_spec(spec)
    if name != "toyworld-classifier":
        raise ValueError(f"this command renders labelled Toyworld scenes, so it takes "
                         f"toyworld-classifier[:PATH], not {name!r} (for other classifiers use "
                         f"gandissect.intervention.accuracy from Python with your own images)")
    return load_classifier(name, path=kw.get("path"), device=device)


def _layer_result(folder: str, layer: str) -> Any:
    from gandissect.dissection.results import load_results

    results = load_results(folder)
    if layer not in results:
        raise ValueError(f"--dissection {folder} has no layer {layer!r} (it has "
                         f"{', '.join(results)})")
    return results[layer]


def _saved_ranking(args: argparse.Namespace) -> Any:
    """The :class:`UnitImportance` stored in ``args.ranking`` (an ``ablation.json``), checked
    against this run's model, layer and ranking images."""
    import numpy as np

    from gandissect.intervention.accuracy import UnitImportance

    data = json.loads(Path(args.ranking).read_text())
    want = {"model": args.model, "layer": args.layer,
            "ranked_on": {"seed": args.rank_seed, "samples": args.rank_samples}}
    got = {k: data.get(k) for k in want}
    if got != want:
        raise ValueError(f"--ranking {args.ranking} was made with {got}, this run asks for "
                         f"{want}; rerun without --ranking")
    return UnitImportance(args.layer, list(data["classes"]), np.array(data["base_accuracy"]),
                          np.array(data["single_unit_drop"]),
                          np.array(data["single_unit_logit_drop"]), args.rank_samples)


def run_explain(args: argparse.Namespace) -> int:
    """Execute ``gandissect explain``; returns the process exit code."""
    from gandissect.intervention.accuracy import explain_prediction, plot_explanation

    if args.index < 0 or args.top < 1:
        raise ValueError(f"need --index >= 0 and --top >= 1, got {args.index} and {args.top}")
    model = _toyworld_classifier(args.model, args.device)
    result = _layer_result(args.dissection, args.layer)
    from models.toyworld.render import SCENE_TYPES, render_scene

    kind = SCENE_TYPES[args.index % len(SCENE_TYPES)]
    scene = render_scene(args.seed, args.index, int(getattr(model, "input_size", 64)), kind)
    image = (torch.from_numpy(scene.image).float() + 1) / 2
    exp = explain_prediction(model, args.layer, image, result, top=args.top)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"scene {args.index} of seed {args.seed} (type {kind}): predicted {exp.cls} "
          f"({exp.probability:.1%})")
    for u, c, lab, iou, ok in zip(exp.units, exp.contributions, exp.labels, exp.ious,
                                  exp.interpretable, strict=True):
        print(f"  unit {u:4d}  contribution {c:8.3f}  {lab:12s} IoU {iou:.3f}"
              + ("" if ok else "  (not interpretable)"))
    (out / "explain.json").write_text(json.dumps({
        "seed": args.seed, "index": args.index, "scene_type": kind, "predicted": exp.cls,
        "probability": exp.probability, "layer": args.layer, "units": [
            {"unit": u, "contribution": c, "label": lab, "iou": iou, "interpretable": ok}
            for u, c, lab, iou, ok in zip(exp.units, exp.contributions, exp.labels, exp.ious,
                                          exp.interpretable, strict=True)]}, indent=1))
    print(f"wrote {plot_explanation(image, exp, out / 'explain.png')}")
    return 0


def toyworld_scenes(seed: int, n: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Typed Toyworld scenes ``0..n-1`` of ``seed`` as classifier input (float RGB in
    [0, 1]) and their scene-type labels."""
    from models.toyworld.render import render_typed_batch

    images, _, labels = render_typed_batch(seed, 0, n, size)
    return (torch.from_numpy(images) + 1) / 2, torch.from_numpy(labels)


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise ValueError(f"--ks {text!r}: expected comma-separated integers, e.g. 1,2,4,8") \
            from None
    if not ks or ks[0] < 1:
        raise ValueError(f"--ks {text!r}: numbers of units must be >= 1")
    return ks


def run(args: argparse.Namespace) -> int:
    """Execute the subcommand; returns the process exit code."""
    from gandissect.intervention.accuracy import (
        ablation_curves,
        plot_ablation_curves,
        unit_concepts,
        unit_importance,
    )

    if args.seed == args.rank_seed:
        raise ValueError("--seed and --rank-seed must differ: units ranked and measured on the "
                         "same images would fit the curve to noise")
    ks = _ks(args.ks)
    model = _toyworld_classifier(args.model, args.device)
    result = None
    if args.dissection is not None:
        result = _layer_result(args.dissection, args.layer)
    size = int(getattr(model, "input_size", 64))
    if args.ranking is not None:
        imp = _saved_ranking(args)
    else:
        rank_x, rank_y = toyworld_scenes(args.rank_seed, args.rank_samples, size)
        imp = unit_importance(model, args.layer, rank_x, rank_y, batch_size=args.batch_size,
                              progress=not args.no_progress)
    if ks[-1] > imp.units:
        raise ValueError(f"--ks goes up to {ks[-1]} but {args.layer} has {imp.units} units")
    x, y = toyworld_scenes(args.seed, args.samples, size)
    curves = ablation_curves(model, imp, x, y, ks=ks, draws=args.draws, seed=args.seed,
                             batch_size=args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    print(f"{args.layer}: accuracy of each class with its top-k units zeroed (random k: mean "
          f"of {args.draws}); other classes' mean in brackets")
    print("class        " + " ".join(f"{'k=' + str(k):>14s}" for k in [0, *ks]))
    for cls, c in curves.items():
        cells = [f"{c.base_accuracy:.2f} ({c.base_others:.2f})"] + \
            [f"{a:.2f} ({o:.2f})" for a, o in zip(c.accuracy, c.others, strict=True)]
        rand = [f"{c.base_accuracy:.2f} ({c.base_others:.2f})"] + \
            [f"{a:.2f} ({o:.2f})" for a, o in zip(c.random_accuracy.mean(0),
                                                  c.random_others.mean(0), strict=True)]
        print(f"{cls:12s} " + " ".join(f"{v:>14s}" for v in cells))
        print(f"{'  random':12s} " + " ".join(f"{v:>14s}" for v in rand))
        row = c.as_dict()
        if result is not None:
            row["unit_concepts"] = unit_concepts(result, c.units[:max(ks)])
            tops = ", ".join(f"{u['unit']} {u['label']}" + ("" if u["interpretable"] else "?")
                             for u in row["unit_concepts"][:5])
            print(f"{'  top units':12s} {tops}")
        rows.append(row)
    payload = {"model": args.model, "layer": args.layer, "ranked_on": {
        "seed": args.rank_seed, "samples": args.rank_samples}, "measured_on": {
        "seed": args.seed, "samples": args.samples}, "ks": ks, "draws": args.draws,
        "classes": imp.classes, "base_accuracy": imp.base_accuracy.tolist(),
        "single_unit_drop": imp.drop.tolist(), "single_unit_logit_drop": imp.logit_drop.tolist(),
        "curves": rows}
    (out / "ablation.json").write_text(json.dumps(payload, indent=1))
    plot = plot_ablation_curves(curves, out / "ablation.png",
                                title=f"{args.model} {args.layer}: zeroing each class's top units")
    print(f"wrote {out / 'ablation.json'} and {plot}")
    return 0
