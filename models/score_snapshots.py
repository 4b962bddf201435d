"""Score the snapshots of Toyworld GAN training runs, to choose which weights to ship.

    python -m models.score_snapshots runs/v2a [runs/v2b ...] [--samples 400] [--fid-samples 1000]

For every ``<run>/snapshots/iter_N/`` (written by ``train_toyworld_gan --snapshot-every``), and
the run's latest ``checkpoint.pt`` with ``--latest``: export it (``<snapshot>/w/``, BatchNorm
re-estimated over ``--bn-batches`` batches), then measure

- ``fsd`` and the generated/rendered rate of every concept (as ``gandissect gan-quality``, against
  the same held-out rendered scenes, computed once for all snapshots),
- ``coverage_ok``: every concept covering >= 1% of rendered pixels is drawn at >= 1/3 of its rate,
- ``fid``: FID in the Toyworld segmenter's encoder features (the ``fid`` realism measure of
  ``gandissect artifacts``),

and save an 8x8 sample grid (latent seed 12345) as ``<snapshot>/w/samples.png``. Scores are
cached in ``<snapshot>/w/score.json`` together with the settings that produced them, so a rerun
only scores new snapshots. Prints a Markdown table (also written to ``--table``; ``--plot`` draws
the scores against iteration) and recommends
the lowest-FID snapshot among those that pass the coverage rule: FID alone rewards a generator
that drops hard concepts (see models/TRAINING.md), so it must not choose on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"
SCORE_FILE = "score.json"


def find_snapshots(runs: Sequence[str | Path], latest: bool = False) -> list[Path]:
    """Snapshot folders (each holding ``checkpoint.pt``) of ``runs`` in run, then iteration
    order; with ``latest`` also each run folder itself (its newest checkpoint).

    A path that is itself a snapshot folder is taken as is. Raises ``FileNotFoundError`` naming
    the runs that hold no checkpoint at all."""
    found: list[Path] = []
    empty = []
    for run in map(Path, runs):
        snaps = sorted(p for p in (run / "snapshots").glob("iter_*") if (p / CHECKPOINT).is_file())
        if not snaps and (run / CHECKPOINT).is_file() and run.parent.name == "snapshots":
            snaps = [run]
        if latest and (run / CHECKPOINT).is_file() and run not in snaps:
            snaps.append(run)
        if not snaps:
            empty.append(str(run))
        found.extend(snaps)
    if empty:
        raise FileNotFoundError(
            f"no snapshots in {', '.join(empty)}: expected <run>/snapshots/iter_N/{CHECKPOINT} "
            "(train with --snapshot-every N), or pass --latest to score <run>/checkpoint.pt")
    return found


def label_of(folder: Path) -> str:
    """``v2a 2000`` for ``runs/v2a/snapshots/iter_002000``; ``v2a latest`` for ``runs/v2a``."""
    if folder.parent.name == "snapshots" and folder.name.startswith("iter_"):
        return f"{folder.parent.parent.name} {int(folder.name[5:])}"
    return f"{folder.name} latest"


def choose(scores: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The lowest-FID score among those with ``coverage_ok`` (``None`` if none passes)."""
    ok = [s for s in scores if s["coverage_ok"]]
    return min(ok, key=lambda s: s["fid"]) if ok else None


