"""GANPaint: paint concepts into (or out of) a generator's images by switching its units.

Run ``python app.py`` (or ``gandissect app``; options ``--model --segmenter --layer --host
--port --trust-pickle``; model and segmenter may be ``NAME:PATH``) and open
http://127.0.0.1:7860. Pick an image (by seed, at random, or from a grid), a concept brush, draw
or remove, strength (how many of the concept's causal units) and intensity, click the Brush
tool, paint over the image and press "Apply stroke". Every stroke is listed; undo, redo, reset.
The expert panel paints with hand-picked units of any layer and shows a unit's feature map.

The app is a thin layer over :mod:`gandissect.paint` (brushes, strokes, history, rendering):
callbacks only translate between widgets and that API. Each browser session has its own
history (``gr.State``); forward passes are serialised by the painter's lock.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

import gradio as gr
import numpy as np

from gandissect.cli.app import add_arguments
from gandissect.paint.painter import (
    STRENGTHS,
    EmptyStrokeError,
    History,
    Painter,
    Stroke,
    mask_from_editor,
    open_painter,
)

#: Display scale of the 64 px images (nearest neighbour).
SCALE = 4
HEADERS = ["#", "concept", "mode", "strength", "alpha", "units"]
#: Images per page of the "pick from a grid" gallery.
GRID = 12


def grid_seed(page: int, index: int) -> int:
    """The seed of thumbnail ``index`` on gallery page ``page`` (pages of :data:`GRID`).

    >>> grid_seed(0, 3), grid_seed(2, 0)
    (3, 24)
    """
    if not 0 <= index < GRID or page < 0:
        raise ValueError(f"no thumbnail {index} on page {page}")
    return page * GRID + index
DEFAULTS: dict[str, Any] = {"model": "toyworld", "segmenter": "toyworld", "layer": "layer4"}
FALLBACK: dict[str, Any] = {"model": "planted", "segmenter": "planted", "layer": "layout"}


def _editor(image: np.ndarray) -> dict[str, Any]:
    """An ImageEditor value showing ``image`` with no painted layer."""
    return {"background": image, "layers": [], "composite": image}


def build_app(model: str = "toyworld", segmenter: str = "toyworld", layer: str = "layer4",
              painter: Painter | None = None, **build: Any) -> Any:
    """The Gradio Blocks of GANPaint (not launched). ``build`` goes to brush building."""
    if painter is None:
        painter = open_painter(model, segmenter, layer,
                               progress=lambda msg: print(f"[gandissect app] {msg}", flush=True),
                               **build)
    p = painter
    if not p.concepts:
        raise ValueError(f"no concept has causal units in layer {p.layer!r} of {model!r}; "
                         "pick another --layer")

    def outputs(seed: float, history: History, status: str) -> tuple[Any, ...]:
        image = p.render(int(seed), history.active, scale=SCALE)  # one forward pass per event
        return image, _editor(image), history, history.rows(), status

    def show(seed: float | None, history: History) -> tuple[Any, ...]:
        if seed is None or seed < 0:
            raise gr.Error("seed must be a whole number >= 0")
        return outputs(seed, history, f"image {int(seed)}: {len(history.active)} stroke(s)")

    def new_image(seed: float | None, history: History) -> tuple[Any, ...]:
        return show(seed, History())

    def random_image(history: History) -> tuple[Any, ...]:
        seed = random.randrange(100_000)
        return (seed, *show(seed, History()))

    def grid(page: float | None) -> tuple[Any, ...]:
        page = max(0, int(page or 0))
        images = [(p.render(grid_seed(page, i), [], scale=2), f"seed {grid_seed(page, i)}")
                  for i in range(GRID)]
        return images, page

    def next_grid(page: float | None) -> tuple[Any, ...]:
        return grid(int(page or 0) + 1)

    def pick(page: float | None, evt: gr.SelectData) -> tuple[Any, ...]:
        chosen = grid_seed(int(page or 0), int(evt.index))
        return (chosen, *show(chosen, History()))

    def add(seed: float, history: History, make: Any) -> tuple[Any, ...]:
        try:
            stroke: Stroke = make()
        except EmptyStrokeError:
            gr.Warning("Empty stroke: click the Brush tool and paint on the image first.")
            return outputs(seed, history, "empty stroke: image unchanged")
        except ValueError as exc:
            gr.Warning(str(exc))
            return outputs(seed, history, f"not applied: {exc}")
        history = history.push(stroke)
        return outputs(seed, history, f"{stroke.mode} {stroke.label} with units "
                       f"{', '.join(map(str, stroke.units))}")

    def paint(editor: Any, seed: float, concept: str, mode: str, strength: float,
              alpha: float, history: History) -> tuple[Any, ...]:
        return add(seed, history, lambda: p.stroke(concept, mode, mask_from_editor(editor),
                                                    int(strength), float(alpha)))

    def paint_units(editor: Any, seed: float, layer_name: str, units: str, mode: str,
                    alpha: float, history: History) -> tuple[Any, ...]:
        return add(seed, history, lambda: p.unit_stroke(layer_name, units, mode,
                                                        mask_from_editor(editor), float(alpha)))

    def step(seed: float, history: History, how: str) -> tuple[Any, ...]:
        new = {"undo": history.undo, "redo": history.redo, "reset": history.reset}[how]()
        return outputs(seed, new, f"{how}: {len(new.active)} stroke(s) active")

    def feature(seed: float, layer_name: str, unit: float, history: History) -> Any:
        try:
            return p.feature_map(int(seed), int(unit), layer_name, history.active, scale=SCALE)
        except ValueError as exc:
            gr.Warning(str(exc))
            return None

    size = p.resolution * SCALE
    with gr.Blocks(title="GANPaint - gandissect") as demo:
        history = gr.State(History())
        gr.Markdown(f"# GANPaint\nModel **{p.name}**, layer **{p.layer}**. Click the Brush "
                    "tool, paint over the image, then *Apply stroke*.")
        with gr.Row():
            seed = gr.Number(value=0, precision=0, minimum=0, label="image (seed)")
            rand = gr.Button("Random image")
            concept = gr.Dropdown(p.concepts, value=p.concepts[0], label="concept brush")
            mode = gr.Radio(["draw", "remove"], value="remove", label="mode")
            strength = gr.Radio(list(STRENGTHS), value=STRENGTHS[0], label="strength (units)")
            alpha = gr.Slider(0.1, 1.0, value=1.0, step=0.05, label="intensity (alpha)")
        with gr.Row():
            editor = gr.ImageEditor(type="numpy", format="png", sources=(), transforms=(),
                                    layers=False, canvas_size=(size, size), fixed_canvas=True,
                                    brush=gr.Brush(colors=["#ff00ff"], default_size=12,
                                                   color_mode="fixed"),
                                    label="paint here", elem_id="paint-editor")
            result = gr.Image(type="numpy", format="png", label="result (download: PNG)",
                              buttons=["download"], interactive=False, elem_id="paint-result")
        with gr.Row():
            apply = gr.Button("Apply stroke", variant="primary", elem_id="apply-stroke")
            undo = gr.Button("Undo")
            redo = gr.Button("Redo")
            reset = gr.Button("Reset")
        status = gr.Textbox(label="status", interactive=False, elem_id="paint-status")
        with gr.Accordion("Pick an image from a grid", open=False):
            page = gr.Number(value=0, precision=0, minimum=0, label="grid page")
            gallery = gr.Gallery(label=f"click an image to paint on it ({GRID} per page)",
                                 columns=6, height="auto", allow_preview=False,
                                 elem_id="image-grid")
            more = gr.Button("Other images")
        table = gr.Dataframe(headers=HEADERS, label="strokes", interactive=False)
        with gr.Accordion("Expert: units by hand, feature maps", open=False):
            with gr.Row():
                layer_box = gr.Dropdown(p.layers, value=p.layer, label="layer")
                units_box = gr.Textbox(label="units (comma list)", placeholder="3, 17")
                unit_mode = gr.Radio(["draw", "remove"], value="remove", label="mode")
                apply_units = gr.Button("Apply units")
            with gr.Row():
                unit_num = gr.Number(value=0, precision=0, minimum=0, label="unit")
                show_map = gr.Button("Show feature map")
                heat = gr.Image(type="numpy", label="feature map", interactive=False)

        outs = [result, editor, history, table, status]
        seed.submit(new_image, [seed, history], outs, api_name="image")
        rand.click(random_image, [history], [seed, *outs], api_name="random")
        apply.click(paint, [editor, seed, concept, mode, strength, alpha, history], outs,
                    api_name="paint", trigger_mode="once")
        apply_units.click(paint_units, [editor, seed, layer_box, units_box, unit_mode, alpha,
                                        history], outs, api_name="paint_units")
        for button, how in ((undo, "undo"), (redo, "redo"), (reset, "reset")):
            button.click(lambda s, h, how=how: step(s, h, how), [seed, history], outs,
                         api_name=how)
        show_map.click(feature, [seed, layer_box, unit_num, history], heat,
                       api_name="feature_map")
        page.submit(grid, [page], [gallery, page], api_name="grid")
        more.click(next_grid, [page], [gallery, page], api_name="next_grid")
        gallery.select(pick, [page], [seed, *outs])
        demo.load(show, [seed, history], outs)
        demo.load(grid, [page], [gallery, page])
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="GANPaint: paint with a generator's units")
    add_arguments(parser)
    return parser.parse_args(argv)


def launch(args: argparse.Namespace, **launch_kw: Any) -> Any:
    """Build and launch the app; falls back to the planted model (with a message) when the
    default Toyworld GAN's weights are missing."""
    chosen: dict[str, Any] = {"model": args.model, "segmenter": args.segmenter, "layer": args.layer}
    try:
        demo = build_app(**chosen, trust_pickle=getattr(args, "trust_pickle", False))
    except FileNotFoundError as exc:
        if chosen != DEFAULTS:
            raise
        print(f"[gandissect app] {exc}\n[gandissect app] falling back to "
              "--model planted --segmenter planted --layer layout", file=sys.stderr)
        demo = build_app(**FALLBACK)
    return demo.queue(default_concurrency_limit=2, max_size=64).launch(
        server_name=args.host, server_port=args.port, **launch_kw)


def main(argv: list[str] | None = None) -> int:
    launch(parse_args(argv))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
