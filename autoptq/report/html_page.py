"""report.html: one self-contained page (inline SVG and CSS, no script, nothing fetched) from an HtmlReport.

Reads only the models of autoptq/report/models.py. The figures come from autoptq/report/plots.py when matplotlib (the
`report` extra) is installed; without it the page still has every table and says how to get the figures. The
page carries a Content-Security-Policy that forbids any request, and is byte-identical for the same report.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html import escape

from autoptq.report import plots
from autoptq.report.models import (
    CoverageMap,
    HtmlReport,
    LatencyBreakdown,
    Ratio,
    SensitivityView,
    SqnrAlongGraph,
    SummaryCard,
    TargetSection,
    TrialsView,
)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
WORST_LAYERS = 10
"""Rows of the SQNR table: the worst activations (the figure shows them all)."""
FOLD_ROWS = 20
"""Longer tables (nodes off the device, latency parts) are folded: the figure already shows them."""
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1a1a1a; background: #fafafa; line-height: 1.4; }
main { max-width: 1100px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 1.6rem; margin-bottom: 4px; } h2 { font-size: 1.3rem; margin-top: 0; }
h3 { font-size: 1.05rem; margin: 22px 0 6px; border-bottom: 1px solid #ddd; padding-bottom: 2px; }
section.target { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 16px 20px; margin: 20px 0; }
.context { color: #444; margin: 2px 0; font-size: 0.92rem; }
.notice { background: #fff8e1; border: 1px solid #f0c36d; padding: 8px 12px; border-radius: 4px; }
.warning { background: #ffebee; border: 1px solid #e57373; padding: 8px 12px; border-radius: 4px; }
.card { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 8px; }
.card div { background: #f3f6f9; border-radius: 4px; padding: 8px 10px; }
.card .label { font-size: 0.75rem; text-transform: uppercase; color: #555; letter-spacing: 0.03em; }
.card .value { font-size: 1.05rem; font-weight: 600; }
.card .basis { font-size: 0.78rem; color: #555; }
.pass { color: #2e7d32; } .fail { color: #c62828; }
.tag { font-size: 0.7rem; font-weight: 600; border-radius: 3px; padding: 1px 5px; margin-left: 4px;
       background: #e3f2fd; color: #0d47a1; vertical-align: middle; }
.tag.estimated { background: #fff3e0; color: #e65100; }
figure { margin: 6px 0; } figure svg { width: 100%; height: auto; display: block; }
figcaption, .basis-line, .absent { font-size: 0.82rem; color: #555; }
table { border-collapse: collapse; font-size: 0.82rem; margin: 6px 0; max-width: 100%; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; overflow-wrap: anywhere; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.chosen td { background: #ffebee; font-weight: 600; } tr.kept td { background: #fff3e0; }
details { margin: 10px 0; } summary { cursor: pointer; font-weight: 600; }
nav a { margin-right: 12px; }
"""


def render_html(report: HtmlReport) -> str:
    """The page for `report`: with figures when matplotlib is installed, tables always."""
    draw = plots.available()
    body = [f"<h1>{escape(report.title)}</h1>"]
    body += [f'<p class="context">{escape(line)}</p>' for line in report.context]
    body += [f'<p class="warning">{escape(w)}</p>' for w in report.warnings]
    if not draw:
        body.append(
            '<p class="notice">Figures are not drawn: matplotlib is not installed. Get them with '
            f"<code>{escape(plots.INSTALL_HINT)}</code>; every table below is complete without them.</p>"
        )
    if len(report.targets) > 1:
        links = " ".join(
            f'<a href="#{_anchor(t.summary.target)}">{escape(t.summary.target)}</a>' for t in report.targets
        )
        body.append(f"<nav>{links}</nav>")
    body += [_section(target, draw) for target in report.targets]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(report.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )


def _anchor(target: str) -> str:
    return "target-" + re.sub(r"[^A-Za-z0-9_-]", "-", target)


