"""Sequence-model subcommands: ``seq-dissect`` (the engine on the bracket LSTM's states),
``seq-ablate`` (units off over a token span: bracket-closing accuracy vs random units),
``seq2seq`` (completion, attention, top-k, encoder-unit ablation) and ``lstmvis`` (the page)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _lm(args: argparse.Namespace) -> Any:
    from models.sequence.lstm import load_toyseq_lstm

    return load_toyseq_lstm(args.weights, device="cpu")


def _span(text: str | None) -> tuple[int, int] | None:
    """``"a:b"`` -> ``(a, b)``; ``None`` stays ``None`` (every token)."""
    if text is None:
        return None
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--span takes START:STOP token positions such as 10:40, got "
                         f"{text!r}") from None
    return a, b


def _cmd_dissect(args: argparse.Namespace) -> int:
    from models.sequence.seq2seq import load_toyseq_seq2seq

    from ..dissection.report import write_report
    from ..sequence.dissect import dissect_sequences
    from ..sequence.probe import SequenceProbe

    model = _lm(args) if args.model == "lstm" else load_toyseq_seq2seq(args.weights)
    probe = SequenceProbe(seed=args.seed, size=args.samples, length=args.length)
    results = dissect_sequences(model, probe, args.layer, quantile=args.quantile, out=args.out,
                                workers=args.workers, batch_size=args.batch_size,
                                model_name=f"toyseq_{args.model}", segmenter_name="brackets")
    write_report(results, args.out)
    for name, r in results.items():
        order = r.best_iou.argsort()[::-1][:args.top]
        print(f"{name}: {int(r.interpretable.sum())}/{r.units} units with IoU > "
              f"{r.iou_threshold:g} (q = {args.quantile}, {args.samples} sequences)")
        for u in order:
            print(f"  unit {int(u):3d}  {r.unit_labels[u]:12s} IoU {r.best_iou[u]:.3f}")
    print(f"wrote {Path(args.out) / 'report.html'}")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    import torch

    from ..dissection.results import load_results
    from ..sequence.dissect import category_units, concept_units
    from ..sequence.intervene import ablation_study
    from ..sequence.probe import SequenceProbe

    model = _lm(args)
    res = None
    if args.results:
        results = load_results(args.results)
        if args.layer not in results:
            raise ValueError(f"{args.results} holds no layer {args.layer!r}; it has "
                             f"{', '.join(results)}")
        res = results[args.layer]
    if args.units:
        units = [int(u) for u in args.units.replace(",", " ").split()]
    elif res is not None:
        concepts = args.concept or [c for c, cat in zip(res.labels, res.categories,
                                                        strict=True) if cat == "depth"]
        units = concept_units(res, concepts, args.top, args.min_iou)
        if not units:
            raise ValueError(f"no unit of {args.layer} is labelled {concepts} with IoU >= "
                             f"{args.min_iou}")
    else:
        raise ValueError("give --units or --results (a seq-dissect folder)")
    excluded: list[int] = []
    if args.exclude_category:
        if res is None:
            raise ValueError("--exclude-category needs --results (a seq-dissect folder)")
        excluded = category_units(res, args.exclude_category)
    probe = SequenceProbe(seed=args.seed, size=args.samples, length=args.length)
    with torch.no_grad():
        study = ablation_study(model, probe.inputs(0, args.samples), args.layer, units,
                               _span(args.span), args.draws,
                               replacement="mean" if args.replace == "mean" else 0.0,
                               exclude=excluded)
    if args.json:
        print(json.dumps(study.as_dict(), indent=1))
        return 0
    r = study.random
    print(f"{args.layer} units {', '.join(map(str, study.units))} set to "
          f"{'their mean' if args.replace == 'mean' else '0'} over tokens "
          f"{study.span[0]}..{study.span[1] - 1} of {args.samples} sequences (seed {args.seed})")
    print(f"  bracket-closing accuracy: {study.base:.4f} -> {study.ablated:.4f} "
          f"(drop {100 * study.drop:.1f} points)")
    size = int(model.rnn.hidden) - len(study.units) - len(study.excluded)
    pool = f"the {size} other {args.layer} units" + (
        f" (not the {len(study.excluded)} others labelled {'/'.join(args.exclude_category)})"
        if study.excluded else "")
    drops = [study.base - v for v in r]
    sem = f" +- {100 * study.random_drop_sem:.1f} points s.e.m." if len(r) > 1 else " points"
    print(f"  {len(r)} draws of {len(study.units)} random units from {pool}: mean "
          f"{sum(r) / len(r):.4f} (drop {100 * study.random_drop:.1f}{sem}; median drop "
          f"{100 * study.random_drop_median:.1f}; {sum(d <= 0.05 for d in drops)} of {len(r)} "
          f"draws within 5 points; min {min(r):.4f}, max {max(r):.4f})")
    return 0


def _cmd_seq2seq(args: argparse.Namespace) -> int:
    from models.sequence.seq2seq import load_toyseq_seq2seq

    from ..sequence.intervene import span_edit
    from ..sequence.seq2seq import encoder_effect, trace

    model = load_toyseq_seq2seq(args.weights)
    units = [int(u) for u in args.units.replace(",", " ").split()] if args.units else []
    edits = [span_edit(args.layer, units, len(args.text))] if units else []
    for name, ed in [("plain", [])] + ([("ablated", edits)] if edits else []):
        t = trace(model, args.text, args.top_k, ed)
        print(f"{name}: {t.source} -> {t.output}")
        for s, row in enumerate(t.top):
            att = t.attention[s]
            focus = int(att.argmax())
            print(f"  step {s}: {t.output[s]}  top-k "
                  + ", ".join(f"{tok} {p:.2f}" for tok, p in row)
                  + f"  attends to token {focus} {t.source[focus]!r} ({att[focus]:.2f})")
    if units and args.measure:
        eff = encoder_effect(model, args.layer, units, args.samples, draws=args.draws)
        print(json.dumps(eff.as_dict(), indent=1))
    return 0


def _cmd_lstmvis(args: argparse.Namespace) -> int:
    import torch

    from models.sequence.seq2seq import load_toyseq_seq2seq

    from ..dissection.results import load_results
    from ..sequence.dissect import dissect_sequences
    from ..sequence.explorer import SequenceExplorer
    from ..sequence.probe import SequenceProbe
    from ..sequence.view import build_view

    torch.set_num_threads(1)
    model = _lm(args)
    probe = SequenceProbe(seed=args.seed, size=args.samples, length=args.length)
    layers = args.layer or ["c1", "h1"]
    results = load_results(args.results) if args.results else \
        dissect_sequences(model, probe, layers)
    explorer = SequenceExplorer(model, probe, layers, args.samples, results)
    demo = build_view(explorer, load_toyseq_seq2seq())
    print(f"serving the LSTMVis view on http://{args.host}:{args.port}/")
    demo.queue().launch(server_name=args.host, server_port=args.port)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``seq-dissect``, ``seq-ablate``, ``seq2seq`` and ``lstmvis``."""
    from models.sequence.language import PROBE_SEED

    def common(p: argparse.ArgumentParser, samples: int) -> None:
        p.add_argument("--weights", default=None, help="another weights file of the model")
        p.add_argument("--samples", type=int, default=samples, help="sequences")
        p.add_argument("--length", type=int, default=64, help="tokens per sequence")
        p.add_argument("--seed", type=int, default=PROBE_SEED, help="the sequences' seed")

    p = subparsers.add_parser("seq-dissect", help="dissect the bracket LSTM's states on "
                              "token concepts (the image engine on 1 x T maps)")
    common(p, 2000)
    p.add_argument("--model", choices=["lstm", "seq2seq"], default="lstm",
                   help="the language model, or the encoder of the encoder-decoder")
    p.add_argument("--layer", action="append", default=None, help="h1 or c1 (repeatable)")
    p.add_argument("--quantile", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--top", type=int, default=10, help="units to print per layer")
    p.add_argument("--out", default="results/seq-dissect")
    p.set_defaults(func=lambda a: _cmd_dissect(_default_layers(a)))

    p = subparsers.add_parser("seq-ablate", help="switch LSTM units off over a token span: "
                              "bracket-closing accuracy vs random units")
    common(p, 500)
    p.add_argument("--layer", default="c1")
    p.add_argument("--units", default=None, help="comma-separated units (else --results)")
    p.add_argument("--results", default=None, help="a seq-dissect folder: take its units "
                   "labelled --concept (default: any depth concept) with IoU >= --min-iou")
    p.add_argument("--concept", action="append", default=None)
    p.add_argument("--top", type=int, default=None, help="at most this many units")
    p.add_argument("--min-iou", type=float, default=0.5)
    p.add_argument("--span", default=None, help="START:STOP tokens (default: all)")
    p.add_argument("--draws", type=int, default=10, help="random unit sets")
    p.add_argument("--exclude-category", action="append", default=None,
                   help="keep units labelled with a concept of this category (in --results, "
                   "IoU above its interpretability threshold) out of the random pool, e.g. "
                   "depth: random units are then units not tracking depth (repeatable)")
    p.add_argument("--replace", choices=["mean", "zero"], default="mean",
                   help="what an ablated unit is set to: its mean over the sequences "
                   "(default) or 0")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_ablate)

    p = subparsers.add_parser("seq2seq", help="bracket completion: attention, top-k per step, "
                              "encoder-unit ablation")
    p.add_argument("--text", default="^([{x}[", help="the source (starts with ^)")
    p.add_argument("--weights", default=None)
    p.add_argument("--layer", default="c1")
    p.add_argument("--units", default=None, help="encoder units to ablate")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--measure", action="store_true", help="also measure the ablation's "
                   "effect on held-out completions against random units")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--draws", type=int, default=10)
    p.set_defaults(func=_cmd_seq2seq)

    p = subparsers.add_parser("lstmvis", help="serve the LSTMVis / Seq2Seq-Vis page")
    common(p, 300)
    p.add_argument("--layer", action="append", default=None, help="default: c1 and h1")
    p.add_argument("--results", default=None, help="a seq-dissect folder (default: dissect "
                   "the page's sequences at start)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7861)
    p.set_defaults(func=_cmd_lstmvis)


def _default_layers(args: argparse.Namespace) -> argparse.Namespace:
    args.layer = args.layer or ["c1", "h1"]
    return args
