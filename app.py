"""GANPaint: paint concepts into (or out of) a generator's images by switching its units.

Run ``python app.py`` (or ``gandissect app``; options ``--model --segmenter --layer --host
--port --trust-pickle --inversion-steps``; model and segmenter may be ``NAME:PATH``) and open
http://127.0.0.1:7860. The page is served at once; while the brushes are built (minutes the
first time, then cached) a progress bar shows how far it is and the paint controls wait. Pick
an image (by seed, at random, or from a grid), a concept brush, draw or remove, strength (how
many of the concept's causal units) and intensity, paint over the image and press "Apply
stroke"; each brush's measured effect is shown, and brushes without one say so. Every stroke
is listed; undo, redo, reset. The expert panel paints with hand-picked units of any layer and
shows a unit's feature map. *Upload a photo* (PNG or JPEG, any size: centre-cropped and resized
as :func:`gandissect.load_photo` documents) inverts it into the generator (a progress bar; 10-20 s
on a CPU for the bundled GAN), shows the reconstruction beside the photo with its error (PSNR), and
then the photo is painted like a sample: same brushes, strokes, undo and download, and only the
painted area changes (:mod:`gandissect.paint.photo`).

The app is a thin layer over :mod:`gandissect.paint` (brushes, strokes, history, rendering, the
background build in :mod:`~gandissect.paint.job`, the paint canvas in
:mod:`~gandissect.paint.canvas`): callbacks only translate between widgets and that API.

Many users at once: each browser session has its own history (``gr.State``, at most
:data:`~gandissect.paint.painter.MAX_STROKES` strokes; the server keeps the sessions of at
most :data:`SESSIONS` browsers, least recently used dropped first). Up to :data:`RENDER_SLOTS`
rendering events run at once and :meth:`Painter.render_many
<gandissect.paint.painter.Painter.render_many>` renders what they ask for in shared forward
passes (a stroke needs one image: the image before it comes from the painter's bounded cache).
Gradio's own batched events (``batch=True``) are not used: they run a whole batch in the first
event's session, so ``gr.State`` would mix sessions. Images reach the browser as data URLs or
as PNG files in Gradio's cache folder, one per content hash, never rewritten, at most
:data:`MAX_FILES` of them (the least recently sent are removed). Inverted photos are kept in a
:class:`~gandissect.paint.photo.PhotoStore` bounded in bytes (``PHOTO_BYTES``), one per session
(a new upload or image replaces it; a closed session drops it once Gradio expires its state); a
session whose photo was dropped is told to upload it again. At most :data:`INVERSION_SLOTS`
inversions run at once; uploaded files are deleted once read, and uploads over
:data:`UPLOAD_LIMIT` bytes are refused.
"""

from __future__ import annotations

import argparse
import atexit
import html
import itertools
import os
import random
import sys
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch

from gandissect.cli.app import add_arguments
from gandissect.inversion.invert import InversionSettings
from gandissect.inversion.photo import MAX_BYTES, PhotoError
from gandissect.paint import canvas as cv
from gandissect.paint.effects import best_default
from gandissect.paint.job import PainterJob
from gandissect.paint.painter import (
    STRENGTHS,
    EmptyStrokeError,
    History,
    Painter,
    Stroke,
    upscale,
)
from gandissect.paint.photo import Photo, PhotoStore, invert_photo, photo_encoder
from gandissect.paint.serving import ImageFiles

#: Display scale of the 64 px result image (nearest neighbour).
SCALE = 4
HEADERS = ["#", "concept", "mode", "strength", "alpha", "units", "layer"]
EFFECT_HEADERS = ["concept", "strength", "draw: points of the image added",
                  "remove: share of its pixels removed", "verdict"]
#: Images per page of the "pick from a grid" gallery.
GRID = 12
#: How long an API call made before the brushes are ready waits for them (seconds).
API_WAIT = 600.0
#: Rendering events (images, strokes, undo/redo, grid) that run at once; their renders share
#: forward passes, so this bounds a batch, not the work.
RENDER_SLOTS = 16
#: Result and thumbnail PNG files kept on disk (the least recently sent are removed).
MAX_FILES = 512
#: Browser sessions whose state (history) the server keeps (Gradio's LRU of sessions).
SESSIONS = 1000
#: Torch threads of a launched app unless OMP_NUM_THREADS is set: renders are batched, and on
#: a busy 2-core machine two threads made one forward pass 13x slower (832 vs 65 ms).
TORCH_THREADS = 1
#: Photo inversions that run at once (each keeps a core busy for 10-20 s).
INVERSION_SLOTS = 1
#: Largest upload the server accepts (bytes); photos over ``MAX_BYTES`` are refused with a
#: message, larger uploads by Gradio before they are stored.
UPLOAD_LIMIT = 2 * MAX_BYTES
DEFAULTS: dict[str, Any] = {"model": "toyworld", "segmenter": "toyworld", "layer": "layer5"}
FALLBACK: dict[str, Any] = {"model": "planted", "segmenter": "planted", "layer": "layout"}
_ROW = "display:flex;gap:10px;align-items:center;flex-wrap:wrap"