def _section(target: TargetSection, draw: bool) -> str:
    name = target.summary.target
    salt = _anchor(name)
    parts = [f'<section class="target" id="{salt}">', _card(target.summary)]
    parts.append(_block("Coverage map", target.coverage, target.absent.get("coverage"), draw,
                        lambda v: plots.coverage_svg(f"{salt}-coverage", v), _coverage_table))  # fmt: skip
    cut = target.coverage.first_cut if target.coverage else None
    parts.append(_block("SQNR along the graph", target.sqnr, target.absent.get("sqnr"), draw,
                        lambda v: plots.sqnr_svg(f"{salt}-sqnr", v, cut), _sqnr_table))  # fmt: skip
    parts.append(_block("Sensitivity", target.sensitivity, target.absent.get("sensitivity"), draw,
                        lambda v: plots.sensitivity_svg(f"{salt}-sensitivity", v), _sensitivity_table))  # fmt: skip
    parts.append(_block("Trials of the accuracy loop", target.trials, target.absent.get("trials"), draw,
                        lambda v: plots.trials_svg(f"{salt}-trials", v), _trials_table))  # fmt: skip
    parts.append(_block("Latency breakdown", target.latency, target.absent.get("latency"), draw,
                        lambda v: plots.latency_svg(f"{salt}-latency", v), _latency_table))  # fmt: skip
    if target.recipe:
        rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in target.recipe.items())
        parts.append(f"<details><summary>Recipe</summary><table>{rows}</table></details>")
    if target.decision_path:
        steps = "".join(
            f"<li><b>[{escape(s.node)}]</b> {escape(s.question)} → <b>{'yes' if s.answer else 'no'}</b> "
            f'<span class="basis-line">({escape(", ".join(f"{k}={v}" for k, v in s.facts.items()))})</span></li>'
            for s in target.decision_path
        )
        parts.append(f"<details><summary>Decision path</summary><ol>{steps}</ol></details>")
    parts.append("</section>")
    return "\n".join(parts)


def _block(
    title: str,
    view: CoverageMap | SqnrAlongGraph | SensitivityView | TrialsView | LatencyBreakdown | None,
    absent: str | None,
    draw: bool,
    figure: Callable[[object], str],
    table: Callable[[object], str],
) -> str:
    if view is None:
        return f'<h3>{escape(title)}</h3>\n<p class="absent">Not shown: {escape(absent or "no data")}.</p>'
    caption = f"<figcaption>{escape(view.basis)}</figcaption>" if hasattr(view, "basis") else ""
    drawn = f'<figure role="img" aria-label="{escape(title)}">{figure(view)}{caption}</figure>' if draw else caption
    return f"<h3>{escape(title)}</h3>\n{drawn}\n{table(view)}"


def _ratio(label: str, ratio: Ratio) -> str:
    value = "n/a" if ratio.value is None else f"{ratio.value:.2f}× float"
    tag = f'<span class="tag {ratio.kind}">{ratio.kind}</span>'
    return (
        f'<div><div class="label">{escape(label)}</div><div class="value">{value}{tag}</div>'
        f'<div class="basis">{escape(ratio.basis)}</div></div>'
    )


def _card(card: SummaryCard) -> str:
    verdict = '<span class="pass">OK</span>' if card.passed else '<span class="fail">NEEDS ATTENTION</span>'
    planned = (
        f" (planned {escape(card.planned_technique)})"
        if card.planned_technique and card.planned_technique != card.technique
        else ""
    )
    cells = [
        f'<div><div class="label">technique</div><div class="value">{escape(card.technique)}</div>'
        f'<div class="basis">{planned.strip() or "as planned"}</div></div>',
        _ratio("size", card.size_ratio),
        _ratio("latency", card.latency_ratio),
        f'<div><div class="label">metric</div><div class="basis">{escape(card.metric)}</div></div>',
        f'<div><div class="label">device</div><div class="basis">{escape(card.device_verdict)}</div></div>',
    ]
    notes = "".join(f'<p class="basis-line">{escape(n)}</p>' for n in card.notes)
    return f"<h2>{escape(card.target)}: {escape(card.technique)} {verdict}</h2>\n" + (
        f'<div class="card">{"".join(cells)}</div>{notes}'
    )


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        css = f' class="{classes[index]}"' if classes and classes[index] else ""
        cells = "".join(f'<td class="num">{escape(c)}</td>' if _numeric(c) else f"<td>{escape(c)}</td>" for c in row)
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[0-9][0-9,]*(\.[0-9]+)?(e[-+]?[0-9]+)?", text))


