"""What the LSTMVis-style page computes, without Gradio: hidden-state traces of chosen units
over a text, span selection and matching across a data set, unit labels from a dissection,
and the encoder-decoder's attention and top-k table. Every method returns plain data or an
RGB figure, so the page stays a thin layer and the logic is tested directly.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from models.sequence import language

from ..dissection.results import LayerResult
from .dissect import unit_states
from .match import Match, concept_precision, find_matches, select_units
from .probe import SequenceProbe


def figure_rgb(fig: Any) -> np.ndarray:
    """A matplotlib figure as an RGB array (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def parse_units(text: str, width: int) -> list[int]:
    """``"3, 17 40"`` -> ``[3, 17, 40]``; non-integers and units outside ``0..width-1`` raise a
    ValueError naming them."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        units = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"units must be integers separated by commas, got {text!r}") from None
    bad = [u for u in units if not 0 <= u < width]
    if bad:
        raise ValueError(f"unknown units {bad}: the layer has {width} units (0..{width - 1})")
    return list(dict.fromkeys(units))


class SequenceExplorer:
    """States of ``layers`` of ``model`` on the first ``samples`` sequences of ``probe`` (kept
    in memory: ``samples x units x T`` floats per layer), with optional dissection ``results``
    per layer for unit labels."""

    def __init__(self, model: nn.Module, probe: SequenceProbe, layers: Sequence[str],
                 samples: int = 300, results: dict[str, LayerResult] | None = None) -> None:
        if not layers:
            raise ValueError("give at least one layer")
        self.model, self.probe = model, probe
        self.layers = list(layers)
        n = min(samples, len(probe))
        self.tokens = probe.tokens(0, n)
        self.annotations = probe.masks(0, n)[:, :, 0].numpy()
        inputs = torch.from_numpy(self.tokens)
        self.states = {name: unit_states(model, inputs, name) for name in self.layers}
        self.results = results or {}

    def width(self, layer: str) -> int:
        """Units of ``layer``; an unknown layer raises a ValueError listing the known ones."""
        if layer not in self.states:
            raise ValueError(f"unknown layer {layer!r}; layers: {', '.join(self.layers)}")
        return int(self.states[layer].shape[1])

    def text_states(self, layer: str, sample: int | None = None, text: str = ""
                    ) -> tuple[str, np.ndarray]:
        """The text and its states ``[U, T]``: sequence ``sample`` of the data set, or
        ``text`` (starting with ``^``) run through the model."""
        self.width(layer)
        if text.strip():
            text = text.strip()
            if not text.startswith("^"):
                raise ValueError("a text starts with '^' (the start token)")
            toks = torch.from_numpy(language.encode(text))[None]
            return text, unit_states(self.model, toks, layer)[0]
        i = 0 if sample is None else int(sample)
        if not 0 <= i < len(self.tokens):
            raise ValueError(f"sequence {i} is not in the data set (0..{len(self.tokens) - 1})")
        return language.decode(self.tokens[i]), self.states[layer][i]

    def unit_label(self, layer: str, unit: int) -> str:
        """``unit``'s dissection label, IoU and threshold (or why there is none)."""
        w = self.width(layer)
        if not 0 <= unit < w:
            raise ValueError(f"unknown unit {unit}: layer {layer} has {w} units (0..{w - 1})")
        r = self.results.get(layer)
        if r is None:
            return f"unit {unit} of {layer}: no dissection loaded for this layer"
        return (f"unit {unit} of {layer}: {r.unit_labels[unit]} (IoU {r.best_iou[unit]:.3f}, "
                f"threshold {r.unit_threshold(unit):.3f}, q = {r.meta.get('quantile')})")

    def select(self, layer: str, span: tuple[int, int], threshold: float,
               sample: int | None = None, text: str = "", margin: int = 1,
               limit: int = 50) -> dict[str, Any]:
        """Units on in ``span`` and off around it, the spans where they are all on across the
        data set (closest in length first, at most ``limit``), and the concepts of the matched
        tokens: ``{"units", "matches", "total", "precision"}``."""
        _, states = self.text_states(layer, sample, text)
        units = select_units(states, span, threshold, margin)
        every = find_matches(self.states[layer], units, threshold,
                             annotations=self.annotations, labels=self.probe.labels,
                             target_length=span[1] - span[0])
        return {"units": units, "matches": every[:limit], "total": len(every),
                "precision": concept_precision(every, self.annotations, self.probe.labels)}

    def match_text(self, m: Match) -> str:
        """The matched sequence with the match in brackets ``⟦...⟧``."""
        t = language.decode(self.tokens[m.sample])
        return t[:m.start] + "⟦" + t[m.start:m.stop] + "⟧" + t[m.stop:]

    def _marked(self, m: Match) -> str:
        t = language.decode(self.tokens[m.sample])
        return (html.escape(t[:m.start]) + "<mark>" + html.escape(t[m.start:m.stop])
                + "</mark>" + html.escape(t[m.stop:]))

    @staticmethod
    def tokens_html(text: str, span: tuple[int, int]) -> str:
        """The text as numbered tokens, the selected ``span`` highlighted (to pick a range)."""
        cells = "".join(
            f"<span class='lv-tok{' lv-in' if span[0] <= t < span[1] else ''}' "
            f"title='token {t}' style='display:inline-block;text-align:center;"
            f"font-family:monospace;padding:0 2px;"
            f"{'background:#ffe066;' if span[0] <= t < span[1] else ''}'>"
            f"{html.escape(c)}<br><small>{t}</small></span>" for t, c in enumerate(text))
        return f"<div id='lv-token-strip'>{cells}</div>"

    def matches_html(self, matches: Sequence[Match]) -> str:
        """An HTML table of matches (sequence, span, text, concepts)."""
        rows = "".join(
            f"<tr class='lv-match'><td>{m.sample}</td><td>{m.start}..{m.stop - 1}</td>"
            f"<td style='font-family:monospace'>{self._marked(m)}</td>"
            f"<td>{html.escape(', '.join(m.concepts))}</td></tr>" for m in matches)
        return ("<table id='lv-match-table'><thead><tr><th>sequence</th><th>tokens</th>"
                "<th>text</th><th>concepts on every token</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>")

    def trace_figure(self, layer: str, units: Sequence[int], sample: int | None = None,
                     text: str = "", span: tuple[int, int] | None = None,
                     threshold: float | None = None) -> np.ndarray:
        """Hidden-state traces of ``units`` over the text (tokens on the x axis), the selected
        span shaded and the threshold drawn; an RGB image."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown, states = self.text_states(layer, sample, text)
        units = parse_units(" ".join(map(str, units)), states.shape[0])
        fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * len(shown)), 2.8))
        for u in units:
            ax.plot(states[u], label=f"unit {u}", lw=1.2)
        if span is not None:
            ax.axvspan(span[0] - 0.5, span[1] - 0.5, color="gold", alpha=0.3)
        if threshold is not None:
            ax.axhline(threshold, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(shown)), list(shown), fontsize=7, family="monospace")
        ax.set_xlim(-0.5, len(shown) - 0.5)
        ax.set_ylabel(layer)
        if units:
            ax.legend(fontsize=6, ncol=min(len(units), 6), loc="upper right")
        fig.tight_layout()
        return figure_rgb(fig)


def attention_figure(source: str, output: str, attention: np.ndarray) -> np.ndarray:
    """The attention matrix (decoder steps x source tokens) as an RGB image."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * len(source)), 0.35 * len(output) + 1.2))
    ax.imshow(attention, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(source)), list(source), family="monospace")
    ax.set_yticks(range(len(output)), list(output), family="monospace")
    ax.set_xlabel("source")
    ax.set_ylabel("output step")
    fig.tight_layout()
    return figure_rgb(fig)


def topk_html(output: str, top: Sequence[Sequence[tuple[str, float]]]) -> str:
    """Per decoder step, its output and the top-k predictions with probabilities."""
    rows = "".join(f"<tr><td>{s}</td><td>{html.escape(output[s])}</td><td>"
                   + ", ".join(f"{html.escape(t)} {p:.2f}" for t, p in top[s]) + "</td></tr>"
                   for s in range(len(top)))
    return ("<table id='s2s-topk-table'><thead><tr><th>step</th><th>output</th>"
            f"<th>top-k</th></tr></thead><tbody>{rows}</tbody></table>")


__all__ = ["SequenceExplorer", "attention_figure", "figure_rgb", "parse_units", "topk_html"]
