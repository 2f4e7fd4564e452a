"""The planner: gathers facts about the device, the model's coverage, the data and the user, walks the decision tree
(`rules/*.yaml`) and returns a Plan: technique, full recipe, the trace of decisions, and predicted size and latency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from autoptq.decide.hostcost import load_table, predicted_ratio
from autoptq.decide.rules import FactSpec, FactValue, RuleSet, TraceStep, load_rules
from autoptq.devices.canonical import device_graph
from autoptq.devices.cost import SizeEstimate
from autoptq.devices.coverage import CoverageReport, analyse
from autoptq.devices.profiles import HardwareProfile, Precision
from autoptq.evaluate.estimate import predict
from autoptq.evaluate.verify import measurable_here
from autoptq.io.resources import data_dir
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph, load_model
from autoptq.model.ops import CONTROL_FLOW_OPS, CONV_OPS, WEIGHT_BOUND_OPS
from autoptq.techniques import by_name, fallback_steps
from autoptq.techniques.recipe import Recipe, TechniqueName

Objective = Literal["speed", "size", "accuracy"]

DEVICE_SHARE_FACT = "coverage.device_mac_fraction"
"""The fact that says how much of the model a device runs (its threshold in the tree also bounds the search)."""

EXCLUDE_SENSITIVE = "exclude_sensitive"
"""The accuracy loop's own fallback step: keep the most sensitive nodes in float, one more at a time."""


def _spec(name: str, kind: Literal["bool", "int", "float", "str"], description: str) -> tuple[str, FactSpec]:
    return name, FactSpec(name=name, type=kind, description=description)


FACTS: dict[str, FactSpec] = dict(
    [
        _spec("device.name", "str", "profile name"),
        _spec("device.kind", "str", "accelerator, cpu, gpu, npu or mcu"),
        _spec("device.integer_only", "bool", "the device executes nothing in float"),
        _spec("device.int8_accelerated", "bool", "int8 runs faster than the device's float"),
        _spec("device.fp16_accelerated", "bool", "fp16 runs faster than fp32 on the device"),
        _spec("device.int16_activations", "bool", "the device runs 16-bit activations with 8-bit weights"),
        _spec("device.int8_speedup", "float", "int8 throughput over the best float throughput (0 without int8)"),
        _spec("device.fp16_speedup", "float", "fp16 throughput over fp32 (0 without fp16)"),
        _spec("device.vnni_dot_product", "bool", "int8 dot products accumulate straight into int32 (VNNI, SDOT)"),
        _spec("device.u8s8_saturation_risk", "bool", "u8 x s8 pair sums saturate to int16 (x86 without VNNI)"),
        _spec("device.partitioning", "str", "first_cut or any_subgraph"),
        _spec("device.has_host", "bool", "unsupported ops can fall back to a host processor"),
        _spec("coverage.compatible", "bool", "every node maps to the device"),
        _spec(DEVICE_SHARE_FACT, "float", "share of MACs on the device"),
        _spec("coverage.int8_mac_fraction", "float", "share of MACs the device runs at int8"),
        _spec("coverage.fp16_mac_fraction", "float", "share of MACs the device runs at fp16"),
        _spec("coverage.mac_fraction_before_first_cut", "float", "share of MACs before the first fallback"),
        _spec("coverage.params_fit_cache", "bool", "parameters fit the on-chip cache (unknown without a cache)"),
        _spec("coverage.streamed_param_bytes", "int", "parameter bytes streamed per inference"),
        _spec("model.macs", "int", "multiply-accumulates per inference"),
        _spec("model.param_bytes", "int", "bytes of the constant parameters the compute nodes read"),
        _spec("model.compute_nodes", "int", "nodes that are not constant folding"),
        _spec("model.macs_per_node", "float", "MACs per compute node: low means Q/DQ overhead dominates"),
        _spec(
            "model.weight_bound_param_fraction", "float", "share of parameters in MatMul/Gemm/LSTM/GRU/RNN/Attention"
        ),
        _spec("model.weight_bound_mac_fraction", "float", "share of MACs in MatMul/Gemm/LSTM/GRU/RNN/Attention"),
        _spec("model.conv_param_fraction", "float", "share of parameters in convolutions"),
        _spec("model.conv_mac_fraction", "float", "share of MACs in convolutions"),
        _spec("model.control_flow", "bool", "the model has If/Loop/Scan nodes"),
        _spec("model.control_flow_mac_fraction", "float", "share of MACs inside If/Loop/Scan subgraphs"),
        _spec("model.dynamic_shapes", "bool", "an input has a symbolic or unknown dimension"),
        _spec("data.samples", "int", "representative samples given (0 without data)"),
        _spec("data.labels", "bool", "the data carries labels"),
        _spec("data.synthetic", "bool", "the data is synthetic (asked for explicitly)"),
        _spec("user.max_drop", "float", "accuracy budget: largest acceptable drop (unknown if not given)"),
        _spec("user.prefer", "str", "objective: speed, size or accuracy"),
        _spec("user.max_size_bytes", "int", "size budget in bytes (unknown if not given)"),
    ]
)
"""Every fact a rule may reference. A rules file naming any other fact is rejected at load time."""


