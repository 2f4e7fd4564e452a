"""Re-audit of a quantized (QDQ) model against a device's rules, and the device's per-op table of that model.

Each compute node of the QDQ graph is read together with the DequantizeLinear nodes that feed it and the
QuantizeLinear nodes that consume its outputs: their scales, zero points, dtypes and axes are what the device will
run. A rule applies to a profile only when the profile states the requirement: `RULES` gives each rule's
requirement, the profile key that decides whether it applies, and its public source; `rule_scopes(profile)` says
which apply. Per-channel (per-axis) scales are accepted on the weights of Conv, ConvTranspose, Gemm and MatMul only,
along the output-channel axis, and only when the profile lists `per_channel` (the TFLite spec has per-axis weights
for CONV_2D, DEPTHWISE_CONV_2D and, in its current version, FULLY_CONNECTED); activations are per tensor.

The op table comes from `autoptq.devices.coverage.analyse` run on a stripped copy of the QDQ graph (`strip_qdq`): the
Q/DQ pairs around each compute node are folded into it, so counts are compute ops, and only the Quantize of a float
graph input and the Dequantize of a float graph output remain, as the Edge TPU compiler lists them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto, NodeProto, helper
from pydantic import BaseModel, Field

from autoptq.devices.coverage import STATUS_TEXT, CoverageReport, NodeCoverage, OpSummary, analyse, effective_rank
from autoptq.devices.profiles import HardwareProfile
from autoptq.model.graph import (
    ModelGraph,
    NodeInfo,
    build_graph,
    drop_unused_initializers,
    load_model,
    output_tail,
)
from autoptq.model.ops import OUTPUT_TAIL_OPS, QDQ_OPS

FLOAT_DOMAIN = "autoptq.float"
"""Domain given, in the stripped graph, to compute nodes left in float: no op table lists it, so an integer-only
device reports them unsupported, while a profile that runs any op in float (`runs_any_op_at`) still runs them."""

WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"})
"""Ops whose input 1 is a weight (BatchNormalization's scale); the only ones whose weights may be quantized per
channel."""
BIAS_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "BatchNormalization"})
"""Ops whose input 2 is a bias (onnxruntime quantizes BatchNormalization's B as one: int32 at input × scale)."""
SAME_SCALE_OPS = frozenset(
    {
        "AveragePool", "MaxPool", "Concat", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Resize", "Pad", "Slice",
        "Transpose", "Gather", "Max", "Min", "SpaceToDepth",
    }
)  # fmt: skip
"""Ops whose int8 kernels keep input and output on one scale and zero point (TFLite quantization spec: pooling,
concatenation, reshape, resize, pad, slice, transpose, squeeze, gather, maximum, minimum, space-to-depth; Flatten and
Unsqueeze lower to RESHAPE / EXPAND_DIMS). GlobalAveragePool (MEAN) requantizes and is not among them."""

_FLOAT_DTYPES = frozenset({"float", "float16", "bfloat16", "double"})
_INDEX_DTYPES = frozenset({"int64", "bool"})  # shape and index constants, not parameters
_SCALE_RTOL = 1e-5  # scales are float32; a product computed in float32 differs from float64 by ~1e-7


class RuleViolation(BaseModel):
    """One node breaking one device rule."""

    rule: str
    node: str
    op_type: str
    detail: str


class RuleScope(BaseModel):
    """Whether a rule applies to the profile, and the profile statement that decides it."""

    rule: str
    applies: bool
    basis: str = Field(description="the profile key and value that make the rule apply, or not")
    requirement: str
    source: str


class DeviceRulesResult(BaseModel):
    """The device's rules re-audited on a quantized model, with its per-op table and parameter memory (bytes)."""

    target: str
    passed: bool
    violations: list[RuleViolation]
    rules: list[RuleScope] = Field(description="every rule, whether it applies to this profile, and why")
    op_summary: list[OpSummary] = Field(
        description="Operator / Count / Status of the quantized model, Q/DQ folded into their compute op"
    )
    on_chip_param_bytes: int = Field(
        description="parameter bytes of on-device nodes held by the device (all of them when it states no cache)"
    )
    streamed_param_bytes: int = Field(description="parameter bytes beyond the cache, streamed at every inference")
    parameter_cache_bytes: int | None
    coverage: CoverageReport | None = Field(
        default=None, exclude=True, description="partitioning of the quantized graph (in memory only: large)"
    )


@dataclass(eq=False)
class QParams:
    """The quantization a QuantizeLinear/DequantizeLinear states for one tensor: real = scale · (q − zero_point)."""

    tensor: str  # the integer tensor (Q output, DQ input)
    dtype: str
    scale: np.ndarray  # 1-D float64
    zero_point: np.ndarray  # 1-D int64
    axis: int | None  # quantized axis when per channel (as written: may be negative)
    values: np.ndarray | None = None  # the integers of a quantized constant

    @property
    def per_channel(self) -> bool:
        """True when the tensor carries more than one scale."""
        return self.scale.size > 1


@dataclass(eq=False)
class NodeQuantization:
    """A compute node of the QDQ graph with the quantization its Q/DQ neighbours state."""

    node: NodeInfo
    inputs: dict[str, QParams] = field(default_factory=dict)  # activation input -> its DequantizeLinear
    constants: dict[int, QParams] = field(default_factory=dict)  # input index -> a dequantized constant
    outputs: dict[str, QParams] = field(default_factory=dict)  # float output -> its QuantizeLinear
    float_operands: list[str] = field(default_factory=list)  # what keeps the node in float, in words
    owned: list[QParams] = field(default_factory=list)  # quantized activations reported at this node

    @property
    def is_integer(self) -> bool:
        """True when every float operand sits behind a DequantizeLinear / in front of a QuantizeLinear."""
        return not self.float_operands


def check_device_rules(model: ModelProto, profile: HardwareProfile) -> DeviceRulesResult:
    """Re-audit a quantized model against `profile`: every applicable rule on every compute node, the per-op table
    of the quantized graph, and its parameter memory (bytes) on chip vs streamed."""
    graph = load_model(model)
    nodes = read_quantization(graph)
    scopes = rule_scopes(profile)
    violations = [
        RuleViolation(rule=scope.rule, node=q.node.name, op_type=q.node.op_type, detail=detail)
        for scope in scopes
        if scope.applies
        for q in nodes
        for detail in RULES[scope.rule].check(q, profile, graph)
    ]
    float_nodes = {q.node.name for q in nodes if not q.is_integer}
    joined = {name for name in float_nodes if _in_output_tail(name, graph)} if _application_joins(profile) else set()
    stripped = strip_qdq(graph, float_nodes)
    coverage = _device_view(analyse(stripped, profile), float_nodes, joined, profile)
    total = _parameter_bytes(stripped, coverage)
    cache = profile.memory.parameter_cache_bytes
    return DeviceRulesResult(
        target=profile.name,
        passed=not violations,
        violations=violations,
        rules=scopes,
        op_summary=coverage.op_summary,
        on_chip_param_bytes=total if cache is None else min(total, cache),
        streamed_param_bytes=0 if cache is None else max(0, total - cache),
        parameter_cache_bytes=cache,
        coverage=coverage,
    )


def rule_scopes(profile: HardwareProfile) -> list[RuleScope]:
    """Every rule with whether it applies to `profile` and the profile statement that decides it."""
    scopes = []
    for name, rule in RULES.items():
        applies, basis = rule.applies(profile)
        scopes.append(
            RuleScope(rule=name, applies=applies, basis=basis, requirement=rule.requirement, source=rule.source)
        )
    return scopes


# --- reading the QDQ graph ------------------------------------------------------------------------


def read_quantization(graph: ModelGraph) -> list[NodeQuantization]:
    """Every compute node but the Q/DQ themselves, in execution order, with the quantization of its operands.

    Each quantized activation is `owned` by the node that produces it (by its first consumer for a graph input), so
    tensor rules report it once.
    """
    producers = {out: info for info in graph.nodes() for out in info.outputs if out}
    consumers: dict[str, list[NodeInfo]] = {}
    for info in graph.nodes():
        for name in info.inputs:
            consumers.setdefault(name, []).append(info)
    graph_outputs = {t.name for t in graph.outputs}
    nodes = [
        _node_quantization(info, graph, producers, consumers, graph_outputs)
        for info in graph.compute_nodes()
        if info.op_type not in QDQ_OPS
    ]
    seen: set[str] = set()
    for q in nodes:
        for params in [*q.outputs.values(), *q.inputs.values()]:
            if params.tensor not in seen:
                seen.add(params.tensor)
                q.owned.append(params)
    return nodes


def _node_quantization(
    info: NodeInfo,
    graph: ModelGraph,
    producers: dict[str, NodeInfo],
    consumers: dict[str, list[NodeInfo]],
    graph_outputs: set[str],
) -> NodeQuantization:
    q = NodeQuantization(info)
    for index, name in enumerate(info.inputs):
        if not name:
            continue
        source = producers.get(name)
        params = read_qparams(source, graph) if source is not None and source.op_type == "DequantizeLinear" else None
        if name in graph.constants:
            if params is not None:
                q.constants[index] = params
            elif index == 1 and info.op_type in WEIGHT_OPS and _is_float(graph, name):
                q.float_operands.append(f"weight {name!r} is not quantized")
        elif params is not None:
            q.inputs[name] = params
        elif _is_float(graph, name):
            q.float_operands.append(f"input {name!r} is float, not fed by a DequantizeLinear")
    for name in info.outputs:
        if not name or not _is_float(graph, name):
            continue
        users = consumers.get(name, [])
        quantizers = [u for u in users if u.op_type == "QuantizeLinear"]
        params = read_qparams(quantizers[0], graph) if quantizers else None
        if params is not None and len(quantizers) == len(users) and name not in graph_outputs:
            q.outputs[name] = params
        else:
            q.float_operands.append(f"output {name!r} is float, not consumed by QuantizeLinear only")
    return q


def read_qparams(node: NodeInfo, graph: ModelGraph) -> QParams | None:
    """Scale, zero point, dtype and axis of a QuantizeLinear/DequantizeLinear; None when they are not constant."""
    scale = graph.constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    zero_point_name = node.inputs[2] if len(node.inputs) > 2 else ""
    zero_point = graph.constant_value(zero_point_name) if zero_point_name else None
    if scale is None or (zero_point_name and zero_point is None):
        return None
    integer = node.outputs[0] if node.op_type == "QuantizeLinear" else node.inputs[0]
    if zero_point is not None:
        dtype = str(zero_point.dtype)
    else:  # without a zero point the integer type is the tensor's (uint8 by default for a QuantizeLinear)
        info = graph.tensors.get(integer)
        dtype = info.dtype if info is not None else "uint8"
    values = graph.constant_value(integer) if integer in graph.constants else None
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    return QParams(
        tensor=integer,
        dtype=dtype,
        scale=scale,
        zero_point=np.zeros(1, np.int64) if zero_point is None else np.asarray(zero_point, np.int64).reshape(-1),
        axis=int(node.attributes.get("axis", 1)) if scale.size > 1 else None,  # type: ignore[call-overload]
        values=values,
    )


def _is_float(graph: ModelGraph, name: str) -> bool:
    info = graph.tensors.get(name)
    return info is not None and info.dtype in _FLOAT_DTYPES


# --- the rules ------------------------------------------------------------------------------------

RuleCheck = Callable[[NodeQuantization, HardwareProfile, ModelGraph], list[str]]
"""A rule's check on one node: the details of each violation (empty when the node obeys the rule)."""


def _check_integer_compute(q: NodeQuantization, profile: HardwareProfile, graph: ModelGraph) -> list[str]:
    if q.is_integer:
        return []
    off_device = profile.host is not None or _application_joins(profile)
    if off_device and q.node.op_type in OUTPUT_TAIL_OPS and _in_output_tail(q.node.name, graph):
        return []  # data movement after the last dequantize (an output join kept float), run off the device
    return ["; ".join(q.float_operands) + f" ({profile.name} computes on integers only)"]


def _application_joins(profile: HardwareProfile) -> bool:
    """A host-less .tflite returns an output joined in float as its int8 parts: the application joins them."""
    return profile.host is None and profile.format == "tflite"


def _in_output_tail(name: str, graph: ModelGraph) -> bool:
    model = graph.model
    return any(name == node.name for output in model.graph.output for node in output_tail(model, output.name))


def _check_activation_dtype(q: NodeQuantization, profile: HardwareProfile, graph: ModelGraph) -> list[str]:
    allowed = profile.quantization.activations.dtype
    return [
        f"activation {p.tensor!r} is {p.dtype}; {profile.name} activations must be {' or '.join(allowed)}"
        for p in q.owned
        if p.dtype not in allowed
    ]


def _check_activation_granularity(q: NodeQuantization, profile: HardwareProfile, graph: ModelGraph) -> list[str]:
    allowed = profile.quantization.activations.granularity
    return [
        f"activation {p.tensor!r} is {_granularity(p)}; {profile.name} allows {' or '.join(allowed)} activations"
        for p in q.owned
        if _granularity(p) not in allowed
    ]


def _check_activation_symmetric(q: NodeQuantization, profile: HardwareProfile, graph: ModelGraph) -> list[str]:
    return [
        f"activation {p.tensor!r} has zero point {_values_text(p.zero_point)}; symmetric {p.dtype} needs "
        f"{symmetric_zero_point(p.dtype)}"
        for p in q.owned
        if np.any(p.zero_point != symmetric_zero_point(p.dtype))
    ]


def _check_weight_dtype(q: NodeQuantization, profile: HardwareProfile, graph: ModelGraph) -> list[str]:
    rules = profile.quantization
    problems = []
    for index, p in q.constants.items():
        role = constant_role(q.node.op_type, index)
        if role == "bias":
            continue
        # A quantized constant operand (Add, Mul, ...) is an int8 tensor like an activation on TFLite-style devices.
        allowed = rules.weights.dtype if role == "weight" else sorted({*rules.weights.dtype, *rules.activations.dtype})
        if p.dtype not in allowed:
            problems.append(f"{role} {p.tensor!r} is {p.dtype}; {profile.name} takes {' or '.join(allowed)}")
    return problems


def _check_weight_symmetric(q: NodeQuantization, profile: HardwareProfile, graph: ModelGraph) -> list[str]:
    problems = []
    for index, p in q.constants.items():
        if constant_role(q.node.op_type, index) != "weight":
            continue
        expected = symmetric_zero_point(p.dtype)
        if np.any(p.zero_point != expected):
            problems.append(
                f"weight {p.tensor!r} has zero point {_values_text(p.zero_point)}; symmetric {p.dtype} weights need "
                f"{expected}"
            )
        if p.dtype == "int8" and p.values is not None and p.values.size and int(p.values.min()) < -127:
            problems.append(f"weight {p.tensor!r} uses -128; symmetric int8 weights lie in [-127, 127]")
    return problems


def _check_weight_granularity(q: NodeQuantization, profile: HardwareProfile, graph: ModelGraph) -> list[str]:
    allowed = profile.quantization.weights.granularity
    problems = []
    for index, p in q.constants.items():
        role = constant_role(q.node.op_type, index)
        if role == "bias" or (role == "constant" and not p.per_channel):
            continue
        if role == "constant":
            problems.append(
                f"constant {p.tensor!r} is per-channel (axis {p.axis}); per-channel scales are allowed only on the "
                f"weights of {', '.join(sorted(WEIGHT_OPS))}"
            )
        elif _granularity(p) not in allowed:
            problems.append(f"weight {p.tensor!r} is {_granularity(p)}; {profile.name} allows {' or '.join(allowed)}")
        elif p.per_channel and p.values is not None:
            expected = output_channel_axis(q.node, p.values.ndim)
            axis = (p.axis or 0) % max(p.values.ndim, 1)
            if axis != expected:
                problems.append(
                    f"weight {p.tensor!r} is per-channel along axis {axis}, not the output-channel axis {expected}"
                )
    return problems


def _check_bias(q: NodeQuantization, profile: HardwareProfile, graph: ModelGraph) -> list[str]:
    info = q.node
    if info.op_type not in BIAS_OPS or len(info.inputs) < 3 or not info.inputs[2]:
        return []
    x, w = q.inputs.get(info.inputs[0]), q.constants.get(1)
    if x is None or w is None or x.per_channel:
        return []  # not a quantized group: integer_compute / activation_granularity report it
    bias = q.constants.get(2)
    if bias is None:
        return [f"bias {info.inputs[2]!r} is not quantized; {profile.name} needs int32 (scale = input × weight scale)"]
    problems = []
    if bias.dtype != "int32":
        problems.append(f"bias {bias.tensor!r} is {bias.dtype}, not int32")
    if np.any(bias.zero_point != 0):
        problems.append(f"bias {bias.tensor!r} has zero point {_values_text(bias.zero_point)}, not 0")
    if bias.scale.size not in (1, w.scale.size) and w.scale.size != 1:
        return [*problems, f"bias {bias.tensor!r} has {bias.scale.size} scales for {w.scale.size} weight channels"]
    got, weight_scale = np.broadcast_arrays(bias.scale, w.scale)
    expected = x.scale[0] * weight_scale
    wrong = np.flatnonzero(~np.isclose(got, expected, rtol=_SCALE_RTOL, atol=0))
    if wrong.size:
        c = int(wrong[0])
        problems.append(
            f"bias {bias.tensor!r} scale {got[c]:.6g} (channel {c}, {wrong.size} of {got.size} wrong) != input scale "
            f"{x.scale[0]:.6g} × weight scale {weight_scale[c]:.6g} = {expected[c]:.6g}"
        )
    return problems


def _check_fixed_output(q: NodeQuantization, profile: HardwareProfile, graph: ModelGraph) -> list[str]:
    op = q.node.op_type
    fixed = profile.quantization.fixed_output_params.get(op)
    if fixed is None:
        return []
    problems = []
    for p in q.outputs.values():
        if p.dtype not in ("int8", "uint8"):
            continue  # the fixed parameters are stated for 8-bit tensors; activation_dtype judges the dtype
        zero_point = fixed.zero_point + (128 if p.dtype == "uint8" else 0)
        exact = p.scale.size == 1 and np.isclose(p.scale[0], fixed.scale, rtol=_SCALE_RTOL, atol=0)
        if not exact or int(p.zero_point[0]) != zero_point:
            problems.append(
                f"output {p.tensor!r} has {_params_text(p)}; {profile.name} fixes {op} outputs at scale "
                f"{_scale_text(fixed.scale)}, zero point {zero_point} ({p.dtype})"
            )
    return problems


def _check_same_scale(q: NodeQuantization, profile: HardwareProfile, graph: ModelGraph) -> list[str]:
    if q.node.op_type not in SAME_SCALE_OPS or not q.outputs:
        return []
    out = next(iter(q.outputs.values()))
    return [
        f"input {p.tensor!r} ({_params_text(p)}) and output {out.tensor!r} ({_params_text(out)}) differ; "
        f"{q.node.op_type} keeps one scale and zero point"
        for p in q.inputs.values()
        if not _same_params(p, out)
    ]


def _check_static_shapes(q: NodeQuantization, profile: HardwareProfile, graph: ModelGraph) -> list[str]:
    for name in _activation_names(q, graph):
        info = graph.tensors.get(name)
        if info is not None and not info.is_static:
            return [f"tensor {name!r} has shape {info.shape}; {profile.name} needs static shapes"]
    return []


def _check_rank(q: NodeQuantization, profile: HardwareProfile, graph: ModelGraph) -> list[str]:
    limit = profile.shapes.max_effective_rank
    assert limit is not None  # the rule applies only when the profile states a limit
    for name in _activation_names(q, graph):
        info = graph.tensors.get(name)
        if info is None:
            continue
        rank = effective_rank(info.shape)
        if rank > limit:
            return [f"tensor {name!r} {info.shape} has {rank} dimensions larger than 1; {profile.name} allows {limit}"]
    return []


@dataclass(frozen=True)
class Rule:
    """One device rule: what it requires, where that comes from, when it applies to a profile (with the profile
    statement that says so), and its check."""

    requirement: str
    source: str
    applies: Callable[[HardwareProfile], tuple[bool, str]]
    check: RuleCheck


def _yaml(value: object) -> str:
    """A profile value as its YAML file writes it."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


_TFLITE_SPEC = "tensorflow.org/lite/performance/quantization_spec"


def _same_scale_applies(profile: HardwareProfile) -> tuple[bool, str]:
    if not profile.quantization.rounding.startswith("tflite"):
        return False, f"quantization.rounding: {profile.quantization.rounding}"
    requantizes = "int8" in profile.ops.get("QuantizeLinear", {})
    if requantizes:
        # The exact tier and the TFLite writer insert that requantization too: the device runs it.
        return False, "ops.QuantizeLinear: int8 (QUANTIZE requantizes an input on another scale)"
    return True, f"quantization.rounding: {profile.quantization.rounding}; no int8 QuantizeLinear to requantize"


RULES: dict[str, Rule] = {
    "integer_compute": Rule(
        requirement="every compute node sits between Q/DQ or computes on integers only",
        source="edgetpu.md model requirements (fully 8-bit quantized); a float op runs on the host",
        applies=lambda p: (p.integer_only, f"integer_only: {_yaml(p.integer_only)}"),
        check=_check_integer_compute,
    ),
    "activation_dtype": Rule(
        requirement="activation Q/DQ in a dtype the device takes",
        source="the profile",
        applies=lambda p: (True, f"quantization.activations.dtype: {p.quantization.activations.dtype}"),
        check=_check_activation_dtype,
    ),
    "activation_granularity": Rule(
        requirement="activations quantized at a granularity the device takes (per tensor)",
        source=_TFLITE_SPEC,
        applies=lambda p: (True, f"quantization.activations.granularity: {p.quantization.activations.granularity}"),
        check=_check_activation_granularity,
    ),
    "activation_symmetric": Rule(
        requirement="activation zero point 0 (the middle of the range for unsigned types)",
        source="the profile",
        applies=lambda p: (
            p.quantization.activations.symmetric,
            f"quantization.activations.symmetric: {_yaml(p.quantization.activations.symmetric)}",
        ),
        check=_check_activation_symmetric,
    ),
    "weight_dtype": Rule(
        requirement="weights (and other quantized constants) in a dtype the device takes",
        source="the profile",
        applies=lambda p: (True, f"quantization.weights.dtype: {p.quantization.weights.dtype}"),
        check=_check_weight_dtype,
    ),
    "weight_symmetric": Rule(
        requirement="weight zero point 0 (the middle of the range for unsigned types); int8 weights in [-127, 127]",
        source=_TFLITE_SPEC,
        applies=lambda p: (
            p.quantization.weights.symmetric,
            f"quantization.weights.symmetric: {_yaml(p.quantization.weights.symmetric)}",
        ),
        check=_check_weight_symmetric,
    ),
    "weight_granularity": Rule(
        requirement="per-channel scales only on Conv/ConvTranspose/Gemm/MatMul weights, along the output-channel "
        "axis, and only when the profile lists per_channel",
        source=f"{_TFLITE_SPEC} (per-axis CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED weights)",
        applies=lambda p: (True, f"quantization.weights.granularity: {p.quantization.weights.granularity}"),
        check=_check_weight_granularity,
    ),
    "bias": Rule(
        requirement="Conv/ConvTranspose/Gemm bias int32, zero point 0, scale = input scale × weight scale per channel",
        source=f"{_TFLITE_SPEC}; int8-arithmetic.md",
        applies=lambda p: (p.quantization.bias == "int32", f"quantization.bias: {p.quantization.bias}"),
        check=_check_bias,
    ),
    "fixed_output": Rule(
        requirement="outputs of the listed ops at the fixed scale and zero point (zero point + 128 for uint8)",
        source=f"{_TFLITE_SPEC} (LOGISTIC, SOFTMAX, TANH)",
        applies=lambda p: (
            bool(p.quantization.fixed_output_params),
            f"quantization.fixed_output_params: {sorted(p.quantization.fixed_output_params) or 'none'}",
        ),
        check=_check_fixed_output,
    ),
    "same_scale": Rule(
        requirement=f"input and output share scale and zero point on {', '.join(sorted(SAME_SCALE_OPS))}",
        source=f"{_TFLITE_SPEC}; edgetpu.md numerics (applies to devices with TFLite integer arithmetic that "
        "cannot requantize: a converter puts a QUANTIZE int8 -> int8 before an input on another scale)",
        applies=_same_scale_applies,
        check=_check_same_scale,
    ),
    "static_shapes": Rule(
        requirement="every activation has a static shape",
        source="edgetpu.md model requirements (tensor sizes constant at compile time)",
        applies=lambda p: (p.shapes.static, f"shapes.static: {_yaml(p.shapes.static)}"),
        check=_check_static_shapes,
    ),
    "rank": Rule(
        requirement="at most max_effective_rank dimensions larger than 1 in any activation",
        source="edgetpu.md model requirements (1-3 D tensors, batch 1)",
        applies=lambda p: (
            p.shapes.max_effective_rank is not None,
            f"shapes.max_effective_rank: {_yaml(p.shapes.max_effective_rank)}",
        ),
        check=_check_rank,
    ),
}
"""The device rules by name, in report order."""


def constant_role(op_type: str, index: int) -> str:
    """What a constant input is to its node: `weight`, `bias`, or another `constant` operand."""
    if index == 1 and op_type in WEIGHT_OPS:
        return "weight"
    if index == 2 and op_type in BIAS_OPS:
        return "bias"
    return "constant"


def output_channel_axis(node: NodeInfo, rank: int) -> int:
    """The axis of a weight that indexes output channels: Conv 0, ConvTranspose 1, Gemm 1 (0 with transB), MatMul
    the last."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if node.attributes.get("transB") else 1
    return rank - 1


def symmetric_zero_point(dtype: str) -> int:
    """Zero point of symmetric quantization: 0 for signed types, the middle of the range for unsigned ones."""
    info = np.iinfo(np.dtype(dtype))
    return 0 if info.min < 0 else (int(info.max) + 1) // 2


def _granularity(p: QParams) -> str:
    return "per_channel" if p.per_channel else "per_tensor"


def _same_params(a: QParams, b: QParams) -> bool:
    return (
        a.dtype == b.dtype
        and a.scale.shape == b.scale.shape
        and bool(np.allclose(a.scale, b.scale, rtol=_SCALE_RTOL, atol=0))
        and bool(np.array_equal(a.zero_point, b.zero_point))
    )


def _activation_names(q: NodeQuantization, graph: ModelGraph) -> list[str]:
    """The node's activations, named as the device sees them: the integer tensor where Q/DQ wrap a float one."""
    quantized = {**q.inputs, **q.outputs}
    names = [n for n in (*q.node.inputs, *q.node.outputs) if n and n not in graph.constants]
    return [quantized[n].tensor if n in quantized else n for n in names]


def _values_text(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:.6g}" for v in values[:4])
    return shown if values.size == 1 else f"[{shown}{', ...' if values.size > 4 else ''}]"


def _scale_text(scale: float) -> str:
    inverse = 1.0 / scale
    return f"1/{round(inverse)}" if float(inverse).is_integer() else f"{scale:.6g}"


def _params_text(p: QParams) -> str:
    scale = _scale_text(float(p.scale[0])) if p.scale.size == 1 else _values_text(p.scale)
    return f"scale {scale}, zero point {_values_text(p.zero_point)}"


# --- the device's view: op table, partitioning, parameter memory ----------------------------------


def strip_qdq(graph: ModelGraph, float_nodes: set[str]) -> ModelGraph:
    """The quantized graph as the device compiler sees it: the Q/DQ around each compute node folded into it.

    Compute nodes read and write the integer tensors directly (weights become their int8 initializers, biases their
    int32 ones). A QuantizeLinear of a graph input and a DequantizeLinear producing a graph output stay: they are the
    boundary ops the device lists. Nodes in `float_nodes` move to `FLOAT_DOMAIN`. Node names are kept.
    """
    proto = ModelProto()
    proto.CopyFrom(graph.model)
    names = {tuple(info.outputs): info.name for info in graph.nodes()}
    graph_outputs = {t.name for t in graph.outputs}
    producers = {out: node for node in proto.graph.node for out in node.output if out}
    readers = Counter(name for node in proto.graph.node for name in node.input if name)
    rename: dict[str, str] = {}
    kept: list[NodeProto] = []
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] not in graph_outputs:
            rename[node.output[0]] = node.input[0]
        elif node.op_type == "QuantizeLinear" and _foldable_quantize(node, producers, readers, graph_outputs):
            rename[node.input[0]] = node.output[0]
        else:
            kept.append(node)
    for node in kept:
        node.name = names[tuple(node.output)]
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
        if node.name in float_nodes:
            node.domain = FLOAT_DOMAIN
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    if float_nodes:
        proto.opset_import.append(helper.make_opsetid(FLOAT_DOMAIN, 1))
    drop_unused_initializers(proto.graph)
    return build_graph(proto, graph.path)


def _foldable_quantize(
    node: NodeProto, producers: dict[str, NodeProto], readers: Counter[str], graph_outputs: set[str]
) -> bool:
    """A QuantizeLinear folds into the compute node it alone quantizes (not a graph input's, not a shared tensor)."""
    source = node.input[0]
    producer = producers.get(source)
    return (
        producer is not None
        and producer.op_type not in QDQ_OPS
        and readers[source] == 1
        and source not in graph_outputs
    )


def _device_view(
    report: CoverageReport, float_nodes: set[str], joined: set[str], profile: HardwareProfile
) -> CoverageReport:
    """Coverage in the compiler's words: a node left in float, or the Dequantize of a float output, is working on
    an unsupported data type (not an unknown op); a `joined` node is the application's join of the file's int8
    outputs. Only statuses of off-device nodes change: partitioning stands."""
    relabelled: dict[str, str] = {}
    nodes: list[NodeCoverage] = []
    for verdict in report.nodes:
        reason = _float_reason(verdict, float_nodes, joined, profile) if verdict.status == "unsupported_op" else None
        if reason is not None:
            verdict = verdict.model_copy(update={"status": "unsupported_dtype", "reason": reason})
            relabelled[verdict.name] = reason
        nodes.append(verdict)
    cut = report.first_cut
    if cut is not None and cut.node in relabelled:
        cut = cut.model_copy(update={"reason": relabelled[cut.node]})
    return report.model_copy(update={"nodes": nodes, "first_cut": cut, "op_summary": _op_summary(nodes, profile)})


def _float_reason(
    verdict: NodeCoverage, float_nodes: set[str], joined: set[str], profile: HardwareProfile
) -> str | None:
    if verdict.name in joined:
        return "joins the file's int8 outputs in float: the application does it (the .tflite returns the parts)"
    if verdict.name in float_nodes:
        return f"computes in float, not between Q/DQ: {profile.name} runs integer kernels only"
    if verdict.op_type == "DequantizeLinear":
        return "dequantizes to a float graph output: runs on the host"
    return None


def _op_summary(nodes: list[NodeCoverage], profile: HardwareProfile) -> list[OpSummary]:
    rows = Counter((v.op_type, STATUS_TEXT[v.status].format(device=profile.name)) for v in nodes)
    return [OpSummary(operator=op, count=count, status=status) for (op, status), count in sorted(rows.items())]


def _parameter_bytes(stripped: ModelGraph, coverage: CoverageReport) -> int:
    """Bytes of the constants on-device nodes read, as stored: int8 weights, int32 biases (float weights of nodes
    left in float); shape and index constants (int64) are not parameters. A constant shared by nodes counts once."""
    names = {w for v in coverage.nodes if v.on_device for w in stripped.node(v.name).weight_inputs}
    tensors = [stripped.tensors[n] for n in names if n in stripped.tensors]
    return sum((t.numel() or 0) * t.itemsize for t in tensors if t.dtype not in _INDEX_DTYPES)
