"""Open a painter in the background, so an app can serve its page at once: the models load
first (images render within seconds), then the brushes come from a shipped file, the cache, or
a build of minutes, then each brush's effect is measured (:mod:`gandissect.paint.effects`).
:meth:`PainterJob.status` says how far it is (a fraction for a progress bar and a message).

The build and the measurement run on their own copies of the networks: they hook the
generator for thousands of forward passes, which must never reach the images users see.
With ``cluster="local:N"`` or ``scheduler="tcp://HOST:PORT"`` a brush build (not a shipped or
cached file) runs on a Dask cluster (:func:`gandissect.paint.brushes.build_brushes`' client):
a bad spec or a missing ``distributed`` is refused when the job is made, an unreachable
scheduler fails the job with a message that names it.
"""

from __future__ import annotations

import atexit
import copy
import re
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.fingerprint import fingerprint
from ..dissection.folder import atomic_write_bytes
from .brushes import SHIPPED, BrushSet, cache_dir, load_or_build_brushes, shipped_brushes
from .effects import BrushEffect, effects_from_json, effects_to_json, measure_effects
from .painter import STRENGTHS, Painter, brush_key, load_models

#: Seconds an unfinished job gets at interpreter exit to reach its next progress message.
EXIT_WAIT_SECONDS = 120.0


# where in the build a progress message puts us (build_brushes' messages), as fractions
_ABLATIONS = re.compile(r"units (\d+)-(\d+) of (\d+)")
_CLUSTER_ABLATIONS = re.compile(r"(\d+) of (\d+) units done")
_EFFECTS = re.compile(r"brush effects: .* \((\d+) of (\d+)\)")


class JobCancelled(Exception):
    """Raised inside the build when :meth:`PainterJob.cancel` was called."""


def progress_fraction(message: str, last: float) -> float:
    """How far a build is after ``message`` (never less than ``last``).

    >>> progress_fraction("single-unit ablations over 32 samples: units 33-64 of 128 (x)", 0)
    0.3125
    >>> progress_fraction("single-unit ablations over 32 samples: 64 of 128 units done", 0)
    0.525
    >>> progress_fraction("an unknown message", 0.5)
    0.5
    """
    m = _ABLATIONS.search(message)
    if m:
        done, total = int(m.group(1)) - 1, int(m.group(3))
        value = 0.10 + 0.85 * done / max(total, 1)
    elif (m := _CLUSTER_ABLATIONS.search(message)) is not None:
        value = 0.10 + 0.85 * int(m.group(1)) / max(int(m.group(2)), 1)
    elif (m := _EFFECTS.search(message)) is not None:
        value = 0.95 + 0.05 * (int(m.group(1)) - 1) / max(int(m.group(2)), 1)
    elif message.startswith("dissecting"):
        value = 0.02
    elif message.startswith("unit statistics"):
        value = 0.08
    else:
        value = last
    return max(last, value)


def _dask(cluster: str | None, scheduler: str | None, timeout: float
          ) -> Callable[[], AbstractContextManager[Any]] | None:
    """``None`` without a cluster, else what opens a client to it (``dask_client``), after
    checking the spec and that ``distributed`` is installed (raising here, at once)."""
    if cluster is None and scheduler is None:
        return None
    from ..dissection.cluster import dask_client, parse_cluster, require_distributed

    if cluster is not None and scheduler is not None:
        raise ValueError("give either --cluster local:N or --scheduler ADDRESS, not both")
    if cluster is not None:
        parse_cluster(cluster)
    require_distributed()
    return lambda: dask_client(cluster, scheduler, timeout=timeout)


@dataclass(frozen=True)
class JobStatus:
    """``state``: loading (models), building (brushes), measuring (effects), ready, failed."""

    state: str
    fraction: float
    message: str
    seconds: float

    @property
    def can_paint(self) -> bool:
        return self.state in ("measuring", "ready")


