"""Network dissection of a generator: which units draw which concept, scored by IoU.

Two passes over the same samples (latent ``i`` depends only on ``(seed, i)``, so pass 2
regenerates exactly what pass 1 saw):

1. generator only, stopped after the deepest requested layer: per unit, the range of raw
   activations, the top-k samples, and (``threshold="quantile"``) a histogram of the upsampled
   activations that brackets ``t_u`` inside one bin. Only values above a per-unit cut are
   binned: a guess at about twice the target fraction (from the values seen so far; see
   ``GUESS_FACTOR``). At the end, a unit whose bracket might reach below its largest cut (the
   guess was too high) is detected exactly and gets another pass-1 round cut at valid lower
   bounds only, so guesses change the cost, never the result.
2. generator + segmenter: exact int64 counts, in ``2**fine_log2`` sub-bins of that bin and above
   it, of all / per-concept / per-category pixels (one ``bincount`` over (unit, sub-bin, code of
   the pixel's concept set and its image's categories)). ``t_u`` is the sub-bin edge whose exact
   count above is nearest ``q * N * P``; IoU is then exact at ``t_u``.
   With ``threshold="iqr"``: exact per-concept histograms over the whole range instead, and per
   unit-concept the edge maximising ``I(A;S) / H(A,S)``; pairs whose best ratio stays below
   ``min_iqr`` (default 0.01) cannot label the unit (see :attr:`LayerResult.score`).

In quantile mode both passes upsample only where needed (:meth:`Upsampler.iter_above`: only
output rows whose source rows may exceed the cut are interpolated), bit-identically to the dense
upsampling, so no pass holds a batch's full-resolution maps.

In one process, pass 1 keeps its batches' activations and segmentations up to ``cache_mb``
(:class:`~.batches._BatchCache`): those batches run the whole generator and the segmenter once,
in pass 1, and pass 2 (and any later pass-1 round) reads them instead of running the models
again; the tensors are the ones the models would give again, so the result is unchanged.

``category_conditioned=True`` (Broden style): the union for concept ``c`` counts only pixels of
images where ``c``'s category is present, i.e. where some concept of that category has at least
one pixel. When every image shows every category this equals the plain IoU.

**Workers.** With ``workers > 1`` (or an ``executor``, or a Dask ``client``) every round (each
pass-1 round, pass 2) splits the samples it still has to do into contiguous chunks of whole batches
(two per worker; on Dask four per worker thread). A worker starts a chunk from the round's
configuration with empty accumulators (:meth:`_LayerState.blank_state`: histogram grid, cuts, active
units, pass-2 brackets), runs the same per-batch code as one process (:func:`~.batches._run_span`)
and returns its state; the parent merges the chunks as they finish (:meth:`_LayerState.merge`; where
they run: :mod:`gandissect.dissection.workers`). The result is bit-identical to one process: batches
are the same, every count is an exact integer and merges by addition, the histogram grid is a
function of the value range only, TopK keeps a total order (value, then index), and the merged cut
is the largest cut of any chunk, which is what the exact :meth:`_LayerState.failed_units` check
needs (a chunk's own guesses may differ from one process's: that changes which units need another
round, never a threshold).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.fingerprint import fingerprint
from ..common.hooks import Trace
from .batches import _BatchCache, _Run, _run_span
from .config import DissectConfig, DissectMismatchError
from .folder import locked
from .layer_stats import _finish_iqr, _finish_quantile, _LayerState
from .probe import is_probe, probe_identity
from .progress import Range, _add_range, _check_folder, _gaps, _load_state, _save_state
from .results import LayerResult, load_results, save_results
from .workers import _is_dask_client, _Pool, _run_chunks

__all__ = ["DissectConfig", "DissectMismatchError", "dissect", "dissect_probe"]


#: Pass-1 cut guesses (see :meth:`_LayerState.pass1`): bin only values above the level with
#: ``GUESS_FACTOR * q`` of the values seen so far in the run above it (first batch:
#: ``FIRST_GUESS_FACTOR * q`` of a subsample of its own values). A guess that turns out too
#: high costs one more pass over the generator prefix for the affected units, never accuracy.
GUESS_FACTOR = 2.0
FIRST_GUESS_FACTOR = 3.0


def dissect(generator: Any, segmenter: Any, layers: str | Sequence[str], samples: int,
            seed: int, quantile: float = 0.01, batch_size: int = 32,
            seg_resolution: int | None = None, device: str | torch.device = "cpu",
            threshold: str = "quantile", category_conditioned: bool = False,
            iou_threshold: float = 0.04, topk: int = 12, out: str | Path | None = None,
            checkpoint_seconds: float = 30.0, progress: bool = False,
            on_batch: Callable[[int, int], None] | None = None, workers: int = 1,
            executor: Executor | None = None, threads_per_worker: int = 1,
            client: Any = None, dtype: str = "float32", cache_mb: float = 512,
            **extra: Any) -> dict[str, LayerResult]:
    """Dissect ``layers`` of ``generator`` with ``segmenter`` over samples ``0..samples-1`` of
    ``seed``; return one :class:`LayerResult` per layer (see the module docstring).

    With ``out``, statistics are saved there atomically every ``checkpoint_seconds`` (with
    workers: after every finished chunk) and at the end of each round; calling again with the
    same arguments resumes from the saved state and returns exactly what an uninterrupted run
    returns (also with another ``workers``). A folder holding a run with other arguments raises
    :class:`DissectMismatchError`; one another run is using (it is locked for the whole call),
    :class:`DissectLockedError`; a damaged saved state, :class:`DissectStateError`.
    ``on_batch(pass, samples_done)`` is called after each batch (with workers: after each
    finished chunk; ``samples_done`` counts the round's finished samples), after its checkpoint
    if one is due. ``extra`` may set ``bins``, ``fine_log2``, ``iqr_bins``, ``min_iqr``,
    ``model_name``, ``segmenter_name`` (recorded in the config, with the weights' fingerprint).

    ``workers > 1`` runs each round as chunks in that many spawned processes, each with
    ``threads_per_worker`` torch threads (generator and segmenter must pickle; a script calling this
    needs an ``if __name__ == "__main__":`` guard); they exit when this process dies, even by
    SIGKILL. ``client`` (a ``distributed.Client``; ``pip install 'gandissect[dask]'``) runs the
    chunks as tasks on its Dask cluster: generator and segmenter are pickled once and installed on
    every worker by a worker plugin (also on a worker that replaces a lost one; never sent with a
    task), each task sets ``threads_per_worker`` torch threads in its worker process, a round has
    four chunks per worker thread of the cluster when the run starts (``workers > 1``: four per
    worker), each worker keeps up to ``cache_mb`` of the batches it ran in pass 1 for the later
    rounds, which go preferably to it, and a task lost with its worker is run again by the scheduler
    or resubmitted (at most three times, then a ``TaskLostError`` naming it); each chunk is merged
    once. The workers need gandissect, the code of the generator's and segmenter's classes, and the
    same torch installed. ``executor`` (any :class:`concurrent.futures.Executor`) runs the chunks
    instead, with the pickled models in every chunk; ``workers`` then only sets the number of chunks
    (two per worker) and the executor's workers set their own threads. Every way, the result is
    bit-identical to ``workers=1``.

    ``dtype="bfloat16"`` runs the generator and segmenter forward passes under bfloat16
    autocast (faster on GPUs and CPUs with native bfloat16, e.g. AVX-512-BF16 or AMX; much
    slower where it is emulated); the statistics stay exact on the activations and masks so
    computed, and labels may differ from float32 where units are close
    (``benchmarks/dissect.py --dtype bfloat16`` measures the agreement).

    ``cache_mb``: in one process (no workers, executor or client; not on a probe set), pass 1
    keeps up to this many MB of its batches' activations and segmentations, so pass 2 does not
    run the generator and segmenter again for them (pass 1 then runs them whole instead of up
    to the layer): the same result, about one prefix of the generator cheaper per cached
    batch; 0 keeps nothing (the statistics' memory then does not grow with ``samples``).
    On a Dask ``client``, each worker process keeps up to ``cache_mb`` of the batches it ran
    in pass 1, for the run's length, and pass 2's chunks go preferably to the worker that ran
    their samples (any worker may still run them: the result is the same).
    """
    names = (layers,) if isinstance(layers, str) else tuple(layers)
    weights = fingerprint(generator, segmenter)
    if is_probe(segmenter):
        weights += "-" + probe_identity(segmenter)
        if samples > len(segmenter):
            raise ValueError(f"samples={samples} but the probe set has {len(segmenter)} images; "
                             f"use samples <= {len(segmenter)}")
    cfg = DissectConfig(layers=names, samples=samples, seed=seed, quantile=quantile,
                        batch_size=batch_size, seg_resolution=seg_resolution,
                        threshold=threshold, category_conditioned=category_conditioned,
                        iou_threshold=iou_threshold, topk=topk, weights=weights, dtype=dtype,
                        **extra)
    cfg.check()
    if workers < 1 or threads_per_worker < 1:
        raise ValueError(f"workers and threads_per_worker must be >= 1, got {workers} and "
                         f"{threads_per_worker}")
    if _is_dask_client(executor):
        raise TypeError("executor= got a Dask Client: pass it as client= (the models then go "
                        "to each worker once)")
    if client is not None and (executor is not None or not _is_dask_client(client)):
        raise TypeError(f"client= takes a distributed.Client (and no executor=), got "
                        f"{type(client).__name__}" + (" and an executor" if executor else ""))
    run = _Run.make(generator, segmenter, cfg, device)
    folder = Path(out) if out is not None else None
    pool = _Pool(run, workers, executor, threads_per_worker, client, cache_mb) \
        if workers > 1 or executor is not None or client is not None else None
    if cache_mb < 0:
        raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
    cache = _BatchCache(int(cache_mb * 2**20)) \
        if pool is None and run.probe is None and cache_mb > 0 else None
    with locked(folder):
        return _dissect_locked(run, folder, pool, checkpoint_seconds, progress, on_batch,
                               cache)


def dissect_probe(model: Any, probe: Any, layers: str | Sequence[str], samples: int | None = None,
                  quantile: float = 0.005, category_conditioned: bool = True,
                  **kwargs: Any) -> dict[str, LayerResult]:
    """Network Dissection of ``model`` (e.g. a classifier) on the probe set ``probe``: the
    units' activations on the probe images against the probe's ground-truth masks, by the
    same engine as :func:`dissect` (same statistics, workers, resume; ``kwargs`` as there).
    Defaults follow Network Dissection: the first ``samples`` images (default: all), the top
    ``quantile = 0.005`` of each unit's activations, and category-conditioned IoU (a concept's
    union only counts images where its category is labelled, e.g. parts only where some part
    is present). ``seed`` plays no part (the probe set's order is fixed) and is recorded as 0.
    """
    if not is_probe(probe):
        raise TypeError(f"dissect_probe() needs a probe set (labels, categories, image_size, "
                        f"mask_size, images(), masks()); got {type(probe).__name__}")
    kwargs.setdefault("seed", 0)
    return dissect(model, probe, layers, samples=len(probe) if samples is None else samples,
                   quantile=quantile, category_conditioned=category_conditioned, **kwargs)


def _dissect_locked(run: _Run, folder: Path | None, pool: _Pool | None,
                    checkpoint_seconds: float, progress: bool,
                    on_batch: Callable[[int, int], None] | None,
                    cache: _BatchCache | None = None) -> dict[str, LayerResult]:
    """:func:`dissect` once ``folder`` (if any) is locked: reuse or resume what it holds, run
    the rounds (on ``pool`` if any, closed at the end), save the results."""
    cfg = run.cfg
    names, samples, seed = cfg.layers, cfg.samples, cfg.seed
    state_path = folder / "state.safetensors" if folder else None
    if folder is not None:
        _check_folder(folder, cfg)
        if (folder / "results.json").exists() and not (state_path and state_path.exists()):
            return load_results(folder)

    states: dict[str, _LayerState] = {}
    done: list[Range] = []
    phase = 1
    saved: dict[str, torch.Tensor] = {}
    if state_path is not None and state_path.exists():
        phase, done, saved = _load_state(state_path, cfg)

    def done_count() -> int:
        return sum(b - a for a, b in done)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=2 * samples, unit="sample", desc="dissect", dynamic_ncols=True)
        bar.update((phase - 1) * samples + done_count())

    # probe sample 0 once: layer shapes (and their validity) before any statistics exist
    with torch.no_grad(), Trace(run.generator, list(names), stop=True) as probe:
        run.generator(run.generator.sample_latents(1, seed, 0))
    for name in names:
        a = probe[name]
        states[name] = run.new_state(a.shape[1], (a.shape[2], a.shape[3]),
                                     (FIRST_GUESS_FACTOR, GUESS_FACTOR))
        part = {k[len(name) + 1:]: v.to(run.dev) for k, v in saved.items()
                if k.startswith(name + "/")}
        if part:
            states[name].load(part)

    last_save = time.monotonic()

    def finished(a: int, b: int, timed: bool) -> None:
        """Samples ``a..b-1`` of the round are in ``states``: progress, checkpoint, callback."""
        nonlocal done, last_save
        done = _add_range(done, a, b)
        if bar is not None:
            bar.update(b - a)
        if state_path is not None and (not timed or
                                       time.monotonic() - last_save >= checkpoint_seconds):
            _save_state(state_path, cfg, phase, done, states)
            last_save = time.monotonic()
        if on_batch is not None:
            on_batch(phase, done_count())

    try:
        with torch.no_grad():
            while phase <= 2:
                if phase == 2:
                    for st in states.values():
                        if st.counts is None:
                            st.start_pass2()
                # pass 1 after round 0 re-runs only layers with units left to redo
                needed = {k: states[k] for k in names if phase == 2 or states[k].round == 0
                          or bool(states[k].active.any())}
                todo = _gaps(done, samples)
                if pool is not None:
                    _run_chunks(pool, needed, phase, todo, lambda a, b: finished(a, b, False))
                else:
                    for lo, hi in todo:
                        _run_span(run, needed, phase, lo, hi, seen=done_count(),
                                  after_batch=lambda a, b: finished(a, b, True),
                                  cache=cache)
                failed = {k: st.failed_units() for k, st in states.items()} \
                    if phase == 1 and cfg.threshold == "quantile" else {}
                if any(bool(f.any()) for f in failed.values()):
                    for k, f in failed.items():             # guess too high: redo these units
                        states[k].restart(f)
                    if bar is not None:
                        bar.total += samples
                        bar.refresh()
                else:
                    phase += 1
                done = []
                if state_path is not None:
                    _save_state(state_path, cfg, phase, done, states)
                    last_save = time.monotonic()
    finally:
        if pool is not None:
            pool.close()
    if bar is not None:
        bar.close()
    results = {}
    for name in names:
        st = states[name]
        fin = (_finish_quantile if cfg.threshold == "quantile" else _finish_iqr)(
            st, run.cat_of, cfg)
        meta = json.loads(json.dumps(asdict(cfg)))
        meta.update(layer_shape=[st.units, *st.src], seg_shape=list(run.dst),
                    category_names=run.cat_names)
        results[name] = LayerResult(
            layer=name, labels=run.labels, categories=run.categories,
            topk_indices=st.topk.indices.cpu().numpy(), topk_values=st.topk.values.cpu().numpy(),
            meta=meta, **{k: v.cpu().numpy() for k, v in fin.items()})
    if folder is not None:
        save_results(results, folder)
        assert state_path is not None
        state_path.unlink(missing_ok=True)
    return results


def brute_force(acts: torch.Tensor, masks: torch.Tensor, quantile: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Reference for tests: thresholds ``[U]`` and IoU ``[U, C]`` from full tensors
    (``acts [N, U, H', W']`` already upsampled, ``masks [N, C, H', W']``)."""
    U = acts.shape[1]
    flat = acts.transpose(0, 1).reshape(U, -1).double()
    t = torch.quantile(flat, 1 - quantile, dim=1)
    on = flat > t[:, None]
    m = masks.transpose(0, 1).reshape(masks.shape[1], -1).double()
    inter = on.double() @ m.T
    union = on.sum(1, keepdim=True) + m.sum(1)[None] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), 0.0)
    return t.numpy(), iou.numpy()