class UserGoals(BaseModel):
    """What the user asked for."""

    max_drop: float | None = Field(default=None, ge=0, le=1, description="largest acceptable accuracy drop (absolute)")
    prefer: Objective = "speed"
    max_size_bytes: int | None = Field(default=None, ge=0)


class Predicted(BaseModel):
    """Predictions made before anything is quantized; both are estimates."""

    size_bytes: int
    float_size_bytes: int
    latency_ratio: float | None = Field(
        description="estimated latency of the plan / of the float model on the target (its host for an "
        "integer-only device); null when the target cannot run float at all"
    )
    latency_ms: list[float] = Field(description="[low, high] estimated latency of the plan, milliseconds")
    float_latency_ms: list[float] | None
    basis: str
    label: str = "estimate"


class Plan(BaseModel):
    """Which technique to use on one target, with everything the quantizer needs and why."""

    target: str
    technique: TechniqueName
    leaf: str
    summary: str
    recipe: Recipe
    fallbacks: list[str]
    trace: list[TraceStep]
    facts: dict[str, FactValue | None]
    predicted: Predicted
    warnings: list[str]
    rules: str
    device_share_floor: float | None = Field(
        default=None,
        exclude=True,
        description="the share of MACs below which the tree keeps float on an integer-only device (its own rule)",
    )


def rules_label(path: Path) -> str:
    """How a rules file is named in outputs: shipped trees relative to the project, others as given."""
    shipped = data_dir("rules")
    return f"rules/{path.relative_to(shipped)}" if path.resolve().is_relative_to(shipped.resolve()) else str(path)


def default_rules_path() -> Path:
    """The shipped decision tree."""
    return data_dir("rules") / "post_training.yaml"


def fallback_names() -> set[str]:
    """Steps the accuracy loop may take after a leaf's recipe misses the budget, named in a leaf's `fallbacks`: the
    registered techniques, their recipe steps, and excluding sensitive nodes."""
    return {*fallback_steps(), EXCLUDE_SENSITIVE}


def load_tree(path: str | Path | None = None) -> RuleSet:
    """Load and validate a decision tree (the shipped one by default)."""
    return load_rules(Path(path) if path else default_rules_path(), FACTS, fallback_names())


def _throughput(profile: HardwareProfile, precision: Precision) -> float:
    spec = profile.precisions.get(precision)
    return spec.effective_macs_per_s if spec else 0.0


def device_facts(profile: HardwareProfile) -> dict[str, FactValue | None]:
    """Facts about the device alone."""
    best_float = max(_throughput(profile, "fp32"), _throughput(profile, "fp16"))
    int8 = _throughput(profile, "int8")
    fp32 = _throughput(profile, "fp32")
    fp16 = _throughput(profile, "fp16")
    int8_speedup = int8 / best_float if best_float else (float("inf") if int8 else 0.0)
    saturating = profile.quantization.int8_dot_product == "int16_pair_saturating"
    return {
        "device.name": profile.name,
        "device.kind": profile.kind,
        "device.integer_only": profile.integer_only,
        "device.int8_accelerated": int8 > best_float,
        "device.fp16_accelerated": fp16 > fp32 > 0,
        "device.int16_activations": "int16" in profile.precisions,
        # An integer-only device has no float to compare with: report its int8 speed-up as 0 would mislead, so
        # it is the number of float MAC/s it replaces, i.e. unbounded; cap it for readable traces.
        "device.int8_speedup": round(min(int8_speedup, 1e6), 3),
        "device.fp16_speedup": round(fp16 / fp32, 3) if fp32 and fp16 else 0.0,
        "device.vnni_dot_product": "int8" in profile.precisions and not saturating,
        "device.u8s8_saturation_risk": "int8" in profile.precisions and saturating,
        "device.partitioning": profile.partitioning,
        "device.has_host": profile.host is not None or bool(profile.runs_any_op_at),
    }


