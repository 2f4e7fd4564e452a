"""Gather what the HTML report shows from the results of audit, plan, quantize, check and sensitivity.

Everything is computed here, once, into the models of autoptq/report/models.py; the page is then rendered from
those alone. The one measurement made here is the SQNR along the graph (both models run in onnxruntime with every
activation exposed, on a few held-out samples).
"""

from __future__ import annotations

import onnx
import onnxruntime
from onnx import ModelProto

from autoptq._version import __version__
from autoptq.decide.planner import Plan
from autoptq.decide.sensitivity import NodeSensitivity, SensitivityReport, sensitivity_report, sqnr_along_graph
from autoptq.decide.tuning import TuningResult
from autoptq.devices.canonical import float_model_for
from autoptq.devices.cost import LatencyEstimate, estimate_latency
from autoptq.devices.coverage import CoverageReport, analyse
from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError
from autoptq.evaluate.estimate import predict
from autoptq.evaluate.metrics import OutputFidelity
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph
from autoptq.model.prepare import PREPARATION_SAMPLES, prepare
from autoptq.pipeline.check import CheckReport
from autoptq.pipeline.manifest import Manifest, sha256
from autoptq.pipeline.produce import Outcome
from autoptq.report.models import (
    CoverageMap,
    DecisionStep,
    HtmlReport,
    LatencyBreakdown,
    LatencyPart,
    LayerPlacement,
    LayerSqnr,
    Ratio,
    SensitivityBar,
    SensitivityView,
    SqnrAlongGraph,
    SummaryCard,
    TargetSection,
    TrialPoint,
    TrialsView,
)
from autoptq.report.text import fact_text, recipe_fields
from autoptq.techniques import KEEP_FLOAT, by_name, recognise
from autoptq.techniques.recipe import Recipe, TechniqueName

SQNR_SAMPLES = 8
"""Held-out samples the SQNR along the graph is measured on: a handful is enough to show where error builds up."""
MEASURED_ELSEWHERE = (
    "latency was also measured side by side with float on this machine (measurements.json, or the table and JSON "
    "output); timings vary run to run, so this page shows the cost model's estimate only"
)
RANKING_SAMPLES = 16
"""Held-out samples the sensitivity ranking measures output SQNR on (as the accuracy loop does)."""
SEARCH_RANKING = (
    "the accuracy loop's ranking: each node quantized alone, the rest float, output SQNR against float on up to 16 "
    "held-out samples (onnxruntime on this machine)"
)
NO_BUDGET = "no accuracy budget was set (--max-drop, --min-sqnr or --min-top1-agreement turn the search on)"


def coverage_map(coverage: CoverageReport, basis: str) -> CoverageMap:
    """Each node in execution order with where it runs."""
    layers = [
        LayerPlacement(
            name=n.name,
            op_type=n.op_type,
            place="device" if n.on_device else ("after_cut" if n.status == "after_cut" else "host"),
            reason=n.reason,
            macs=n.macs,
        )
        for n in coverage.nodes
    ]
    cut = coverage.first_cut
    return CoverageMap(
        layers=layers,
        first_cut=cut.node if cut else None,
        first_cut_reason=f"{cut.op_type}: {cut.reason}" if cut else None,
        transfer_bytes=coverage.transfer_bytes,
        transitions=coverage.transitions,
        device_mac_fraction=coverage.device_mac_fraction,
        basis=basis,
    )


def latency_breakdown(estimate: LatencyEstimate, what: str) -> LatencyBreakdown:
    """The cost model's estimate part by part; `what` says which model and precisions it is for."""
    parts = []
    for index, part in enumerate(estimate.parts, 1):
        if part.first_node is None:
            label = part.part
        elif part.first_node == part.last_node:
            label = f"{index}. {part.part}: {part.first_node}"
        else:
            label = f"{index}. {part.part}: {part.first_node} … {part.last_node} ({part.nodes} nodes)"
        parts.append(LatencyPart(label=label, part=part.part, ms=round(part.ms, 6)))
    return LatencyBreakdown(
        parts=parts,
        estimate_ms=round(estimate.estimate_ms, 6),
        low_ms=round(estimate.low_ms, 6),
        high_ms=round(estimate.high_ms, 6),
        basis=f"{what}; {estimate.basis}",
    )


