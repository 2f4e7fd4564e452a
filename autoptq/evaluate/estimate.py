"""A candidate's size and latency on the target, estimated before anything is quantized: the nodes its technique
converts, the precision each then runs at on the device, and the cost model's roofline over them."""

from __future__ import annotations

from autoptq.devices.cost import LatencyEstimate, SizeEstimate, estimate_latency, estimate_size, float_latency
from autoptq.devices.coverage import CoverageReport
from autoptq.devices.profiles import HardwareProfile, Precision
from autoptq.model.graph import ModelGraph
from autoptq.techniques.recipe import Recipe, Technique


def _quantized_nodes(graph: ModelGraph, coverage: CoverageReport, technique: Technique, recipe: Recipe) -> set[str]:
    if technique == "none":
        return set()
    excluded = set(recipe.nodes_to_exclude)
    names = {n.name for n in graph.compute_nodes() if n.name not in excluded}
    if technique == "weight_only_int8":
        return {n for n in names if graph.node(n).op_type in set(recipe.op_types_to_quantize)}
    if technique == "fp16":
        return {n for n in names if graph.node(n).op_type not in set(recipe.fp16_op_block_list)}
    if recipe.op_types_to_quantize:
        return {n for n in names if graph.node(n).op_type in set(recipe.op_types_to_quantize)}
    return names


def predict(
    graph: ModelGraph, coverage: CoverageReport, profile: HardwareProfile, technique: Technique, recipe: Recipe
) -> tuple[SizeEstimate, LatencyEstimate, LatencyEstimate | None]:
    """Predicted size under the recipe, the plan's latency, and the float model's latency on the target (None when
    the target cannot run float at all)."""
    quantized = _quantized_nodes(graph, coverage, technique, recipe)
    precision = _node_precision(technique)
    precisions: dict[str, Precision] = {}
    for verdict in coverage.nodes:
        if verdict.on_device:
            runs_quantized = verdict.name in quantized and precision in profile.precisions_for(verdict.op_type)
            precisions[verdict.name] = precision if runs_quantized else _float_precision(profile, verdict.precision)
    converted = {name for name, p in precisions.items() if p == precision}
    qdq_tensors, qdq_elements = _qdq_boundaries(graph, converted, technique, recipe)
    weight_bytes = {"weight_only_int8": 1, "full_int8": 1, "int16x8": 1, "fp16": 2}.get(technique, 4)
    size = estimate_size(
        graph,
        quantized if weight_bytes < 4 else set(),
        weight_bytes,
        recipe.per_channel and technique != "fp16",
        qdq_tensors,
        float_file_bytes=graph.path.stat().st_size if graph.path and graph.path.is_file() else None,
    )
    baseline = float_latency(graph, coverage, profile)
    if technique == "none":
        return size, baseline or estimate_latency(graph, coverage, profile, {}), baseline
    latency = estimate_latency(graph, coverage, profile, precisions, qdq_elements, qdq_tensors)
    return size, latency, baseline


def _node_precision(technique: Technique) -> Precision:
    return {"full_int8": "int8", "weight_only_int8": "int8", "int16x8": "int16", "fp16": "fp16"}.get(technique, "fp32")  # type: ignore[return-value]


def _float_precision(profile: HardwareProfile, mapped_at: Precision | None) -> Precision:
    if "fp32" in profile.precisions:
        return "fp32"
    return mapped_at or next(iter(profile.precisions))


def _qdq_boundaries(graph: ModelGraph, converted: set[str], technique: Technique, recipe: Recipe) -> tuple[int, int]:
    """(tensors that get a quantize/dequantize or a cast, elements crossing them) for a technique.

    Static QDQ and fp16 pay only where converted and unconverted regions meet (fused runtimes drop the Q/DQ pairs
    inside an integer region), and at float graph I/O; dynamic quantization re-quantizes each converted node's
    input at run time, scanning it for its range first.
    """
    if technique == "none" or not converted:
        return 0, 0
    if technique == "weight_only_int8":
        tensors = {t for n in converted for t in graph.node(n).inputs[:1] if t and t not in graph.constants}
        elements = sum(graph.tensors[t].numel() or 0 for t in tensors if t in graph.tensors)
        return len(tensors), elements * 3 // 2
    tensors = _precision_borders(graph, converted, float_io=recipe.io_dtype == "float32" or technique == "fp16")
    return len(tensors), sum(graph.tensors[t].numel() or 0 for t in tensors if t in graph.tensors)


def _precision_borders(graph: ModelGraph, converted: set[str], float_io: bool) -> set[str]:
    """Activations read or written by both converted and unconverted nodes (and, with float I/O, by converted nodes
    at the graph's inputs and outputs)."""
    io = (*graph.inputs, *graph.outputs) if float_io else ()
    sides: dict[str, set[bool]] = {t.name: {False} for t in io}
    for node in graph.compute_nodes():
        for tensor in (*node.inputs, *node.outputs):
            if tensor and tensor not in graph.constants:
                sides.setdefault(tensor, set()).add(node.name in converted)
    return {t for t, seen in sides.items() if len(seen) > 1}