class PainterJob:
    """Opens a :class:`Painter` for ``layer`` of ``model`` in a daemon thread (:meth:`start`).

    ``painter`` is there once the models are loaded (it renders, but strokes wait for
    :attr:`Painter.ready`); ``effects`` once measured. ``build`` goes to the brush build;
    ``cluster`` (``local:N``) or ``scheduler`` (an address, reached within
    ``scheduler_timeout`` seconds) run a brush build on a Dask cluster."""

    def __init__(self, model: str, segmenter: str, layer: str, folder: str | Path | None = None,
                 trust_pickle: bool = False, strengths: Sequence[int] = STRENGTHS,
                 effect_samples: int = 16, shipped: Path | None = SHIPPED,
                 fallback: tuple[str, str, str] | None = None, cluster: str | None = None,
                 scheduler: str | None = None, scheduler_timeout: float = 10.0,
                 **build: Any) -> None:
        self._cluster = _dask(cluster, scheduler, scheduler_timeout)
        self.model, self.segmenter, self.layer = model, segmenter, layer
        self.fallback = fallback
        self.notes: list[str] = []
        self.folder = Path(folder) if folder is not None else None
        self.trust_pickle = trust_pickle
        self.strengths = tuple(int(s) for s in strengths)
        self.effect_samples = effect_samples
        self.shipped = shipped
        self.build = build
        self.painter: Painter | None = None
        self.effects: dict[tuple[str, str, int], BrushEffect] = {}
        self.error: BaseException | None = None
        self._state, self._fraction, self._message = "loading", 0.0, "loading the models"
        self._started = time.monotonic()
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._start_lock = threading.Lock()
        self._models_ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gandissect-painter-job",
                                        daemon=True)

    @classmethod
    def for_painter(cls, painter: Painter, **kw: Any) -> PainterJob:
        """A job around a painter that has its brushes: it only measures their effects (when
        the painter has a segmenter); start it with :meth:`start`."""
        job = cls(painter.name, "", painter.layer, **kw)
        job.painter = painter
        return job

    # ------------------------------------------------------------------ control
    def start(self) -> PainterJob:
        """Start the thread (once; later calls do nothing). At interpreter exit an unfinished
        job is cancelled and waited for (:meth:`stop`): a thread still inside torch when the
        interpreter tears down aborts the process ("terminate called without an active
        exception", exit status 134)."""
        with self._start_lock:
            if not self._thread.is_alive() and not self._done.is_set():
                self._started = time.monotonic()
                self._thread.start()
                atexit.register(self.stop, EXIT_WAIT_SECONDS)
        return self

    def cancel(self) -> None:
        """Stop at the build's next progress message (the thread is a daemon either way)."""
        self._cancel.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Cancel and wait up to ``timeout`` seconds for the thread to end; True if it did."""
        self.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_models(self, timeout: float | None = None) -> Painter:
        """The painter once the models are loaded; raises the job's error if that failed."""
        self._models_ready.wait(timeout)
        if self.painter is None:
            raise self.error or TimeoutError("the models are still loading")
        return self.painter

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until brushes and effects are there (or the job failed); True when ready."""
        self._done.wait(timeout)
        return self._state == "ready"

    def status(self) -> JobStatus:
        return JobStatus(self._state, self._fraction, self._message,
                         time.monotonic() - self._started)

    # ------------------------------------------------------------------ work
    def _say(self, message: str) -> None:
        if self._cancel.is_set():
            raise JobCancelled("cancelled")
        self._fraction = progress_fraction(message, self._fraction)
        self._message = message

    def _run(self) -> None:
        try:
            if self.painter is not None:  # for_painter: brushes given
                self._models_ready.set()
                self._state = "measuring"
                p = self.painter
                if p.segmenter is not None:
                    key = f"{p.name}-given-{p.layer}-{fingerprint(p.generator, p.segmenter)}"
                    self.effects = self._effects(key, p.brushes, copy.deepcopy(p.generator),
                                                 copy.deepcopy(p.segmenter))
                self._state, self._fraction = "ready", 1.0
                self._message = f"{len(p.brushes.brushes)} brushes ready"
                return
            try:
                gen, seg = load_models(self.model, self.segmenter, self.layer, self.trust_pickle)
            except FileNotFoundError as exc:
                if self.fallback is None:
                    raise
                self.model, self.segmenter, self.layer = self.fallback
                self.notes.append(f"{exc}; falling back to --model {self.model} "
                                  f"--segmenter {self.segmenter} --layer {self.layer}")
                gen, seg = load_models(self.model, self.segmenter, self.layer,
                                       self.trust_pickle)
            name = self.model.split(":", 1)[0]
            self.painter = Painter(gen, name=name, layer=self.layer, segmenter=seg)
            self._models_ready.set()
            self._state = "building"
            self._say("looking for cached brushes")
            key = brush_key(self.model, self.segmenter, self.layer, gen, seg, **self.build)
            # the build hooks its own copies: never the generator that renders for users
            work_gen, work_seg = copy.deepcopy(gen), copy.deepcopy(seg)
            brushes = shipped_brushes(work_gen, work_seg, self.layer, key, self.shipped) or \
                load_or_build_brushes(work_gen, work_seg, self.layer, key, self.folder,
                                      self._say, cluster=self._cluster, **self.build)
            if not brushes.brushes:
                raise ValueError(f"no concept has causal units in layer {self.layer!r} of "
                                 f"{self.model!r}; pick another --layer")
            self.painter.set_brushes(brushes)
            self._state = "measuring"
            self.effects = self._effects(key, brushes, work_gen, work_seg)
            self._state, self._fraction = "ready", 1.0
            self._message = f"{len(brushes.brushes)} brushes ready"
        except BaseException as exc:  # noqa: BLE001 - reported in the page, never raised
            self.error = exc
            self._state = "failed"
            self._message = ("cancelled" if isinstance(exc, JobCancelled)
                             else f"{type(exc).__name__}: {exc}")
        finally:
            self._models_ready.set()
            self._done.set()

    def _effects(self, key: str, brushes: BrushSet, gen: Any, seg: Any
                 ) -> dict[tuple[str, str, int], BrushEffect]:
        """Measured effects, from a shipped or cached file when one fits these brushes."""
        name = f"{key}-effects-{self.effect_samples}.json"
        folder = self.folder if self.folder is not None else cache_dir()
        want = {(c, m, s) for c in brushes.brushes for m in ("draw", "remove")
                for s in self.strengths}
        for path in ([self.shipped / name] if self.shipped is not None else []) + [folder / name]:
            if path.is_file():
                try:
                    found = effects_from_json(path.read_text())
                    if set(found) == want:
                        return found
                except (OSError, ValueError):
                    pass
        effects = measure_effects(gen, seg, brushes, self.strengths, self.effect_samples,
                                  progress=self._say)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(folder / name, effects_to_json(effects).encode())
        except OSError:
            pass  # measured again next time: seconds
        return effects
