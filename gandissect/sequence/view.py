"""The LSTMVis / Seq2Seq-Vis page (Gradio): a thin layer over
:class:`~gandissect.sequence.explorer.SequenceExplorer`.

Tab *Hidden states*: pick a sequence of the data set (or type a text), a layer and units to
trace; select a token range (start, stop) and a threshold to get the units on in the range and
off around it, their traces, and every matching span of the data set with its annotations;
pick a unit to see its dissection label. Tab *Seq2Seq*: a source's completion with the
attention matrix and the top-k predictions per step, with and without ablating encoder units.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .explorer import SequenceExplorer, attention_figure, parse_units, topk_html
from .intervene import span_edit
from .seq2seq import trace


def _error(exc: Exception) -> str:
    return f"error: {exc}"


def build_view(explorer: SequenceExplorer, seq2seq: Any = None, default_units: str = "",
               default_span: tuple[int, int] = (1, 4), default_threshold: float = 0.3) -> Any:
    """The page as a ``gr.Blocks`` (launch it yourself); ``seq2seq`` (a
    :class:`~models.sequence.seq2seq.ToySeq2Seq`) adds the Seq2Seq tab."""
    import gradio as gr

    layer0 = explorer.layers[0]
    n = len(explorer.tokens)

    def show(sample: float, text: str, layer: str, units_text: str, start: float, stop: float,
             threshold: float) -> tuple[Any, str, str, str, str, Any, str]:
        try:
            span = (int(start), int(stop))
            found = explorer.select(layer, span, float(threshold), int(sample), text)
            chosen = parse_units(units_text, explorer.width(layer)) or found["units"][:8]
            image = explorer.trace_figure(layer, chosen, int(sample), text, span,
                                          float(threshold))
            shown, _ = explorer.text_states(layer, int(sample), text)
        except ValueError as exc:
            return None, _error(exc), "", "", "", gr.update(), ""
        units = found["units"]
        top = list(found["precision"].items())[:4]
        summary = (f"{len(units)} units on in tokens {span[0]}..{span[1] - 1} and off around: "
                   f"{found['total']} matching spans in {n} sequences"
                   + ("; matched tokens are " + ", ".join(f"{c} {p:.0%}" for c, p in top)
                      if top else ""))
        return (image, summary, ", ".join(map(str, units)),
                explorer.matches_html(found["matches"]),
                f"traced units: {', '.join(map(str, chosen))}",
                gr.update(choices=[str(u) for u in units] or
                          [str(u) for u in range(explorer.width(layer))]),
                explorer.tokens_html(shown, span))

    def label(layer: str, unit: str | None) -> str:
        if unit in (None, ""):
            return ""
        try:
            return explorer.unit_label(layer, int(str(unit)))
        except ValueError as exc:
            return _error(exc)

    with gr.Blocks(title="gandissect: sequence models") as demo:
        gr.Markdown("## Hidden states of the bracket-language LSTM (LSTMVis-style)")
        with gr.Tab("Hidden states"):
            with gr.Row():
                sample = gr.Number(value=0, precision=0, minimum=0, maximum=n - 1,
                                   label="sequence", elem_id="lv-sample")
                text = gr.Textbox(label="or your own text (starts with ^)", elem_id="lv-text")
                layer = gr.Dropdown(explorer.layers, value=layer0, label="layer",
                                    elem_id="lv-layer")
                units = gr.Textbox(value=default_units, label="units to trace (empty: the "
                                   "selected ones)", elem_id="lv-units")
            with gr.Row():
                start = gr.Number(value=default_span[0], precision=0, label="span start",
                                  elem_id="lv-start")
                stop = gr.Number(value=default_span[1], precision=0, label="span stop "
                                 "(exclusive)", elem_id="lv-stop")
                threshold = gr.Slider(-1.0, 1.0, value=default_threshold, step=0.01,
                                      label="threshold", elem_id="lv-threshold")
                go = gr.Button("Select span", variant="primary", elem_id="lv-select")
            strip = gr.HTML(elem_id="lv-tokens")
            plot = gr.Image(label="hidden-state traces", elem_id="lv-trace", interactive=False)
            summary = gr.Textbox(label="selection", elem_id="lv-summary", interactive=False)
            selected = gr.Textbox(label="units on in the span, off around it",
                                  elem_id="lv-selected", interactive=False)
            traced = gr.Markdown(elem_id="lv-traced")
            with gr.Row():
                unit = gr.Dropdown([str(u) for u in range(explorer.width(layer0))],
                                   label="unit", elem_id="lv-unit")
                unit_label = gr.Textbox(label="dissection label", elem_id="lv-unit-label",
                                        interactive=False)
            matches = gr.HTML(elem_id="lv-matches")
            inputs = [sample, text, layer, units, start, stop, threshold]
            outputs = [plot, summary, selected, matches, traced, unit, strip]
            go.click(show, inputs, outputs)
            unit.change(label, [layer, unit], unit_label)
        if seq2seq is not None:
            _seq2seq_tab(gr, seq2seq)
    return demo


def _seq2seq_tab(gr: Any, model: Any) -> None:
    """The Seq2Seq tab: completion, attention and top-k, plain and with encoder units off."""
    def run(source: str, layer: str, units_text: str, k: float
            ) -> tuple[Any, str, str, str]:
        try:
            units = parse_units(units_text, model.encoder.hidden)
            plain = trace(model, source.strip(), int(k))
            edits = [span_edit(layer, units, len(plain.source))] if units else []
            shown = trace(model, plain.source, int(k), edits) if edits else plain
        except ValueError as exc:
            return None, _error(exc), "", ""
        said = f"completion: {plain.output}"
        if edits:
            said += (f" | with units {', '.join(map(str, units))} of {layer} off: "
                     f"{shown.output}")
        return (attention_figure(shown.source, shown.output, np.asarray(shown.attention)), said,
                topk_html(shown.output, shown.top), shown.output)

    with gr.Tab("Seq2Seq"):
        gr.Markdown("Bracket completion by an attention encoder-decoder: attention and top-k "
                    "predictions per decoder step; ablate encoder units to see the output "
                    "change.")
        with gr.Row():
            source = gr.Textbox(value="^([{x}[", label="source", elem_id="s2s-source")
            layer = gr.Dropdown(model.layer_names, value=model.layer_names[-1],
                                label="encoder layer", elem_id="s2s-layer")
            units = gr.Textbox(label="encoder units to ablate", elem_id="s2s-units")
            k = gr.Number(value=3, precision=0, minimum=1, maximum=5, label="top k",
                          elem_id="s2s-k")
            go = gr.Button("Decode", variant="primary", elem_id="s2s-run")
        said = gr.Textbox(label="output", elem_id="s2s-output", interactive=False)
        attention = gr.Image(label="attention", elem_id="s2s-attention", interactive=False)
        top = gr.HTML(elem_id="s2s-topk")
        shown = gr.Textbox(visible=False)
        go.click(run, [source, layer, units, k], [attention, said, top, shown])


__all__ = ["build_view"]
