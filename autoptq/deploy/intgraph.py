"""QDQ model → device integer graph: the quantized model rewritten as the integer kernels a TFLite-style device runs.

Every DequantizeLinear → op → QuantizeLinear group the device computes in integers becomes nodes of the custom
domain `autoptq.device`, each carrying its integer parameters (zero points, per-channel int32 multipliers and shifts,
clamp bounds, rounding and accumulation modes) as attributes and initializers:

| device op | computes |
|---|---|
| `Quantize(x)` | real → integer at a float boundary (`rounding`: half_away as TFLite, half_even as onnxruntime) |
| `Dequantize(q)` | integer → real, as DequantizeLinear |
| `IntConv(x, w, b)` | 2-D convolution accumulator `Σ (x − zp_x)·w + b` (`accumulation`: int32 or int16_pairs) |
| `IntConvTranspose(x, w, b)` | 2-D transposed convolution accumulator (TFLite TRANSPOSE_CONV), int32 |
| `IntMatMul(a, b, bias)` | `(a − zp_a) @ (b − zp_b) + bias` (Gemm, MatMul with constant or activation weights) |
| `IntMul(a, b)` | `(a − zp_a)·(b − zp_b)` |
| `Requantize(acc, M, e)` | `clamp(requant(acc − input_zp) + zp, qmin, qmax)` per channel; also rescales tensors |
| `IntAdd(a, b)` | TFLite Add/Sub (20-bit headroom, common scale `2·max(s1, s2)`), or the onnxruntime float formula |
| `Lut(q, table)` | 256-entry activation table (Sigmoid, Tanh) |
| `IntAveragePool(q)` | TFLite integer AveragePool (raw sum, rounding division) |
| `IntMean(q)` | TFLite Mean / onnxruntime QLinearGlobalAveragePool (GlobalAveragePool, spatial ReduceMean) |

Ops that keep scale (MaxPool, Reshape, Concat, Slice, Pad, ...) stay standard ONNX ops running on the integers,
after a `Requantize` of any input whose scale or zero point differs from the output's. Relu/Clip fuse into the
producer's clamp. Anything else between DequantizeLinear and QuantizeLinear runs as dequantize → float op → quantize
(reported as approximate); ops the quantizer left in float stay float.

`autoptq.evaluate.emulators.lowering` turns this graph into standard ONNX ops for onnxruntime (the exact tier);
the tests run it as is with `onnx.reference.ReferenceEvaluator` and the numpy kernels of `autoptq.deploy.kernels`
(the golden reference). uint8 tensors are treated as the int8 tensors a TFLite converter writes (values and zero
point − 128): the arithmetic depends only on `q − zp` except AveragePool's raw sum, which uses the int8 values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper
from pydantic import BaseModel

from autoptq.deploy import kernels
from autoptq.deploy.kernels import Accumulation, Rounding
from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError

DEVICE_DOMAIN = "autoptq.device"
"""Domain of the device ops (version 1)."""

_EIGHT_BIT = (np.dtype(np.int8), np.dtype(np.uint8))
_MOVEMENT_DATA_INPUTS: dict[str, tuple[int, ...] | None] = {
    "Reshape": (0,),
    "Flatten": (0,),
    "Transpose": (0,),
    "Squeeze": (0,),
    "Unsqueeze": (0,),
    "Slice": (0,),
    "Pad": (0,),
    "Split": (0,),
    "Identity": (0,),
    "MaxPool": (0,),
    "DepthToSpace": (0,),
    "SpaceToDepth": (0,),
    "Resize": (0,),
    "Gather": (0,),
    "Expand": (0,),
    "Tile": (0,),
    "ReduceMax": (0,),
    "ReduceMin": (0,),
    "Concat": None,
    "Max": None,
    "Min": None,
}
"""Ops that only select, move or compare values (so run on integers of one scale): op → indices of the quantized
inputs (None: all inputs). The other inputs (shapes, axes, pads) pass through unchanged."""
MOVEMENT_OPS = frozenset(_MOVEMENT_DATA_INPUTS)
"""Ops that only move or select values: exact on integers of one scale (and in float)."""
_LOOKUP_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"Sigmoid": kernels.sigmoid, "Tanh": kernels.tanh}
_QUIET_FLOAT_OPS = frozenset({"Shape", "Size", "Constant", "ConstantOfShape", "Range", "Cast", *_MOVEMENT_DATA_INPUTS})
"""Float-path ops not worth a finding: shape arithmetic and data movement are exact in float too."""


class NodeFinding(BaseModel):
    """Something an emulator saw at one node: overflow, underflow, saturation, a kernel that did not run integer."""

    node: str
    kind: str
    detail: str
    count: int = 0


class EmulationError(AutoptqError):
    """The exact tier cannot emulate a node of this model (the message names it)."""


@dataclass(frozen=True)
class QParams:
    """Per-tensor quantization of an activation: real = scale · (q − zero_point), stored as `dtype`."""

    scale: float
    zero_point: int
    dtype: np.dtype

    @property
    def elem_type(self) -> int:
        return helper.np_dtype_to_tensor_dtype(self.dtype)

    @property
    def bounds(self) -> tuple[int, int]:
        return kernels.integer_range(self.dtype)


@dataclass(frozen=True)
class _ConstQ:
    """A quantized constant (weights, bias): integer values with per-tensor or per-axis parameters."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1

    def along(self, axis_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Scales (float32) and zero points (int64) as 1-D arrays of `axis_len` entries."""
        return (
            np.broadcast_to(self.scale.reshape(-1), (axis_len,)).astype(np.float32),
            np.broadcast_to(self.zero_point.reshape(-1), (axis_len,)).astype(np.int64),
        )


@dataclass(frozen=True)
class _Consumer:
    """Where a node's float output gets quantized: the QuantizeLinear, its parameters, and a fused Relu/Clip."""

    quantize: NodeProto
    params: QParams
    activation: NodeProto | None

    @property
    def target(self) -> str:
        return self.quantize.output[0]


@dataclass
class DeviceGraph:
    """A device integer graph and what was learnt building it."""

    model: ModelProto
    rounding: Rounding
    findings: list[NodeFinding] = field(default_factory=list)
    exact_ops: set[str] = field(default_factory=set)
    saturating_nodes: list[str] = field(default_factory=list)
    params: dict[str, QParams] = field(default_factory=dict)
    """Quantization of each integer activation (and per-tensor constant operand), for writers of device files."""
    weight_scales: dict[str, np.ndarray] = field(default_factory=dict)
    """Float32 scales of each IntConv / IntMatMul weight initializer (one per channel, or one per tensor)."""
    functions: dict[str, str] = field(default_factory=dict)
    """Lut node name → the ONNX function its table holds (Sigmoid, Tanh)."""

    @property
    def approximate_nodes(self) -> list[str]:
        return [f.node for f in self.findings if f.kind == "approximate"]


def build_device_graph(model: ModelProto, profile: HardwareProfile) -> DeviceGraph:
    """Rewrite a QDQ model into the integer arithmetic of `profile` (see the module docstring).

    Raises EmulationError for what cannot be emulated at all (16-bit activations, per-channel activation
    quantization, a profile without integer requantization)."""
    rounding = profile.quantization.rounding
    if rounding == "fp16_storage":
        raise EmulationError(f"profile {profile.name!r} computes in fp16: use the fp16 emulator, not the integer one")
    operator_format = sorted({n.op_type for n in model.graph.node if n.op_type.startswith("QLinear")})
    if operator_format:
        # QOperator models name onnxruntime's own integer kernels: the fast tier runs exactly those.
        raise EmulationError(
            f"exact tier: the model is in onnxruntime's QOperator format ({', '.join(operator_format)}); the exact "
            "tier rewrites QDQ models"
        )
    pairs = profile.quantization.int8_dot_product == "int16_pair_saturating"
    return _Builder(model, rounding, pairs).build()


class NodeAttributes:
    """A node's attributes with typed access: `integer("group", 1)`; strings decoded; a missing attribute without a
    default is a KeyError."""

    def __init__(self, node: NodeProto) -> None:
        self.values = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def _get(self, name: str, default: object) -> Any:
        if name in self.values:
            return self.values[name]
        if default is None:
            raise KeyError(name)
        return default

    def integer(self, name: str, default: int | None = None) -> int:
        return int(self._get(name, default))

    def integers(self, name: str, default: Sequence[int] | None = None) -> list[int]:
        return [int(v) for v in self._get(name, default)]

    def real(self, name: str, default: float | None = None) -> float:
        return float(self._get(name, default))

    def reals(self, name: str) -> list[float]:
        return [float(v) for v in self._get(name, None)]

    def text(self, name: str, default: str | None = None) -> str:
        value = self._get(name, default)
        return value.decode() if isinstance(value, bytes) else str(value)


def _constant_array(node: NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
    return None


def _shape_of(value: onnx.ValueInfoProto) -> list[int | str | None] | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]


def _float32_ratio(numerator: float | np.ndarray, denominator: float) -> np.ndarray:
    """`float32(a) / float32(b)` as onnxruntime computes its scale ratios."""
    return (np.asarray(numerator, dtype=np.float32) / np.float32(denominator)).astype(np.float32)


class _Builder:
    """One pass over the QDQ graph in order, emitting device nodes (state: what each tensor has become)."""

    def __init__(self, model: ModelProto, rounding: Rounding, pairs: bool) -> None:
        try:
            self.source = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # shapes help (rank of pooled tensors, auto_pad) but are not required
            self.source = model
        self.rounding: Rounding = rounding
        self.pairs = pairs
        graph = self.source.graph
        self.constants: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            value = _constant_array(node) if node.op_type == "Constant" else None
            if value is not None:
                self.constants[node.output[0]] = value
        self.consumers: dict[str, list[NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {o.name for o in graph.output}
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list[int | str | None] | None] = {}
        for value in (*graph.input, *graph.value_info, *graph.output):
            self.types[value.name] = value.type.tensor_type.elem_type
            self.shapes[value.name] = _shape_of(value)
        self.nodes: list[NodeProto] = []
        self.initializers: dict[str, TensorProto] = {}
        self.declared: dict[str, tuple[int, list[int | str | None] | None]] = {}
        self.views: dict[str, tuple[str, QParams]] = {}
        self.const_q: dict[str, _ConstQ] = {}
        self.float_ready: set[str] = {i.name for i in graph.input}
        self.absorbed: set[int] = set()
        self.result = DeviceGraph(model=ModelProto(), rounding=rounding)
        self._count = 0

    # --- bookkeeping -------------------------------------------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__{self._count}"

    def const(self, array: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers[name] = numpy_helper.from_array(np.asarray(array), name)
        return name

    def declare(self, name: str, elem_type: int, like: str | None = None, params: QParams | None = None) -> None:
        """Record a device tensor's type, its shape (that of `like` in the QDQ graph, default itself) and the
        quantization `params` of an integer activation."""
        self.declared[name] = (elem_type, self.shapes.get(like or name))
        if params is not None:
            self.result.params[name] = params

    def emit(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str, **attrs: object) -> str:
        node = helper.make_node(op_type, list(inputs), list(outputs), name=self.fresh(name), **attrs)
        node.domain = DEVICE_DOMAIN
        self.nodes.append(node)
        return node.name

    def finding(self, node: NodeProto, kind: str, detail: str) -> None:
        self.result.findings.append(NodeFinding(node=node.name or node.op_type, kind=kind, detail=detail))

    def absorb(self, *nodes: NodeProto | None) -> None:
        self.absorbed.update(id(n) for n in nodes if n is not None)

    # --- reading QDQ -------------------------------------------------------------------------------------------------

    def qparams(self, node: NodeProto) -> QParams | None:
        """Per-tensor parameters of a QuantizeLinear / DequantizeLinear (None if per-axis or not constant)."""
        scale = self.constants.get(node.input[1])
        if scale is None or scale.size != 1:
            return None
        if len(node.input) > 2 and node.input[2]:
            zero_point = self.constants.get(node.input[2])
            if zero_point is None or zero_point.size != 1:
                return None
        else:
            zero_point = np.zeros((), np.uint8)
        return QParams(float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0]), zero_point.dtype)

    @staticmethod
    def require_8bit(params: QParams, node: NodeProto) -> QParams:
        if params.dtype not in _EIGHT_BIT:
            raise EmulationError(
                f"exact tier: node {node.name or node.op_type!r} quantizes to {params.dtype}; only 8-bit "
                "activations are emulated exactly (use tier='fast')"
            )
        return params

    def operand_params(self, name: str) -> QParams | None:
        """Parameters of a quantized input usable as an integer operand: an activation or a per-tensor constant."""
        if name in self.views:
            return self.views[name][1]
        constant = self.const_q.get(name)
        if constant is None or not constant.per_tensor:
            return None
        scale, zero_point = constant.along(1)
        return QParams(float(scale[0]), int(zero_point[0]), constant.values.dtype)

    def operand_tensor(self, name: str) -> str:
        """The integer tensor of an operand accepted by `operand_params` (a constant becomes an initializer)."""
        if name in self.views:
            return self.views[name][0]
        constant = self.const(self.const_q[name].values, name)
        params = self.operand_params(name)
        if params is not None:
            self.result.params[constant] = params
        return constant

    def quantize_consumer(self, output: str, fuse: bool) -> _Consumer | None:
        """The single per-tensor QuantizeLinear fed by `output` (through a Relu/Clip with constant bounds when
        `fuse`)."""
        users = self.consumers.get(output, [])
        if output in self.graph_outputs or len(users) != 1:
            return None
        user = users[0]
        params = self.qparams(user) if user.op_type == "QuantizeLinear" else None
        if params is not None:
            return _Consumer(user, self.require_8bit(params, user), None)
        if fuse and user.op_type in ("Relu", "Clip") and self.clip_range(user) is not None:
            follow = self.quantize_consumer(user.output[0], fuse=False)
            if follow is not None:
                return _Consumer(follow.quantize, follow.params, user)
        return None

    def clip_range(self, node: NodeProto) -> tuple[float, float] | None:
        """Real bounds of a Relu/Clip (None when they are not constant)."""
        if node.op_type == "Relu":
            return 0.0, math.inf
        attrs = NodeAttributes(node)
        bounds = [attrs.real("min", -math.inf), attrs.real("max", math.inf)]
        for index in (1, 2):
            if len(node.input) > index and node.input[index]:
                value = self.constants.get(node.input[index])
                if value is None:
                    return None
                bounds[index - 1] = float(value.reshape(-1)[0])
        return bounds[0], bounds[1]

    def clamp(self, out: QParams, activation: NodeProto | None) -> tuple[int, int]:
        """Integer output bounds: the dtype's range narrowed by a Relu/Clip as TFLite computes an activation range,
        `zp + round_half_away(float32(v) / float32(s))`."""
        low, high = out.bounds
        real = self.clip_range(activation) if activation is not None else None
        if real is None:
            return low, high

        def quantized(value: float) -> int:
            scaled = np.float32(value) / np.float32(out.scale)
            return out.zero_point + int(kernels.round_half_away(np.asarray(scaled)))

        if math.isfinite(real[0]):
            low = max(low, quantized(real[0]))
        if math.isfinite(real[1]):
            high = min(high, quantized(real[1]))
        return low, max(low, high)

    # --- emission helpers --------------------------------------------------------------------------------------------

    def requantize(
        self,
        source: str,
        target: str,
        reals: np.ndarray,
        floats: np.ndarray,
        out: QParams,
        bounds: tuple[int, int],
        hint: str,
        input_zero_point: int = 0,
        channel_shape: tuple[int, ...] = (),
    ) -> None:
        """Emit Requantize with per-channel multipliers: `reals` (double) for the TFLite encoding, `floats`
        (float32) for onnxruntime's; `channel_shape` makes them broadcast against the accumulator."""
        if self.rounding == "float_rne":
            multiplier = self.const(floats.astype(np.float32).reshape(channel_shape), f"{hint}/multiplier")
            inputs = [source, multiplier]
        else:
            multipliers, shifts = kernels.quantize_multipliers(reals, self.rounding)
            inputs = [
                source,
                self.const(multipliers.reshape(channel_shape), f"{hint}/multiplier"),
                self.const(shifts.reshape(channel_shape), f"{hint}/shift"),
            ]
        self.emit(
            "Requantize",
            inputs,
            [target],
            f"{hint}/requantize",
            rounding=self.rounding,
            input_zero_point=input_zero_point,
            zero_point=out.zero_point,
            qmin=bounds[0],
            qmax=bounds[1],
            to=out.elem_type,
        )
        self.declare(target, out.elem_type, params=out)

    def rescale(self, source: str, params: QParams, out: QParams, hint: str, target: str | None = None) -> str:
        """`source` in `out`'s parameters: itself (or an Identity to `target`) when they match, else a
        Requantize by `s_in / s_out` (TFLite's int8 → int8 QUANTIZE)."""
        if params == out and target is None:
            return source
        if params == out:
            self.nodes.append(helper.make_node("Identity", [source], [target], name=self.fresh(f"{hint}/identity")))
            self.declare(target, out.elem_type, like=source, params=out)
            return target
        target = target or self.fresh(f"{hint}/rescaled")
        real = np.array([np.float64(params.scale) / np.float64(out.scale)])
        floats = _float32_ratio(params.scale, out.scale).reshape(1)
        self.requantize(source, target, real, floats, out, out.bounds, hint, input_zero_point=params.zero_point)
        self.declared[target] = (out.elem_type, self.shapes.get(source))
        return target

    def float_input(self, name: str) -> str:
        """The float tensor `name` in the device graph, materializing a dequantized view or a constant."""
        if not name or name in self.float_ready:
            return name
        if name in self.views:
            source, params = self.views[name]
            self.emit(
                "Dequantize", [source], [name], f"{name}/dequantize", scale=params.scale, zero_point=params.zero_point
            )
            self.declare(name, TensorProto.FLOAT)
        elif name in self.const_q:
            constant = self.const_q[name]
            shape = [1] * constant.values.ndim
            if not constant.per_tensor:
                shape[constant.axis] = -1
            centred = constant.values.astype(np.int64) - constant.zero_point.reshape(shape)
            real = centred.astype(np.float32) * constant.scale.reshape(shape)
            self.initializers[name] = numpy_helper.from_array(real.astype(np.float32), name)
        elif name in self.constants:
            self.initializers[name] = numpy_helper.from_array(self.constants[name], name)
        self.float_ready.add(name)
        return name

    # --- the pass ----------------------------------------------------------------------------------------------------

    def build(self) -> DeviceGraph:
        for node in self.source.graph.node:
            if id(node) in self.absorbed or node.op_type == "Constant":
                continue
            standard = node.domain in ("", "ai.onnx")
            if standard and node.op_type == "DequantizeLinear":
                self.dequantize_linear(node)
            elif standard and node.op_type == "QuantizeLinear":
                self.quantize_linear(node)
            else:
                self.compute(node, standard)
        for value in self.source.graph.output:
            self.float_input(value.name)
        return self.finish()

    def dequantize_linear(self, node: NodeProto) -> None:
        source, output = node.input[0], node.output[0]
        if source in self.constants:
            values = self.constants[source]
            scale = self.constants[node.input[1]].astype(np.float32)
            has_zero_point = len(node.input) > 2 and node.input[2]
            zero_point = self.constants[node.input[2]] if has_zero_point else np.zeros(scale.shape, np.int64)
            axis = NodeAttributes(node).integer("axis", 1) % max(values.ndim, 1)
            self.const_q[output] = _ConstQ(values, scale, zero_point.astype(np.int64), axis)
            return
        params = self.qparams(node)
        if params is None:
            raise EmulationError(f"exact tier: DequantizeLinear {node.name!r} of an activation is not per-tensor")
        self.views[output] = (source, self.require_8bit(params, node))
        self.result.params.setdefault(source, params)

    def quantize_linear(self, node: NodeProto) -> None:
        params = self.qparams(node)
        if params is None:
            raise EmulationError(f"exact tier: QuantizeLinear {node.name!r} of an activation is not per-tensor")
        params = self.require_8bit(params, node)
        source, target = node.input[0], node.output[0]
        if source in self.views:  # a quantized tensor requantized to other parameters
            self.rescale(*self.views[source], params, node.name or "requantize", target=target)
            return
        rounding = "half_even" if self.rounding == "float_rne" else "half_away"
        self.emit(
            "Quantize",
            [self.float_input(source)],
            [target],
            f"{node.name}/quantize",
            scale=params.scale,
            zero_point=params.zero_point,
            to=params.elem_type,
            rounding=rounding,
        )
        self.declare(target, params.elem_type, params=params)

    def compute(self, node: NodeProto, standard: bool) -> None:
        handler = _HANDLERS.get(node.op_type) if standard else None
        if standard and node.op_type in _MOVEMENT_DATA_INPUTS:
            handler = _Builder.movement
        reason = handler(self, node) if handler is not None else "no integer kernel is emulated for this op"
        if reason is None:
            self.result.exact_ops.add(node.op_type)
        else:
            self.float_node(node, reason)

    def float_node(self, node: NodeProto, reason: str) -> None:
        quantized_in = any(name in self.views for name in node.input)
        quantized_out = any(u.op_type == "QuantizeLinear" for o in node.output for u in self.consumers.get(o, []))
        copy = NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [self.float_input(name) for name in node.input]
        self.nodes.append(copy)
        for out in node.output:
            if out:
                self.float_ready.add(out)
                self.declare(out, self.types.get(out, TensorProto.UNDEFINED))
        if quantized_in and quantized_out:
            detail = (
                f"{node.op_type} runs in float32 between dequantize and quantize ({reason}); typically within "
                "1 LSB of the device's integer kernel"
            )
            self.finding(node, "approximate", detail)
        elif node.op_type not in _QUIET_FLOAT_OPS:
            self.finding(node, "float_op", f"{node.op_type} left in float32 by the quantizer; emulated in float32")

    # --- handlers: each returns None once it emitted the node, else why the node stays in float ---------------------

    def conv(self, node: NodeProto) -> str | None:
        consumer = self.quantize_consumer(node.output[0], fuse=True)
        x = self.views.get(node.input[0])
        weights = self.const_q.get(node.input[1])
        if consumer is None or x is None or weights is None:
            return "its input, weights or output are not quantized"
        if weights.values.ndim != 4:
            return "only 2-D convolutions are emulated"
        if not weights.per_tensor and weights.axis != 0:
            return "its weights are quantized along an axis other than the output channels"
        attrs = NodeAttributes(node)
        strides = attrs.integers("strides", [1, 1])
        dilations = attrs.integers("dilations", [1, 1])
        pads = self.explicit_pads(attrs, node.input[0], weights.values.shape[2:], strides, dilations)
        if pads is None:
            return "auto_pad needs a static input shape"
        x_name, x_params = x
        out_channels = weights.values.shape[0]
        w_scale, w_zero = weights.along(out_channels)
        w = weights.values.astype(np.int64) - w_zero.reshape(-1, 1, 1, 1)
        bias = self.bias(node, 2, x_params.scale, w_scale)
        acc = self.fresh(f"{node.name}/acc")
        w_name = self.const(_narrow(w), f"{node.name}/w")
        self.result.weight_scales[w_name] = weights.scale.reshape(-1).astype(np.float32)
        self.emit(
            "IntConv",
            [x_name, w_name, *bias],
            [acc],
            node.name,
            x_zero_point=x_params.zero_point,
            group=attrs.integer("group", 1),
            strides=strides,
            pads=pads,
            dilations=dilations,
            accumulation=self.accumulation(x_params, weights.values, weights.zero_point, node),
        )
        self.declare(acc, TensorProto.INT32, like=consumer.target)
        self.requantize_product(acc, consumer, x_params.scale, w_scale, node.name, (-1, 1, 1))
        return None

    def conv_transpose(self, node: NodeProto) -> str | None:
        """TFLite's int8 TRANSPOSE_CONV (reference_integer_ops::TransposeConv): int32 accumulation of
        `(x − zp)·w` scattered over the output, int32 bias at `s_in · s_w[o]`, per-output-channel requantization as
        CONV_2D. onnxruntime has no integer kernel for it and runs it in float between dequantize and quantize."""
        if self.rounding == "float_rne":
            return "the runtime computes it in float between dequantize and quantize"
        consumer = self.quantize_consumer(node.output[0], fuse=True)
        x = self.views.get(node.input[0])
        weights = self.const_q.get(node.input[1])
        if consumer is None or x is None or weights is None:
            return "its input, weights or output are not quantized"
        attrs = NodeAttributes(node)
        if weights.values.ndim != 4 or attrs.integer("group", 1) != 1:
            return "only ungrouped 2-D transposed convolutions are emulated"
        if not weights.per_tensor and weights.axis != 1:
            return "its weights are quantized along an axis other than the output channels (1)"
        if attrs.text("auto_pad", "NOTSET") not in ("NOTSET", "") or "output_shape" in attrs.values:
            return "only explicit pads are emulated (no auto_pad, no output_shape)"
        x_name, x_params = x
        out_channels = weights.values.shape[1]
        w_scale, w_zero = weights.along(out_channels)
        w = weights.values.astype(np.int64) - w_zero.reshape(1, -1, 1, 1)
        bias = self.bias(node, 2, x_params.scale, w_scale)
        acc = self.fresh(f"{node.name}/acc")
        w_name = self.const(_narrow(w), f"{node.name}/w")
        self.result.weight_scales[w_name] = weights.scale.reshape(-1).astype(np.float32)
        self.emit(
            "IntConvTranspose",
            [x_name, w_name, *bias],
            [acc],
            node.name,
            x_zero_point=x_params.zero_point,
            strides=attrs.integers("strides", [1, 1]),
            pads=attrs.integers("pads", [0, 0, 0, 0]),
            output_padding=attrs.integers("output_padding", [0, 0]),
            dilations=attrs.integers("dilations", [1, 1]),
        )
        self.declare(acc, TensorProto.INT32, like=consumer.target)
        self.requantize_product(acc, consumer, x_params.scale, w_scale, node.name, (-1, 1, 1))
        return None

    def gemm(self, node: NodeProto) -> str | None:
        attrs = NodeAttributes(node)
        if attrs.integer("transA", 0) or attrs.real("alpha", 1.0) != 1.0 or attrs.real("beta", 1.0) != 1.0:
            return "Gemm with transA, alpha or beta is not emulated"
        return self.matmul_like(node, transpose=bool(attrs.integer("transB", 0)), bias_index=2)

    def matmul(self, node: NodeProto) -> str | None:
        return self.matmul_like(node, transpose=False, bias_index=None)

    def matmul_like(self, node: NodeProto, transpose: bool, bias_index: int | None) -> str | None:
        consumer = self.quantize_consumer(node.output[0], fuse=True)
        a = self.views.get(node.input[0])
        weights = self.const_q.get(node.input[1])
        b = self.views.get(node.input[1])
        if consumer is None or a is None or (weights is None and b is None):
            return "its inputs or output are not quantized"
        a_name, a_params = a
        acc = self.fresh(f"{node.name}/acc")
        if weights is not None:
            n_axis = 0 if transpose else 1
            if weights.values.ndim != 2:
                return "only 2-D constant weights are emulated"
            if not weights.per_tensor and weights.axis != n_axis:
                return "its weights are quantized along the reduction axis"
            w_scale, w_zero = weights.along(weights.values.shape[n_axis])
            w_raw = weights.values.T if transpose else weights.values
            w = w_raw.astype(np.int64) - w_zero.reshape(1, -1)
            bias = self.bias(node, bias_index, a_params.scale, w_scale)
            w_name = self.const(_narrow(w), f"{node.name}/w")
            self.result.weight_scales[w_name] = weights.scale.reshape(-1).astype(np.float32)
            self.emit(
                "IntMatMul",
                [a_name, w_name, *bias],
                [acc],
                node.name,
                a_zero_point=a_params.zero_point,
                b_zero_point=0,
                accumulation=self.accumulation(a_params, w_raw, weights.zero_point, node),
            )
            channel_shape: tuple[int, ...] = (-1,)
        else:
            assert b is not None
            if transpose or (bias_index is not None and len(node.input) > bias_index and node.input[bias_index]):
                return "a Gemm of two activations is not emulated"
            b_name, b_params = b
            w_scale = np.array([b_params.scale], np.float32)
            self.emit(
                "IntMatMul",
                [a_name, b_name],
                [acc],
                node.name,
                a_zero_point=a_params.zero_point,
                b_zero_point=b_params.zero_point,
                accumulation="int32",
            )
            channel_shape = ()
        self.declare(acc, TensorProto.INT32, like=consumer.target)
        self.requantize_product(acc, consumer, a_params.scale, w_scale, node.name, channel_shape)
        return None

    def requantize_product(
        self,
        acc: str,
        consumer: _Consumer,
        input_scale: float,
        w_scale: np.ndarray,
        hint: str,
        channel_shape: tuple[int, ...],
    ) -> None:
        """Requantize an accumulator of `s_in · s_w[c]` to the consumer's parameters: TFLite's multiplier in double,
        onnxruntime's in float32 (`s_in · s_w / s_out`, left to right)."""
        out = consumer.params
        reals = np.float64(input_scale) * w_scale.astype(np.float64) / np.float64(out.scale)
        floats = _float32_ratio(np.float32(input_scale) * w_scale.astype(np.float32), out.scale)
        bounds = self.clamp(out, consumer.activation)
        self.requantize(acc, consumer.target, reals, floats, out, bounds, hint, channel_shape=channel_shape)
        self.absorb(consumer.quantize, consumer.activation)

    def add(self, node: NodeProto) -> str | None:
        consumer = self.quantize_consumer(node.output[0], fuse=True)
        a_params, b_params = self.operand_params(node.input[0]), self.operand_params(node.input[1])
        if consumer is None or a_params is None or b_params is None:
            return "its inputs or output are not quantized"
        operands = [(self.operand_tensor(n), p) for n, p in zip(node.input[:2], (a_params, b_params), strict=True)]
        bounds = self.clamp(consumer.params, consumer.activation)
        self.int_add(operands, consumer.target, consumer.params, bounds, node.name, node.op_type == "Sub")
        self.absorb(consumer.quantize, consumer.activation)
        return None

    def int_add(
        self,
        operands: list[tuple[str, QParams]],
        target: str,
        out: QParams,
        bounds: tuple[int, int],
        hint: str,
        subtract: bool = False,
    ) -> None:
        """Emit TFLite's int8 ADD / SUB of two integer tensors into `target` (declared with `out`)."""
        (a_tensor, a_params), (b_tensor, b_params) = operands
        twice_max = 2 * max(np.float64(a_params.scale), np.float64(b_params.scale))
        reals = [
            a_params.scale / twice_max,
            b_params.scale / twice_max,
            twice_max / ((1 << kernels.ADD_LEFT_SHIFT) * np.float64(out.scale)),
        ]
        encoded = [kernels.quantize_multiplier(float(r), self.rounding) for r in reals]
        low, high = bounds
        self.emit(
            "IntAdd",
            [a_tensor, b_tensor],
            [target],
            hint,
            rounding=self.rounding,
            a_zero_point=a_params.zero_point,
            b_zero_point=b_params.zero_point,
            zero_point=out.zero_point,
            qmin=low,
            qmax=high,
            to=out.elem_type,
            subtract=int(subtract),
            multipliers=[m for m, _ in encoded],
            shifts=[e for _, e in encoded],
            scale_ratios=[float(_float32_ratio(p.scale, out.scale)) for p in (a_params, b_params)],
        )
        self.declare(target, out.elem_type, params=out)

    def mul(self, node: NodeProto) -> str | None:
        consumer = self.quantize_consumer(node.output[0], fuse=True)
        a_params, b_params = self.operand_params(node.input[0]), self.operand_params(node.input[1])
        if consumer is None or a_params is None or b_params is None:
            return "its inputs or output are not quantized"
        acc = self.fresh(f"{node.name}/acc")
        self.emit(
            "IntMul",
            [self.operand_tensor(node.input[0]), self.operand_tensor(node.input[1])],
            [acc],
            node.name,
            a_zero_point=a_params.zero_point,
            b_zero_point=b_params.zero_point,
        )
        self.declare(acc, TensorProto.INT32, like=consumer.target)
        self.requantize_product(acc, consumer, a_params.scale, np.array([b_params.scale], np.float32), node.name, ())
        return None

    def affine(self, node: NodeProto) -> str | None:
        """HardSigmoid, or Div by one positive constant, as the int8 ops a TFLite converter writes (there is no
        HARD_SIGMOID builtin and no int8 DIV): MUL by a constant 127 at scale v/127 (the input rescaled by v), ADD
        beta with RELU, MINIMUM 1 when the output range goes past 1. Under other arithmetic the runtime computes the
        float op between dequantize and quantize, which is what the float path emulates."""
        if self.rounding != "tflite_double":
            return "the runtime computes it in float between dequantize and quantize"
        consumer = self.quantize_consumer(node.output[0], fuse=False)
        x = self.views.get(node.input[0])
        if consumer is None or x is None:
            return "its input or output is not quantized"
        if node.op_type == "Div":
            divisor = self.real_constant(node.input[1])
            if divisor is None or divisor.size != 1 or float(divisor.reshape(-1)[0]) <= 0:
                return "only a division by one positive constant has an int8 form (MUL)"
            factor, offset = 1.0 / float(divisor.reshape(-1)[0]), 0.0
        else:
            attrs = NodeAttributes(node)
            factor, offset = attrs.real("alpha", 0.2), attrs.real("beta", 0.5)
            if factor <= 0 or offset <= 0:
                return "only HardSigmoid with positive alpha and beta has an int8 form"
        (source, params), out = x, consumer.params
        scaled = QParams(float(np.float32(params.scale * factor)), params.zero_point, params.dtype)
        product = consumer.target if node.op_type == "Div" else self.fresh(f"{node.name}/scaled")
        self.rescale_by_constant(source, params, factor, product, out if node.op_type == "Div" else scaled, node)
        if node.op_type == "HardSigmoid":
            beta = self.int8_constant(127, offset / 127, f"{node.name}/beta")
            top = out.scale * (out.bounds[1] - out.zero_point)
            one = out.zero_point + int(kernels.round_half_away(np.asarray(1.0 / out.scale)))
            summed = consumer.target if top <= 1.0 + out.scale / 2 else self.fresh(f"{node.name}/sum")
            bounds = (max(out.bounds[0], out.zero_point), out.bounds[1])  # the fused RELU
            self.int_add([(product, scaled), beta], summed, out, bounds, node.name)
            self.declared[summed] = (out.elem_type, self.shapes.get(node.output[0]))
            if summed != consumer.target:
                limit = self.const(np.array([one], out.dtype), f"{node.name}/one")
                self.result.params[limit] = out
                self.nodes.append(
                    helper.make_node("Min", [summed, limit], [consumer.target], name=self.fresh(f"{node.name}/min"))
                )
                self.declare(consumer.target, out.elem_type, params=out)
        self.absorb(consumer.quantize)
        return None

    def real_constant(self, name: str) -> np.ndarray | None:
        """The real values of a constant input, float or quantized (as the float path materializes them)."""
        if name in self.const_q:
            constant = self.const_q[name]
            if not constant.per_tensor:
                return None
            centred = constant.values.astype(np.int64) - constant.zero_point.reshape(-1)[0]
            return centred.astype(np.float32) * constant.scale.reshape(-1)[0].astype(np.float32)
        return self.constants.get(name)

    def int8_constant(self, value: int, scale: float, hint: str) -> tuple[str, QParams]:
        """A one-element int8 constant operand and its parameters (zero point 0)."""
        params = QParams(float(np.float32(scale)), 0, np.dtype(np.int8))
        name = self.const(np.array([value], np.int8), hint)
        self.result.params[name] = params
        return name, params

    def rescale_by_constant(
        self, source: str, params: QParams, factor: float, target: str, out: QParams, node: NodeProto
    ) -> None:
        """`source` times `factor` into `target`, as MUL by the constant 127 at scale factor/127."""
        constant, c_params = self.int8_constant(127, factor / 127, f"{node.name}/factor")
        acc = self.fresh(f"{node.name}/acc")
        self.emit("IntMul", [source, constant], [acc], node.name, a_zero_point=params.zero_point, b_zero_point=0)
        self.declared[acc] = (TensorProto.INT32, self.shapes.get(node.output[0]))
        reals = np.array([np.float64(params.scale) * np.float64(c_params.scale) / np.float64(out.scale)])
        floats = _float32_ratio(np.float32(params.scale) * np.float32(c_params.scale), out.scale).reshape(1)
        self.requantize(acc, target, reals, floats, out, out.bounds, node.name)
        self.declared[target] = (out.elem_type, self.shapes.get(node.output[0]))

    def clip(self, node: NodeProto) -> str | None:
        consumer = self.quantize_consumer(node.output[0], fuse=False)
        x = self.views.get(node.input[0])
        if consumer is None or x is None or self.clip_range(node) is None:
            return "its input, output or bounds are not quantized constants"
        out = consumer.params
        low, high = self.clamp(out, node)
        source, params = x
        if params == out:
            bounds = [self.const(np.array(v, dtype=out.dtype), f"{node.name}/bound") for v in (low, high)]
            self.nodes.append(helper.make_node("Clip", [source, *bounds], [consumer.target], name=node.name))
            self.declare(consumer.target, out.elem_type, params=out)
        else:
            real = np.array([np.float64(params.scale) / np.float64(out.scale)])
            floats = _float32_ratio(params.scale, out.scale).reshape(1)
            self.requantize(
                source, consumer.target, real, floats, out, (low, high), node.name, input_zero_point=params.zero_point
            )
        self.absorb(consumer.quantize)
        return None

    def lookup(self, node: NodeProto) -> str | None:
        consumer = self.quantize_consumer(node.output[0], fuse=False)
        x = self.views.get(node.input[0])
        if consumer is None or x is None:
            return "its input or output is not quantized"
        out = consumer.params
        source, params = x
        table = kernels.activation_table(
            _LOOKUP_FUNCTIONS[node.op_type],
            input_scale=params.scale,
            input_zero_point=params.zero_point,
            input_dtype=params.dtype,
            output_scale=out.scale,
            output_zero_point=out.zero_point,
            output_dtype=out.dtype,
            rounding=self.rounding,
        )
        lut = self.emit("Lut", [source, self.const(table, f"{node.name}/table")], [consumer.target], node.name)
        self.result.functions[lut] = node.op_type
        self.declare(consumer.target, out.elem_type, params=out)
        self.absorb(consumer.quantize)
        return None

    def global_average_pool(self, node: NodeProto) -> str | None:
        shape = self.shapes.get(node.input[0])
        if shape is None:
            return "the input rank is unknown"
        return self.mean(node, list(range(2, len(shape))))

    def reduce_mean(self, node: NodeProto) -> str | None:
        attrs = NodeAttributes(node)
        shape = self.shapes.get(node.input[0])
        axes = attrs.values.get("axes")
        if len(node.input) > 1 and node.input[1]:
            axes = self.constants.get(node.input[1])
        if shape is None or axes is None or not attrs.integer("keepdims", 1):
            return "only a spatial mean with kept dimensions is emulated"
        wanted = sorted(int(a) % len(shape) for a in np.asarray(axes).reshape(-1))
        if len(shape) != 4 or wanted != [2, 3]:
            return "only a spatial mean with kept dimensions is emulated"
        return self.mean(node, wanted)

    def mean(self, node: NodeProto, axes: list[int]) -> str | None:
        consumer = self.quantize_consumer(node.output[0], fuse=False)
        x = self.views.get(node.input[0])
        if consumer is None or x is None:
            return "its input or output is not quantized"
        out = consumer.params
        source, params = x
        multiplier, shift = 0, 0
        if self.rounding != "float_rne":
            ratio = np.float64(params.scale) / np.float64(out.scale)
            multiplier, shift = kernels.quantize_multiplier(float(ratio), self.rounding)
            shape = self.shapes.get(node.input[0]) or []
            sizes = [shape[a] if a < len(shape) else None for a in axes]
            if not all(isinstance(d, int) and d > 0 for d in sizes):
                return "TFLite's MEAN folds the element count into its multiplier: the reduced size must be static"
            multiplier, shift = _fold_count(multiplier, shift, int(np.prod(sizes)))
        low, high = out.bounds
        self.emit(
            "IntMean",
            [source],
            [consumer.target],
            node.name,
            axes=axes,
            rounding=self.rounding,
            input_zero_point=params.zero_point,
            zero_point=out.zero_point,
            qmin=low,
            qmax=high,
            to=out.elem_type,
            multiplier=multiplier,
            shift=shift,
            input_scale=params.scale,
            output_scale=out.scale,
        )
        self.declare(consumer.target, out.elem_type, params=out)
        self.absorb(consumer.quantize)
        return None

    def average_pool(self, node: NodeProto) -> str | None:
        if self.rounding == "float_rne":
            return "onnxruntime averages in float32"
        consumer = self.quantize_consumer(node.output[0], fuse=False)
        x = self.views.get(node.input[0])
        if consumer is None or x is None:
            return "its input or output is not quantized"
        attrs = NodeAttributes(node)
        kernel = attrs.integers("kernel_shape")
        dilations = attrs.integers("dilations", [1] * len(kernel))
        if len(kernel) != 2 or attrs.integer("ceil_mode", 0) or any(d != 1 for d in dilations):
            return "only 2-D average pooling without ceil_mode or dilations is emulated"
        strides = attrs.integers("strides", [1, 1])
        pads = self.explicit_pads(attrs, node.input[0], kernel, strides, dilations)
        if pads is None:
            return "auto_pad needs a static input shape"
        out = consumer.params
        source, params = x
        pooled = consumer.target if params == out else self.fresh(f"{node.name}/pooled")
        low, high = params.bounds
        self.emit(
            "IntAveragePool",
            [source],
            [pooled],
            node.name,
            kernel_shape=kernel,
            strides=strides,
            pads=pads,
            count_include_pad=attrs.integer("count_include_pad", 0),
            offset=128 if params.dtype == np.uint8 else 0,
            zero_point=params.zero_point,
            qmin=low,
            qmax=high,
        )
        self.declare(pooled, params.elem_type, like=consumer.target, params=params)
        if pooled != consumer.target:
            self.rescale(pooled, params, out, node.name, target=consumer.target)
        self.absorb(consumer.quantize)
        return None

    def movement(self, node: NodeProto) -> str | None:
        consumers = [self.quantize_consumer(out, fuse=False) if out else None for out in node.output]
        if any(c is None for c, out in zip(consumers, node.output, strict=True) if out):
            return "its outputs are not all quantized"
        present = [c for c in consumers if c is not None]
        if not present or len({c.params for c in present}) != 1:
            return "its outputs are quantized with different parameters"
        out = present[0].params
        if node.op_type == "Resize" and NodeAttributes(node).text("mode", "nearest") != "nearest":
            return "only nearest-neighbour Resize keeps values"
        indices = _MOVEMENT_DATA_INPUTS[node.op_type] or tuple(range(len(node.input)))
        operands = {i: params for i in indices if (params := self.operand_params(node.input[i])) is not None}
        if len(operands) != len(indices):
            return "its data inputs are not quantized"
        if any(name in self.views for i, name in enumerate(node.input) if i not in indices):
            return "a quantized tensor feeds one of its parameters"
        inputs = [
            self.rescale(self.operand_tensor(name), operands[i], out, node.name)
            if i in operands
            else self.float_input(name)
            for i, name in enumerate(node.input)
        ]
        if node.op_type == "Pad":
            inputs = self.pad_value(node, inputs, out)
        outputs = [c.target if c is not None else "" for c in consumers]
        copy = helper.make_node(node.op_type, inputs, outputs, name=node.name)
        copy.attribute.extend(node.attribute)
        self.nodes.append(copy)
        for c in present:
            self.declare(c.target, out.elem_type, params=out)
            self.absorb(c.quantize)
        return None

    def pad_value(self, node: NodeProto, inputs: list[str], out: QParams) -> list[str]:
        """A constant-mode Pad fills with a real value: its integer in the output's parameters (real 0 → zp)."""
        if NodeAttributes(node).text("mode", "constant") != "constant":
            return inputs
        real = 0.0
        if len(node.input) > 2 and node.input[2] in self.constants:
            real = float(self.constants[node.input[2]].reshape(-1)[0])
        value = kernels.quantize(
            np.array(real), scale=out.scale, zero_point=out.zero_point, dtype=out.dtype, rounding="half_away"
        )
        padded = [*inputs, "", ""][: max(len(inputs), 3)]
        padded[2] = self.const(np.asarray(value, dtype=out.dtype), f"{node.name}/pad_value")
        return padded

    # --- shared pieces -----------------------------------------------------------------------------------------------

    def bias(self, node: NodeProto, index: int | None, input_scale: float, w_scale: np.ndarray) -> list[str]:
        """The int32 bias at scale `s_in · s_w[c]` as an initializer ([] without bias).

        A bias the quantizer stored at another scale, or left in float, is quantized to that scale as a converter
        does (round half away)."""
        if index is None or len(node.input) <= index or not node.input[index]:
            return []
        name = node.input[index]
        expected = np.float64(input_scale) * w_scale.astype(np.float64)
        constant = self.const_q.get(name)
        if constant is not None:
            scale = np.broadcast_to(constant.scale.reshape(-1), expected.shape).astype(np.float64)
            values = constant.values.reshape(-1).astype(np.int64) - constant.zero_point.reshape(-1)
            if constant.values.dtype == np.int32 and np.allclose(scale, expected, rtol=1e-6, atol=0):
                return [self.const(np.broadcast_to(values, expected.shape).astype(np.int32), f"{node.name}/bias")]
            real = values * scale
        elif name in self.constants:
            real = self.constants[name].astype(np.float64).reshape(-1)
        else:
            raise EmulationError(f"exact tier: node {node.name!r} has a bias that is not a constant")
        if real.size not in (1, expected.size):
            raise EmulationError(f"exact tier: node {node.name!r} has a bias that is not one value per channel")
        quantized = kernels.round_half_away(np.broadcast_to(real, expected.shape) / expected)
        clipped = np.clip(quantized, kernels.INT32_MIN, kernels.INT32_MAX).astype(np.int32)
        return [self.const(clipped, f"{node.name}/bias")]

    def accumulation(self, x: QParams, weights: np.ndarray, zero_point: np.ndarray, node: NodeProto) -> Accumulation:
        """int16 pair saturation (x86 without VNNI) hits u8 × s8 GEMM kernels with symmetric weights; depthwise
        kernels (one input channel per group) and s8 × s8 kernels accumulate in int32 directly. `weights` are
        convolution (O, C/g, kh, kw) or MatMul (K, N) integers; pairs that can saturate are reported."""
        group = NodeAttributes(node).integer("group", 1)
        depthwise = weights.ndim == 4 and group > 1 and weights.shape[1] == 1
        if not self.pairs or x.dtype != np.uint8 or weights.dtype != np.int8 or np.any(zero_point) or depthwise:
            return "int32"
        self.result.saturating_nodes.append(node.name)
        pairs = kernels.conv_pair_weights(weights, group) if weights.ndim == 4 else kernels.matmul_pair_weights(weights)
        risky = int(kernels.saturable_pairs(pairs).sum())
        if risky:
            detail = (
                f"{risky} (weight pair, output) combinations can saturate int16 in u8 × s8 pair sums (255 · "
                "(|w_a| + |w_b|) > 32767); 7-bit weights (reduce_range) avoid it"
            )
            self.result.findings.append(NodeFinding(node=node.name, kind="saturation_risk", detail=detail, count=risky))
        return "int16_pairs"

    def explicit_pads(
        self,
        attrs: NodeAttributes,
        x: str,
        kernel: Sequence[int],
        strides: Sequence[int],
        dilations: Sequence[int],
    ) -> list[int] | None:
        """ONNX pads [top, left, bottom, right], resolving auto_pad (None when that needs an unknown shape)."""
        auto_pad = attrs.text("auto_pad", "NOTSET")
        if auto_pad in ("NOTSET", ""):
            return attrs.integers("pads", [0] * 2 * len(kernel))
        if auto_pad == "VALID":
            return [0] * 2 * len(kernel)
        shape = self.shapes.get(x)
        spatial = shape[2:] if shape else None
        if spatial is None or not all(isinstance(d, int) and d > 0 for d in spatial):
            return None
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max((math.ceil(int(size) / s) - 1) * s + (k - 1) * d + 1 - int(size), 0)
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begins.append(begin)
            ends.append(total - begin)
        return begins + ends

    def finish(self) -> DeviceGraph:
        value_info = [
            helper.make_tensor_value_info(name, elem_type, shape)
            for name, (elem_type, shape) in self.declared.items()
            if name not in self.graph_outputs and elem_type != TensorProto.UNDEFINED
        ]
        source = self.source.graph
        outputs = []
        for value in source.output:  # an output declared without a type gets the one its device op gives it
            output = onnx.ValueInfoProto()
            output.CopyFrom(value)
            if not output.type.tensor_type.elem_type and value.name in self.declared:
                output.type.tensor_type.elem_type = self.declared[value.name][0]
            outputs.append(output)
        graph = helper.make_graph(
            self.nodes,
            source.name or "device",
            list(source.input),
            outputs,
            list(self.initializers.values()),
            value_info=value_info,
        )
        opsets = [o for o in self.source.opset_import if o.domain != DEVICE_DOMAIN]
        model = helper.make_model(graph, opset_imports=[*opsets, helper.make_opsetid(DEVICE_DOMAIN, 1)])
        model.ir_version = self.source.ir_version
        self.result.model = model
        return self.result


def _fold_count(multiplier: int, shift: int, count: int) -> tuple[int, int]:
    """TFLite's int8 MEAN: the multiplier (M, e) of `s_in / s_out` with the division by the element count folded in,
    `M' = ⌊M · 2^k / count⌋`, `e' = e − k`, `k = min(⌊log2 count⌋, 32, 31 + e)`: one rounding, in the multiply."""
    bits = min(count.bit_length() - 1, 32, 31 + shift)
    return (multiplier << bits) // count, shift - bits


def _narrow(values: np.ndarray) -> np.ndarray:
    """Integer weights as int8 when they fit (always, with zero point 0), else int16."""
    if values.size == 0 or (values.min() >= -128 and values.max() <= 127):
        return values.astype(np.int8)
    return values.astype(np.int16)


_HANDLERS: dict[str, Callable[[_Builder, NodeProto], str | None]] = {
    "Conv": _Builder.conv,
    "ConvTranspose": _Builder.conv_transpose,
    "Gemm": _Builder.gemm,
    "MatMul": _Builder.matmul,
    "Add": _Builder.add,
    "Sub": _Builder.add,
    "Mul": _Builder.mul,
    "HardSigmoid": _Builder.affine,
    "Div": _Builder.affine,
    "Relu": _Builder.clip,
    "Clip": _Builder.clip,
    "Sigmoid": _Builder.lookup,
    "Tanh": _Builder.lookup,
    "GlobalAveragePool": _Builder.global_average_pool,
    "ReduceMean": _Builder.reduce_mean,
    "AveragePool": _Builder.average_pool,
}
"""Op type → handler emitting its integer kernel (data-movement ops go through `_Builder.movement`)."""