def layer_sqnr(float_model: ModelProto, quantized: ModelProto, samples: Dataset) -> SqnrAlongGraph:
    """SQNR of each activation of `quantized` against `float_model` on the first few `samples`."""
    used = samples.take(SQNR_SAMPLES)
    producers = {out: node for node in float_model.graph.node for out in node.output}
    layers = [
        LayerSqnr(tensor=name, node=producers[name].name, op_type=producers[name].op_type, sqnr_db=round(value, 3))
        for name, value in sqnr_along_graph(float_model, quantized, used)
    ]
    return SqnrAlongGraph(
        layers=layers,
        samples=len(used),
        basis=(
            f"every activation of both models exposed and run in onnxruntime on this machine over {len(used)} "
            "held-out samples; quantized activations compared after quantize-dequantize (host arithmetic, not the "
            "device emulator)"
        ),
    )


def sensitivity_view(ranking: list[NodeSensitivity], kept_float: set[str], basis: str) -> SensitivityView:
    """The ranking with the nodes the chosen candidate keeps in float marked."""
    return SensitivityView(
        nodes=[
            SensitivityBar(
                node=s.node,
                op_type=s.op_type,
                output_sqnr_db=s.output_sqnr_db,
                activation_sqnr_db=s.activation_sqnr_db,
                kept_float=s.node in kept_float,
            )
            for s in ranking
        ],
        basis=basis,
    )


def trials_view(result: TuningResult, float_ms: float | None) -> TrialsView:
    """Every trial of the accuracy loop with the front and the choice. Latency is the cost model's estimate against
    the float model's (`float_ms`; absolute milliseconds when the target cannot run float): the search may also
    have timed trials on this machine, but timings vary run to run and the page must not."""
    budget = result.budget
    # Plot the metric the budget is on: accuracy for an accuracy budget, else fidelity (min output SQNR).
    with_accuracy = result.float_accuracy is not None and budget.max_drop is not None
    wanted = []
    if budget.max_drop is not None:
        wanted.append(f"accuracy drop ≤ {budget.max_drop:g}{' (relative)' if budget.relative else ''}")
    if budget.min_sqnr_db is not None:
        wanted.append(f"SQNR ≥ {budget.min_sqnr_db:g} dB")
    if budget.min_top1_agreement is not None:
        wanted.append(f"top-1 agreement ≥ {budget.min_top1_agreement:g}")
    points = [
        TrialPoint(
            index=t.index,
            step=t.step,
            technique=t.technique,
            metric=t.accuracy if with_accuracy else t.min_sqnr_db,
            latency=None if t.latency_ms is None else round(t.latency_ms / float_ms if float_ms else t.latency_ms, 4),
            size_bytes=t.size_bytes,
            meets_budget=t.meets_budget,
            on_front=t.index in result.pareto,
            chosen=t.index == result.chosen,
            error=t.error,
        )
        for t in result.trials
    ]
    return TrialsView(
        latency_name="estimated latency / float" if float_ms else "estimated latency (ms)",
        metric_name=f"accuracy ({result.tier} tier emulator)"
        if with_accuracy
        else f"min output SQNR dB ({result.tier})",
        budget=", ".join(wanted),
        points=points,
        message=result.message,
        tier=result.tier,
    )


def decision_path(plan: Plan) -> list[DecisionStep]:
    """The questions the decision tree asked, with the facts each looked at."""
    return [
        DecisionStep(
            node=step.node,
            question=step.question,
            answer=step.answer,
            facts={name: fact_text(value) for name, value in step.facts.items()},
        )
        for step in plan.trace
    ]


def _metric(fidelity: list[OutputFidelity], accuracy: tuple[float, float] | None, where: str) -> str:
    found = []
    if accuracy is not None:
        found.append(f"accuracy {accuracy[0]:.4f} float → {accuracy[1]:.4f}")
    if fidelity:
        found.append(f"min output SQNR {min(f.sqnr_db for f in fidelity):.1f} dB against float")
    return f"{'; '.join(found)} ({where})" if found else "not measured"


