"""Op coverage: which nodes a device runs, at which precision, where the graph falls back to the host, and whether
the model fits the device's memory. Vocabulary follows the Edge TPU compiler's log where it fits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from autoptq.devices.profiles import Constraint, HardwareProfile, Precision
from autoptq.model.graph import ModelGraph, NodeInfo, Rewrite, TensorInfo

Status = Literal[
    "mapped",
    "unsupported_op",
    "unsupported_dtype",
    "unsupported_shape",
    "dynamic_shape",
    "after_cut",
    "folded",
]

STATUS_TEXT: dict[str, str] = {
    "mapped": "Mapped to {device}",
    "unsupported_op": "Operation not supported",
    "unsupported_dtype": "Operation is working on an unsupported data type",
    "unsupported_shape": "Operation is otherwise supported, but not mapped due to a shape limitation",
    "dynamic_shape": "Tensor sizes are not constant (dynamic shape)",
    "after_cut": "More than one subgraph is not supported",
    "folded": "Constant weight path, folded by the converter",
}
"""How each status reads in a report (the Edge TPU compiler's wording where it has one)."""

# Tensor element types a device can be fed once the model is quantized: float tensors become the device's
# quantized type, the others must already be one the device handles.
_FLOAT_DTYPES = frozenset({"float", "float32", "float16", "bfloat16", "double", "float64"})
_QUANTIZED_DTYPES = frozenset({"int8", "uint8", "int16", "uint16", "int32"})


class NodeCoverage(BaseModel):
    """The device's verdict on one node."""

    name: str
    op_type: str
    status: Status
    reason: str
    precision: Precision | None = Field(default=None, description="precision it runs at on the device, if mapped")
    on_device: bool
    macs: int


class FirstCut(BaseModel):
    """The first node, in execution order, that the device cannot run."""

    node: str
    op_type: str
    reason: str


class Segment(BaseModel):
    """A maximal run of consecutive nodes (execution order) placed on the same processor."""

    on: Literal["device", "host"]
    first_node: str
    last_node: str
    nodes: int
    macs: int


class MemoryReport(BaseModel):
    """Memory fit, in bytes. None where the profile gives no figure."""

    device_param_bytes: int = Field(description="parameters of on-device nodes at the device's weight precision")
    parameter_cache_bytes: int | None = None
    streamed_param_bytes: int = Field(default=0, description="parameters that do not fit the cache")
    peak_activation_bytes: int = Field(description="largest sum of live activations, tensor lifetimes in order")
    ram_bytes: int | None = None
    fits_ram: bool | None = None
    flash_bytes: int | None = None
    fits_flash: bool | None = None


class OpSummary(BaseModel):
    """One row of the per-op-type table: Operator / Count / Status."""

    operator: str
    count: int
    status: str


class CoverageReport(BaseModel):
    """Whether and how a device runs a model. Fractions are in [0, 1]."""

    target: str
    compatible: bool
    runnable: bool = Field(description="False when unsupported nodes have no host to fall back to")
    device_mac_fraction: float
    device_op_fraction: float
    mac_fraction_by_precision: dict[str, float]
    first_cut: FirstCut | None
    mac_fraction_before_first_cut: float
    segments: list[Segment]
    device_segments: int
    transitions: int
    transfer_bytes: int = Field(description="bytes crossing device <-> host per inference, graph I/O included")
    memory: MemoryReport
    total_macs: int
    dynamic_dims: list[str] = Field(description="input dims still open after binding (unknown sizes)")
    shape_notes: list[str] = Field(default_factory=list, description="how open input dims were bound")
    rewrites: list[Rewrite] = Field(default_factory=list, description="nodes the device's converter rewrites")
    op_summary: list[OpSummary]
    nodes: list[NodeCoverage]
    after_quantization: bool = Field(
        default=False, description="some float node is judged at an integer precision: true once quantized"
    )


def analyse(graph: ModelGraph, profile: HardwareProfile, float_nodes: Collection[str] = ()) -> CoverageReport:
    """Audit `graph` against `profile`: per-node status, partitioning, fractions and memory fit.

    `float_nodes` are nodes a recipe keeps in float: an integer-only device cannot run them (they go to the host,
    and on a `first_cut` device everything after them too); a device with float arithmetic runs them at fp32.
    """
    kept_float = set(float_nodes)
    verdicts = [_judge(node, graph, profile, node.name in kept_float) for node in graph.compute_nodes()]
    verdicts = _partition(verdicts, profile)
    total_macs = sum(v.macs for v in verdicts)
    on_device = [v for v in verdicts if v.on_device]
    cut = _first_cut(verdicts)
    segments = _segments(verdicts)
    transitions, transfer_bytes = _transfers(graph, verdicts, profile)
    has_host = profile.host is not None or bool(profile.runs_any_op_at)
    return CoverageReport(
        target=profile.name,
        compatible=len(on_device) == len(verdicts),
        runnable=has_host or len(on_device) == len(verdicts),
        device_mac_fraction=_fraction(sum(v.macs for v in on_device), total_macs, len(on_device), len(verdicts)),
        device_op_fraction=len(on_device) / len(verdicts) if verdicts else 1.0,
        mac_fraction_by_precision=_precision_fractions(verdicts, total_macs),
        first_cut=cut,
        mac_fraction_before_first_cut=_macs_before_cut(verdicts, cut, total_macs),
        segments=segments,
        device_segments=sum(1 for s in segments if s.on == "device"),
        transitions=transitions,
        transfer_bytes=transfer_bytes,
        memory=_memory(graph, verdicts, profile),
        total_macs=total_macs,
        dynamic_dims=graph.symbolic_dims,
        shape_notes=graph.binding.notes() if graph.binding else [],
        rewrites=graph.rewrites,
        op_summary=_op_summary(verdicts, profile),
        nodes=verdicts,
        after_quantization=_judged_after_quantization(verdicts, graph),
    )


def _judged_after_quantization(verdicts: list[NodeCoverage], graph: ModelGraph) -> bool:
    integer = {v.name for v in verdicts if v.on_device and v.precision in ("int8", "int16")}
    return any(
        t.dtype in _FLOAT_DTYPES for node in graph.compute_nodes() if node.name in integer
        for t in _activation_tensors(node, graph)
    )  # fmt: skip


def _fraction(part: int, whole: int, part_count: int, whole_count: int) -> float:
    # A model with no arithmetic at all is judged by its op count instead.
    if whole:
        return part / whole
    return part_count / whole_count if whole_count else 1.0


def _judge(node: NodeInfo, graph: ModelGraph, profile: HardwareProfile, kept_float: bool = False) -> NodeCoverage:
    """Status of one node on the device, before partitioning."""

    def verdict(status: Status, reason: str, precision: Precision | None = None) -> NodeCoverage:
        return NodeCoverage(
            name=node.name,
            op_type=node.op_type,
            status=status,
            reason=reason,
            precision=precision,
            on_device=status == "mapped",
            macs=node.macs,
        )

    table = profile.precisions_for(node.key)
    if kept_float:
        if profile.integer_only:
            return verdict("unsupported_dtype", "kept in float by the recipe: the device runs integers only")
        table = {p: support for p, support in table.items() if p == "fp32"}
        if not table:
            return verdict("unsupported_dtype", "kept in float by the recipe: the device has no fp32 kernel for it")
    if not table:
        if profile.runs_any_op_at:  # a generic runtime, but not for this domain
            return verdict(
                "unsupported_op",
                f"{node.key} is not in the {profile.name} op table and domain {node.domain!r} has no runtime kernels",
            )
        return verdict("unsupported_op", f"{node.key} is not in the {profile.name} op table")
    if profile.shapes.static:
        dynamic = _first_dynamic_tensor(node, graph)
        if dynamic is not None:
            return verdict("dynamic_shape", f"tensor {dynamic.name!r} has shape {dynamic.shape}; sizes must be static")
    if not profile.runs_any_op_at:
        bad = _unsupported_dtype_tensor(node, graph)
        if bad is not None:
            return verdict("unsupported_dtype", f"tensor {bad.name!r} is {bad.dtype}")
    rank_problem = _rank_problem(node, graph, profile.shapes.max_effective_rank)
    if rank_problem is not None:
        return verdict("unsupported_shape", rank_problem)
    failures: list[str] = []
    shape_only = True
    for precision in _fastest_first(table, profile):
        broken = next(((c, p) for c in table[precision].constraints if (p := _violation(c, node, graph))), None)
        if broken is None:
            return verdict("mapped", f"runs at {precision}", precision)
        constraint, problem = broken
        shape_only = shape_only and (constraint.max_elements is not None or constraint.max_effective_rank is not None)
        failures.append(f"{precision}: {problem}")
    # A size or rank limit is a shape problem; a structural or attribute limit means the op as written is not one
    # the device has (e.g. MatMul of two activations is BATCH_MATMUL, which the Edge TPU lacks).
    return verdict("unsupported_shape" if shape_only else "unsupported_op", "; ".join(failures))


def _fastest_first(table: dict[Precision, object], profile: HardwareProfile) -> list[Precision]:
    return sorted(table, key=lambda p: -profile.precisions[p].effective_macs_per_s)


def _activation_tensors(node: NodeInfo, graph: ModelGraph) -> list[TensorInfo]:
    names = [n for n in (*node.inputs, *node.outputs) if n and n not in graph.constants]
    return [graph.tensors[n] for n in names if n in graph.tensors]


def _first_dynamic_tensor(node: NodeInfo, graph: ModelGraph) -> TensorInfo | None:
    return next((t for t in _activation_tensors(node, graph) if not t.is_static), None)


def _unsupported_dtype_tensor(node: NodeInfo, graph: ModelGraph) -> TensorInfo | None:
    allowed = _FLOAT_DTYPES | _QUANTIZED_DTYPES
    return next((t for t in _activation_tensors(node, graph) if t.dtype not in allowed), None)


def effective_rank(shape: list[int | str | None] | None) -> int:
    """Dimensions larger than 1 (unknown and symbolic dimensions count as larger)."""
    return sum(1 for d in shape or [] if not (isinstance(d, int) and d <= 1))


def _rank_problem(node: NodeInfo, graph: ModelGraph, max_rank: int | None) -> str | None:
    if max_rank is None:
        return None
    for tensor in _activation_tensors(node, graph):
        rank = effective_rank(tensor.shape)
        if rank > max_rank:
            return (
                f"rank rule: tensor {tensor.name!r} {tensor.shape} has {rank} dimensions larger than 1; "
                f"the device allows {max_rank}"
            )
    return None


def _violation(constraint: Constraint, node: NodeInfo, graph: ModelGraph) -> str | None:
    """None when `node` satisfies `constraint`, else why not."""
    note = f" ({constraint.note})" if constraint.note else ""
    if constraint.attribute is not None:
        value = node.attributes.get(constraint.attribute, constraint.default)
        if value not in (constraint.in_ or []):
            return f"{constraint.attribute}={value!r}, must be one of {constraint.in_}{note}"
        return None
    if constraint.max_elements is not None:
        for tensor in _activation_tensors(node, graph):
            count = tensor.numel() or 0
            if count > constraint.max_elements:
                return f"tensor {tensor.name!r} has {count} elements, limit {constraint.max_elements}{note}"
        return None
    if constraint.max_effective_rank is not None:
        problem = _rank_problem(node, graph, constraint.max_effective_rank)
        return None if problem is None else problem + note
    assert constraint.check is not None  # the schema guarantees exactly one kind
    problem = CHECKS[constraint.check](node, graph)
    return None if problem is None else problem + note


def _same_dilation_xy(node: NodeInfo, graph: ModelGraph) -> str | None:
    dilations = list(node.attributes.get("dilations") or [])  # type: ignore[call-overload]
    if len(set(dilations)) > 1:
        return f"dilations {dilations} differ between x and y"
    return None


def _constant_weights(node: NodeInfo, graph: ModelGraph) -> str | None:
    if len(node.inputs) < 2 or node.inputs[1] not in graph.constants:
        return "the second operand is an activation, not constant weights"
    return None


def _axes(node: NodeInfo, graph: ModelGraph) -> list[int] | None:
    """Reduction axes from the attribute (older opsets) or the constant second input (opset 18+)."""
    if "axes" in node.attributes:
        return [int(a) for a in node.attributes["axes"]]  # type: ignore[union-attr]
    if len(node.inputs) > 1 and node.inputs[1]:
        value = graph.constant_value(node.inputs[1])
        return None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
    return None


def _not_over_batch(node: NodeInfo, graph: ModelGraph) -> str | None:
    shape = graph.tensors[node.inputs[0]].shape if node.inputs[0] in graph.tensors else None
    batch = shape[0] if shape else None
    if node.op_type == "Pad":
        # Padding a batch of 1 still pads the batch, so no shortcut here (unlike a reduction over a size-1 axis).
        pads = graph.constant_value(node.inputs[1]) if len(node.inputs) > 1 else node.attributes.get("pads")
        if pads is None:
            return "pads are not constant"
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        rank = len(pads) // 2
        # Opset 18+: an `axes` input says which axes the pads apply to (all axes when absent).
        pad_axes = graph.constant_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
        if pad_axes is None and len(node.inputs) > 3 and node.inputs[3]:
            return "pad axes are not constant"
        axes = list(range(rank)) if pad_axes is None else [int(a) for a in np.asarray(pad_axes).reshape(-1)]
        full_rank = len(shape) if shape else rank
        padded = {a % max(full_rank, 1) for i, a in enumerate(axes[:rank]) if pads[i] or pads[i + rank]}
        return "pads the batch dimension" if 0 in padded else None
    if batch == 1:
        return None  # an axis of size 1 is no reduction at all
    axes = _axes(node, graph)
    rank = len(shape) if shape else 0
    if axes is None or not axes:
        return "reduces over every axis, batch included"
    if any(a % max(rank, 1) == 0 for a in axes):
        return "reduces over the batch dimension"
    return None


def _strides_all_one(node: NodeInfo, graph: ModelGraph) -> str | None:
    if len(node.inputs) < 5 or not node.inputs[4]:
        return None
    steps = graph.constant_value(node.inputs[4])
    if steps is None:
        return "steps are not constant"
    if any(int(s) != 1 for s in np.asarray(steps).reshape(-1)):
        return f"steps {np.asarray(steps).tolist()} are not all 1"
    return None


def _squeeze_leading_only(node: NodeInfo, graph: ModelGraph) -> str | None:
    axes = _axes(node, graph)
    shape = graph.tensors[node.inputs[0]].shape if node.inputs[0] in graph.tensors else None
    if axes is None:
        if any(node.inputs[1:]):
            return "axes are not constant"
        if shape is None:
            return "input shape unknown"
        axes = [i for i, d in enumerate(shape) if d == 1]  # no axes: every dimension of size 1 is removed
    rank = len(shape) if shape else max(axes, default=0) + 1
    normalised = sorted(a % rank for a in axes)
    if normalised != list(range(len(normalised))):
        return f"squeezes axes {axes}, not only leading ones"
    return None


def _alpha_innermost_only(node: NodeInfo, graph: ModelGraph) -> str | None:
    slope = graph.tensors.get(node.inputs[1]) if len(node.inputs) > 1 else None
    if slope is None or slope.shape is None:
        return "slope shape unknown"
    # The device's innermost dimension is the channel axis once the converter turns NC... into N...C, i.e. ONNX axis
    # 1 (the last axis of a 2-D input). The slope broadcasts against the input from the right.
    x = graph.tensors.get(node.inputs[0])
    x_rank = len(x.shape) if x is not None and x.shape is not None else len(slope.shape)
    channel_axis = 1 if x_rank >= 2 else 0
    offset = x_rank - len(slope.shape)
    varying = {offset + j for j, d in enumerate(slope.shape) if not (isinstance(d, int) and d <= 1)}
    if varying - {channel_axis}:
        return f"slope shape {slope.shape} varies along more than the channel (innermost) dimension"
    return None


def _no_constant_inputs_except_zeros(node: NodeInfo, graph: ModelGraph) -> str | None:
    constant_inputs = [i for i in node.inputs if i in graph.constants]
    if not constant_inputs:
        return None
    values = [graph.constant_value(i) for i in constant_inputs]
    if len(node.inputs) == 2 and all(v is not None and not np.any(v) for v in values):
        return None
    return "a constant input is allowed only as zeros with exactly 2 inputs"


def _depthwise_or_group_one(node: NodeInfo, graph: ModelGraph) -> str | None:
    group = int(node.attributes.get("group", 1) or 1)  # type: ignore[call-overload]
    if group == 1:
        return None
    shape = graph.tensors[node.inputs[0]].shape if node.inputs[0] in graph.tensors else None
    channels = shape[1] if shape and len(shape) > 1 else None
    if channels == group:
        return None
    return f"grouped convolution with group={group} is neither depthwise nor dense"


CHECKS: dict[str, Callable[[NodeInfo, ModelGraph], str | None]] = {
    "same_dilation_xy": _same_dilation_xy,
    "constant_weights": _constant_weights,
    "not_over_batch": _not_over_batch,
    "strides_all_one": _strides_all_one,
    "squeeze_leading_only": _squeeze_leading_only,
    "alpha_innermost_only": _alpha_innermost_only,
    "no_constant_inputs_except_zeros": _no_constant_inputs_except_zeros,
    "depthwise_or_group_one": _depthwise_or_group_one,
}
"""The named structural checks a profile may use (`check:` in an op's constraints)."""


def _partition(verdicts: list[NodeCoverage], profile: HardwareProfile) -> list[NodeCoverage]:
    if profile.partitioning != "first_cut":
        return verdicts
    cut_index = next((i for i, v in enumerate(verdicts) if not v.on_device), None)
    if cut_index is None:
        return verdicts
    cut = verdicts[cut_index]
    after = [
        v.model_copy(
            update={
                "status": "after_cut",
                "reason": f"after the first unsupported op {cut.name!r} ({cut.op_type}): "
                + ("runs on the host" if profile.host else "nothing runs it (the device has no host)"),
                "on_device": False,
                "precision": None,
            }
        )
        if v.on_device
        else v
        for v in verdicts[cut_index + 1 :]
    ]
    return [*verdicts[: cut_index + 1], *after]


def _first_cut(verdicts: list[NodeCoverage]) -> FirstCut | None:
    first = next((v for v in verdicts if v.status not in ("mapped", "after_cut")), None)
    return None if first is None else FirstCut(node=first.name, op_type=first.op_type, reason=first.reason)


def _macs_before_cut(verdicts: list[NodeCoverage], cut: FirstCut | None, total: int) -> float:
    if cut is None:
        return 1.0
    before = 0
    for v in verdicts:
        if v.name == cut.node:
            break
        before += v.macs
    return before / total if total else 0.0


def _precision_fractions(verdicts: list[NodeCoverage], total_macs: int) -> dict[str, float]:
    macs: Counter[str] = Counter()
    for v in verdicts:
        if v.on_device and v.precision is not None:
            macs[v.precision] += v.macs
    return {p: (m / total_macs if total_macs else 0.0) for p, m in sorted(macs.items())}


def _segments(verdicts: list[NodeCoverage]) -> list[Segment]:
    segments: list[Segment] = []
    for v in verdicts:
        place = "device" if v.on_device else "host"
        if segments and segments[-1].on == place:
            last = segments[-1]
            segments[-1] = last.model_copy(
                update={"last_node": v.name, "nodes": last.nodes + 1, "macs": last.macs + v.macs}
            )
        else:
            segments.append(Segment(on=place, first_node=v.name, last_node=v.name, nodes=1, macs=v.macs))
    return segments


def _transfers(graph: ModelGraph, verdicts: list[NodeCoverage], profile: HardwareProfile) -> tuple[int, int]:
    """Device <-> host crossings (edges between placements) and the bytes they carry, graph I/O included.

    A CPU is its own host: nothing crosses.
    """
    if profile.kind == "cpu":
        return 0, 0
    place = {v.name: v.on_device for v in verdicts}
    crossing: set[tuple[str, bool]] = set()
    for producer, consumer, data in graph.graph.edges(data=True):
        if producer in place and consumer in place and place[producer] != place[consumer]:
            crossing.update((tensor, place[consumer]) for tensor in data["tensors"])
    read_on_device: set[str] = set()
    written_on_device: set[str] = set()
    for node in graph.compute_nodes():
        if place.get(node.name):
            read_on_device.update(node.inputs)
            written_on_device.update(node.outputs)
    crossing.update((t.name, True) for t in graph.inputs if t.name in read_on_device)
    crossing.update((t.name, False) for t in graph.outputs if t.name in written_on_device)
    itemsize = _weight_itemsize(profile)
    total = sum(
        (graph.tensors[t].numel() or 0) * (itemsize if graph.tensors[t].itemsize else 0)
        for t, _ in crossing
        if t in graph.tensors
    )
    internal = {(p, c) for p, c in graph.graph.edges() if p in place and c in place and place[p] != place[c]}
    return len(internal), total


def _weight_itemsize(profile: HardwareProfile) -> int:
    # An integer-only device holds int8 weights; any other device is audited on the float model as given.
    return 1 if profile.integer_only else 4


def _memory(graph: ModelGraph, verdicts: list[NodeCoverage], profile: HardwareProfile) -> MemoryReport:
    on_device = {v.name for v in verdicts if v.on_device}
    itemsize = _weight_itemsize(profile)
    device_params = sum(graph.node(name).param_count * itemsize for name in on_device)
    cache = profile.memory.parameter_cache_bytes
    peak = peak_activation_bytes(graph, 1 if profile.integer_only else None)
    ram, flash = profile.memory.ram_bytes, profile.memory.flash_bytes
    return MemoryReport(
        device_param_bytes=device_params,
        parameter_cache_bytes=cache,
        streamed_param_bytes=max(0, device_params - cache) if cache is not None else 0,
        peak_activation_bytes=peak,
        ram_bytes=ram,
        fits_ram=None if ram is None else peak <= ram,
        flash_bytes=flash,
        fits_flash=None if flash is None else device_params <= flash,
    )


def peak_activation_bytes(graph: ModelGraph, itemsize: int | None = None) -> int:
    """Largest total size of live activations over the execution order (bytes).

    A tensor lives from the step that produces it (graph inputs from the start) to its last consumer (graph outputs
    to the end). `itemsize` overrides the element size, e.g. 1 for a model that will run in int8.
    """
    nodes = graph.compute_nodes()
    end = len(nodes)
    born: dict[str, int] = {t.name: 0 for t in graph.inputs}
    last_use: dict[str, int] = {}
    for step, node in enumerate(nodes):
        for out in node.outputs:
            if out:
                born.setdefault(out, step)
        # Edges also carry the outer-scope tensors a control-flow node's subgraphs read.
        reads = [*node.inputs, *(t for _, _, ts in graph.graph.in_edges(node.name, data="tensors") for t in ts)]
        for name in reads:
            if name in born:
                last_use[name] = step
    for tensor in graph.outputs:
        last_use[tensor.name] = end
    deltas = [0] * (end + 2)
    for name, start in born.items():
        info = graph.tensors.get(name)
        if info is None:
            continue
        size = (info.numel() or 0) * (itemsize or info.itemsize)
        deltas[start] += size
        deltas[last_use.get(name, start) + 1] -= size
    peak = live = 0
    for delta in deltas:
        live += delta
        peak = max(peak, live)
    return peak


def _status_text(status: Status, profile: HardwareProfile) -> str:
    if status == "after_cut" and profile.host is None and not profile.runs_any_op_at:
        return "After the first unsupported op: not run (the device has no host)"  # not the Edge TPU's wording
    return STATUS_TEXT[status].format(device=profile.name)


def _op_summary(verdicts: list[NodeCoverage], profile: HardwareProfile) -> list[OpSummary]:
    rows: Counter[tuple[str, str]] = Counter()
    for v in verdicts:
        rows[(v.op_type, _status_text(v.status, profile))] += 1
    return [OpSummary(operator=op, count=count, status=status) for (op, status), count in sorted(rows.items())]
