"""A candidate's size and latency on the target, estimated before anything is quantized: the nodes its technique
converts, the precision each then runs at on the device, and the cost model's roofline over them."""

from __future__ import annotations

from autoptq.devices.cost import LatencyEstimate, SizeEstimate, estimate_latency, estimate_size, float_latency
from autoptq.devices.coverage import CoverageReport
from autoptq.devices.profiles import HardwareProfile, Precision
from autoptq.model.graph import ModelGraph
from autoptq.techniques import by_name
from autoptq.techniques.recipe import Recipe, TechniqueName


def predict(
    graph: ModelGraph, coverage: CoverageReport, profile: HardwareProfile, name: TechniqueName, recipe: Recipe
) -> tuple[SizeEstimate, LatencyEstimate, LatencyEstimate | None]:
    """Predicted size under the recipe, the plan's latency, and the float model's latency on the target (None when
    the target cannot run float at all)."""
    chosen = by_name(name)
    quantized = chosen.quantized_nodes(graph, recipe)
    precisions: dict[str, Precision] = {}
    for verdict in coverage.nodes:
        if verdict.on_device:
            runs_quantized = verdict.name in quantized and chosen.precision in profile.precisions_for(verdict.op_type)
            precisions[verdict.name] = (
                chosen.precision if runs_quantized else _float_precision(profile, verdict.precision)
            )
    converted = {name for name, p in precisions.items() if p == chosen.precision}
    qdq_tensors, qdq_elements = chosen.boundaries(graph, converted, recipe) if converted else (0, 0)
    size = estimate_size(
        graph,
        quantized if chosen.weight_bytes < 4 else set(),
        chosen.weight_bytes,
        chosen.per_channel_weights(recipe),
        qdq_tensors,
        float_file_bytes=graph.path.stat().st_size if graph.path and graph.path.is_file() else None,
    )
    baseline = float_latency(graph, coverage, profile)
    if not chosen.quantizes:
        return size, baseline or estimate_latency(graph, coverage, profile, {}), baseline
    latency = estimate_latency(graph, coverage, profile, precisions, qdq_elements, qdq_tensors)
    return size, latency, baseline


def _float_precision(profile: HardwareProfile, mapped_at: Precision | None) -> Precision:
    if "fp32" in profile.precisions:
        return "fp32"
    return mapped_at or next(iter(profile.precisions))