def _estimated_ratio(estimate: LatencyEstimate, baseline: LatencyEstimate | None) -> Ratio:
    if baseline is None or not baseline.estimate_ms:
        return Ratio(value=None, kind="unknown", basis="the target cannot run float: no baseline to compare with")
    return Ratio(
        value=round(estimate.estimate_ms / baseline.estimate_ms, 4),
        kind="estimated",
        basis=f"cost model, {estimate.estimate_ms:.3g} ms vs float {baseline.estimate_ms:.3g} ms on the target "
        "(basis under Latency breakdown)",
    )


def _device_verdict(coverage: CoverageReport, check: CheckReport | None, float_on_integer_device: bool) -> str:
    if float_on_integer_device:
        return "float model kept: this integer-only device cannot run it"
    rules = ""
    if check is not None:
        violations = len(check.device_rules.violations)
        rules = "device rules passed; " if check.device_rules.passed else f"device rules FAILED ({violations}); "
    on_host = sum(1 for n in coverage.nodes if not n.on_device)
    if on_host == 0:
        return rules + "all nodes on the device"
    cut = f", first cut at {coverage.first_cut.node}" if coverage.first_cut else ""
    return rules + f"{on_host} of {len(coverage.nodes)} nodes on the host{cut}"


def _applied_recipe(outcome: Outcome) -> Recipe | None:
    if outcome.applied is not None:
        return outcome.applied.recipe
    if outcome.tuning is not None:
        return outcome.tuning.trials[outcome.tuning.chosen].recipe
    return None


def outcome_section(
    graph: ModelGraph,
    profile: HardwareProfile,
    plan: Plan,
    outcome: Outcome,
    calibration: Dataset | None,
    held_out: Dataset,
    check: CheckReport | None = None,
) -> TargetSection:
    """The section of one produced model (quantize, and each target of variants with its check). With a budget
    the page shows the search's sensitivity ranking, or ranks the nodes here when the search did not need to."""
    quantized = not outcome.kept_float
    recipe = _applied_recipe(outcome) or plan.recipe
    kept = set(recipe.nodes_to_exclude) if quantized else set()
    coverage = analyse(graph, profile, float_nodes=kept)
    technique: TechniqueName = outcome.technique
    _, estimate, baseline = predict(graph, coverage, profile, technique, recipe if quantized else Recipe())
    ver = outcome.verification
    latency = _estimated_ratio(estimate, baseline)
    size = Ratio(
        value=round(ver.size_ratio, 4) if ver else 1.0,
        kind="measured",
        basis="file size of the produced model against the float model" if ver else "the float model itself",
    )
    if check is not None:
        accuracy = (check.accuracy.float, check.accuracy.emulated) if check.accuracy else None
        metric = _metric(check.fidelity, accuracy, f"{check.tier} tier emulator, {len(held_out)} held-out samples")
    elif ver is not None:
        both = ver.accuracy_float is not None and ver.accuracy_candidate is not None
        accuracy = (ver.accuracy_float, ver.accuracy_candidate) if both else None
        metric = _metric(ver.fidelity, accuracy, f"onnxruntime on this machine, {ver.samples} held-out samples")
    else:
        metric = "float model kept: nothing to compare"
    float_on_integer = not quantized and profile.integer_only
    failed = outcome.kept_float and by_name(plan.technique).quantizes
    budget_missed = outcome.tuning is not None and not outcome.tuning.within_budget
    notes = [outcome.reason]
    if ver is not None and ver.latency is not None:
        notes.append(MEASURED_ELSEWHERE)
    if outcome.synthetic_data:
        notes.append("calibrated on SYNTHETIC data: accuracy is unknown")
    section = TargetSection(
        summary=SummaryCard(
            target=profile.name,
            technique=technique,
            planned_technique=plan.technique,
            size_ratio=size,
            latency_ratio=latency,
            metric=metric,
            device_verdict=_device_verdict(coverage, check, float_on_integer),
            passed=not (failed or budget_missed or float_on_integer or (check is not None and not check.passed)),
            notes=notes,
        ),
        coverage=coverage_map(
            coverage,
            "the model's nodes as the device partitions them"
            + (f", with the {len(kept)} node(s) the recipe keeps in float placed as the device would" if kept else ""),
        ),
        latency=latency_breakdown(estimate, f"{technique} as produced (an estimate, never a measurement)"),
        recipe={**recipe_fields(technique, recipe), **({"kept in float": ", ".join(sorted(kept))} if kept else {})},
        decision_path=decision_path(plan),
    )
    if quantized:
        section.sqnr = layer_sqnr(float_model_for(graph, profile), onnx.load_from_string(outcome.model_bytes), held_out)
    else:
        section.absent["sqnr"] = "the float model was kept: there is no quantized model to compare"
    if outcome.tuning is not None:
        section.trials = trials_view(outcome.tuning, baseline.estimate_ms if baseline else None)
        kept_by_choice = set(outcome.tuning.trials[outcome.tuning.chosen].excluded)
        if outcome.tuning.sensitivity:
            section.sensitivity = sensitivity_view(outcome.tuning.sensitivity, kept_by_choice, SEARCH_RANKING)
        elif by_name(plan.technique).calibrated and calibration is not None:
            try:
                ranking = _rank(graph, profile, plan, calibration, held_out)
            except AutoptqError as exc:  # the plan's recipe does not quantize this model: the page says so
                section.absent["sensitivity"] = f"the nodes could not be ranked: {exc}"
            else:
                section.sensitivity = sensitivity_view(ranking.nodes, kept_by_choice, ranking.basis)
        else:
            section.absent["sensitivity"] = f"nodes are ranked for static quantization; the plan is {plan.technique}"
    else:
        section.absent["trials"] = NO_BUDGET
        section.absent["sensitivity"] = NO_BUDGET + "; `autoptq sensitivity` ranks the nodes on its own"
    return section