def _coverage_table(view: CoverageMap) -> str:
    off = [layer for layer in view.layers if layer.place != "device"]
    cut = f"First cut: {view.first_cut} ({view.first_cut_reason})." if view.first_cut else "No cut: one device segment."
    summary = (
        f'<p class="basis-line">{escape(cut)} {len(view.layers) - len(off)} of {len(view.layers)} nodes on the '
        f"device; {view.transfer_bytes:,} bytes cross device↔host per inference.</p>"
    )
    if not off:
        return summary
    rows = [[layer.name, layer.op_type, layer.place.replace("_", " "), layer.reason] for layer in off]
    table = _table(["node not on the device", "op", "runs on", "why"], rows)
    if len(off) <= FOLD_ROWS:
        return summary + table
    return summary + f"<details><summary>{len(off)} nodes not on the device</summary>{table}</details>"


def _sqnr_table(view: SqnrAlongGraph) -> str:
    if not view.layers:
        return '<p class="absent">No activation of the float model is left in the quantized model to compare.</p>'
    worst = sorted(view.layers, key=lambda layer: layer.sqnr_db)[:WORST_LAYERS]
    rows = [[layer.node, layer.op_type, layer.tensor, f"{layer.sqnr_db:.1f}"] for layer in worst]
    return f'<p class="basis-line">The {len(worst)} worst of {len(view.layers)} activations:</p>' + _table(
        ["node", "op", "tensor", "SQNR dB"], rows
    )


def _sensitivity_table(view: SensitivityView) -> str:
    rows = [
        [
            str(rank),
            s.node,
            s.op_type,
            f"{s.output_sqnr_db:.1f}",
            "—" if s.activation_sqnr_db is None else f"{s.activation_sqnr_db:.1f}",
            "kept in float" if s.kept_float else "quantized",
        ]
        for rank, s in enumerate(view.nodes, 1)
    ]
    classes = ["kept" if s.kept_float else "" for s in view.nodes]
    headers = ["rank", "node", "op", "output SQNR dB (alone)", "activation SQNR dB (all quantized)", "in the choice"]
    return _table(headers, rows, classes)


def _trials_table(view: TrialsView) -> str:
    rows, classes = [], []
    for p in view.points:
        mark = "chosen" if p.chosen else ("front" if p.on_front else "")
        rows.append(
            [
                str(p.index + 1),
                p.step,
                p.technique,
                "—" if p.metric is None else f"{p.metric:.4f}",
                "—" if p.latency is None else f"{p.latency:.3f}",
                "—" if p.size_bytes is None else f"{p.size_bytes:,}",
                p.error or ("within" if p.meets_budget else "misses"),
                mark,
            ]
        )
        classes.append("chosen" if p.chosen else "")
    intro = (
        f'<p class="basis-line">Budget: {escape(view.budget or "none")}. {escape(view.message)}. Latency is the '
        "cost model's estimate; the Pareto front is the search's own (it may have compared measured latencies).</p>"
    )
    headers = ["#", "step", "technique", view.metric_name, view.latency_name, "size B", "budget", "mark"]
    return intro + _table(headers, rows, classes)


def _latency_table(view: LatencyBreakdown) -> str:
    rows = [[p.label, p.part, f"{p.ms:.4g}"] for p in view.parts]
    rows.append(["total", "estimate", f"{view.estimate_ms:.4g}"])
    table = _table(["part", "runs on", "estimated ms"], rows)
    if len(rows) <= FOLD_ROWS:
        return table
    return f"<details><summary>{len(view.parts)} parts (the figure shows the longest)</summary>{table}</details>"
