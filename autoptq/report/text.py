"""Rendering only: console tables, JSON, Markdown and SARIF from the result models. No decisions are made here."""

from __future__ import annotations

import hashlib
import json
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from autoptq._version import __version__
from autoptq.deploy.device_file import DeviceFile
from autoptq.devices.coverage import CoverageReport
from autoptq.io.resources import data_dir

if TYPE_CHECKING:
    from autoptq.pipeline.check import CheckReport
from autoptq.decide.hostcost import HostTable
from autoptq.decide.planner import MatrixCell, Plan
from autoptq.decide.sensitivity import SensitivityReport
from autoptq.decide.tuning import TuningResult
from autoptq.devices.profiles import HardwareProfile
from autoptq.pipeline.manifest import Manifest
from autoptq.pipeline.produce import Outcome
from autoptq.techniques import by_name
from autoptq.techniques.recipe import Recipe

Format = Literal["table", "json", "markdown", "sarif"]
JSON_SCHEMA_VERSION = 1


def to_json(items: Sequence[BaseModel], kind: str) -> str:
    """A stable JSON document: `{"schema_version", "kind", "results": [...]}` with sorted keys."""
    document = {
        "schema_version": JSON_SCHEMA_VERSION,
        "kind": kind,
        "results": [item.model_dump(mode="json") for item in items],
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def render_table(tables: Sequence[Table | str], width: int = 120) -> str:
    """Render rich tables and text lines to plain text."""
    console = Console(width=width, record=True, force_terminal=False, color_system=None, file=_NullFile())
    for table in tables:
        # Text lines are printed as written: a shape such as [x_dim0, 3] is no style tag.
        console.print(table, markup=False, highlight=False) if isinstance(table, str) else console.print(table)
    return console.export_text()


class _NullFile:
    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        return None


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def display_path(path: Path) -> str:
    """`path` relative to the working folder (or the shipped data), else its name: no machine's layout leaks."""
    for base in (Path.cwd(), data_dir("rules").parent):
        if path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    return path.name


def render_targets(
    profiles: Sequence[HardwareProfile], fmt: Literal["table", "json"] = "table", width: int = 100
) -> str:
    """The profiles as an aligned table with a header, descriptions wrapped to fit `width` columns; or as JSON."""
    if fmt == "json":
        rows = [
            {"name": p.name, "kind": p.kind, "precisions": list(p.precisions), "description": p.description}
            for p in profiles
        ]
        document = {"schema_version": JSON_SCHEMA_VERSION, "kind": "targets", "results": rows}
        return json.dumps(document, indent=2, sort_keys=True)
    rows = [(p.name, p.kind, ",".join(p.precisions), p.description) for p in profiles]
    header = ("TARGET", "KIND", "PRECISIONS", "DESCRIPTION")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    indent = sum(widths) + 2 * len(widths)
    lines = []
    for name, kind, precisions, description in [header, *rows]:
        lead = "  ".join(cell.ljust(w) for cell, w in zip((name, kind, precisions), widths, strict=True)) + "  "
        wrapped = textwrap.wrap(description, width=max(width - indent, 30)) or [""]
        lines.append(lead + wrapped[0])
        lines += [" " * indent + more for more in wrapped[1:]]
    return "\n".join(line.rstrip() for line in lines)


def render_profile(profile: HardwareProfile) -> str:
    """One profile, resolved and validated, as YAML in the order of its fields."""
    return yaml.safe_dump(profile.model_dump(mode="json", by_alias=True), sort_keys=False, width=110)


def audit_summary_lines(report: CoverageReport) -> list[str]:
    """The fixed summary lines of an audit, in the manner of the Edge TPU compiler's log."""
    on_device = sum(1 for n in report.nodes if n.on_device)
    mem = report.memory
    lines = [
        f"Target: {report.target}",
        f"Compatible: {'yes' if report.compatible else 'no'}"
        + (" (after quantization)" if report.after_quantization else "")
        + ("" if report.runnable else " (cannot run: no host processor to fall back to)"),
        f"Operations on device: {on_device}; on host: {len(report.nodes) - on_device}",
        f"MACs on device: {_pct(report.device_mac_fraction)} of {report.total_macs:,}",
        f"MACs by precision on device{' (after quantization)' if report.after_quantization else ''}: "
        + (", ".join(f"{p} {_pct(f)}" for p, f in report.mac_fraction_by_precision.items()) or "none"),
        "First cut: "
        + (
            f"{report.first_cut.node} ({report.first_cut.op_type}): {report.first_cut.reason}; "
            f"{_pct(report.mac_fraction_before_first_cut)} of MACs before it"
            if report.first_cut
            else "none"
        ),
        f"Device segments: {report.device_segments}; device<->host transitions: {report.transitions}; "
        f"bytes crossing per inference: {_bytes(report.transfer_bytes)}",
        f"Parameters on device: {_bytes(mem.device_param_bytes)}"
        + (
            f"; on-chip cache {_bytes(mem.parameter_cache_bytes)}; streamed {_bytes(mem.streamed_param_bytes)}"
            if mem.parameter_cache_bytes is not None
            else ""
        ),
        f"Peak activation memory: {_bytes(mem.peak_activation_bytes)}"
        + (f" of RAM {_bytes(mem.ram_bytes)} ({'fits' if mem.fits_ram else 'does NOT fit'})" if mem.ram_bytes else ""),
    ]
    if mem.flash_bytes is not None:
        lines.append(
            f"Weights in flash: {_bytes(mem.device_param_bytes)} of {_bytes(mem.flash_bytes)} "
            f"({'fits' if mem.fits_flash else 'does NOT fit'})"
        )
    lines.extend(f"Shapes: {note}" for note in report.shape_notes)
    if report.rewrites:
        counts = Counter(f"{r.op_type} -> {'/'.join(r.into)}" for r in report.rewrites)
        summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
        lines.append(f"Converter rewrites (as the device's converter does before mapping): {summary}")
    if report.dynamic_dims:
        lines.append(f"Dynamic dimensions: {', '.join(report.dynamic_dims)}")
    return lines


def render_audit(reports: Sequence[CoverageReport], fmt: Format, artifact: str = "model.onnx") -> str:
    """Render audit reports in the requested format; `artifact` names the model file in SARIF locations (a path
    relative to the repository root, `%SRCROOT%`)."""
    if fmt == "json":
        return to_json(reports, "audit")
    if fmt == "markdown":
        return "\n".join(_audit_markdown(r) for r in reports)
    if fmt == "sarif":
        return _audit_sarif(reports, artifact)
    parts: list[Table | str] = []
    for report in reports:
        parts.append("\n".join(audit_summary_lines(report)))
        ops = Table(title=f"{report.target}: operators", title_justify="left")
        for column in ("Operator", "Count", "Status"):
            ops.add_column(column)
        for row in report.op_summary:
            ops.add_row(row.operator, str(row.count), row.status)
        parts.append(ops)
        off = [n for n in report.nodes if not n.on_device]
        if off:
            nodes = Table(title=f"{report.target}: nodes not on the device", title_justify="left")
            for column in ("Node", "Op", "Status", "Reason"):
                nodes.add_column(column, overflow="fold")
            for node in off[:50]:
                nodes.add_row(node.name, node.op_type, node.status, node.reason)
            parts.append(nodes)
            if len(off) > 50:
                parts.append(f"... and {len(off) - 50} more (use --format json for all)")
    return render_table(parts)


def _audit_markdown(report: CoverageReport) -> str:
    lines = [f"## Audit: {report.target}", ""]
    lines += [f"- {line}" for line in audit_summary_lines(report)[1:]]
    lines += ["", "| Operator | Count | Status |", "|---|---:|---|"]
    lines += [f"| {r.operator} | {r.count} | {r.status} |" for r in report.op_summary]
    off = [n for n in report.nodes if not n.on_device]
    if off:
        lines += ["", "| Node | Op | Status | Reason |", "|---|---|---|---|"]
        lines += [f"| {n.name} | {n.op_type} | {n.status} | {n.reason.replace('|', '/')} |" for n in off]
    return "\n".join(lines) + "\n"


def _audit_sarif(reports: Sequence[CoverageReport], artifact: str) -> str:
    """SARIF 2.1.0: one result per node that does not run on the device, so CI can annotate them."""
    rules = sorted({n.status for r in reports for n in r.nodes if not n.on_device})
    results = [
        {
            "ruleId": node.status,
            "level": "error" if node.status != "after_cut" else "warning",
            "message": {"text": f"[{report.target}] {node.name} ({node.op_type}): {node.reason}"},
            "locations": [
                {
                    # A model is binary: line 1 stands for the file (code scanning needs a region to place it).
                    "physicalLocation": {
                        "artifactLocation": {"uri": artifact, "uriBaseId": "%SRCROOT%"},
                        "region": {"startLine": 1},
                    },
                    "logicalLocations": [{"name": node.name, "kind": "function"}],
                }
            ],
            "partialFingerprints": {
                "autoptqNode/v1": _fingerprint(report.target, node.name, node.op_type, node.status)
            },
            "properties": {"target": report.target, "node": node.name, "op_type": node.op_type},
        }
        for report in reports
        for node in report.nodes
        if not node.on_device
    ]
    document = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "autoptq",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "rules": [{"id": rule, "shortDescription": {"text": rule.replace("_", " ")}} for rule in rules],
                    }
                },
                "results": results,
            }
        ],
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _fingerprint(*parts: str) -> str:
    """Stable across runs and machines: the same finding keeps its identity between CI runs."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def _diff(value: float | None) -> str:
    return "n/a (not finite)" if value is None else f"{value:.4g}"


def fact_text(value: object) -> str:
    """A fact or recipe value as a reader sees it."""
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _recipe_value(key: str, value: object) -> str:
    if key == "op_types_to_quantize" and value == []:
        return "all the quantizer supports"
    if key == "nodes_to_exclude" and value == []:
        return "none"
    if key == "fixed_output_params" and value == {}:
        return "none needed (no such op in the model)"
    return fact_text(value)


def _device_file_line(file: DeviceFile) -> str:
    """One line for reports."""
    if file.error is not None:
        return file.error
    ops = ", ".join(f"{op} ×{n}" for op, n in file.op_counts.items())
    line = f"`{file.path}` ({file.size_bytes} bytes, sha256 `{(file.sha256 or '')[:16]}...`; {ops})"
    line += "".join(f"; {join}" for join in file.output_joins)
    return line + (f"; next step: `{file.next_step}`" if file.next_step else "")


def recipe_fields(technique: str, recipe: Recipe) -> dict[str, str]:
    """The recipe settings that matter for `technique`, as text (empty for float)."""
    values = recipe.model_dump(mode="json")
    return {key: _recipe_value(key, values[key]) for key in by_name(technique).recipe_keys}


def _recipe_lines(plan: Plan) -> list[str]:
    return [f"{key}: {value}" for key, value in recipe_fields(plan.technique, plan.recipe).items()]


def _latency_text(plan: Plan) -> str:
    p = plan.predicted
    text = f"{p.latency_ms[0]:.3g}-{p.latency_ms[1]:.3g} ms"
    if p.float_latency_ms is not None:
        text += f" vs float {p.float_latency_ms[0]:.3g}-{p.float_latency_ms[1]:.3g} ms"
    if p.latency_ratio is not None:
        text += f" (ratio {p.latency_ratio:.2f}x)"
    return text


def plan_lines(plan: Plan) -> list[str]:
    """A plan as plain lines: decision, why (each step with the facts it looked at), recipe, predictions."""
    p = plan.predicted
    lines = [
        f"Target: {plan.target}",
        f"Technique: {plan.technique}  (leaf '{plan.leaf}' of {plan.rules})",
        f"  {plan.summary}",
        "Decision path:",
    ]
    for index, step in enumerate(plan.trace, 1):
        facts = ", ".join(f"{name}={fact_text(value)}" for name, value in step.facts.items())
        lines.append(f"  {index}. [{step.node}] {step.question} -> {'yes' if step.answer else 'no'}  ({facts})")
    recipe = _recipe_lines(plan)
    if recipe:
        lines.append("Recipe:")
        lines += [f"  {line}" for line in recipe]
    ratio = p.size_bytes / p.float_size_bytes if p.float_size_bytes else 1.0
    lines.append(
        f"Predicted (estimate): size {_bytes(p.size_bytes)} vs float {_bytes(p.float_size_bytes)} ({ratio:.2f}x); "
        f"latency {_latency_text(plan)}"
    )
    lines += textwrap.wrap(f"basis: {p.basis}", width=100, initial_indent="  ", subsequent_indent="    ")
    if plan.fallbacks:
        lines.append(f"Fallbacks if accuracy misses the budget: {' -> '.join(plan.fallbacks)}")
    lines += [f"Warning: {w}" for w in plan.warnings]
    return lines


def render_plans(plans: Sequence[Plan], fmt: Format) -> str:
    """Render plans: JSON keys per plan include target, technique, recipe, trace, predicted, warnings."""
    if fmt == "json":
        return to_json(plans, "plan")
    if fmt == "markdown":
        blocks = []
        for plan in plans:
            lines = plan_lines(plan)
            blocks.append(f"## Plan: {plan.target}\n\n" + "\n".join(f"    {line}" for line in lines[1:]) + "\n")
        return "\n".join(blocks)
    return "\n\n".join("\n".join(plan_lines(plan)) for plan in plans) + "\n"


def render_matrix(cells: Sequence[MatrixCell], rules: str) -> str:
    """The decision matrix as Markdown: model family x data availability by target."""
    targets = list(dict.fromkeys(c.target for c in cells))
    rows = list(dict.fromkeys((c.family, c.with_data) for c in cells))
    by_key = {(c.family, c.with_data, c.target): c for c in cells}
    lines = [
        "# Decision matrix",
        "",
        "The technique `autoptq plan` chooses for each shipped hardware profile and each synthetic model family of",
        f"`autoptq.model.zoo`, with and without representative data, under the default tree (`{rules}`).",
        "Each cell: technique, then the leaf of the tree in parentheses and the estimated latency ratio against float",
        "(an estimate from the cost model; n/a where the target cannot run float at all).",
        "Regenerate with `autoptq matrix -o docs/decision-matrix.md`.",
        "",
        "| model | data | " + " | ".join(targets) + " |",
        "|---|---|" + "---|" * len(targets),
    ]
    for family, with_data in rows:
        cells_text = []
        for target in targets:
            cell = by_key[(family, with_data, target)]
            ratio = "n/a" if cell.latency_ratio is None else f"{cell.latency_ratio:.2f}x"
            cells_text.append(f"**{cell.technique}** ({cell.leaf}, {ratio})")
        lines.append(f"| {family} | {'yes' if with_data else 'no'} | " + " | ".join(cells_text) + " |")
    return "\n".join(lines) + "\n"


def _size(value: int) -> str:
    return _bytes(value)


def _check_sentence(check: dict[str, object]) -> str:
    """One line of a variant's `autoptq check`: tier, rules, emulated fidelity and accuracy, latency estimate."""
    rules = check["device_rules"]
    violations = len(rules["violations"])
    parts = [f"{check['tier']} tier; device rules {'passed' if rules['passed'] else f'FAILED ({violations})'}"]
    fidelity = check["fidelity"]
    if fidelity:
        parts.append(f"emulated SQNR {min(f['sqnr_db'] for f in fidelity):.1f} dB")
    accuracy = check.get("accuracy")
    if accuracy:
        parts.append(f"emulated accuracy {accuracy['emulated']:.4f} (float {accuracy['float']:.4f})")
    low, high = check["latency"]["estimate_ms"]
    parts.append(f"latency estimate {low:.3g}-{high:.3g} ms")
    findings = check.get("findings") or []
    if findings:
        parts.append(f"{len(findings)} emulator findings (see manifest)")
    return "; ".join(parts)