def grid_seed(page: int, index: int) -> int:
    """The seed of thumbnail ``index`` on gallery page ``page`` (pages of :data:`GRID`).

    >>> grid_seed(0, 3), grid_seed(2, 0)
    (3, 24)
    """
    if not 0 <= index < GRID or page < 0:
        raise ValueError(f"no thumbnail {index} on page {page}")
    return page * GRID + index


def forget(demo: Any, path: str) -> None:
    """Drop a removed file from the sets of files Gradio remembers it created (they only grow)."""
    for files in getattr(demo, "temp_file_sets", []):
        files.discard(path)


def build_status(job: PainterJob) -> str:
    """HTML: a progress bar while the brushes are built, then a one-line summary."""
    st = job.status()
    notes = "".join(f"<div>{html.escape(n)}</div>" for n in job.notes)
    if st.state == "failed":
        return (f"<div style='{_ROW}'><b>No brushes:</b> {html.escape(st.message)}</div>"
                + notes)
    if st.state == "ready":
        acting = {c for (c, _m, _s), e in job.effects.items() if e.acts}
        total = len(job.painter.concepts) if job.painter is not None else 0
        return (f"<div style='{_ROW}'>Brushes ready: {total} concepts, {len(acting)} "
                "with a measurable effect (see <i>Brush effects</i>).</div>" + notes)
    minutes, seconds = divmod(int(st.seconds), 60)
    what = {"loading": "Loading the models", "building": "Building the brushes",
            "measuring": "Measuring the brushes"}[st.state]
    return (f"<div style='{_ROW}'><progress value='{st.fraction:.3f}' max='1' "
            f"style='width:min(320px,100%);height:14px'></progress>"
            f"<b>{100 * st.fraction:.0f}%</b> {what} (first start: minutes; then cached) - "
            f"{html.escape(st.message)} - {minutes} min {seconds:02d} s. You can look at "
            "images meanwhile; "
            f"painting starts when this is done.</div>{notes}")