def _rank(
    graph: ModelGraph, profile: HardwareProfile, plan: Plan, calibration: Dataset, held_out: Dataset
) -> SensitivityReport:
    """The ranking the search would have made, for a search that met its budget before needing one."""
    prepared = prepare(float_model_for(graph, profile), held_out.take(PREPARATION_SAMPLES)).model
    note = "ranked for the page: the search met its budget without keeping nodes in float"
    samples = held_out.take(RANKING_SAMPLES)
    return sensitivity_report(prepared, plan.target, plan.technique, note, plan.recipe, calibration, samples)


def audit_section(graph: ModelGraph, profile: HardwareProfile, coverage: CoverageReport) -> TargetSection:
    """The section of an audit: placement and the latency of the model as audited; nothing is produced."""
    precisions = {n.name: n.precision for n in coverage.nodes if n.on_device and n.precision}
    estimate = estimate_latency(graph, coverage, profile, precisions)
    _, _, baseline = predict(graph, coverage, profile, KEEP_FLOAT, Recipe())
    absent = "an audit reads the graph only; quantize or variants produce and measure a model"
    return TargetSection(
        summary=SummaryCard(
            target=profile.name,
            technique="audit only (nothing produced)",
            size_ratio=Ratio(value=None, kind="unknown", basis=absent),
            latency_ratio=_estimated_ratio(estimate, baseline),
            metric="not measured: " + absent,
            device_verdict=("compatible: " if coverage.compatible else "NOT compatible: ")
            + _device_verdict(coverage, None, False),
            passed=coverage.compatible,
        ),
        coverage=coverage_map(coverage, "the float graph, each node judged at the precisions the device offers"),
        latency=latency_breakdown(estimate, "each mapped node at the precision the audit found for it"),
        absent={"sqnr": absent, "sensitivity": absent, "trials": absent},
    )