def coverage_facts(coverage: CoverageReport) -> dict[str, FactValue | None]:
    """Facts from the audit of the float model."""
    cache = coverage.memory.parameter_cache_bytes
    return {
        "coverage.compatible": coverage.compatible,
        DEVICE_SHARE_FACT: round(coverage.device_mac_fraction, 4),
        "coverage.int8_mac_fraction": round(coverage.mac_fraction_by_precision.get("int8", 0.0), 4),
        "coverage.fp16_mac_fraction": round(coverage.mac_fraction_by_precision.get("fp16", 0.0), 4),
        "coverage.mac_fraction_before_first_cut": round(coverage.mac_fraction_before_first_cut, 4),
        "coverage.params_fit_cache": None if cache is None else coverage.memory.streamed_param_bytes == 0,
        "coverage.streamed_param_bytes": coverage.memory.streamed_param_bytes,
    }


def model_facts(graph: ModelGraph) -> dict[str, FactValue | None]:
    """Facts about the model's compute and parameters."""
    nodes = graph.compute_nodes()
    macs = sum(n.macs for n in nodes)
    params = sum(n.param_count for n in nodes)

    def share(selected: frozenset[str], attribute: str, total: int) -> float:
        part = sum(getattr(n, attribute) for n in nodes if n.op_type in selected)
        return round(part / total, 4) if total else 0.0

    return {
        "model.macs": macs,
        "model.param_bytes": graph.param_bytes,
        "model.compute_nodes": len(nodes),
        "model.macs_per_node": round(macs / len(nodes), 1) if nodes else 0.0,
        "model.weight_bound_param_fraction": share(WEIGHT_BOUND_OPS, "param_count", params),
        "model.weight_bound_mac_fraction": share(WEIGHT_BOUND_OPS, "macs", macs),
        "model.conv_param_fraction": share(CONV_OPS, "param_count", params),
        "model.conv_mac_fraction": share(CONV_OPS, "macs", macs),
        "model.control_flow": any(n.op_type in CONTROL_FLOW_OPS for n in nodes),
        "model.control_flow_mac_fraction": share(CONTROL_FLOW_OPS, "macs", macs),
        "model.dynamic_shapes": graph.has_dynamic_shapes,
    }


def data_facts(data: Dataset | None) -> dict[str, FactValue | None]:
    """Facts about the representative data."""
    return {
        "data.samples": len(data) if data else 0,
        "data.labels": bool(data is not None and data.labels is not None),
        "data.synthetic": bool(data is not None and data.synthetic),
    }


def user_facts(goals: UserGoals) -> dict[str, FactValue | None]:
    """Facts from the user's budgets and objective."""
    return {"user.max_drop": goals.max_drop, "user.prefer": goals.prefer, "user.max_size_bytes": goals.max_size_bytes}


def device_conformant_recipe(
    base: Recipe, name: TechniqueName, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None
) -> Recipe:
    """Fill in what the device dictates (dtypes, symmetry, granularity, fixed outputs, I/O) over the leaf's recipe."""
    return by_name(name).conform(base, profile, graph, data)


def plan_model(
    graph: ModelGraph,
    profile: HardwareProfile,
    tree: RuleSet,
    data: Dataset | None = None,
    goals: UserGoals | None = None,
    coverage: CoverageReport | None = None,
) -> Plan:
    """Walk the decision tree for one target and return the plan with its trace and predictions."""
    goals = goals or UserGoals()
    graph = device_graph(graph, profile)
    coverage = coverage or analyse(graph, profile)
    facts: dict[str, FactValue | None] = {
        **device_facts(profile),
        **coverage_facts(coverage),
        **model_facts(graph),
        **data_facts(data),
        **user_facts(goals),
    }
    decision = tree.evaluate(facts)
    leaf = decision.leaf
    base = leaf.recipe.apply_to(Recipe())
    chosen = by_name(leaf.technique)
    recipe = chosen.conform(base, profile, graph, data)
    idle = None if chosen.applies(recipe) else chosen.nothing_to_quantize(base, recipe)
    if idle is not None:
        recipe = idle[0]
    size, latency, baseline = predict(graph, coverage, profile, leaf.technique, recipe)
    ratio = latency.estimate_ms / baseline.estimate_ms if baseline and baseline.estimate_ms else None
    hosted = host_table_ratio(graph, profile, leaf.technique, recipe)
    ratio = hosted if hosted is not None else ratio
    float_where = "this target" if "fp32" in profile.precisions else f"its host {profile.host}"
    warnings = [*leaf.warnings, *_warnings(leaf.technique, ratio, float_where, size, goals, data, coverage)]
    if idle is not None:
        warnings.append(idle[1])
    if profile.shapes.static and graph.binding is not None:
        warnings += [
            f"input {i.name!r} dim {a.axis} varies in the data ({min(a.seen)}..{max(a.seen)}) but {profile.name} "
            f"compiles one shape: counted at {a.value}; pass --input-shape to choose the size to deploy"
            for i in graph.binding.inputs
            for a in i.axes
            if a.source == "data-max"
        ]
    return Plan(
        target=profile.name,
        technique=leaf.technique,
        leaf=leaf.id,
        summary=leaf.summary,
        recipe=recipe,
        fallbacks=list(leaf.fallbacks),
        trace=decision.trace,
        facts=facts,
        predicted=Predicted(
            size_bytes=size.size_bytes,
            float_size_bytes=size.float_size_bytes,
            latency_ratio=None if ratio is None else round(ratio, 3),
            latency_ms=[round(latency.low_ms, 4), round(latency.high_ms, 4)],
            float_latency_ms=None if baseline is None else [round(baseline.low_ms, 4), round(baseline.high_ms, 4)],
            basis=f"size from the model's tensors under the recipe; latency: {latency.basis}"
            + ("" if baseline is None or baseline.basis == latency.basis else f"; float: {baseline.basis}")
            + ("; no ratio: this device cannot run the float model and has no host" if baseline is None else "")
            + (HOST_TABLE_BASIS if hosted is not None else ""),
        ),
        device_share_floor=tree.lower_bound(DEVICE_SHARE_FACT),
        warnings=warnings,
        rules=rules_label(tree.source),
    )