def markdown_table(scores: Sequence[dict[str, Any]], concepts: Sequence[str]) -> str:
    """One row per snapshot: FSD, FID, the coverage rule, and generated/rendered per concept."""
    head = ["checkpoint", "iteration", "FSD", "FID (floor)", "FID random enc. (floor)",
            "coverage", "0.5-2x band", *concepts]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in scores:
        band = ("ok" if s.get("rates_in_band") else
                "out: " + ", ".join(s.get("out_of_band", ["?"])))
        cells = [s["label"], str(s["iteration"]), f"{s['fsd']:.4f}",
                 f"{s['fid']:.1f} ({s.get('fid_floor', float('nan')):.1f})",
                 f"{s.get('fid_random', float('nan')):.2f} "
                 f"({s.get('fid_random_floor', float('nan')):.2f})",
                 "ok" if s["coverage_ok"] else "LOW: " + ", ".join(s["low"]), band]
        cells += [f"{s['ratios'][c]:.2f}" for c in concepts]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_scores(scores: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """PNG of FID, FSD and the lowest generated/rendered ratio (with the 1/3 line) against the
    training iteration, one line per run; snapshots failing the coverage rule are hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gandissect.common.imaging import save_figure

    runs: dict[str, list[dict[str, Any]]] = {}
    for s in scores:
        runs.setdefault(s["label"].rsplit(" ", 1)[0], []).append(s)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    panels = (("fid", "FID (segmenter features)"), ("fsd", "FSD"),
              ("min_ratio", "lowest generated / rendered"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for run, rows in runs.items():
            rows = sorted(rows, key=lambda r: r["iteration"])
            x = [r["iteration"] for r in rows]
            y = [min(r["ratios"][c] for c in r["checked"]) if key == "min_ratio" else r[key]
                 for r in rows]
            line, = ax.plot(x, y, "-", label=run)
            for xi, yi, r in zip(x, y, rows, strict=True):
                ax.plot(xi, yi, "o", color=line.get_color(),
                        markerfacecolor=line.get_color() if r["coverage_ok"] else "none")
        if key == "min_ratio":
            ax.axhline(1 / 3, color="gray", linestyle="--", label="1/3")
        ax.set_xlabel("iteration")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle("filled: every concept >= 1% of pixels drawn at >= 1/3 of its rate", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


#: Seed of the randomly initialised U-Net whose encoder gives the second FID.
RANDOM_ENCODER_SEED = 0
#: Issue 14's rate rule: concepts covering >= 0.2% of rendered pixels drawn at 0.5-2x.
RATE_BAND = (0.5, 2.0)
RATE_BAND_MIN_AREA = 0.002


def random_encoder_features() -> Any:
    """Pooled encoder features of a Toyworld-shaped U-Net with random weights (seeded by
    ``RANDOM_ENCODER_SEED``): a feature space no generator was trained against."""
    from gandissect.artifacts.realism import SegmenterFeatures
    from segmenters.toyworld import ToyworldUNet

    net = ToyworldUNet()
    net.reset_parameters(torch.Generator().manual_seed(RANDOM_ENCODER_SEED))
    return SegmenterFeatures(net.eval().down)


@torch.no_grad()
def rendered_fid(measure: Any, samples: int, start: int, batch_size: int) -> float:
    """FID of rendered held-out scenes ``start..start+samples-1`` against ``measure``'s
    reference (scenes ``0..start-1`` of the same seed): the floor a perfect generator would
    reach with this many samples."""
    from gandissect.artifacts.quality import HELD_OUT_SEED
    from models.toyworld.render import render_batch

    batches = (torch.from_numpy(render_batch(HELD_OUT_SEED, start + s, min(batch_size,
                                                                           samples - s), 64)[0])
               for s in range(0, samples, batch_size))
    return float(measure.distance(measure.stats(batches)))


class Scorer:
    """Reference statistics computed once; :meth:`score` measures one exported generator."""

    def __init__(self, samples: int, fid_samples: int, reference_samples: int, seed: int,
                 batch_size: int = 100, progress: bool = True) -> None:
        import segmenters
        from gandissect.artifacts.quality import HELD_OUT_SEED, rendered_fractions
        from gandissect.artifacts.realism import (
            FIDMeasure,
            SegmenterFeatures,
            limit_numpy_blas_threads,
        )

        if samples < 2 or fid_samples < 2:
            raise ValueError(f"--samples and --fid-samples must be >= 2, got {samples} and "
                             f"{fid_samples}")
        limit_numpy_blas_threads(1)
        self.samples, self.fid_samples, self.seed = samples, fid_samples, seed
        self.batch_size, self.progress = batch_size, progress
        self.segmenter = segmenters.load("toyworld")
        self.labels = list(self.segmenter.labels)
        self.reference, _ = rendered_fractions(self.segmenter, samples, HELD_OUT_SEED, 0,
                                               batch_size, progress, "rendered")
        self.fid = FIDMeasure(SegmenterFeatures.from_segmenter(self.segmenter),
                              reference_samples, batch_size=batch_size)
        # a second feature space the generator never trained against (a semantic
        # discriminator or rate controller sees the segmenter): a randomly initialised U-Net
        self.fid_random = FIDMeasure(random_encoder_features(), reference_samples,
                                     batch_size=batch_size)
        # floors: the same FID between rendered scenes disjoint from the reference
        self.floors = {name: rendered_fid(measure, fid_samples, reference_samples, batch_size)
                       for name, measure in (("fid", self.fid), ("fid_random", self.fid_random))}
        self.settings = {"samples": samples, "fid_samples": fid_samples, "seed": seed,
                         "reference_samples": reference_samples, "random_encoder_seed":
                         RANDOM_ENCODER_SEED}

    @torch.no_grad()
    def score(self, generator: Any) -> dict[str, Any]:
        """FSD, per-concept rates, the coverage rule and FID of ``generator``."""
        from gandissect.artifacts.quality import (
            concept_coverage_ok,
            concept_rates,
            fsd_of,
            generated_fractions,
        )

        gen = generated_fractions(generator, self.segmenter, self.samples, self.seed,
                                  self.batch_size, self.progress)
        rates = concept_rates(gen, self.reference, self.labels)
        ok = concept_coverage_ok({"concept_rates": rates})
        fid = self.fid.score(generator, self.fid_samples, self.seed)
        if not np.isfinite(fid):
            raise ValueError(f"FID is {fid}: the generator's images are not finite")
        fid_random = self.fid_random.score(generator, self.fid_samples, self.seed)
        out_of_band = [c for c, r in rates.items() if r["rendered"] >= RATE_BAND_MIN_AREA
                       and not RATE_BAND[0] <= r["generated"] / r["rendered"] <= RATE_BAND[1]]
        return {"fsd": fsd_of(gen, self.reference), "fid": fid,
                "fid_floor": self.floors["fid"], "fid_random": fid_random,
                "fid_random_floor": self.floors["fid_random"],
                "rates_in_band": not out_of_band, "out_of_band": out_of_band,
                "concept_rates": rates,
                "ratios": {c: r["generated"] / r["rendered"] if r["rendered"] > 0 else 0.0
                           for c, r in rates.items()},
                "coverage_ok": all(ok.values()), "low": [c for c, v in ok.items() if not v],
                "checked": sorted(ok)}


def score_folder(folder: Path, scorer: Scorer, bn_batches: int) -> dict[str, Any]:
    """Unless a score with the same settings is cached: export ``folder``'s checkpoint (again,
    so the weights always match the recorded ``bn_batches``), save its sample grid and score
    it; returns the score with ``label``, ``iteration`` and ``folder``."""
    from models.toyworld_gan import GENERATOR_FILE, METADATA_FILE, load_generator, load_metadata
    from models.toyworld_training import sample_grid
    from models.train_toyworld_gan import export

    weights = folder / "w"
    cached = weights / SCORE_FILE
    if cached.is_file():
        old = json.loads(cached.read_text())
        if old.get("settings") == {**scorer.settings, "bn_batches": bn_batches}:
            return dict(old)
    export(folder, weights, bn_batches=bn_batches)
    gen = load_generator(weights=weights / GENERATOR_FILE)
    sample_grid(gen, weights / "samples.png")
    result = scorer.score(gen)
    result.update(label=label_of(folder), folder=str(folder),
                  iteration=int(load_metadata(weights / METADATA_FILE)["iterations"]),
                  settings={**scorer.settings, "bn_batches": bn_batches})
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(cached)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.score_snapshots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="training output folders (or snapshot folders)")
    p.add_argument("--latest", action="store_true",
                   help="also score each run's newest checkpoint.pt")
    p.add_argument("--samples", type=int, default=400, help="samples for FSD and concept rates")
    p.add_argument("--fid-samples", type=int, default=1000, help="samples for FID")
    p.add_argument("--reference-samples", type=int, default=2000,
                   help="rendered scenes for the FID reference")
    p.add_argument("--seed", type=int, default=0, help="latent seed of the scored samples")
    p.add_argument("--bn-batches", type=int, default=20,
                   help="batches of 64 to re-estimate BatchNorm statistics at export")
    p.add_argument("--table", default=None, help="also write the Markdown table to this file")
    p.add_argument("--plot", default=None, help="also plot the scores against iteration (PNG)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        folders = find_snapshots(args.runs, args.latest)
        scorer = Scorer(args.samples, args.fid_samples, args.reference_samples, args.seed,
                        progress=not args.no_progress)
        scores = []
        for k, folder in enumerate(folders):
            print(f"[{k + 1}/{len(folders)}] {label_of(folder)}", file=sys.stderr, flush=True)
            scores.append(score_folder(folder, scorer, args.bn_batches))
    except (FileNotFoundError, ValueError) as exc:
        print(f"score_snapshots: error: {exc}", file=sys.stderr)
        return 2
    table = markdown_table(scores, scores[0]["checked"])
    print(table)
    best = choose(scores)
    print("\nrecommended: " + (f"{best['label']} ({best['folder']}/w): FID {best['fid']:.1f}, "
                               f"FSD {best['fsd']:.4f}" if best else
                               "none: no snapshot draws every concept at >= 1/3 of its rate"))
    if args.table:
        Path(args.table).write_text(table + "\n")
    if args.plot:
        print(f"plot: {plot_scores(scores, args.plot)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