def build_app(model: str = "toyworld", segmenter: str = "toyworld", layer: str = "layer5",
              painter: Painter | None = None, job: PainterJob | None = None,
              fallback: bool = False, inversion: InversionSettings | None = None,
              photos: PhotoStore | None = None, **build: Any) -> Any:
    """The Gradio Blocks of GANPaint (not launched). The brushes come from ``painter``, a
    started or not yet started ``job``, or a background :class:`PainterJob` for ``model``,
    ``segmenter`` and ``layer`` (``build`` goes to the brush build; ``fallback``: use the
    planted model when the model's weights are missing). The page never waits for them.
    Uploaded photos are inverted with ``inversion`` (default :class:`InversionSettings`; its
    layer is the painter's) and kept in ``photos`` (default: a new :class:`PhotoStore`)."""
    if job is None:
        job = (PainterJob.for_painter(painter) if painter is not None else
               PainterJob(model, segmenter, layer,
                          fallback=tuple(FALLBACK.values()) if fallback else None, **build))
    job.start()
    seq = itertools.count()
    photos = photos if photos is not None else PhotoStore()
    encoders: dict[str, Any] = {}

    def models() -> Painter:
        return job.wait_models(120.0)

    def brushes_ready(wait: float) -> Painter:
        p = models()
        if not (job.wait(wait) and p.ready):
            st = job.status()
            raise ValueError(f"the brushes are not ready yet ({100 * st.fraction:.0f}%: "
                             f"{st.message}); paint when the progress bar is done"
                             if st.state != "failed" else f"no brushes: {st.message}")
        return p

    def current(seed: float, token: str) -> int | Photo:
        """The session's image: its photo while it has one, else the sample ``seed``."""
        if token:
            photo = photos.get(token)
            if photo is not None:
                return photo
        return int(seed or 0)

    def outputs(seed: float, history: History, status: str, clear: str,
                image: np.ndarray | None = None, token: str = "") -> tuple[Any, ...]:
        if image is None:  # batched with other sessions
            image = models().render(current(seed, token), history.active)
        return (files.path(upscale(image, SCALE)), cv.canvas_value(image, clear, next(seq)),
                history, history.rows(), status, token)

    def gone(seed: float, token: str) -> tuple[Any, ...] | None:
        """When the session's photo was dropped (the server keeps a bounded number): say so and
        show the sample ``seed`` instead; None while the photo is there (or there is none)."""
        if not token or token in photos:
            return None
        msg = ("this photo was dropped from the server's memory (it keeps the most recently "
               f"used {len(photos)} photos): upload it again; showing image {int(seed or 0)}")
        gr.Warning(msg[0].upper() + msg[1:] + ".")
        return outputs(seed, History(), msg, "all")

    def show(seed: float | None, history: History, token: str = "") -> tuple[Any, ...]:
        if seed is None or seed < 0 or seed != int(seed):
            raise gr.Error("the image number (seed) must be a whole number >= 0")
        photos.drop(token)  # a sample replaces the session's photo
        return outputs(seed, history, f"image {int(seed)}: {len(history.active)} stroke(s)",
                       "all")

    def new_image(seed: float | None, history: History, token: str) -> tuple[Any, ...]:
        return show(seed, History(), token)

    def random_image(history: History, token: str) -> tuple[Any, ...]:
        seed = random.randrange(100_000)
        return (seed, *show(seed, History(), token))

    def grid(page: float | None) -> tuple[Any, ...]:
        page = max(0, int(page or 0))
        seeds = [grid_seed(page, i) for i in range(GRID)]
        images = models().render_many([(s, ()) for s in seeds])  # one forward pass
        return [(files.path(upscale(im, 2)), f"seed {s}") for im, s in zip(images, seeds,
                                                                          strict=True)], page

    def next_grid(page: float | None) -> tuple[Any, ...]:
        return grid(int(page or 0) + 1)

    def pick(page: float | None, token: str, evt: gr.SelectData) -> tuple[Any, ...]:
        chosen = grid_seed(int(page or 0), int(evt.index))
        return (chosen, *show(chosen, History(), token))

    def add(seed: float | None, history: History, token: str, make: Any,
            note: str = "") -> tuple[Any, ...]:
        if (out := gone(seed or 0, token)) is not None:
            return out
        if not token and (seed is None or seed < 0):
            gr.Warning("Pick an image first (seed >= 0).")
            return outputs(0, history, "not applied: no image", "none")
        seed = seed or 0
        if history.full:
            msg = f"at most {history.limit} strokes per image: undo or reset to paint more"
            gr.Warning(msg.capitalize() + ".")
            return outputs(seed, history, f"not applied: {msg}", "none", token=token)
        try:
            stroke: Stroke = make()
        except EmptyStrokeError:
            gr.Warning("Empty stroke: paint over the image first, then Apply.")
            return outputs(seed, history, "empty stroke: image unchanged", "taken", token=token)
        except ValueError as exc:
            gr.Warning(str(exc))
            return outputs(seed, history, f"not applied: {exc}", "none", token=token)
        new = history.push(stroke)
        # the image before is normally cached (this session's last event rendered it)
        image = current(seed, token)
        before, after = models().render_many([(image, history.active), (image, new.active)])
        out = outputs(seed, new, f"stroke {len(new.active)}: {stroke.mode} "
                      f"{stroke.label} ({stroke.layer}) with units "
                      f"{', '.join(map(str, stroke.units))}", "taken", after, token)
        if np.array_equal(before, after):
            gr.Warning("The stroke changed no pixel here. " + note)
            out = (*out[:4], out[4] + " - no visible change here. " + note, token)
        elif note:
            out = (*out[:4], out[4] + " - " + note, token)
        return out

    def effect_note(concept: str | None, mode: str, strength: float) -> str:
        e = job.effects.get((str(concept), str(mode), int(strength)))
        if e is None:
            return "" if job.status().state != "ready" else "effect not measured"
        return ("Measured: " + e.describe() +
                ("" if e.acts else ". Try another concept, mode, strength or --layer."))

    def paint(mask: str | None, seed: float, concept: str | None, mode: str, strength: float,
              alpha: float, history: History, token: str) -> tuple[Any, ...]:
        def make() -> Stroke:
            p = brushes_ready(API_WAIT)
            if not concept:
                raise ValueError("pick a concept brush first")
            return p.stroke(concept, mode, cv.decode_mask(mask), int(strength), float(alpha))
        return add(seed, history, token, make, effect_note(concept, mode, strength))

    def paint_units(mask: str | None, seed: float, layer_name: str, units: str, mode: str,
                    alpha: float, history: History, token: str) -> tuple[Any, ...]:
        return add(seed, history, token, lambda: models().unit_stroke(
            layer_name, units, mode, cv.decode_mask(mask), float(alpha)))

    def step(seed: float, history: History, token: str, how: str) -> tuple[Any, ...]:
        if (out := gone(seed, token)) is not None:
            return out
        new = {"undo": history.undo, "redo": history.redo, "reset": history.reset}[how]()
        return outputs(seed, new, f"{how}: {len(new.active)} stroke(s) active", "none",
                       token=token)

    def encoder() -> Any:
        if job.model not in encoders:  # once per model (the job may fall back to another)
            encoders[job.model] = photo_encoder(job.model)
        return encoders[job.model]

    def upload(path: str | None, seed: float, token: str,
               progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
        """Invert an uploaded photo; it becomes the session's image (history reset)."""
        keep = (gr.update(),) * 6
        if not path:
            return (*keep, gr.update(), gr.update(), gr.update(), None)
        name = Path(path).name
        settings = inversion or InversionSettings()
        total = max(1, settings.optimize_steps + settings.adapt_steps)
        done = {"optimize": 0, "adapt": 0}

        def report(stage: str, step: int, steps: int) -> None:
            done[stage] = step
            if step == steps or step % 5 == 0:
                progress((done["optimize"] + done["adapt"], total),
                         desc=f"inverting the photo: {stage} step {step} of {steps}")

        try:
            progress(0.0, desc="reading the photo")
            photo = invert_photo(models(), path, settings, encoder(), report, name)
        except (PhotoError, ValueError, FloatingPointError) as exc:
            gr.Warning(f"Photo not used: {exc}")
            return (*keep, gr.update(), gr.update(),
                    f"**Photo not used:** {html.escape(str(exc))}", None)
        finally:
            discard(path)
        photos.drop(token)
        new = photos.add(photo)
        info = f"Photo **{html.escape(name)}**: {photo.describe()}. Paint on it as on a sample."
        out = outputs(seed, History(), f"photo {name}: {photo.describe()}", "all",
                      photo.image, new)
        return (*out, files.path(upscale(photo.image, SCALE)),
                files.path(upscale(photo.reconstruction, SCALE)), info, None)

    def discard(path: str) -> None:
        """Delete an uploaded file once read (only inside Gradio's upload folder)."""
        try:
            f = Path(path).resolve()
            if f.is_relative_to(Path(demo.GRADIO_CACHE).resolve()) and \
                    not f.is_relative_to(files.folder.resolve()):
                f.unlink(missing_ok=True)
                forget(demo, path)
        except OSError:
            pass

    def feature(seed: float, layer_name: str, unit: float, history: History,
                token: str) -> Any:
        if token:
            gr.Warning("Feature maps are shown for generated images (seeds), not for photos.")
            return None
        try:
            return files.path(models().feature_map(int(seed), int(unit), layer_name,
                                                   history.active, scale=SCALE))
        except ValueError as exc:
            gr.Warning(str(exc))
            return None

    def effects_rows() -> list[list[Any]]:
        rows = []
        for (c, m, s), e in sorted(job.effects.items()):
            if m != "draw":
                continue
            r = job.effects.get((c, "remove", s))
            verdict = ", ".join(f"{mode} acts" if x.acts else f"{mode}: no measurable effect"
                                for mode, x in (("draw", e), ("remove", r)) if x is not None)
            rows.append([c, s, f"{100 * e.added:+.1f}",
                         f"{100 * r.removed:.0f}%" if r is not None else "", verdict])
        return rows

    def tick(started: bool) -> tuple[Any, ...]:
        """Progress while building; once ready, enable painting (once per page)."""
        text = build_status(job)
        st = job.status()
        if st.state not in ("ready", "failed") or started:
            return (text, *(gr.update(),) * 8, started,
                    gr.Timer(active=st.state not in ("ready", "failed")))
        if st.state == "failed":
            return (text, *(gr.update(),) * 8, True, gr.Timer(active=False))
        p = models()
        first = best_default(job.effects, STRENGTHS) or (p.concepts[0], "draw", STRENGTHS[-1])
        note = effect_note(*first)
        return (text, gr.update(choices=p.concepts, value=first[0], interactive=True),
                gr.update(value=first[1]), gr.update(value=first[2]), gr.update(interactive=True),
                gr.update(interactive=True), gr.update(choices=p.layers, value=p.layer),
                note, effects_rows(), True, gr.Timer(active=False))

    title = job.model if job.painter is None else job.painter.name
    with gr.Blocks(title="GANPaint - gandissect") as demo:
        # in Gradio's cache folder (served as is, never copied); a removed file is forgotten
        files = ImageFiles(demo.GRADIO_CACHE, MAX_FILES, on_remove=lambda path: forget(demo, path))
        atexit.register(files.close)
        history = gr.State(History())
        enabled = gr.State(False)
        photo_token = gr.State("", delete_callback=photos.drop)  # "" while showing a sample
        gr.Markdown(f"# GANPaint\nModel **{title}**, layer **{job.layer}**. Paint over the "
                    "image on the left (the brush follows the mouse), then *Apply stroke*.")
        status_html = gr.HTML(build_status(job), elem_id="build-status")
        timer = gr.Timer(1.0)
        with gr.Row(equal_height=False):
            with gr.Column(min_width=260):
                canvas = gr.HTML(value={"src": "", "clear": "all", "seq": -1, "note": ""},
                                 html_template=cv.HTML, css_template=cv.CSS, js_on_load=cv.JS,
                                 elem_id="paint-canvas")
                mask_box = gr.Textbox(visible="hidden", elem_id="paint-mask")
            with gr.Column(min_width=260):
                result = gr.Image(type="filepath", label="result (download: PNG)",
                                  buttons=["download"], interactive=False,
                                  elem_id="paint-result")
        with gr.Row():
            seed = gr.Number(value=0, precision=0, minimum=0, label="image (seed)", min_width=120)
            rand = gr.Button("Random image", min_width=120)
            concept = gr.Dropdown([], value=None, label="concept brush", interactive=False,
                                  allow_custom_value=True,  # API callers: checked in paint
                                  min_width=140, elem_id="concept")
            mode = gr.Radio(["draw", "remove"], value="draw", label="mode", min_width=140)
            strength = gr.Radio(list(STRENGTHS), value=STRENGTHS[0], label="strength (units)",
                                min_width=160)
            alpha = gr.Slider(0.1, 1.0, value=1.0, step=0.05, label="intensity (alpha)",
                              min_width=160)
        effect = gr.Markdown("", elem_id="brush-effect")
        with gr.Row():
            apply = gr.Button("Apply stroke", variant="primary", elem_id="apply-stroke",
                              interactive=False, min_width=120)
            undo = gr.Button("Undo edit", elem_id="undo-edit", min_width=100)
            redo = gr.Button("Redo edit", elem_id="redo-edit", min_width=100)
            reset = gr.Button("Reset edits", elem_id="reset-edits", min_width=100)
        status = gr.Textbox(label="status", interactive=False, elem_id="paint-status")
        with gr.Accordion("Upload a photo", open=True):
            gr.Markdown("A PNG or JPEG of any size (up to 20 MB): centre-cropped to a square "
                        "and resized to the generator's resolution. It is inverted into the "
                        "generator (10-20 seconds), then painted like a sample; only "
                        "the painted area changes.")
            with gr.Row(equal_height=False):
                upload_box = gr.File(label="photo (PNG or JPEG)", type="filepath",
                                     elem_id="photo-upload", min_width=200)
                photo_view = gr.Image(type="filepath", label="photo (as used)",
                                      interactive=False, elem_id="photo-view", min_width=160)
                recon_view = gr.Image(type="filepath", label="reconstruction",
                                      interactive=False, elem_id="photo-reconstruction",
                                      min_width=160)
            photo_info = gr.Markdown("", elem_id="photo-info")
        with gr.Accordion("Pick an image from a grid", open=False):
            page = gr.Number(value=0, precision=0, minimum=0, label="grid page")
            gallery = gr.Gallery(label=f"click an image to paint on it ({GRID} per page)",
                                 columns=6, height="auto", allow_preview=False,
                                 elem_id="image-grid")
            more = gr.Button("Other images")
        table = gr.Dataframe(headers=HEADERS, label="strokes", interactive=False)
        with gr.Accordion("Brush effects (measured: a stroke over the whole image)",
                          open=False):
            effects = gr.Dataframe(headers=EFFECT_HEADERS, interactive=False,
                                   elem_id="brush-effects")
        with gr.Accordion("Expert: units by hand, feature maps", open=False):
            with gr.Row():
                layer_box = gr.Dropdown([job.layer], value=job.layer, label="layer")
                units_box = gr.Textbox(label="units (comma list)", placeholder="3, 17")
                unit_mode = gr.Radio(["draw", "remove"], value="remove", label="mode")
                apply_units = gr.Button("Apply units", interactive=False)
            with gr.Row():
                unit_num = gr.Number(value=0, precision=0, minimum=0, label="unit")
                show_map = gr.Button("Show feature map")
                heat = gr.Image(type="filepath", label="feature map", interactive=False)

        outs = [result, canvas, history, table, status, photo_token]
        timer.tick(tick, [enabled], [status_html, concept, mode, strength, apply, apply_units,
                                     layer_box,
                                     effect, effects, enabled, timer], show_progress="hidden",
                   queue=False)
        for widget in (concept, mode, strength):
            widget.change(effect_note, [concept, mode, strength], effect, queue=False,
                          show_progress="hidden")
        # rendering events share one pool of slots; their renders share forward passes
        render: dict[str, Any] = {"concurrency_id": "render", "concurrency_limit": RENDER_SLOTS}
        seed.submit(new_image, [seed, history, photo_token], outs, api_name="image", **render)
        rand.click(random_image, [history, photo_token], [seed, *outs], api_name="random",
                   **render)
        apply.click(paint, [mask_box, seed, concept, mode, strength, alpha, history,
                            photo_token], outs,
                    api_name="paint", js=cv.TAKE_MASK_JS, show_progress="minimal", **render)
        apply_units.click(paint_units, [mask_box, seed, layer_box, units_box, unit_mode, alpha,
                                        history, photo_token], outs, api_name="paint_units",
                          js=cv.TAKE_MASK_JS, **render)
        for button, how in ((undo, "undo"), (redo, "redo"), (reset, "reset")):
            button.click(lambda s, h, t, how=how: step(s, h, t, how), [seed, history,
                                                                       photo_token], outs,
                         api_name=how, **render)
        show_map.click(feature, [seed, layer_box, unit_num, history, photo_token], heat,
                       api_name="feature_map")
        upload_box.upload(upload, [upload_box, seed, photo_token],
                          [*outs, photo_view, recon_view, photo_info, upload_box],
                          api_name="upload_photo", concurrency_id="invert",
                          concurrency_limit=INVERSION_SLOTS)
        page.submit(grid, [page], [gallery, page], api_name="grid", **render)
        more.click(next_grid, [page], [gallery, page], api_name="next_grid", **render)
        gallery.select(pick, [page, photo_token], [seed, *outs], **render)
        demo.load(show, [seed, history], outs, **render)
        demo.load(grid, [page], [gallery, page], **render)
    demo.ganpaint_job = job  # for tests and shutdown
    demo.ganpaint_files = files
    demo.ganpaint_photos = photos
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="GANPaint: paint with a generator's units")
    add_arguments(parser)
    return parser.parse_args(argv)


