"""The builder context: what the op handlers of `autoptq.deploy.ops` read from the QDQ model and how they emit device
nodes. One `Builder` walks the QDQ graph in order (the pass is `autoptq.deploy.intgraph.build_device_graph`); its
state is what each QDQ tensor has become: an integer view of an activation, a quantized constant, or a float tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from autoptq.deploy import kernels
from autoptq.deploy.device_graph import DEVICE_DOMAIN, DeviceGraph, EmulationError, NodeAttributes, NodeFinding, QParams
from autoptq.deploy.kernels import Rounding

_EIGHT_BIT = (np.dtype(np.int8), np.dtype(np.uint8))


@dataclass(frozen=True)
class ConstQ:
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
class Consumer:
    """Where a node's float output gets quantized: the QuantizeLinear, its parameters, and a fused Relu/Clip."""

    quantize: NodeProto
    params: QParams
    activation: NodeProto | None

    @property
    def target(self) -> str:
        return self.quantize.output[0]


def float32_ratio(numerator: float | np.ndarray, denominator: float) -> np.ndarray:
    """`float32(a) / float32(b)` as onnxruntime computes its scale ratios."""
    return (np.asarray(numerator, dtype=np.float32) / np.float32(denominator)).astype(np.float32)


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


def _narrow(values: np.ndarray) -> np.ndarray:
    """Integer weights as int8 when they fit (always, with zero point 0), else int16."""
    if values.size == 0 or (values.min() >= -128 and values.max() <= 127):
        return values.astype(np.int8)
    return values.astype(np.int16)


class Builder:
    """The state of one pass over the QDQ graph (what each tensor has become) and the means to emit device nodes."""

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
        self.const_q: dict[str, ConstQ] = {}
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

    def weight_tensor(self, centred: np.ndarray, weights: ConstQ, hint: str) -> str:
        """The integer weights (zero point already subtracted) as an initializer named after `hint`, their float32
        scales recorded for the writers of device files."""
        name = self.const(_narrow(centred), hint)
        self.result.weight_scales[name] = weights.scale.reshape(-1).astype(np.float32)
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

    def quantize_consumer(self, output: str, fuse: bool) -> Consumer | None:
        """The single per-tensor QuantizeLinear fed by `output` (through a Relu/Clip with constant bounds when
        `fuse`)."""
        users = self.consumers.get(output, [])
        if output in self.graph_outputs or len(users) != 1:
            return None
        user = users[0]
        params = self.qparams(user) if user.op_type == "QuantizeLinear" else None
        if params is not None:
            return Consumer(user, self.require_8bit(params, user), None)
        if fuse and user.op_type in ("Relu", "Clip") and self.clip_range(user) is not None:
            follow = self.quantize_consumer(user.output[0], fuse=False)
            if follow is not None:
                return Consumer(follow.quantize, follow.params, user)
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

    # --- emitting requantization and float boundaries ----------------------------------------------------------------

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

    def requantize_product(
        self,
        acc: str,
        consumer: Consumer,
        input_scale: float,
        w_scale: np.ndarray,
        hint: str,
        channel_shape: tuple[int, ...],
    ) -> None:
        """Requantize an accumulator of `s_in · s_w[c]` to the consumer's parameters: TFLite's multiplier in double,
        onnxruntime's in float32 (`s_in · s_w / s_out`, left to right)."""
        out = consumer.params
        reals = np.float64(input_scale) * w_scale.astype(np.float64) / np.float64(out.scale)
        floats = float32_ratio(np.float32(input_scale) * w_scale.astype(np.float32), out.scale)
        bounds = self.clamp(out, consumer.activation)
        self.requantize(acc, consumer.target, reals, floats, out, bounds, hint, channel_shape=channel_shape)
        self.absorb(consumer.quantize, consumer.activation)

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
        floats = float32_ratio(params.scale, out.scale).reshape(1)
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

    # --- the result --------------------------------------------------------------------------------------------------

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