HOST_TABLE_BASIS = "; latency ratio from the host table `autoptq calibrate-host` measured on this machine"


def host_table_ratio(graph: ModelGraph, profile: HardwareProfile, name: TechniqueName, recipe: Recipe) -> float | None:
    """The latency ratio the host table predicts, for a CPU this machine stands in for once `calibrate-host` has
    timed its kernels (None otherwise: the roofline's ratio stands)."""
    if not by_name(name).host_timed or not measurable_here(profile):
        return None
    table = load_table()
    return None if table is None else predicted_ratio(graph, profile, name, recipe, table)


def _warnings(
    name: TechniqueName,
    ratio: float | None,
    float_where: str,
    size: SizeEstimate,
    goals: UserGoals,
    data: Dataset | None,
    coverage: CoverageReport,
) -> list[str]:
    found: list[str] = []
    quantizes = by_name(name).quantizes
    if quantizes and ratio is not None and ratio > 1.0:
        found.append(
            f"estimated {ratio:.2f}x the latency of the float model on {float_where}: quantizing may make it slower"
        )
    if quantizes and size.size_bytes >= size.float_size_bytes:
        found.append("estimated file size is not smaller than float (Q/DQ overhead on small tensors)")
    if goals.max_size_bytes is not None and size.size_bytes > goals.max_size_bytes:
        found.append(f"estimated size {size.size_bytes} B exceeds the budget of {goals.max_size_bytes} B")
    if data is not None and data.synthetic:
        found.append("SYNTHETIC calibration data: ranges come from random inputs, accuracy is not representative")
    if coverage.first_cut is not None and quantizes:
        found.append(
            f"falls back at {coverage.first_cut.node} ({coverage.first_cut.op_type}): "
            f"{100 * (1 - coverage.mac_fraction_before_first_cut):.1f}% of MACs after it run on the host"
        )
    return found


def plans(
    graph: ModelGraph,
    profiles: list[HardwareProfile],
    tree: RuleSet,
    data: Dataset | None = None,
    goals: UserGoals | None = None,
) -> list[Plan]:
    """One plan per target."""
    return [plan_model(graph, profile, tree, data, goals) for profile in profiles]


class MatrixCell(BaseModel):
    """One cell of the decision matrix: the plan for a model family on a target, with or without data."""

    family: str
    with_data: bool
    target: str
    technique: TechniqueName
    leaf: str
    latency_ratio: float | None


def decision_matrix(tree: RuleSet, profiles: list[HardwareProfile], samples: int = 200) -> list[MatrixCell]:
    """Plan every model family of `autoptq.model.zoo` on every profile, with and without representative data.

    Only the number of samples enters the decision, so "with data" stands for `samples` real samples.
    """
    from autoptq.model import zoo  # the synthetic families are only needed here

    cells: list[MatrixCell] = []
    for family, build in zoo.FAMILIES.items():
        graph = load_model(build())
        placeholder = Dataset(samples=[{}] * samples, labels=None, source="matrix")
        for with_data in (False, True):
            for profile in profiles:
                plan = plan_model(graph, profile, tree, placeholder if with_data else None)
                cells.append(
                    MatrixCell(
                        family=family,
                        with_data=with_data,
                        target=profile.name,
                        technique=plan.technique,
                        leaf=plan.leaf,
                        latency_ratio=plan.predicted.latency_ratio,
                    )
                )
    return cells