def launch(args: argparse.Namespace, **launch_kw: Any) -> Any:
    """Build and launch the app at once (brushes build in the background); falls back to the
    planted model (said on stderr and in the page) when the default Toyworld GAN's weights are
    missing. Torch runs :data:`TORCH_THREADS` threads unless OMP_NUM_THREADS is set."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(TORCH_THREADS)
    chosen: dict[str, Any] = {"model": args.model, "segmenter": args.segmenter, "layer": args.layer}
    steps = getattr(args, "inversion_steps", None)
    inversion = (InversionSettings(optimize_steps=steps[0], adapt_steps=steps[1])
                 if steps else None)
    dask = {k: v for k in ("cluster", "scheduler") if (v := getattr(args, k, None)) is not None}
    demo = build_app(**chosen, trust_pickle=getattr(args, "trust_pickle", False),
                     fallback=chosen == DEFAULTS, inversion=inversion, **dask)
    launch_kw.setdefault("state_session_capacity", SESSIONS)
    launch_kw.setdefault("max_file_size", UPLOAD_LIMIT)
    return demo.queue(default_concurrency_limit=2, max_size=256).launch(
        server_name=args.host, server_port=args.port, **launch_kw)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        launch(args)
    except (ValueError, ImportError) as e:     # e.g. a bad --cluster, distributed missing
        print(f"app.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
