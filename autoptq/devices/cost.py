"""Estimates, labelled as such: latency as a roofline per device segment, and model size under a recipe.

Latency of a segment = fixed overhead + sum over its nodes of (max(MACs / effective throughput, bytes / bandwidth)
+ per-op overhead). Host segments are costed with the host profile, crossings with the device <-> host link, and
parameters beyond an on-chip cache with the streaming bandwidth (overlapping the device's compute). Constants come
from each profile's `cost` and `precisions` sections: fitted to published figures for edgetpu and arm-a53, assumed
for the others (each profile's `cost.basis` says which; see docs/cost-model.md). Results are ranges, never promises.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, Field

from autoptq.devices.coverage import CoverageReport
from autoptq.devices.profiles import HardwareProfile, Precision, load_profile
from autoptq.model.graph import ModelGraph, NodeInfo

PRECISION_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "int8": 1, "int16": 2}
QDQ_ELEMENT_OPS = 2
"""A Quantize/Dequantize pair costs about two element operations per value crossing it."""


class SegmentCost(BaseModel):
    """Estimated time of one part of an inference: a device or host segment (in execution order), the
    quantize/dequantize work, or the transfers."""

    part: str = Field(description="'device', 'host', 'quantize/dequantize' or 'transfers'")
    first_node: str | None = None
    last_node: str | None = None
    nodes: int = 0
    ms: float


class LatencyEstimate(BaseModel):
    """Estimated latency of one inference, in milliseconds, with the range and what it rests on."""

    estimate_ms: float
    low_ms: float
    high_ms: float
    device_ms: float = Field(description="part spent on the device's own segments")
    host_ms: float = Field(description="part spent on the host (fallback segments)")
    transfer_ms: float = Field(description="device <-> host transfers and parameter streaming")
    basis: str
    label: str = "estimate"
    parts: list[SegmentCost] = Field(default_factory=list, description="where the estimate goes, part by part")


class SizeEstimate(BaseModel):
    """Predicted file size in bytes of the model under a recipe, Q/DQ overhead included."""

    size_bytes: int
    float_size_bytes: int
    quantized_param_bytes: int
    float_param_bytes: int
    qdq_overhead_bytes: int
    label: str = "estimate"


def node_seconds(node: NodeInfo, precision: Precision, profile: HardwareProfile) -> float:
    """Compute time of one node on `profile` at `precision` (roofline with DRAM traffic when known)."""
    speed = profile.precisions.get(precision) or profile.precisions[_slowest(profile)]
    compute = node.macs / speed.effective_macs_per_s
    bandwidth = profile.memory.dram_bandwidth_bytes_per_s
    if bandwidth is None:
        return compute
    traffic = node.param_count * PRECISION_BYTES[precision] + node.activation_bytes * PRECISION_BYTES[precision] / 4
    return max(compute, traffic / bandwidth)


def _slowest(profile: HardwareProfile) -> Precision:
    return min(profile.precisions, key=lambda p: profile.precisions[p].effective_macs_per_s)


def host_profile(profile: HardwareProfile) -> HardwareProfile:
    """The profile that runs what `profile` cannot: its `host`, or itself for a processor that runs any op."""
    if profile.host is None or profile.runs_any_op_at:
        return profile
    return load_profile(profile.host)


def estimate_latency(
    graph: ModelGraph,
    coverage: CoverageReport,
    profile: HardwareProfile,
    precision_of: Mapping[str, Precision],
    qdq_elements: int = 0,
    qdq_ops: int = 0,
) -> LatencyEstimate:
    """Latency of one inference with each node at `precision_of[name]` (device nodes) or fp32 (host nodes).

    `qdq_elements` and `qdq_ops` add the quantize/dequantize work the quantizer inserts (element ops on the
    processor that runs them, plus one per-op overhead each).
    """
    host = host_profile(profile)
    host_precision: Precision = "fp32" if "fp32" in host.precisions else _slowest(host)
    device_s = host_s = 0.0
    parts: list[SegmentCost] = []
    for verdict in coverage.nodes:
        node = graph.node(verdict.name)
        if verdict.on_device:
            seconds = node_seconds(node, precision_of.get(node.name, "fp32"), profile) + profile.cost.per_op_overhead_s
            device_s += seconds
        else:
            seconds = node_seconds(node, host_precision, host) + host.cost.per_op_overhead_s
            host_s += seconds
        _add_to_segment(parts, "device" if verdict.on_device else "host", node.name, seconds)
    qdq_processor = profile if profile.runs_any_op_at else host
    qdq_s = qdq_elements * QDQ_ELEMENT_OPS / qdq_processor.precisions[_slowest(qdq_processor)].effective_macs_per_s
    qdq_s += qdq_ops * qdq_processor.cost.per_op_overhead_s
    if profile.runs_any_op_at:
        device_s += qdq_s
    else:
        host_s += qdq_s
    transfer_s = _transfer_seconds(coverage, profile)
    if coverage.device_segments:
        streamed = coverage.memory.streamed_param_bytes
        bandwidth = profile.memory.streamed_bandwidth_bytes_per_s
        if streamed and bandwidth:
            # Streaming overlaps the device's compute (and per-op overhead): the slower of the two bounds the device
            # work, and the time streaming adds beyond the compute is reported with the transfers. The fixed
            # per-invocation overhead does not overlap: latency = fixed + max(compute, streamed / bandwidth).
            transfer_s += max(0.0, streamed / bandwidth - device_s)
        device_s += profile.cost.fixed_overhead_s * coverage.device_segments
    if host_s and host is not profile:
        host_s += host.cost.fixed_overhead_s
    total = device_s + host_s + transfer_s
    spread = profile.cost.uncertainty
    # Per-invocation overheads belong to their segments: each device segment's, and the host's once (on its first
    # segment, or on the quantize/dequantize work when that is all the host does). The parts sum to the estimate.
    for part in parts:
        if part.part == "device":
            part.ms += profile.cost.fixed_overhead_s
    host_fixed = host.cost.fixed_overhead_s if host_s and host is not profile else 0.0
    host_parts = [p for p in parts if p.part == "host"]
    if host_parts:
        host_parts[0].ms += host_fixed
        host_fixed = 0.0
    if qdq_s or host_fixed:
        parts.append(SegmentCost(part="quantize/dequantize", ms=qdq_s + host_fixed))
    if transfer_s:
        parts.append(SegmentCost(part="transfers", ms=transfer_s))
    for part in parts:
        part.ms = part.ms * 1e3
    return LatencyEstimate(
        estimate_ms=total * 1e3,
        low_ms=total * 1e3 / (1 + spread),
        high_ms=total * 1e3 * (1 + spread),
        device_ms=device_s * 1e3,
        host_ms=host_s * 1e3,
        transfer_ms=transfer_s * 1e3,
        basis=f"roofline of {profile.name}"
        + (f" with host {host.name}" if host is not profile else "")
        + (f"; constants: {profile.cost.basis}" if profile.cost.basis else ""),
        parts=parts,
    )


def _add_to_segment(parts: list[SegmentCost], place: str, node: str, seconds: float) -> None:
    """Add a node's time to the current segment when it runs on the same processor, else open a new segment (the
    segments of coverage.py: maximal runs in execution order). Times are seconds until the estimate is final."""
    if parts and parts[-1].part == place:
        parts[-1].last_node, parts[-1].nodes, parts[-1].ms = node, parts[-1].nodes + 1, parts[-1].ms + seconds
    else:
        parts.append(SegmentCost(part=place, first_node=node, last_node=node, nodes=1, ms=seconds))


def _transfer_seconds(coverage: CoverageReport, profile: HardwareProfile) -> float:
    if profile.kind == "cpu" or not coverage.transfer_bytes:
        return 0.0
    link = profile.memory.host_link_bandwidth_bytes_per_s
    seconds = coverage.transfer_bytes / link if link else 0.0
    crossings = coverage.transitions + (1 if coverage.device_segments else 0)
    return seconds + crossings * profile.cost.transfer_overhead_s


def float_latency(graph: ModelGraph, coverage: CoverageReport, profile: HardwareProfile) -> LatencyEstimate | None:
    """Latency of the float model on the target: fp32 where the device runs float, else entirely on its host;
    None for a device with neither float arithmetic nor a host."""
    if "fp32" in profile.precisions:
        precisions: dict[str, Precision] = {n.name: "fp32" for n in coverage.nodes if n.on_device}
        return estimate_latency(graph, coverage, profile, precisions)
    host = host_profile(profile)
    if host is profile:
        return None
    from autoptq.devices.coverage import analyse  # local: avoids a cycle of imports at module load

    host_coverage = analyse(graph, host)
    return estimate_latency(graph, host_coverage, host, {n.name: "fp32" for n in host_coverage.nodes})


def estimate_size(
    graph: ModelGraph,
    quantized_nodes: set[str],
    weight_bytes: int,
    per_channel: bool,
    quantized_activations: int,
    float_file_bytes: int | None = None,
) -> SizeEstimate:
    """File size when the weights of `quantized_nodes` are stored at `weight_bytes` per value.

    A weight read by several nodes is counted once (plus a float copy when some of its readers stay float). Int8
    per-channel scales add 4 + zero-point bytes per output channel (fp16 weights need none); each quantized activation
    adds a Q/DQ pair (about 2 nodes x 60 bytes of protobuf) and its scale and zero point.
    """
    float_params = 0
    quantized_params = 0
    scale_bytes = 0
    # Each weight once, however many nodes read it, with whether each of its readers is quantized.
    consumers: dict[str, list[bool]] = {}
    for node in graph.compute_nodes():
        for weight in dict.fromkeys(node.weight_inputs):
            consumers.setdefault(weight, []).append(node.name in quantized_nodes)
    for weight, quantized in consumers.items():
        info = graph.tensors.get(weight)
        if info is None or not info.is_static or info.itemsize == 0:
            continue
        count = info.numel() or 0
        is_float = info.dtype in ("float", "float32", "float16", "double")
        converted = any(quantized) and is_float and (len(info.shape or []) >= 2 or weight_bytes == 2)
        if converted:
            quantized_params += count * weight_bytes  # fp16 conversion also halves biases
            if weight_bytes == 1:
                channels = (info.shape or [1])[0] if per_channel else 1
                scale_bytes += int(channels) * (4 + weight_bytes) + 120  # scale, zero point, a DQ node
        if not converted or not all(quantized):
            float_params += count * info.itemsize  # (also) kept in float for a consumer that is not converted
    total_param_bytes = sum(
        (graph.tensors[w].numel() or 0) * graph.tensors[w].itemsize
        for w in consumers
        if w in graph.tensors and graph.tensors[w].is_static
    )
    float_size = float_file_bytes if float_file_bytes is not None else graph.model.ByteSize()
    structure = max(0, float_size - total_param_bytes)
    qdq = scale_bytes + quantized_activations * (2 * 60 + 5)
    return SizeEstimate(
        size_bytes=structure + float_params + quantized_params + qdq,
        float_size_bytes=float_size,
        quantized_param_bytes=quantized_params,
        float_param_bytes=float_params,
        qdq_overhead_bytes=qdq,
    )