def check_section(
    quantized: ModelProto, profile: HardwareProfile, reference: ModelGraph, report: CheckReport, data: Dataset
) -> TargetSection:
    """The section of `autoptq check`: the device's verdict, the emulated metric, and the SQNR along the graph."""
    technique = recognise(quantized).name
    coverage = report.device_rules.coverage or analyse(reference, profile)
    reference_coverage = analyse(reference, profile)
    _, estimate, baseline = predict(reference, reference_coverage, profile, technique, Recipe())
    latency = _estimated_ratio(estimate, baseline)
    reference_bytes = len(reference.original_bytes())
    accuracy = (report.accuracy.float, report.accuracy.emulated) if report.accuracy else None
    return TargetSection(
        summary=SummaryCard(
            target=profile.name,
            technique=technique,
            size_ratio=Ratio(
                value=round(quantized.ByteSize() / reference_bytes, 4),
                kind="measured",
                basis="serialized size of the checked model against the reference",
            ),
            latency_ratio=latency,
            metric=_metric(report.fidelity, accuracy, f"{report.tier} tier emulator, {len(data)} samples"),
            device_verdict=_device_verdict(coverage, report, False),
            passed=report.passed,
            notes=[
                report.fidelity_statement,
                *([MEASURED_ELSEWHERE] if report.latency.measured_ratio is not None else []),
                *report.failures,
            ],
        ),
        coverage=coverage_map(coverage, "the checked (quantized) graph as the device partitions it"),
        sqnr=layer_sqnr(reference.model, quantized, data),
        latency=latency_breakdown(estimate, f"{technique} (detected from the model's operators)"),
        absent={
            "sensitivity": "check measures a given model; `autoptq sensitivity` ranks the nodes",
            "trials": NO_BUDGET,
        },
    )


def sensitivity_section(graph: ModelGraph, profile: HardwareProfile, result: SensitivityReport) -> TargetSection:
    """The section of `autoptq sensitivity`: the ranking, and the SQNR along the fully quantized graph."""
    coverage = analyse(graph, profile)
    technique: TechniqueName = result.technique  # type: ignore[assignment]
    _, estimate, baseline = predict(graph, coverage, profile, technique, result.recipe)
    nothing = "not produced: sensitivity ranks nodes without producing a model"
    return TargetSection(
        summary=SummaryCard(
            target=profile.name,
            technique=result.technique,
            size_ratio=Ratio(value=None, kind="unknown", basis=nothing),
            latency_ratio=_estimated_ratio(estimate, baseline),
            metric=f"output SQNR {result.full_output_sqnr_db:.1f} dB with every node quantized "
            f"(onnxruntime on this machine, {result.samples} held-out samples)",
            device_verdict=_device_verdict(coverage, None, False),
            passed=True,
            notes=[result.technique_note],
        ),
        coverage=coverage_map(coverage, "the float graph as the device partitions it"),
        sqnr=SqnrAlongGraph(
            layers=[LayerSqnr(**v.model_dump()) for v in result.along_graph],
            samples=result.samples,
            basis="the fully quantized model, every activation compared after quantize-dequantize in onnxruntime "
            f"on this machine over {result.samples} held-out samples",
        ),
        sensitivity=sensitivity_view(result.nodes, set(), result.basis),
        latency=latency_breakdown(estimate, f"{result.technique} under the recipe ranked"),
        recipe=recipe_fields(result.technique, result.recipe),
        absent={"trials": NO_BUDGET},
    )


def model_context(graph: ModelGraph) -> list[str]:
    """The lines under the title: which model, with the versions that made the page."""
    model_bytes = graph.original_bytes()
    name = graph.path.name if graph.path else "model.onnx"
    return [
        f"Model {name}: {len(model_bytes):,} bytes, sha256 {sha256(model_bytes)[:16]}…, {len(graph.compute_nodes())} "
        f"nodes; autoptq {__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}."
    ]


def variants_page(manifest: Manifest, sections: list[TargetSection]) -> HtmlReport:
    """report.html of `autoptq variants`, beside report.md."""
    context = [
        f"Input model {manifest.input_model.name}: {manifest.input_model.size_bytes:,} bytes, sha256 "
        f"{manifest.input_model.sha256[:16]}…; autoptq {manifest.autoptq_version}, onnx {manifest.onnx_version}, "
        f"onnxruntime {manifest.onnxruntime_version}.",
    ]
    warnings = []
    if manifest.data is not None:
        data = manifest.data
        context.append(
            f"Calibration: {data.calibration_samples} samples of {data.source}; verification: "
            f"{data.validation_samples} samples ({data.validation_source})."
        )
        if data.synthetic:
            warnings.append("SYNTHETIC calibration data: the accuracy of these variants is unknown.")
    return HtmlReport(
        title=f"Variants of {manifest.input_model.name}", context=context, targets=sections, warnings=warnings
    )
