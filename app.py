"""gandissect's Gradio app: look at what a generator draws and how a segmenter labels it.

Run ``python app.py`` (or ``python app.py --model planted --segmenter planted``) and open
http://127.0.0.1:7860. The painting tools (GANPaint) build on this page. The app is a thin layer
over the public API: all model work happens in :func:`sample_view`.
"""

from __future__ import annotations

import argparse
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch

import models
import segmenters
from gandissect.imaging import make_grid, masks_to_label_image, to_uint8

if TYPE_CHECKING:
    import gradio as gr

MAX_SAMPLES = 64


@lru_cache(maxsize=4)
def _load(model: str, segmenter: str) -> tuple[models.Generator, segmenters.Segmenter]:
    return models.load(model), segmenters.load(segmenter)


def sample_view(model: str, segmenter: str, seed: int, count: int
                ) -> tuple[np.ndarray, np.ndarray, str]:
    """Images of samples ``0..count-1`` of ``seed``, their label map, and a coverage summary."""
    seed, count = int(seed), int(count)
    if not 1 <= count <= MAX_SAMPLES:
        raise ValueError(f"count must be between 1 and {MAX_SAMPLES}, got {count}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    gen, seg = _load(model, segmenter)
    with torch.no_grad():
        images = gen(gen.sample_latents(count, seed))
        masks = seg.segment(images)
    cover = masks.float().mean(dim=(0, 2, 3))
    lines = [f"{name}: {100 * v:.1f}%" for name, v in zip(seg.labels, cover.tolist(),
                                                          strict=True) if v > 0]
    grid = make_grid(to_uint8(images), ncol=8, scale=4)
    labels = make_grid(masks_to_label_image(masks), ncol=8, scale=4)
    return grid, labels, "pixel coverage: " + ", ".join(lines)


def build_app(model: str = "toyworld", segmenter: str = "toyworld") -> gr.Blocks:
    """The Gradio Blocks of the app (not launched)."""
    import gradio as gr

    with gr.Blocks(title="gandissect") as demo:
        gr.Markdown(f"# gandissect\nSamples of **{model}**, labelled by **{segmenter}**.")
        with gr.Row():
            seed = gr.Number(value=0, precision=0, label="seed", minimum=0)
            count = gr.Slider(1, MAX_SAMPLES, value=16, step=1, label="samples")
            go = gr.Button("Generate", variant="primary")
        with gr.Row():
            images = gr.Image(label="samples", type="numpy")
            labels = gr.Image(label="segmentation", type="numpy")
        summary = gr.Markdown()

        def run(seed_value: float, count_value: float) -> tuple[np.ndarray, np.ndarray, str]:
            try:
                return sample_view(model, segmenter, int(seed_value), int(count_value))
            except ValueError as exc:
                raise gr.Error(str(exc)) from exc

        go.click(run, [seed, count], [images, labels, summary], concurrency_limit=2)
        demo.load(run, [seed, count], [images, labels, summary])
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description="gandissect app")
    parser.add_argument("--model", default="toyworld", choices=sorted(models.available()))
    parser.add_argument("--segmenter", default="toyworld",
                        choices=sorted(segmenters.available()))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    build_app(args.model, args.segmenter).queue(max_size=32).launch(
        server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
