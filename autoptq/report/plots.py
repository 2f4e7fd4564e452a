"""The report's figures as inline SVG, drawn with matplotlib's SVG backend (the `report` extra).

matplotlib needs no browser or JavaScript to draw, and its SVG is deterministic once the id salt and the date are
fixed, so the same inputs give the same page byte for byte. Text stays text (`svg.fonttype: none`): the page's own
font draws it and no font is embedded or fetched. Each figure reads one model of autoptq/report/models.py.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec

from autoptq.report.models import CoverageMap, LatencyBreakdown, SensitivityView, SqnrAlongGraph, TrialsView

INSTALL_HINT = "pip install 'autoptq[report]'"
PLACE_COLOURS = {"device": "#2e7d32", "host": "#ef6c00", "after_cut": "#c62828"}
PLACE_TEXT = {"device": "device", "host": "host (not supported)", "after_cut": "host (after the cut)"}
PART_COLOURS = {"device": "#2e7d32", "host": "#ef6c00", "quantize/dequantize": "#6a1b9a", "transfers": "#1565c0"}
KEPT_FLOAT = "#c62828"
QUANTIZED = "#1565c0"
MAX_BARS = 30
"""Sensitivity bars drawn at most (the most damaging); the table under the figure lists every node."""
MAX_NAMED_TICKS = 40
"""Beyond this many layers the SQNR axis shows positions, not names (the table lists the worst by name)."""
WIDTH_IN = 9.0


def available() -> bool:
    """Whether matplotlib (the `report` extra) is installed."""
    return find_spec("matplotlib") is not None


@contextmanager
def _figure(salt: str, height_in: float) -> Iterator[tuple[object, list[str]]]:
    """A matplotlib Figure (no pyplot state) whose SVG lands in the yielded list; ids are salted per figure so
    several figures can share one page."""
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    settings = {
        "svg.hashsalt": salt,
        "svg.fonttype": "none",
        "font.family": "sans-serif",
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
    out: list[str] = []
    with matplotlib.rc_context(settings):
        figure = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
        FigureCanvasSVG(figure)
        yield figure, out
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    out.append(_inline(buffer.getvalue()))


def _inline(svg: str) -> str:
    """An SVG document as an element for inline use: no XML declaration or doctype, a title for readers."""
    svg = re.sub(r"<\?xml[^>]*\?>\s*", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>\s*", "", svg)
    return svg.strip()


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def coverage_svg(salt: str, view: CoverageMap) -> str:
    """One cell per node in execution order, coloured by where it runs, the first cut marked."""
    with _figure(salt, 1.8 if len(view.layers) <= MAX_NAMED_TICKS else 1.2) as (figure, out):
        ax = figure.add_subplot()
        names = [layer.name for layer in view.layers]
        if len(names) <= MAX_NAMED_TICKS:
            # One cell per node, named.
            positions = range(len(view.layers))
            colours = [PLACE_COLOURS[layer.place] for layer in view.layers]
            ax.bar(positions, 1.0, width=1.0, color=colours, edgecolor="white", linewidth=0.3, align="edge")
            ax.set_xticks([p + 0.5 for p in positions], [_short(n, 18) for n in names], rotation=60, ha="right",
                          fontsize=7)  # fmt: skip
        else:
            # One rectangle per run of nodes in the same place: the figure stays small for any graph size.
            for place, runs in _runs([layer.place for layer in view.layers]).items():
                ax.broken_barh(runs, (0, 1), facecolors=PLACE_COLOURS[place])
        if view.first_cut in names:
            cut = names.index(view.first_cut)
            ax.axvline(cut, color="black", linewidth=2.5)
            ax.text(1.0, 1.04, f"first cut (black line): {_short(view.first_cut)}, node {cut + 1}",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=9)  # fmt: skip
        ax.set_xlim(0, max(1, len(view.layers)))
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.spines["left"].set_visible(False)
        # The counts and the bytes crossing are in the text under the figure; the figure keeps to the picture.
        present = [place for place in PLACE_COLOURS if any(layer.place == place for layer in view.layers)]
        handles = [_patch(PLACE_COLOURS[p]) for p in present]
        ax.legend(handles, [PLACE_TEXT[p] for p in present], loc="lower left", bbox_to_anchor=(0, 1.0), ncols=3,
                  frameon=False, fontsize=8, borderaxespad=0.2)  # fmt: skip
    return out[0]


def _runs(places: list[str]) -> dict[str, list[tuple[int, int]]]:
    """(start, length) of each maximal run of equal places, by place."""
    runs: dict[str, list[tuple[int, int]]] = {}
    start = 0
    for index in range(1, len(places) + 1):
        if index == len(places) or places[index] != places[start]:
            runs.setdefault(places[start], []).append((start, index - start))
            start = index
    return runs


def _patch(colour: str) -> object:
    from matplotlib.patches import Patch

    return Patch(color=colour)


def sqnr_svg(salt: str, view: SqnrAlongGraph, first_cut: str | None) -> str:
    """Activation SQNR in execution order."""
    with _figure(salt, 2.8) as (figure, out):
        ax = figure.add_subplot()
        values = [layer.sqnr_db for layer in view.layers]
        positions = range(len(values))
        ax.plot(positions, values, color=QUANTIZED, linewidth=1.2, marker="o", markersize=3)
        nodes = [layer.node for layer in view.layers]
        if first_cut in nodes:
            ax.axvline(nodes.index(first_cut), color="black", linestyle="--", linewidth=1)
        if len(values) <= MAX_NAMED_TICKS:
            ax.set_xticks(list(positions), [_short(n, 18) for n in nodes], rotation=60, ha="right", fontsize=7)
        else:
            ax.set_xlabel("activation, in execution order")
        ax.set_ylabel("SQNR vs float (dB)")
        ax.grid(axis="y", linewidth=0.4, alpha=0.6)
    return out[0]


def sensitivity_svg(salt: str, view: SensitivityView) -> str:
    """Output SQNR with each node quantized alone, most damaging at the top; nodes kept in float in red."""
    shown = view.nodes[:MAX_BARS]
    with _figure(salt, 0.9 + 0.22 * len(shown)) as (figure, out):
        ax = figure.add_subplot()
        positions = list(range(len(shown)))
        colours = [KEPT_FLOAT if s.kept_float else QUANTIZED for s in shown]
        ax.barh(positions, [s.output_sqnr_db for s in shown], color=colours, height=0.7)
        ax.set_yticks(positions, [f"{_short(s.node)} ({s.op_type})" for s in shown], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("output SQNR when only this node is quantized (dB; lower hurts more)")
        if any(s.kept_float for s in view.nodes):
            handles = [_patch(QUANTIZED), _patch(KEPT_FLOAT)]
            ax.legend(handles, ["quantized", "kept in float by the chosen candidate"], loc="lower right",
                      bbox_to_anchor=(1, 1), ncols=2, frameon=False, fontsize=8)  # fmt: skip
        values = [s.output_sqnr_db for s in shown]
        if values:
            # dB differences between nodes are what matters: start the axis near the worst, not at 0 dB.
            ax.set_xlim(max(0.0, min(values) - 5) if min(values) > 0 else min(values) - 5, max(values) + 2)
        ax.grid(axis="x", linewidth=0.4, alpha=0.6)
    return out[0]


def trials_svg(salt: str, view: TrialsView) -> str:
    """Metric against latency, point area by size; the Pareto front joined, the choice starred."""
    points = [p for p in view.points if p.metric is not None and p.latency is not None and p.size_bytes]
    with _figure(salt, 3.6) as (figure, out):
        ax = figure.add_subplot()
        largest = max((p.size_bytes or 1 for p in points), default=1)
        for within, label in ((True, "within budget"), (False, "misses budget")):
            group = [p for p in points if p.meets_budget == within]
            if group:
                ax.scatter(
                    [p.latency for p in group],
                    [p.metric for p in group],
                    s=[30 + 400 * (p.size_bytes or 0) / largest for p in group],
                    facecolors=QUANTIZED if within else "none",
                    edgecolors=QUANTIZED,
                    alpha=0.7,
                    label=label,
                )
        front = sorted((p for p in points if p.on_front), key=lambda p: p.latency or 0.0)
        if front:
            ax.plot([p.latency for p in front], [p.metric for p in front], color="black", linewidth=1,
                    linestyle="--", label="Pareto front")  # fmt: skip
        for p in points:
            ax.annotate(str(p.index + 1), (p.latency, p.metric), fontsize=7, xytext=(4, 4), textcoords="offset points")
        chosen = [p for p in points if p.chosen]
        if chosen:
            ax.scatter([chosen[0].latency], [chosen[0].metric], marker="*", s=260, color=KEPT_FLOAT, zorder=3,
                       label=f"chosen (trial {chosen[0].index + 1})")  # fmt: skip
        ax.set_xlabel(f"{view.latency_name} (lower is faster); point area ∝ size")
        ax.set_ylabel(view.metric_name)
        ax.grid(linewidth=0.4, alpha=0.6)
        ax.legend(loc="best", frameon=False, fontsize=8, markerscale=0.5)
    return out[0]


def latency_svg(salt: str, view: LatencyBreakdown) -> str:
    """The estimate part by part, in execution order (the longest MAX_BARS parts when there are more)."""
    parts = view.parts
    if len(parts) > MAX_BARS:
        longest = set(sorted(range(len(parts)), key=lambda i: -parts[i].ms)[:MAX_BARS])
        parts = [part for i, part in enumerate(parts) if i in longest]
    with _figure(salt, 0.9 + 0.3 * max(1, len(parts))) as (figure, out):
        ax = figure.add_subplot()
        positions = list(range(len(parts)))
        ax.barh(positions, [p.ms for p in parts], color=[PART_COLOURS.get(p.part, "grey") for p in parts], height=0.6)
        ax.set_yticks(positions, [_short(p.label, 60) for p in parts], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"estimated ms (total {view.estimate_ms:.3g} ms, range {view.low_ms:.3g}–{view.high_ms:.3g})")
        ax.grid(axis="x", linewidth=0.4, alpha=0.6)
    return out[0]