def render_variants_report(manifest: Manifest) -> str:
    """report.md of `autoptq variants`: the variants side by side, then each one's story."""
    lines = [
        f"# Variants of {manifest.input_model.name}",
        "",
        f"Input model: {_size(manifest.input_model.size_bytes)}, sha256 `{manifest.input_model.sha256[:16]}...`; "
        f"autoptq {manifest.autoptq_version}, onnx {manifest.onnx_version}, "
        f"onnxruntime {manifest.onnxruntime_version}.",
    ]
    if manifest.data is not None:
        data = manifest.data
        lines.append(
            f"Calibration: {data.calibration_samples} samples of {data.source}; verification: "
            f"{data.validation_samples} samples ({data.validation_source})."
        )
        if data.synthetic:
            lines.append("")
            lines.append("**WARNING: SYNTHETIC calibration data. Accuracy of these variants is unknown.**")
    lines += [
        "",
        "| target | planned | produced | size | vs float | min SQNR (dB) | top-1 agree | accuracy float → quantized |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for v in manifest.variants:
        ver = v.verification
        sqnr = f"{min(f.sqnr_db for f in ver.fidelity):.1f}" if ver and ver.fidelity else "—"
        agreement = (
            next((f.top1_agreement for f in ver.fidelity if f.top1_agreement is not None), None) if ver else None
        )
        acc = (
            f"{ver.accuracy_float:.4f} → {ver.accuracy_candidate:.4f}"
            if ver and ver.accuracy_float is not None and ver.accuracy_candidate is not None
            else "—"
        )
        lines.append(
            f"| {v.target} | {v.planned_technique} | {v.technique}{' (float kept)' if v.kept_float else ''} | "
            f"{_size(v.size_bytes)} | {ver.size_ratio if ver else 1.0:.2f}x | {sqnr} | "
            f"{'—' if agreement is None else f'{agreement:.3f}'} | {acc} |"
        )
    scored = [v for v in manifest.variants if v.verification is not None and v.verification.metric is not None]
    if scored:
        lines.append("")
        lines += [
            f"Metric {v.verification.metric.name} on {v.target}: float {v.verification.metric.float:.4f} → "
            f"quantized {v.verification.metric.candidate:.4f}."
            for v in scored
            if v.verification is not None and v.verification.metric is not None
        ]
    lines += [
        "",
        "Latency: host targets are timed side by side with float in measurements.json (timings vary run to run);",
        "device latencies are estimates from `autoptq plan`. Integer-only targets get a device-conformant QDQ ONNX",
        "model; targets whose profile says `format: tflite` also get the fully int8 `model.tflite` beside it.",
    ]
    for v in manifest.variants:
        lines += ["", f"## {v.target}: {v.technique}", "", f"- Path: `{v.path}` (sha256 `{v.sha256[:16]}...`)"]
        lines.append(f"- Why: {v.reason}")
        for attempt in v.attempts:
            verdict = "accepted" if attempt.accepted else f"rejected: {attempt.why_not}"
            lines.append(f"- Tried {attempt.step} ({attempt.technique}): {verdict}")
        if v.excluded_nodes:
            lines.append("- Kept in float: " + "; ".join(f"{n} ({why})" for n, why in v.excluded_nodes.items()))
        if v.integer_io:
            lines.append(
                "- Integer I/O: "
                + "; ".join(
                    f"{io.name} {io.dtype} scale {io.scale:.6g} zero point {io.zero_point}" for io in v.integer_io
                )
            )
        if v.tuning is not None:
            lines.append(f"- Accuracy-aware search: {v.tuning.message} (stopped: {v.tuning.stopped_by})")
            lines += ["", "| # | step | technique | accuracy | SQNR dB | size | latency est. ms | device | budget |"]
            lines.append("|---:|---|---|---:|---:|---:|---|---|---|")
            for t in v.tuning.trials:
                chosen = " **chosen**" if t.index == v.tuning.chosen else ""
                accuracy = "—" if t.accuracy is None else f"{t.accuracy:.4f}"
                sqnr = "—" if t.min_sqnr_db is None else f"{t.min_sqnr_db:.1f}"
                latency = "—" if not t.latency_ms_estimate else "–".join(f"{x:.3g}" for x in t.latency_ms_estimate)
                verdict = t.error or ("within" if t.meets_budget else "misses")
                lines.append(
                    f"| {t.index + 1}{chosen} | {t.step} | {t.technique} | {accuracy} | {sqnr} | {t.size_bytes or 0} | "
                    f"{latency} | {t.device_verdict} | {verdict} |"
                )
            lines.append("")
        if v.device_file is not None:
            lines.append(f"- Device file: {_device_file_line(v.device_file)}")
        if v.check is not None:
            lines.append(f"- Device check: {_check_sentence(v.check)}")
        applied = [s for s in v.preparation if s.applied]
        if applied:
            lines.append("- Preparation: " + "; ".join(f"{s.name} ({s.note})" for s in applied))
        lines += [f"- Warning: {w}" for w in v.warnings]
    return "\n".join(lines) + "\n"


def render_variants_summary(manifest: Manifest, folder: Path) -> str:
    """What `autoptq variants` wrote: each variant's target, technique, size and file with the reason, then the
    files beside them in `folder`."""
    lines = []
    for variant in manifest.variants:
        lines.append(f"{variant.target:<14} {variant.technique:<17} {variant.size_bytes:>9} B  {variant.path}")
        lines.append(f"{'':<14} {variant.reason}")
    lines.append(
        f"Wrote {folder / 'manifest.json'}, {folder / 'report.md'}, {folder / 'report.html'} and "
        f"{folder / 'measurements.json'}"
    )
    return "\n".join(lines) + "\n"


def render_host_table(table: HostTable, written: Path) -> str:
    """The nodes `autoptq calibrate-host` timed: fp32 time and int8/fp32 ratio per variant, and the file."""
    lines = []
    for t in table.timings:
        ratios = ", ".join(f"{name} {ms / t.fp32_ms:.2f}x" for name, ms in t.int8_ms.items() if t.fp32_ms > 0)
        lines.append(f"{t.op_type:<18} {t.macs:>12,} MACs  fp32 {t.fp32_ms:8.4f} ms  {ratios or 'no int8 form'}")
    lines.append(f"Wrote {written}")
    return "\n".join(lines) + "\n"


def render_outcome(outcome: Outcome, path: Path, fmt: Format) -> str:
    """What `autoptq quantize` produced: the technique, the verdict and the verification figures."""
    if fmt == "json":
        return to_json([outcome], "quantize")
    lines = [
        f"Produced: {outcome.technique}" + (" (float model kept)" if outcome.kept_float else "") + f" -> {path}",
        f"  {outcome.reason}",
    ]
    if outcome.device_file is not None:
        lines.append(f"  device file: {_device_file_line(outcome.device_file)}")
    if outcome.synthetic_data:
        lines.append("  WARNING: calibrated on SYNTHETIC data: accuracy is unknown")
    ver = outcome.verification
    if ver is not None:
        lines.append(f"  size {_bytes(ver.size_bytes)} vs float {_bytes(ver.float_size_bytes)} ({ver.size_ratio:.2f}x)")
        for f in ver.fidelity:
            agreement = "" if f.top1_agreement is None else f", top-1 agreement {f.top1_agreement:.3f}"
            lines.append(
                f"  output {f.name}: SQNR {f.sqnr_db:.1f} dB, cosine {f.cosine:.4f}, max |diff| {_diff(f.max_abs_diff)}"
                f"{agreement} over {ver.samples} held-out samples"
            )
        if ver.accuracy_float is not None and ver.accuracy_candidate is not None:
            lines.append(f"  accuracy: float {ver.accuracy_float:.4f}, quantized {ver.accuracy_candidate:.4f}")
        if ver.accuracy_note is not None and ver.metric is None:
            lines.append(f"  accuracy: not computed: {ver.accuracy_note} (a --metric scores such labels)")
        if ver.metric is not None:
            lines.append(
                f"  metric {ver.metric.name}: float {ver.metric.float:.4f}, quantized {ver.metric.candidate:.4f}"
            )
        if ver.latency is not None:
            lines.append(
                f"  latency: {ver.latency.ratio:.2f}x float ({ver.latency.candidate_ms:.4f} vs "
                f"{ver.latency.float_ms:.4f} ms median of {ver.latency.runs} interleaved runs; {ver.latency_note})"
            )
        else:
            lines.append(f"  latency: {ver.latency_note}")
    if outcome.tuning is not None:
        lines += trials_lines(outcome.tuning)
    for attempt in outcome.attempts:
        if not attempt.accepted:
            measured = attempt.verification.latency if attempt.verification else None
            timing = f" [measured {measured.ratio:.2f}x float latency]" if measured else ""
            lines.append(f"  rejected {attempt.step} ({attempt.technique}): {attempt.why_not()}{timing}")
    text = "\n".join(lines) + "\n"
    return text if fmt == "table" else "```\n" + text + "```\n"


def check_lines(result: CheckReport) -> list[str]:
    """A check report as plain lines: verdict, device rules, fidelity, accuracy, latency, memory, findings."""
    lines = [
        f"Target: {result.target}  tier: {result.tier}  verdict: {'PASS' if result.passed else 'FAIL'}",
        f"  {result.fidelity_statement}",
        f"Device rules: {'passed' if result.device_rules.passed else 'FAILED'}",
    ]
    lines += [f"  - {v.rule} at {v.node} ({v.op_type}): {v.detail}" for v in result.device_rules.violations]
    for f in result.fidelity:
        agreement = "" if f.top1_agreement is None else f", top-1 agreement {f.top1_agreement:.3f}"
        lines.append(
            f"Output {f.name}: SQNR {f.sqnr_db:.1f} dB, cosine {f.cosine:.4f}, "
            f"max |diff| {_diff(f.max_abs_diff)}{agreement}"
        )
    if result.accuracy is not None:
        a = result.accuracy
        lines.append(f"Accuracy: float {a.float:.4f}, emulated {a.emulated:.4f} (drop {a.drop:+.4f})")
    if result.metric is not None:
        m = result.metric
        lines.append(f"Metric {m.name}: float {m.float:.4f}, emulated {m.candidate:.4f} (drop {m.drop:+.4f})")
    lat = result.latency
    measured = "" if lat.measured_ratio is None else f"; measured {lat.measured_ratio:.2f}x float ({lat.measured_note})"
    lines.append(
        f"Latency (estimate): {lat.estimate_ms[0]:.3g}-{lat.estimate_ms[1]:.3g} ms ({lat.estimate_basis}){measured}"
    )
    mem = result.memory
    lines.append(
        f"Memory: parameters on chip {_bytes(mem.on_chip_param_bytes)}, streamed {_bytes(mem.streamed_param_bytes)}"
        + (f" (cache {_bytes(mem.parameter_cache_bytes)})" if mem.parameter_cache_bytes is not None else "")
        + f"; peak activations {_bytes(mem.peak_activation_bytes)}"
        + (f" of RAM {_bytes(mem.ram_bytes)}" if mem.ram_bytes is not None else "")
    )
    lines += [f"Finding at {f.node}: {f.kind}: {f.detail}" for f in result.findings[:30]]
    if len(result.findings) > 30:
        lines.append(f"... and {len(result.findings) - 30} more findings (use --format json)")
    lines += [f"Failure: {failure}" for failure in result.failures]
    return lines


def render_check(results: Sequence[CheckReport], fmt: Format) -> str:
    """Render check reports (JSON keys: target, tier, device_rules, fidelity, accuracy, latency, memory, ...)."""
    if fmt == "json":
        return to_json(results, "check")
    parts: list[Table | str] = []
    for result in results:
        parts.append("\n".join(check_lines(result)))
        parts.append(render_device_rules(result.device_rules, heading=False))
    if fmt == "markdown":
        return "\n".join(
            f"## Check: {r.target}\n\n" + "\n".join(f"    {line}" for line in check_lines(r)) for r in results
        )
    return render_table(parts)


# --- device rules re-audit of a quantized model (autoptq.devices.device_rules) ---------------------------------

if TYPE_CHECKING:
    from autoptq.devices.device_rules import DeviceRulesResult


def render_device_rules(result: DeviceRulesResult, heading: bool = True) -> str:
    """The device-rules re-audit of a quantized model as text, in the manner of the Edge TPU compiler's log: summary
    lines (verdict, operations on the device and the host, parameter memory), the Operator / Count / Status table,
    the violations (rule, node, op, detail) and which rules the profile's statements make apply. Without `heading`
    the target and verdict lines are left to the caller (the check report prints them once)."""
    lines = _device_rules_lines(result)[0 if heading else 2 :]
    parts: list[Table | str] = [*(["\n".join(lines)] if lines else []), _device_rules_op_table(result)]
    if result.violations:
        parts.append(_device_rules_violation_table(result))
    parts.append(_device_rules_scope_table(result))
    return render_table(parts)


def _device_rules_lines(result: DeviceRulesResult) -> list[str]:
    verdict = "passed" if result.passed else f"FAILED ({len(result.violations)} violations)"
    lines = [f"Target: {result.target}", f"Device rules: {verdict}"]
    coverage = result.coverage
    if coverage is not None:
        on_device = sum(1 for n in coverage.nodes if n.on_device)
        lines += [
            f"Number of {result.target} subgraphs: {coverage.device_segments}",
            f"Total number of operations: {len(coverage.nodes)}",
            f"Number of operations that will run on {result.target}: {on_device}",
            f"Number of operations that will run off {result.target} (host or application): "
            f"{len(coverage.nodes) - on_device}",
        ]
        if coverage.first_cut is not None:
            cut = coverage.first_cut
            lines.append(f"First cut: {cut.node} ({cut.op_type}): {cut.reason}")
    cache = result.parameter_cache_bytes
    if cache is None:
        lines.append(f"Parameters held by the device: {_bytes(result.on_chip_param_bytes)} (no parameter cache stated)")
        return lines
    return [
        *lines,
        f"On-chip memory used for caching model parameters: {_bytes(result.on_chip_param_bytes)}",
        f"On-chip memory remaining for caching model parameters: {_bytes(cache - result.on_chip_param_bytes)}",
        f"Off-chip memory used for streaming uncached model parameters: {_bytes(result.streamed_param_bytes)}",
    ]


def _device_rules_op_table(result: DeviceRulesResult) -> Table:
    table = Table(title=f"{result.target}: quantized model operators", title_justify="left")
    for column in ("Operator", "Count", "Status"):
        table.add_column(column)
    for row in result.op_summary:
        table.add_row(row.operator, str(row.count), row.status)
    return table


def _device_rules_violation_table(result: DeviceRulesResult) -> Table:
    table = Table(title=f"{result.target}: device rule violations", title_justify="left")
    for column in ("Rule", "Node", "Op", "Detail"):
        table.add_column(column, overflow="fold")
    for v in result.violations:
        table.add_row(v.rule, v.node, v.op_type, v.detail)
    return table


def _device_rules_scope_table(result: DeviceRulesResult) -> Table:
    table = Table(title=f"{result.target}: rules and the profile statements that make them apply", title_justify="left")
    for column in ("Rule", "Applies", "Profile states"):
        table.add_column(column, overflow="fold")
    for scope in result.rules:
        table.add_row(scope.rule, "yes" if scope.applies else "no", scope.basis)
    return table


def trials_lines(result: TuningResult) -> list[str]:
    """The accuracy-aware search as a table: every trial with its metrics, estimate, device verdict and verdict."""
    budget = result.budget
    wanted = []
    if budget.max_drop is not None:
        wanted.append(f"accuracy drop <= {budget.max_drop:g}{' (relative)' if budget.relative else ''}")
    if budget.min_sqnr_db is not None:
        wanted.append(f"SQNR >= {budget.min_sqnr_db:g} dB")
    if budget.min_top1_agreement is not None:
        wanted.append(f"top-1 agreement >= {budget.min_top1_agreement:g}")
    float_accuracy = "" if result.float_accuracy is None else f"; float accuracy {result.float_accuracy:.4f}"
    lines = [
        f"Accuracy-aware search on {result.target} ({result.tier} tier emulator): budget {', '.join(wanted)}"
        f"{float_accuracy}; stopped: {result.stopped_by}",
        "  #  step                           technique         accuracy  drop     SQNR dB  top1   size B     "
        "x float latency   device",
    ]
    for t in result.trials:
        mark = "*" if t.index == result.chosen else ("+" if t.index in result.pareto else " ")
        if t.error:
            failed = "" if t.abandoned else "failed: "
            lines.append(f"{mark}{t.index + 1:>2}  {t.step:<30} {t.technique:<17} {failed}{t.error}")
            continue
        accuracy = "-" if t.accuracy is None else f"{t.accuracy:.4f}"
        drop = "-" if t.accuracy_drop is None else f"{t.accuracy_drop:+.4f}"
        sqnr = "-" if t.min_sqnr_db is None else f"{t.min_sqnr_db:.1f}"
        agreement = "-" if t.top1_agreement is None else f"{t.top1_agreement:.3f}"
        latency = "-" if t.latency_ratio is None else f"{t.latency_ratio:.2f} ({t.latency_ratio_source})"
        verdict = "within budget" if t.meets_budget else "misses"
        lines.append(
            f"{mark}{t.index + 1:>2}  {t.step:<30} {t.technique:<17} {accuracy:<9} {drop:<8} {sqnr:<8} "
            f"{agreement:<6} {t.size_bytes or 0:<10} {latency:<18} {t.device_verdict}; {verdict}"
        )
    lines.append("  (* chosen, + on the Pareto front (accuracy, latency ratio, size) the choice was made on)")
    if result.sensitivity:
        ranked = ", ".join(f"{s.node} ({s.output_sqnr_db:.1f} dB)" for s in result.sensitivity[:8])
        lines.append(f"Most sensitive nodes (output SQNR when quantized alone): {ranked}")
    lines.append(("" if result.within_budget else "BUDGET NOT MET: ") + result.message)
    return lines


def render_plan_and_outcome(plan: Plan, outcome: Outcome, path: Path, fmt: Format) -> str:
    """`plan --apply`: the plan, then what was produced; one JSON document for machines."""
    if fmt == "json":
        document = {
            "schema_version": JSON_SCHEMA_VERSION,
            "kind": "plan_apply",
            "results": [{"plan": plan.model_dump(mode="json"), "outcome": outcome.model_dump(mode="json")}],
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"
    return render_plans([plan], fmt) + render_outcome(outcome, path, fmt)


def render_sensitivity(results: Sequence[SensitivityReport], fmt: Literal["table", "json"]) -> str:
    """The per-node ranking of `autoptq sensitivity`, most damaging first."""
    if fmt == "json":
        return to_json(results, "sensitivity")
    parts: list[Table | str] = []
    for result in results:
        parts.append(
            f"Target: {result.target}  technique: {result.technique} ({result.technique_note})\n"
            f"Output SQNR with every node quantized: {result.full_output_sqnr_db:.1f} dB\nBasis: {result.basis}"
        )
        table = Table(title=f"{result.target}: nodes, most damaging first", title_justify="left")
        for column in ("#", "Node", "Op", "Output SQNR dB (alone)", "Activation SQNR dB (all quantized)"):
            table.add_column(column, overflow="fold")
        for rank, node in enumerate(result.nodes, 1):
            activation = "-" if node.activation_sqnr_db is None else f"{node.activation_sqnr_db:.1f}"
            table.add_row(str(rank), node.node, node.op_type, f"{node.output_sqnr_db:.1f}", activation)
        parts.append(table)
    return render_table(parts)
