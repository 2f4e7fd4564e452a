"""Device integer graph → an int8 TFLite flatbuffer (`model.tflite`) for the Edge TPU compiler and TFLite Micro.

The QDQ model is first rewritten into the device's integer kernels (`autoptq.deploy.intgraph`, the exact tier's
graph); each kernel becomes the TFLite builtin op that computes it, with the quantization parameters from which TFLite
derives the same multipliers (per-channel int8 weights, zero point 0; int32 bias at `s_in · s_w[c]`; fixed output
parameters for SOFTMAX / LOGISTIC / TANH). The flatbuffer is built with the `tflite` package's generated schema
builders over `flatbuffers`; both are in the `tflite` extra.

Layout: rank-4 activations are NHWC (an ONNX [N, C, H, W] tensor is stored transposed by (0, 2, 3, 1)); weights are
transposed to OHWI (CONV_2D), 1HWO (DEPTHWISE_CONV_2D) and [out, in] (FULLY_CONNECTED); axes of Concat, Mean, Pad,
Transpose are remapped (SpaceToDepth's channel order is already NHWC's depth order); a Reshape/Flatten that leaves
or enters rank 4 goes through a TRANSPOSE so that elements keep ONNX's order. uint8 tensors are written as int8
(q − 128), as a TFLite converter does, with a QUANTIZE at a uint8 graph input or output. Anything without a faithful
TFLite op is an error naming the node: no file is better than an almost-right one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, numpy_helper
from pydantic import BaseModel, ConfigDict, Field

from autoptq.deploy import kernels
from autoptq.deploy.intgraph import DEVICE_DOMAIN, DeviceGraph, NodeAttributes, QParams, build_device_graph
from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError
from autoptq.model.ops import OUTPUT_TAIL_OPS

INSTALL_HINT = "pip install 'autoptq[tflite]'"
TO_NHWC = (0, 2, 3, 1)
"""ONNX [N, C, H, W] → TFLite [N, H, W, C]: TFLite axis i holds ONNX axis TO_NHWC[i]."""
FROM_NHWC = (0, 3, 1, 2)
"""ONNX axis a is TFLite axis FROM_NHWC[a] of an NHWC tensor."""
_ACTIVATIONS = {"NONE": (None, None), "RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}
_FLOAT_OPS = {
    "Softmax",
    "HardSwish",
    "Resize",
    "Sigmoid",
    "Tanh",
    "Identity",
    "Dropout",
}
"""Ops the exact tier computes in float between dequantize and quantize that TFLite has an int8 kernel for."""
_SHAPE_OPS = frozenset(
    {
        "Shape",
        "Gather",
        "Cast",
        "Range",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "ConstantOfShape",
        "Slice",
        "Mul",
        "Add",
        "Sub",
        "Div",
        "Equal",
        "Where",
        "Expand",
        "Reshape",
        "Identity",
        "Constant",
        "Floor",
        "Ceil",
        "Size",
    }
)
"""Ops that, fed only constants and shapes, compute parameters (skipped: the writer reads static shapes)."""
_FIXED_OUTPUTS = {"SOFTMAX": (1 / 256, -128), "LOGISTIC": (1 / 256, -128), "TANH": (1 / 128, 0)}
"""Output parameters the TFLite int8 kernels require (quantization spec)."""


class TfliteExportError(AutoptqError):
    """The model cannot be written as a faithful int8 TFLite file (the message names the node)."""


class TfliteTensorIO(BaseModel):
    """A graph input or output of the written file and how it relates to the ONNX one."""

    name: str = Field(description="the ONNX graph input/output name (also the TFLite tensor name)")
    dtype: str
    shape: list[int]
    perm: list[int] | None = Field(description="transpose taking the ONNX array to the TFLite one (None: same)")
    scale: float | None = None
    zero_point: int | None = None


class TfliteOutputJoin(BaseModel):
    """A graph output that a host-less file returns in parts: the application joins them, as the ONNX model's float
    tail does (autoptq.techniques.output_joins). One int8 scale cannot hold box pixels and class scores together."""

    output: str = Field(description="the ONNX graph output the parts make")
    parts: list[str] = Field(description="the file's int8 outputs to dequantize and join, in the tail's input order")
    steps: list[str] = Field(description="the tail's ops, in order, e.g. 'Concat(axis=1)'")
    tail: bytes = Field(
        repr=False,
        exclude=True,
        description="a float ONNX model: the dequantized parts (inputs named as the parts) → output",
    )

    def statement(self) -> str:
        return (
            f"output {self.output!r} is returned as {len(self.parts)} int8 outputs ({', '.join(self.parts)}): "
            f"dequantize each with its own scale and zero point, then {', '.join(self.steps)} gives {self.output!r}"
        )


class ArenaEstimate(BaseModel):
    """TFLite Micro's tensor arena for a written file, estimated without running it (bytes)."""

    planned_activation_bytes: int = Field(
        description="peak of the file's live activations, 16-byte aligned (or Prepare's temporaries, if larger)"
    )
    bookkeeping_bytes: int = Field(description="TFLM's per-tensor / per-op structures and kernel data (see basis)")
    total_bytes: int
    basis: str


# TFLM's own allocations, measured with tflite-micro 0.dev20261023 (x86-64 Python build) on 8 small models
# (bench/bench_tflite.py lists them): TfLiteEvalTensor 24 B per tensor, NodeAndRegistration 64 B per op, 96 B per graph
# input/output (persistent TfLiteTensor and its quantization), kernel data ~100 B per convolution / fully connected op
# plus 8 B per output channel (per-channel multiplier and shift), ~32 B per other op, and ~560 B of fixed overhead;
# Prepare's temporaries (~256 B + 64 B per activation tensor) share the head with the planned activations.
_TFLM_PER_TENSOR, _TFLM_PER_OP, _TFLM_PER_IO, _TFLM_FIXED = 24, 64, 96, 560
_TFLM_WEIGHTED_OP, _TFLM_PER_CHANNEL, _TFLM_OTHER_OP = 100, 8, 32
_TFLM_PREPARE_FIXED, _TFLM_PREPARE_PER_ACTIVATION = 256, 64
_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
ARENA_BASIS = (
    "estimated from the written file: liveness peak of its activations (16-byte aligned, as TFLM's planner) plus "
    "TFLM's bookkeeping constants measured with tflite-micro on an x86-64 host (a 32-bit MCU build has smaller "
    "structures, so this errs high there)"
)


class TfliteExport(BaseModel):
    """A written TFLite model: the flatbuffer, its I/O, and which ops it holds."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    content: bytes = Field(repr=False, exclude=True)
    inputs: list[TfliteTensorIO]
    outputs: list[TfliteTensorIO]
    output_names: list[str] = Field(description="the ONNX graph outputs, in order, which the file's outputs make")
    output_joins: list[TfliteOutputJoin] = Field(
        default_factory=list, description="outputs returned in parts for the application to join (host-less files)"
    )
    op_counts: dict[str, int] = Field(description="TFLite builtin op → how many the file holds")
    approximate_ops: list[str] = Field(
        default_factory=list, description="TFLite ops the exact tier only approximates (a stated LSB tolerance)"
    )
    arena_estimate: ArenaEstimate
    nhwc_tensors: frozenset[str] = Field(
        default_factory=frozenset, exclude=True, description="activations stored NHWC (the others in ONNX order)"
    )
    tensor_ops: dict[str, str] = Field(
        default_factory=dict, exclude=True, description="tensor name → the TFLite builtin op that writes it"
    )
    tensor_inputs: dict[str, list[str]] = Field(
        default_factory=dict, exclude=True, description="tensor name → the tensors its op reads"
    )
    reordered_tensors: frozenset[str] = Field(
        default_factory=frozenset,
        exclude=True,
        description="flattens kept in NHWC element order (the dense layer's weight rows permuted instead)",
    )


def tflite_modules() -> tuple[object, object]:
    """The `tflite` and `flatbuffers` modules, or an AutoptqError saying what to install."""
    try:
        import flatbuffers
        import tflite
    except ImportError as exc:
        raise AutoptqError(f"writing .tflite needs the tflite extra: {INSTALL_HINT} ({exc.name} is missing)") from exc
    return tflite, flatbuffers


def export_tflite(
    model: ModelProto, profile: HardwareProfile, input_shapes: dict[str, Sequence[int]] | None = None
) -> TfliteExport:
    """Write the QDQ `model` as an int8 TFLite flatbuffer under `profile`'s integer arithmetic. `input_shapes` (those
    of the data, batch of one) fix the symbolic dimensions of a dynamic model: a TFLite file here is static."""
    if profile.quantization.rounding != "tflite_double":
        raise TfliteExportError(
            f"profile {profile.name!r} rounds {profile.quantization.rounding}; TFLite kernels round tflite_double"
        )
    if input_shapes:
        model = with_static_inputs(model, input_shapes)
    device = build_device_graph(model, profile)
    return _Writer(
        device, float_io=profile.quantization.io_dtype == "float32", float_host=profile.host is not None
    ).write()


def with_static_inputs(model: ModelProto, input_shapes: dict[str, Sequence[int]]) -> ModelProto:
    """A copy of `model` whose inputs have the given shapes, shapes re-inferred (constant shape arithmetic
    propagated); an input whose static dims disagree is an error."""
    static = ModelProto()
    static.CopyFrom(model)
    for value in static.graph.input:
        if value.name not in input_shapes:
            continue
        shape = [int(d) for d in input_shapes[value.name]]
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shape) or any(
            d.HasField("dim_value") and d.dim_value not in (0, s) for d, s in zip(dims, shape, strict=True)
        ):
            raise TfliteExportError(f"input {value.name!r}: data shape {shape} does not fit the model's")
        del dims[:]
        for size in shape:
            dims.add().dim_value = size
    del static.graph.value_info[:]
    for value in static.graph.output:
        value.type.tensor_type.ClearField("shape")
    try:
        return onnx.shape_inference.infer_shapes(static, strict_mode=False, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        raise TfliteExportError(f"shape inference with static inputs failed: {exc}") from exc


# --- the model being built -------------------------------------------------------------------------------------------


@dataclass
class _Tensor:
    name: str
    shape: list[int]
    dtype: int  # tflite.TensorType
    data: bytes | None = None
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    axis: int = 0


@dataclass
class _Op:
    code: int  # tflite.BuiltinOperator
    version: int
    inputs: list[int]
    outputs: list[int]
    options: Callable[[object], tuple[int, int]] | None = None  # builder → (options type, offset)


@dataclass
class _Value:
    """A device tensor in the file: its TFLite index, whether it is stored NHWC, and its int8 parameters."""

    index: int
    nhwc: bool
    params: QParams | None = None


@dataclass
class _Flat:
    tensors: list[_Tensor] = field(default_factory=list)
    ops: list[_Op] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)


def _int8(params: QParams) -> QParams:
    """uint8 parameters as the int8 ones a TFLite converter writes (values and zero point − 128)."""
    if params.dtype == np.uint8:
        return QParams(params.scale, params.zero_point - 128, np.dtype(np.int8))
    return params


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite SAME padding (before, after) of one spatial dim: the extra pixel goes at the end."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class _Writer:
    def __init__(self, device: DeviceGraph, float_io: bool, float_host: bool) -> None:
        self.tfl, self.fb = tflite_modules()
        self.device = device
        self.float_io = float_io
        # Without a float host, an output joined in float after DEQUANTIZEs is left to the application: the file
        # returns the int8 parts (each with its own scale) and says how to join them.
        self.float_host = float_host
        self.parts: dict[str, str] = {}  # a dequantized part the application joins → the file's int8 output
        self.join_nodes: list[NodeProto] = []  # the tail nodes left to the application, in graph order
        graph = device.model.graph
        self.graph = graph
        self.inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.shapes: dict[str, list[int]] = {}
        for value in (*graph.input, *graph.value_info, *graph.output):
            dims = value.type.tensor_type.shape.dim
            if value.type.tensor_type.HasField("shape"):
                self.shapes[value.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
        self.consumers: dict[str, list[NodeProto]] = {}
        self.producers: dict[str, NodeProto] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            for name in node.output:
                self.producers[name] = node
        self.outputs = {o.name for o in graph.output}
        self.flat = _Flat()
        self.values: dict[str, _Value] = {}
        self.done: set[str] = set()
        self.approximate: set[str] = set()
        self.io_in: list[TfliteTensorIO] = []
        self.io_out: list[TfliteTensorIO] = []
        self.row_order: dict[str, np.ndarray] = {}  # flattened NHWC tensor → ONNX index of each of its elements

    # --- tensors -----------------------------------------------------------------------------------------------------

    def error(self, node: NodeProto, why: str) -> TfliteExportError:
        return TfliteExportError(f"cannot write node {node.name!r} ({node.op_type}) to TFLite: {why}")

    def shape(self, name: str, node: NodeProto) -> list[int]:
        shape = self.shapes.get(name)
        if shape is None:
            raise self.error(node, f"the shape of {name!r} is unknown (run shape inference / give static shapes)")
        if any(d < 0 for d in shape[1:]):
            raise self.error(node, f"tensor {name!r} has a dynamic shape {shape}; TFLite files here are static")
        return [1 if d < 0 else d for d in shape]  # a symbolic batch becomes 1 (the Edge TPU needs batch 1)

    def add_tensor(self, tensor: _Tensor) -> int:
        self.flat.tensors.append(tensor)
        return len(self.flat.tensors) - 1

    def activation(self, name: str, shape: list[int], params: QParams | None, nhwc: bool) -> _Value:
        """A new activation tensor for device tensor `name` (`shape` in ONNX order)."""
        stored = [shape[i] for i in TO_NHWC] if nhwc else list(shape)
        if params is None:
            tensor = _Tensor(name, stored, self.tfl.TensorType.FLOAT32)
        else:
            params = _int8(params)
            tensor = _Tensor(
                name,
                stored,
                self.tfl.TensorType.INT8,
                scale=np.array([params.scale], np.float32),
                zero_point=np.array([params.zero_point], np.int64),
            )
        value = _Value(self.add_tensor(tensor), nhwc, params)
        self.values[name] = value
        return value

    def output(self, name: str, node: NodeProto, params: QParams | None = None, nhwc: bool | None = None) -> _Value:
        """The activation produced by `node` into device tensor `name` (parameters from the device graph)."""
        shape = self.shape(name, node)
        params = params if params is not None else self.device.params.get(name)
        if params is None and not self.in_float_tail(node):
            raise self.error(node, f"tensor {name!r} has no int8 quantization")
        return self.activation(name, shape, params, len(shape) == 4 if nhwc is None else nhwc)

    def in_float_tail(self, node: NodeProto) -> bool:
        """A data-movement op on dequantized values before an output (a join of parts kept float on the host, see
        autoptq.techniques.output_joins): written as the float op, after a DEQUANTIZE."""
        data = [name for name in node.input[: 1 if node.op_type != "Concat" else None] if name in self.values]
        return (
            node.domain != DEVICE_DOMAIN
            and node.op_type in OUTPUT_TAIL_OPS
            and len(data) == len(node.input[: 1 if node.op_type != "Concat" else None])
            and all(self.values[name].params is None for name in data)
        )

    def value(self, name: str, node: NodeProto) -> _Value:
        if name in self.values:
            return self.values[name]
        if name in self.inits and name in self.device.params:
            return self.constant_operand(name, node)
        raise self.error(node, f"its input {name!r} is not an int8 tensor of the device graph")

    def constant(
        self,
        name: str,
        array: np.ndarray,
        dtype: int,
        scale: np.ndarray | None = None,
        zero_point: np.ndarray | None = None,
        axis: int = 0,
    ) -> int:
        array = np.ascontiguousarray(array)
        return self.add_tensor(_Tensor(name, list(array.shape), dtype, array.tobytes(), scale, zero_point, axis))

    def int32(self, name: str, values: Sequence[int]) -> int:
        return self.constant(name, np.asarray(values, np.int32), self.tfl.TensorType.INT32)

    def constant_operand(self, name: str, node: NodeProto, like: _Value | None = None) -> _Value:
        """A per-tensor quantized constant operand (Add/Mul/Min/Max), laid out NHWC when the other operand is."""
        params = _int8(self.device.params[name])
        values = self.inits[name].astype(np.int64) - (128 if self.device.params[name].dtype == np.uint8 else 0)
        nhwc = like is not None and like.nhwc
        if nhwc:
            if values.ndim > 4:
                raise self.error(node, f"constant {name!r} has rank {values.ndim}")
            values = values.reshape((1,) * (4 - values.ndim) + values.shape).transpose(TO_NHWC)
        index = self.constant(
            name,
            values.astype(np.int8),
            self.tfl.TensorType.INT8,
            np.array([params.scale], np.float32),
            np.array([params.zero_point], np.int64),
        )
        return _Value(index, nhwc, params)

    # --- ops ---------------------------------------------------------------------------------------------------------

    def op(
        self,
        code: str,
        inputs: Sequence[int],
        outputs: Sequence[int],
        version: int = 1,
        options: Callable[[object], tuple[int, int]] | None = None,
    ) -> None:
        self.flat.ops.append(
            _Op(getattr(self.tfl.BuiltinOperator, code), version, list(inputs), list(outputs), options)
        )

    def fused(self, node: NodeProto, params: QParams, qmin: int, qmax: int) -> int:
        """The fused activation whose TFLite clamp equals [qmin, qmax] (int8 bounds) under `params`."""
        shift = 128 if params.dtype == np.uint8 else 0
        qmin, qmax = qmin - shift, qmax - shift
        params = _int8(params)
        for name, (low, high) in _ACTIVATIONS.items():
            if _activation_range(params, low, high) == (qmin, qmax):
                return getattr(self.tfl.ActivationFunctionType, name)
        raise self.error(node, f"its output clamp [{qmin}, {qmax}] is none of NONE/RELU/RELU6/RELU_N1_TO_1")

    # --- the pass ----------------------------------------------------------------------------------------------------

    def write(self) -> TfliteExport:
        for value in self.graph.input:
            if value.name not in self.inits and value.name in self.consumers:  # (an unused input is left out)
                self.graph_input(value.name)
        for node in self.graph.node:
            if node.name in self.done:
                continue
            if self.shape_arithmetic(node):
                continue
            if self.left_to_application(node):
                self.join_nodes.append(node)
                continue
            handler = _HANDLERS.get(node.op_type) if node.domain == DEVICE_DOMAIN else _STANDARD.get(node.op_type)
            if handler is None:
                if node.domain != DEVICE_DOMAIN and node.op_type in _FLOAT_OPS:
                    handler = _Writer.float_op
                else:
                    why = "no TFLite int8 kernel is written for it" + (
                        " (it runs in float in the quantized model)" if node.domain != DEVICE_DOMAIN else ""
                    )
                    raise self.error(node, why)
            handler(self, node)
        joins = {
            value.name: self.output_join(value.name)
            for value in self.graph.output
            if self.made_by_application(value.name)
        }
        emitted: set[str] = set()
        for value in self.graph.output:
            for name in joins[value.name].parts if value.name in joins else [value.name]:
                if name not in emitted:  # a part two joins share is one output
                    emitted.add(name)
                    self.graph_output(name)
        return self.serialize(list(joins.values()))

    def left_to_application(self, node: NodeProto) -> bool:
        """A data-movement op of an output's float tail, in a file with no float host to run it."""
        data = node.input if node.op_type == "Concat" else node.input[:1]
        return (
            not self.float_host
            and node.domain != DEVICE_DOMAIN
            and node.op_type in OUTPUT_TAIL_OPS
            and all(name in self.parts or self.made_by_application(name) for name in data)
        )

    def made_by_application(self, name: str) -> bool:
        return any(name in node.output for node in self.join_nodes)

    def output_join(self, output: str) -> TfliteOutputJoin:
        """The parts of `output` and the float ONNX tail that joins them (the model's own nodes, parts renamed to
        the file's output tensors)."""
        producer = {name: index for index, node in enumerate(self.join_nodes) for name in node.output}
        reached, pending = set(), [output]
        while pending:
            index = producer.get(pending.pop())
            if index is not None and index not in reached:
                reached.add(index)
                node = self.join_nodes[index]
                pending += node.input if node.op_type == "Concat" else node.input[:1]
        tail = [self.join_nodes[index] for index in sorted(reached)]  # graph order
        rename = {name: self.parts[name] for node in tail for name in node.input if name in self.parts}
        parts = list(dict.fromkeys(rename[name] for node in tail for name in node.input if name in rename))
        nodes, initializers = [], []
        for node in tail:
            copy = NodeProto()
            copy.CopyFrom(node)
            copy.input[:] = [rename.get(name, name) for name in node.input]
            nodes.append(copy)
            for name in node.input:
                if name in self.inits:
                    initializers.append(numpy_helper.from_array(self.inits[name], name))
                elif name and name not in rename and name not in producer:
                    raise self.error(
                        node, f"the join at output {output!r} reads {name!r}, which is not one of its parts"
                    )
        dtype = onnx.TensorProto.FLOAT
        graph = onnx.helper.make_graph(
            nodes,
            "output_join",
            [onnx.helper.make_tensor_value_info(part, dtype, self.shapes.get(part)) for part in parts],
            [onnx.helper.make_tensor_value_info(output, dtype, None)],
            initializers,
        )
        tail_model = onnx.helper.make_model(graph, opset_imports=list(self.device.model.opset_import))
        tail_model.ir_version = self.device.model.ir_version
        steps = [f"{node.op_type}({_attributes(node)})" if node.attribute else node.op_type for node in tail]
        return TfliteOutputJoin(output=output, parts=parts, steps=steps, tail=tail_model.SerializeToString())

    def shape_arithmetic(self, node: NodeProto) -> bool:
        """A float-graph node computing only on constants and shapes (Shape → Gather → Concat → a Reshape's shape):
        the file is static, so ops that read such values take them from the inferred static shapes instead."""
        if node.domain == DEVICE_DOMAIN or node.op_type not in _SHAPE_OPS:
            return False
        if node.op_type in ("Shape", "Size"):  # reads the (static) shape of any tensor
            return not any(o in self.outputs for o in node.output)
        return not any(
            name in self.values or self.producer_op(name) == "Dequantize" for name in node.input
        ) and not any(o in self.outputs for o in node.output)

    def graph_input(self, name: str) -> None:
        node = NodeProto(name=name, op_type="input")
        shape = self.shape(name, node)
        nhwc = len(shape) == 4
        params = self.device.params.get(name)
        perm = list(TO_NHWC) if nhwc else None
        stored = [shape[i] for i in TO_NHWC] if nhwc else shape
        if params is None:  # a float input: the device graph quantizes it (QUANTIZE at the boundary)
            if not self.float_io:
                raise self.error(node, "the model takes a float input but the profile wants integer I/O")
            value = self.activation(name, shape, None, nhwc)
            self.io_in.append(TfliteTensorIO(name=name, dtype="float32", shape=stored, perm=perm))
        elif params.dtype == np.uint8:
            raw = self.activation(f"{name}/uint8", shape, None, nhwc)
            tensor = self.flat.tensors[raw.index]
            tensor.name, tensor.dtype = name, self.tfl.TensorType.UINT8
            tensor.scale = np.array([params.scale], np.float32)
            tensor.zero_point = np.array([params.zero_point], np.int64)
            value = self.activation(name, shape, params, nhwc)
            self.flat.tensors[value.index].name = f"{name}/int8"
            self.op("QUANTIZE", [raw.index], [value.index])
            self.io_in.append(
                TfliteTensorIO(
                    name=name, dtype="uint8", shape=stored, perm=perm, scale=params.scale, zero_point=params.zero_point
                )
            )
            self.flat.inputs.append(raw.index)
            return
        else:
            value = self.activation(name, shape, params, nhwc)
            self.io_in.append(
                TfliteTensorIO(
                    name=name, dtype="int8", shape=stored, perm=perm, scale=params.scale, zero_point=params.zero_point
                )
            )
        self.flat.inputs.append(value.index)

    def graph_output(self, name: str) -> None:
        node = NodeProto(name=name, op_type="output")
        value = self.values.get(name)
        if value is None:
            raise self.error(node, "no TFLite tensor was written for it")
        tensor = self.flat.tensors[value.index]
        perm = list(FROM_NHWC) if value.nhwc else None
        params = self.device.params.get(name)
        if value.params is None:
            self.io_out.append(TfliteTensorIO(name=name, dtype="float32", shape=tensor.shape, perm=perm))
        elif params is not None and params.dtype == np.uint8:
            out = self.add_tensor(
                _Tensor(
                    name,
                    list(tensor.shape),
                    self.tfl.TensorType.UINT8,
                    scale=np.array([params.scale], np.float32),
                    zero_point=np.array([params.zero_point], np.int64),
                )
            )
            tensor.name = f"{name}/int8"
            self.op("QUANTIZE", [value.index], [out])
            self.io_out.append(
                TfliteTensorIO(
                    name=name,
                    dtype="uint8",
                    shape=tensor.shape,
                    perm=perm,
                    scale=params.scale,
                    zero_point=params.zero_point,
                )
            )
            self.flat.outputs.append(out)
            return
        else:
            self.io_out.append(
                TfliteTensorIO(
                    name=name,
                    dtype="int8",
                    shape=tensor.shape,
                    perm=perm,
                    scale=value.params.scale,
                    zero_point=value.params.zero_point,
                )
            )
        self.flat.outputs.append(value.index)

    def single_consumer(self, name: str, op_type: str, node: NodeProto) -> NodeProto:
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op_type or name in self.outputs:
            raise self.error(node, f"its result {name!r} does not feed exactly one {op_type}")
        return users[0]

    # --- device ops --------------------------------------------------------------------------------------------------

    def quantize(self, node: NodeProto) -> None:
        """A float → integer boundary at a graph input (QUANTIZE); elsewhere the float op before it was written."""
        source = node.input[0]
        if source not in self.values or self.values[source].params is not None:
            raise self.error(node, "it quantizes a tensor that is not a float graph input")
        x = self.values[source]
        out = self.output(node.output[0], node, nhwc=x.nhwc)
        self.op("QUANTIZE", [x.index], [out.index])

    def dequantize(self, node: NodeProto) -> None:
        """An integer → float boundary: a DEQUANTIZE at a graph output; before a float op the op is written."""
        users = self.consumers.get(node.output[0], [])
        if node.output[0] in self.outputs and not users:
            if not self.float_io:
                raise self.error(node, "the model has a float output but the profile wants integer I/O")
            x = self.value(node.input[0], node)
            shape = self.shape(node.output[0], node)
            out = self.activation(node.output[0], shape, None, x.nhwc)
            self.op("DEQUANTIZE", [x.index], [out.index], version=2)
            return
        users = [u for u in users if u.op_type not in ("Shape", "Size")]  # they read the static shape only
        if users and all(u.domain != DEVICE_DOMAIN and u.op_type in OUTPUT_TAIL_OPS for u in users):
            x = self.value(node.input[0], node)
            if not self.float_host:
                self.parts[node.output[0]] = node.input[0]
                return
            out = self.activation(node.output[0], self.shape(node.output[0], node), None, x.nhwc)
            self.op("DEQUANTIZE", [x.index], [out.index], version=2)
            return
        unwritable = [u for u in users if u.domain == DEVICE_DOMAIN or u.op_type not in _FLOAT_OPS]
        if unwritable:
            raise self.error(unwritable[0], "no TFLite int8 kernel is written for it (it runs in float in the model)")

    def int_conv(self, node: NodeProto) -> None:
        attrs = NodeAttributes(node)
        requant = self.single_consumer(node.output[0], "Requantize", node)
        x = self.value(node.input[0], node)
        weights = self.inits[node.input[1]]
        if weights.dtype != np.int8:
            raise self.error(node, "its weights have a non-zero zero point (TFLite needs symmetric int8 weights)")
        scales = self.device.weight_scales[node.input[1]]
        out_channels, per_group, kh, kw = weights.shape
        group = attrs.integer("group", 1)
        in_channels = per_group * group
        strides, dilations = attrs.integers("strides"), attrs.integers("dilations")
        source = self.device.params.get(node.input[0])
        if source is None or attrs.integer("x_zero_point") != source.zero_point:
            raise self.error(node, "its input zero point disagrees with the device graph")
        x_index = self.padded(node, x, attrs.integers("pads"), [kh, kw], strides, dilations)
        padding = self.tfl.Padding.SAME if x_index is None else self.tfl.Padding.VALID
        x_index = x.index if x_index is None else x_index
        depthwise = group > 1 and per_group == 1 and group == in_channels
        if group > 1 and not depthwise:
            raise self.error(node, f"grouped convolution (group {group}) is not written (split it)")
        w_axis = 3 if depthwise else 0
        w = weights.transpose(1, 2, 3, 0) if depthwise else weights.transpose(0, 2, 3, 1)
        w_scale = np.broadcast_to(scales.reshape(-1), (out_channels,)).astype(np.float32)
        w_index = self.constant(
            node.input[1], w, self.tfl.TensorType.INT8, w_scale, np.zeros(out_channels, np.int64), w_axis
        )
        bias_scale = (np.float64(x.params.scale) * w_scale.astype(np.float64)).astype(np.float32)
        bias = self.inits[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(out_channels, np.int32)
        b_index = self.constant(
            f"{node.name}/bias",
            np.broadcast_to(bias.reshape(-1), (out_channels,)).astype(np.int32),
            self.tfl.TensorType.INT32,
            bias_scale,
            np.zeros(out_channels, np.int64),
        )
        out = self.output(requant.output[0], requant)
        act = self.fused(requant, self.device.params[requant.output[0]], *_bounds(requant))
        self.check_requantize(requant, x.params.scale * w_scale.astype(np.float64) / out.params.scale)
        tfl = self.tfl
        sh, sw = strides
        dh, dw = dilations

        if depthwise:

            def options(b: object) -> tuple[int, int]:
                tfl.DepthwiseConv2DOptionsStart(b)
                tfl.DepthwiseConv2DOptionsAddPadding(b, padding)
                tfl.DepthwiseConv2DOptionsAddStrideH(b, sh)
                tfl.DepthwiseConv2DOptionsAddStrideW(b, sw)
                tfl.DepthwiseConv2DOptionsAddDepthMultiplier(b, out_channels // in_channels)
                tfl.DepthwiseConv2DOptionsAddDilationHFactor(b, dh)
                tfl.DepthwiseConv2DOptionsAddDilationWFactor(b, dw)
                tfl.DepthwiseConv2DOptionsAddFusedActivationFunction(b, act)
                return tfl.BuiltinOptions.DepthwiseConv2DOptions, tfl.DepthwiseConv2DOptionsEnd(b)

            self.op("DEPTHWISE_CONV_2D", [x_index, w_index, b_index], [out.index], 3, options)
        else:

            def options(b: object) -> tuple[int, int]:
                tfl.Conv2DOptionsStart(b)
                tfl.Conv2DOptionsAddPadding(b, padding)
                tfl.Conv2DOptionsAddStrideH(b, sh)
                tfl.Conv2DOptionsAddStrideW(b, sw)
                tfl.Conv2DOptionsAddDilationHFactor(b, dh)
                tfl.Conv2DOptionsAddDilationWFactor(b, dw)
                tfl.Conv2DOptionsAddFusedActivationFunction(b, act)
                return tfl.BuiltinOptions.Conv2DOptions, tfl.Conv2DOptionsEnd(b)

            self.op("CONV_2D", [x_index, w_index, b_index], [out.index], 3, options)
        self.done.add(requant.name)

    def padded(
        self,
        node: NodeProto,
        x: _Value,
        pads: Sequence[int],
        kernel: Sequence[int],
        strides: Sequence[int],
        dilations: Sequence[int],
    ) -> int | None:
        """None when ONNX `pads` [t, l, b, r] are TFLite's SAME; else the index of the input to a VALID op: the input
        itself (no padding) or a PAD of it (filled with the zero point, which is real 0)."""
        if not x.nhwc:
            raise self.error(node, "its input is not a 4-D NHWC tensor")
        spatial = self.flat.tensors[x.index].shape[1:3]
        same = [_same_pads(s, k, st, d) for s, k, st, d in zip(spatial, kernel, strides, dilations, strict=True)]
        if list(pads) == [same[0][0], same[1][0], same[0][1], same[1][1]] and any(pads):
            return None
        if not any(pads):
            return x.index
        t, left, b, r = pads
        shape = self.flat.tensors[x.index].shape
        padded_shape = [shape[0], shape[1] + t + b, shape[2] + left + r, shape[3]]
        tensor = self.flat.tensors[x.index]
        out = self.add_tensor(
            _Tensor(
                f"{node.name}/padded", padded_shape, self.tfl.TensorType.INT8, None, tensor.scale, tensor.zero_point
            )
        )
        paddings = self.int32(f"{node.name}/paddings", [0, 0, t, b, left, r, 0, 0])
        self.flat.tensors[paddings].shape = [4, 2]
        self.op("PAD", [x.index, paddings], [out], version=2)
        return out

    def check_requantize(self, node: NodeProto, reals: np.ndarray) -> None:
        """The multipliers TFLite will derive from the written scales must be the device graph's."""
        multipliers, shifts = kernels.quantize_multipliers(np.asarray(reals, np.float64).reshape(-1), "tflite_double")
        wanted_m = self.inits[node.input[1]].reshape(-1)
        wanted_s = self.inits[node.input[2]].reshape(-1)
        if not (
            np.array_equal(np.broadcast_to(multipliers, wanted_m.shape), wanted_m)
            and np.array_equal(np.broadcast_to(shifts, wanted_s.shape), wanted_s)
        ):
            raise self.error(node, "the scales written would give TFLite other multipliers than the device graph")

    def int_matmul(self, node: NodeProto) -> None:
        requant = self.single_consumer(node.output[0], "Requantize", node)
        a = self.value(node.input[0], node)
        if node.input[1] not in self.inits:
            raise self.error(node, "a MatMul of two activations (BATCH_MATMUL) is not written")
        weights = self.inits[node.input[1]]
        if node.input[0] in self.row_order:
            weights = weights[self.row_order[node.input[0]], :]
        if weights.dtype != np.int8:
            raise self.error(node, "its weights have a non-zero zero point (TFLite needs symmetric int8 weights)")
        if a.nhwc:
            raise self.error(node, "its input is a 4-D activation (FULLY_CONNECTED takes [..., K])")
        n = weights.shape[1]
        scales = self.device.weight_scales[node.input[1]].reshape(-1).astype(np.float32)
        w_scale = scales if scales.size == n else np.broadcast_to(scales, (1,)).astype(np.float32)
        w_index = self.constant(
            node.input[1], weights.T, self.tfl.TensorType.INT8, w_scale, np.zeros(w_scale.size, np.int64), 0
        )
        bias = self.inits[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(n, np.int32)
        bias_scale = (np.float64(a.params.scale) * w_scale.astype(np.float64)).astype(np.float32)
        b_index = self.constant(
            f"{node.name}/bias",
            np.broadcast_to(bias.reshape(-1), (n,)).astype(np.int32),
            self.tfl.TensorType.INT32,
            bias_scale,
            np.zeros(bias_scale.size, np.int64),
        )
        out = self.output(requant.output[0], requant, nhwc=False)
        act = self.fused(requant, self.device.params[requant.output[0]], *_bounds(requant))
        self.check_requantize(requant, np.float64(a.params.scale) * w_scale.astype(np.float64) / out.params.scale)
        keep = len(self.flat.tensors[a.index].shape) > 2
        tfl = self.tfl

        def options(b: object) -> tuple[int, int]:
            tfl.FullyConnectedOptionsStart(b)
            tfl.FullyConnectedOptionsAddFusedActivationFunction(b, act)
            tfl.FullyConnectedOptionsAddKeepNumDims(b, keep)
            return tfl.BuiltinOptions.FullyConnectedOptions, tfl.FullyConnectedOptionsEnd(b)

        self.op("FULLY_CONNECTED", [a.index, w_index, b_index], [out.index], 5 if keep else 4, options)
        self.done.add(requant.name)

    def int_add(self, node: NodeProto) -> None:
        attrs = NodeAttributes(node)
        a, b = self.binary_operands(node)
        out = self.output(node.output[0], node, nhwc=a.nhwc or b.nhwc)
        act = self.fused(node, self.device.params[node.output[0]], attrs.integer("qmin"), attrs.integer("qmax"))
        subtract = attrs.integer("subtract", 0)
        tfl = self.tfl

        def options(builder: object) -> tuple[int, int]:
            if subtract:
                tfl.SubOptionsStart(builder)
                tfl.SubOptionsAddFusedActivationFunction(builder, act)
                return tfl.BuiltinOptions.SubOptions, tfl.SubOptionsEnd(builder)
            tfl.AddOptionsStart(builder)
            tfl.AddOptionsAddFusedActivationFunction(builder, act)
            return tfl.BuiltinOptions.AddOptions, tfl.AddOptionsEnd(builder)

        self.op("SUB" if subtract else "ADD", [a.index, b.index], [out.index], 2, options)

    def binary_operands(self, node: NodeProto) -> tuple[_Value, _Value]:
        """Both operands, a constant laid out like the activation it meets."""
        names = node.input[:2]
        activations = [self.values.get(n) for n in names]
        if all(v is None for v in activations):
            raise self.error(node, "both operands are constants")
        like = next(v for v in activations if v is not None)
        a, b = (
            v if v is not None else self.constant_operand(n, node, like) if n in self.device.params else None
            for v, n in zip(activations, names, strict=True)
        )
        if a is None or b is None:
            raise self.error(node, "an operand is not an int8 tensor")
        for v in (a, b):
            if not v.nhwc and like.nhwc and len(self.flat.tensors[v.index].shape) not in (0, 1):
                raise self.error(node, "it broadcasts a non-4-D tensor against a 4-D one")
        return a, b

    def int_mul(self, node: NodeProto) -> None:
        requant = self.single_consumer(node.output[0], "Requantize", node)
        a, b = self.binary_operands(node)
        out = self.output(requant.output[0], requant, nhwc=a.nhwc or b.nhwc)
        act = self.fused(requant, self.device.params[requant.output[0]], *_bounds(requant))
        self.check_requantize(
            requant, np.float64(a.params.scale) * np.float64(np.float32(b.params.scale)) / out.params.scale
        )
        tfl = self.tfl

        def options(builder: object) -> tuple[int, int]:
            tfl.MulOptionsStart(builder)
            tfl.MulOptionsAddFusedActivationFunction(builder, act)
            return tfl.BuiltinOptions.MulOptions, tfl.MulOptionsEnd(builder)

        self.op("MUL", [a.index, b.index], [out.index], 2, options)
        self.done.add(requant.name)

    def requantize(self, node: NodeProto) -> None:
        """A rescale (int8 → int8 QUANTIZE), or a Relu/Clip between different parameters (RELU / RELU6 ...)."""
        x = self.value(node.input[0], node)
        if self.inits.get(node.input[1]) is None:
            raise self.error(node, "its multiplier is not constant")
        out = self.output(node.output[0], node, nhwc=x.nhwc)
        out_params = self.device.params[node.output[0]]
        self.check_requantize(node, np.float64(x.params.scale) / np.float64(out.params.scale))
        act = self.fused(node, out_params, *_bounds(node))
        name = self.tfl.ActivationFunctionType
        if act == name.NONE:
            self.op("QUANTIZE", [x.index], [out.index])
            return
        code = {name.RELU: "RELU", name.RELU6: "RELU6", name.RELU_N1_TO_1: "RELU_N1_TO_1"}[act]
        self.op(code, [x.index], [out.index], 2)

    def clip(self, node: NodeProto) -> None:
        """Relu/Clip on one set of parameters: RELU, RELU6, RELU_N1_TO_1 (same parameters in and out)."""
        x = self.value(node.input[0], node)
        low, high = (int(self.inits[n]) for n in node.input[1:3])
        out = self.output(node.output[0], node, nhwc=x.nhwc)
        act = self.fused(node, self.device.params[node.output[0]], low, high)
        name = self.tfl.ActivationFunctionType
        codes = {name.RELU: "RELU", name.RELU6: "RELU6", name.RELU_N1_TO_1: "RELU_N1_TO_1"}
        if act not in codes:
            raise self.error(node, "a clamp to the full range is not an op")
        self.op(codes[act], [x.index], [out.index], 2)

    def lut(self, node: NodeProto) -> None:
        function = self.device.functions.get(node.name)
        code = {"Sigmoid": "LOGISTIC", "Tanh": "TANH"}.get(function or "")
        if code is None:
            raise self.error(node, f"a lookup table of {function} has no TFLite op")
        x = self.value(node.input[0], node)
        out = self.output(node.output[0], node, nhwc=x.nhwc)
        self.fixed_output(node, code, out)
        self.approximate.add(code)
        self.op(code, [x.index], [out.index], 2)

    def fixed_output(self, node: NodeProto, code: str, out: _Value) -> None:
        scale, zero_point = _FIXED_OUTPUTS[code]
        if not (np.float32(out.params.scale) == np.float32(scale) and out.params.zero_point == zero_point):
            raise self.error(
                node,
                f"{code} needs output scale {scale} and zero point {zero_point} (quantization spec), the model has "
                f"{out.params.scale:g} and {out.params.zero_point}: quantize with the profile's fixed_output_params",
            )

    def int_average_pool(self, node: NodeProto) -> None:
        attrs = NodeAttributes(node)
        x = self.value(node.input[0], node)
        kernel, strides = attrs.integers("kernel_shape"), attrs.integers("strides")
        pads = attrs.integers("pads")
        x_index = self.padded(node, x, pads, kernel, strides, [1, 1])
        if x_index is not None and x_index != x.index:
            raise self.error(node, "average pooling with padding other than SAME or none is not written")
        if x_index is None and attrs.integer("count_include_pad", 0):
            raise self.error(node, "TFLite's SAME average pooling does not count the padding")
        out = self.output(node.output[0], node, nhwc=True)
        self.pool("AVERAGE_POOL_2D", x.index if x_index is None else x_index, out.index, kernel, strides, x_index)

    def pool(
        self, code: str, x: int, out: int, kernel: Sequence[int], strides: Sequence[int], valid: int | None
    ) -> None:
        tfl = self.tfl
        padding = tfl.Padding.SAME if valid is None else tfl.Padding.VALID

        def options(b: object) -> tuple[int, int]:
            tfl.Pool2DOptionsStart(b)
            tfl.Pool2DOptionsAddPadding(b, padding)
            tfl.Pool2DOptionsAddStrideH(b, strides[0])
            tfl.Pool2DOptionsAddStrideW(b, strides[1])
            tfl.Pool2DOptionsAddFilterHeight(b, kernel[0])
            tfl.Pool2DOptionsAddFilterWidth(b, kernel[1])
            tfl.Pool2DOptionsAddFusedActivationFunction(b, tfl.ActivationFunctionType.NONE)
            return tfl.BuiltinOptions.Pool2DOptions, tfl.Pool2DOptionsEnd(b)

        self.op(code, [x], [out], 2, options)

    def int_mean(self, node: NodeProto) -> None:
        attrs = NodeAttributes(node)
        x = self.value(node.input[0], node)
        axes = attrs.integers("axes")
        tflite_axes = [FROM_NHWC[a] for a in axes] if x.nhwc else axes
        out = self.output(node.output[0], node, nhwc=x.nhwc)
        axes_index = self.int32(f"{node.name}/axes", sorted(tflite_axes))
        tfl = self.tfl

        def options(b: object) -> tuple[int, int]:
            tfl.ReducerOptionsStart(b)
            tfl.ReducerOptionsAddKeepDims(b, True)
            return tfl.BuiltinOptions.ReducerOptions, tfl.ReducerOptionsEnd(b)

        self.op("MEAN", [x.index, axes_index], [out.index], 2, options)

    # --- standard ops on integers ------------------------------------------------------------------------------------

    def identity(self, node: NodeProto) -> None:
        """A copy: an alias of an integer tensor, or (dequantize → Identity → quantize) a requantization. A graph
        output that copies another tensor (Paddle exports end in `Identity`) is that tensor, unless it is an output
        too: TFLite lists each tensor once."""
        if node.output[0] in self.outputs and (node.input[0] in self.outputs or node.input[0] not in self.values):
            raise self.error(node, "an output that is a copy of another output or of a float tensor is not written")
        if node.input[0] in self.values:
            self.values[node.output[0]] = self.values[node.input[0]]
            if node.output[0] in self.outputs:  # runtimes find outputs by tensor name
                self.flat.tensors[self.values[node.input[0]].index].name = node.output[0]
            return
        if self.producer_op(node.input[0]) != "Dequantize":
            raise self.error(node, "its input is not a dequantized int8 tensor")
        x = self.value(self.producer(node.input[0]).input[0], node)
        quantize = self.single_consumer(node.output[0], "Quantize", node)
        params = self.device.params[quantize.output[0]]
        if _int8(params) == x.params:
            self.values[quantize.output[0]] = x
        else:
            out = self.output(quantize.output[0], quantize, nhwc=x.nhwc)
            self.op("QUANTIZE", [x.index], [out.index])
        self.done.add(quantize.name)

    def reshape(self, node: NodeProto) -> None:
        x = self.value(node.input[0], node)
        shape = self.shape(node.output[0], node)
        if x.nhwc and self.flattens_into_dense(node, shape):
            # Flatten → FULLY_CONNECTED: flatten NHWC as is and permute the weights' rows instead (no TRANSPOSE,
            # which the Edge TPU does not map), as TFLite converters do.
            _, h, w, c = self.flat.tensors[x.index].shape
            self.row_order[node.output[0]] = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
            out = self.output(node.output[0], node, nhwc=False)
            self.reshape_op(node, x.index, out.index, shape)
            return
        source = x.index
        if x.nhwc:  # back to ONNX's element order before flattening
            source = self.transposed(node, x.index, list(FROM_NHWC), "nchw")
        nhwc = len(shape) == 4
        params = self.device.params.get(node.output[0])  # None in a float tail
        if nhwc:
            flat = self.activation(f"{node.output[0]}/nchw", shape, params, nhwc=False)
            self.reshape_op(node, source, flat.index, shape)
            out = self.output(node.output[0], node, nhwc=True)
            self.flat.ops.append(
                _Op(
                    self.tfl.BuiltinOperator.TRANSPOSE,
                    2,
                    [flat.index, self.int32(f"{node.name}/perm", TO_NHWC)],
                    [out.index],
                )
            )
            return
        out = self.output(node.output[0], node, nhwc=False)
        self.reshape_op(node, source, out.index, shape)

    def flattens_into_dense(self, node: NodeProto, shape: list[int]) -> bool:
        """A [N, C·H·W] flatten read only as the input of FULLY_CONNECTEDs with constant weights."""
        users = self.consumers.get(node.output[0], [])
        return (
            len(shape) == 2
            and node.output[0] not in self.outputs
            and bool(users)
            and all(
                u.domain == DEVICE_DOMAIN
                and u.op_type == "IntMatMul"
                and u.input[0] == node.output[0]
                and u.input[1] in self.inits
                for u in users
            )
        )

    def reshape_op(self, node: NodeProto, source: int, out: int, shape: list[int]) -> None:
        self.op("RESHAPE", [source, self.int32(f"{node.name}/shape", shape)], [out])

    def transposed(self, node: NodeProto, source: int, perm: list[int], hint: str) -> int:
        tensor = self.flat.tensors[source]
        out = self.add_tensor(
            _Tensor(
                f"{node.name}/{hint}",
                [tensor.shape[p] for p in perm],
                tensor.dtype,
                None,
                tensor.scale,
                tensor.zero_point,
            )
        )
        self.op("TRANSPOSE", [source, self.int32(f"{node.name}/{hint}_perm", perm)], [out], 2)
        return out

    def transpose(self, node: NodeProto) -> None:
        x = self.value(node.input[0], node)
        rank = len(self.flat.tensors[x.index].shape)
        perm = NodeAttributes(node).integers("perm", list(reversed(range(rank))))
        out_nhwc = rank == 4
        to_onnx = list(FROM_NHWC) if x.nhwc else list(range(rank))
        stored_out = list(TO_NHWC) if out_nhwc else list(range(rank))
        tflite_perm = [to_onnx[perm[q]] for q in stored_out]
        out = self.output(node.output[0], node, nhwc=out_nhwc)
        self.op("TRANSPOSE", [x.index, self.int32(f"{node.name}/perm", tflite_perm)], [out.index], 2)

    def max_pool(self, node: NodeProto) -> None:
        attrs = NodeAttributes(node)
        x = self.value(node.input[0], node)
        kernel = attrs.integers("kernel_shape")
        strides = attrs.integers("strides", [1] * len(kernel))
        if (
            len(kernel) != 2
            or attrs.integer("ceil_mode", 0)
            or any(d != 1 for d in attrs.integers("dilations", [1, 1]))
        ):
            raise self.error(node, "only 2-D max pooling without ceil_mode or dilations is written")
        if attrs.text("auto_pad", "NOTSET") not in ("NOTSET", "", "VALID", "SAME_UPPER"):
            raise self.error(node, "auto_pad SAME_LOWER is not TFLite's SAME")
        auto = attrs.text("auto_pad", "NOTSET")
        pads = attrs.integers("pads", [0, 0, 0, 0]) if auto in ("NOTSET", "") else [0, 0, 0, 0]
        if auto == "SAME_UPPER":
            spatial = self.flat.tensors[x.index].shape[1:3]
            same = [_same_pads(s, k, st, 1) for s, k, st in zip(spatial, kernel, strides, strict=True)]
            pads = [same[0][0], same[1][0], same[0][1], same[1][1]]
        if any(pads):
            spatial = self.flat.tensors[x.index].shape[1:3]
            same = [_same_pads(s, k, st, 1) for s, k, st in zip(spatial, kernel, strides, strict=True)]
            if pads != [same[0][0], same[1][0], same[0][1], same[1][1]]:
                raise self.error(node, f"max pooling pads {pads} are neither SAME nor none")
        out = self.output(node.output[0], node, nhwc=True)
        self.pool("MAX_POOL_2D", x.index, out.index, kernel, strides, None if any(pads) else x.index)

    def concat(self, node: NodeProto) -> None:
        inputs = [self.value(name, node) for name in node.input]
        out = self.output(node.output[0], node)
        rank = len(self.shape(node.output[0], node))
        axis = NodeAttributes(node).integer("axis") % rank
        if any(v.nhwc != out.nhwc for v in inputs):
            raise self.error(node, "its inputs are laid out differently")
        if len({v.params is None for v in inputs}) != 1:
            raise self.error(node, "it joins int8 and float tensors")
        tflite_axis = FROM_NHWC[axis] if out.nhwc else axis
        tfl = self.tfl

        def options(b: object) -> tuple[int, int]:
            tfl.ConcatenationOptionsStart(b)
            tfl.ConcatenationOptionsAddAxis(b, tflite_axis)
            return tfl.BuiltinOptions.ConcatenationOptions, tfl.ConcatenationOptionsEnd(b)

        self.op("CONCATENATION", [v.index for v in inputs], [out.index], 2, options)

    def pad(self, node: NodeProto) -> None:
        attrs = NodeAttributes(node)
        if attrs.text("mode", "constant") != "constant":
            raise self.error(node, "only constant padding is written")
        x = self.value(node.input[0], node)
        pads = self.inits.get(node.input[1]) if len(node.input) > 1 else None
        if pads is None:
            raise self.error(node, "its pads are not constant")
        if len(node.input) > 3 and node.input[3]:
            raise self.error(node, "padding selected axes is not written")
        out = self.output(node.output[0], node, nhwc=x.nhwc)
        fill = self.inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if fill is not None and int(fill) != self.device.params[node.output[0]].zero_point:
            raise self.error(node, "a fill value other than real 0 (PADV2) is not written")
        rank = len(self.flat.tensors[x.index].shape)
        pads = pads.reshape(-1).astype(np.int64)
        order = TO_NHWC if x.nhwc else range(rank)
        paddings = [int(v) for axis in order for v in (pads[axis], pads[axis + rank])]
        index = self.int32(f"{node.name}/paddings", paddings)
        self.flat.tensors[index].shape = [rank, 2]
        self.op("PAD", [x.index, index], [out.index], 2)

    def slice(self, node: NodeProto) -> None:
        """Slice with constant starts/ends/axes/steps → STRIDED_SLICE (axes remapped to NHWC)."""
        x = self.value(node.input[0], node)
        shape = self.shape(node.input[0], node)
        rank = len(shape)
        params = [self.inits.get(name) if name else None for name in [*node.input[1:], "", "", ""][:4]]
        starts, ends, axes, steps = params
        if starts is None or ends is None or (len(node.input) > 3 and node.input[3] and axes is None):
            raise self.error(node, "its starts/ends/axes/steps are not constant")
        axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes.reshape(-1)]
        steps = [1] * len(axes) if steps is None else [int(s) for s in steps.reshape(-1)]
        begin, end, stride = [0] * rank, list(shape), [1] * rank
        for axis, start, stop, step in zip(axes, starts.reshape(-1), ends.reshape(-1), steps, strict=True):
            if step <= 0:
                raise self.error(node, "only positive slice steps are written")
            size = shape[axis]
            start = int(start) + size if start < 0 else int(start)
            stop = int(stop) + size if stop < 0 else int(stop)
            begin[axis], end[axis], stride[axis] = min(max(start, 0), size), min(max(stop, 0), size), step
        order = list(TO_NHWC) if x.nhwc else list(range(rank))
        out = self.output(node.output[0], node, nhwc=x.nhwc)
        vectors = [
            self.int32(f"{node.name}/{what}", [v[a] for a in order])
            for what, v in (("begin", begin), ("end", end), ("strides", stride))
        ]
        tfl = self.tfl

        def options(b: object) -> tuple[int, int]:
            tfl.StridedSliceOptionsStart(b)
            return tfl.BuiltinOptions.StridedSliceOptions, tfl.StridedSliceOptionsEnd(b)

        self.op("STRIDED_SLICE", [x.index, *vectors], [out.index], 2, options)

    def split(self, node: NodeProto) -> None:
        """Split along one axis → SPLIT_V (sizes from the outputs' static shapes)."""
        x = self.value(node.input[0], node)
        rank = len(self.shape(node.input[0], node))
        axis = NodeAttributes(node).integer("axis", 0) % rank
        outs = [self.output(name, node, nhwc=x.nhwc) for name in node.output]
        sizes = [self.shape(name, node)[axis] for name in node.output]
        tflite_axis = FROM_NHWC[axis] if x.nhwc else axis
        size_index = self.int32(f"{node.name}/sizes", sizes)
        axis_index = self.int32(f"{node.name}/axis", [tflite_axis])
        self.flat.tensors[axis_index].shape = []
        tfl, count = self.tfl, len(outs)

        def options(b: object) -> tuple[int, int]:
            tfl.SplitVOptionsStart(b)
            tfl.SplitVOptionsAddNumSplits(b, count)
            return tfl.BuiltinOptions.SplitVOptions, tfl.SplitVOptionsEnd(b)

        self.op("SPLIT_V", [x.index, size_index, axis_index], [o.index for o in outs], 2, options)

    def space_to_depth(self, node: NodeProto) -> None:
        """SpaceToDepth → SPACE_TO_DEPTH: both put block offset (dy, dx) at depth block `dy·b + dx` (NHWC depth is
        ONNX's channel), with one scale in and out (the device graph requantized the input to the output's)."""
        x = self.value(node.input[0], node)
        if not x.nhwc:
            raise self.error(node, "only a 4-D input is written")
        out = self.output(node.output[0], node, nhwc=True)
        block, tfl = NodeAttributes(node).integer("blocksize"), self.tfl

        def options(b: object) -> tuple[int, int]:
            tfl.SpaceToDepthOptionsStart(b)
            tfl.SpaceToDepthOptionsAddBlockSize(b, block)
            return tfl.BuiltinOptions.SpaceToDepthOptions, tfl.SpaceToDepthOptionsEnd(b)

        self.op("SPACE_TO_DEPTH", [x.index], [out.index], 2, options)

    def min_max(self, node: NodeProto) -> None:
        if len(node.input) != 2:
            raise self.error(node, "only two operands are written")
        a, b = self.binary_operands(node)
        out = self.output(node.output[0], node, nhwc=a.nhwc or b.nhwc)
        self.op("MAXIMUM" if node.op_type == "Max" else "MINIMUM", [a.index, b.index], [out.index], 2)

    def resize(self, node: NodeProto) -> None:
        """Resize of one scale in and out: nearest (device graph) or bilinear (float op in the device graph)."""
        attrs = NodeAttributes(node)
        dequantized = node.domain != DEVICE_DOMAIN and self.producer_op(node.input[0]) == "Dequantize"
        mode = attrs.text("mode", "nearest")
        coordinate = attrs.text("coordinate_transformation_mode", "half_pixel")
        x_name = self.producer(node.input[0]).input[0] if dequantized else node.input[0]
        x = self.value(x_name, node)
        if not x.nhwc:
            raise self.error(node, "only 4-D resizes are written")
        quantize = self.single_consumer(node.output[0], "Quantize", node) if dequantized else None
        target = quantize.output[0] if quantize is not None else node.output[0]
        out = self.output(target, quantize or node, nhwc=True)
        shape = self.flat.tensors[out.index].shape
        in_shape = self.flat.tensors[x.index].shape
        if mode == "nearest":
            nearest = attrs.text("nearest_mode", "round_prefer_floor")
            align, half = self.nearest_mapping(node, coordinate, nearest, in_shape, shape)
            code = "RESIZE_NEAREST_NEIGHBOR"
        elif mode == "linear" and coordinate in ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners"):
            if coordinate == "pytorch_half_pixel" and min(shape[1:3]) == 1:
                raise self.error(node, "pytorch_half_pixel to a size of 1 differs from TFLite's half_pixel_centers")
            align, half = coordinate == "align_corners", coordinate in ("half_pixel", "pytorch_half_pixel")
            code = "RESIZE_BILINEAR"
            self.approximate.add(code)
            if out.params != _int8(self.device.params.get(x_name, out.params)):
                raise self.error(node, "bilinear resizing between different parameters is not written")
        else:
            raise self.error(node, f"resize mode {mode!r} with {coordinate!r} has no TFLite op")
        size = self.int32(f"{node.name}/size", shape[1:3])
        tfl = self.tfl

        def options(b: object) -> tuple[int, int]:
            if code == "RESIZE_BILINEAR":
                tfl.ResizeBilinearOptionsStart(b)
                tfl.ResizeBilinearOptionsAddAlignCorners(b, align)
                tfl.ResizeBilinearOptionsAddHalfPixelCenters(b, half)
                return tfl.BuiltinOptions.ResizeBilinearOptions, tfl.ResizeBilinearOptionsEnd(b)
            tfl.ResizeNearestNeighborOptionsStart(b)
            tfl.ResizeNearestNeighborOptionsAddAlignCorners(b, align)
            tfl.ResizeNearestNeighborOptionsAddHalfPixelCenters(b, half)
            return tfl.BuiltinOptions.ResizeNearestNeighborOptions, tfl.ResizeNearestNeighborOptionsEnd(b)

        self.op(code, [x.index, size], [out.index], 3 if (align or half) else 2, options)
        if quantize is not None:
            self.done.add(quantize.name)

    def nearest_mapping(
        self, node: NodeProto, coordinate: str, nearest: str, in_shape: list[int], out_shape: list[int]
    ) -> tuple[bool, bool]:
        """(align_corners, half_pixel_centers) of a RESIZE_NEAREST_NEIGHBOR selecting ONNX's source pixels: checked
        index by index on the actual sizes (TFLite: floor, or round with align_corners / half-pixel offsets)."""
        for align, half in ((False, False), (False, True), (True, False)):
            if all(
                np.array_equal(_onnx_nearest(i, o, coordinate, nearest), _tflite_nearest(i, o, align, half))
                for i, o in zip(in_shape[1:3], out_shape[1:3], strict=True)
            ):
                return align, half
        raise self.error(node, f"nearest resizing with {coordinate!r}/{nearest!r} picks other pixels than TFLite's")

    def producer(self, name: str) -> NodeProto:
        return self.producers[name]

    def producer_op(self, name: str) -> str | None:
        return self.producers[name].op_type if name in self.producers else None

    def float_op(self, node: NodeProto) -> None:
        """Dequantize → Softmax / HardSwish / bilinear Resize / Sigmoid / Tanh → Quantize: one int8 TFLite op."""
        if node.op_type == "Resize":
            self.resize(node)
            return
        if self.producer_op(node.input[0]) != "Dequantize":
            raise self.error(node, "its input is not a dequantized int8 tensor")
        x = self.value(self.producer(node.input[0]).input[0], node)
        quantize = self.single_consumer(node.output[0], "Quantize", node)
        out = self.output(quantize.output[0], quantize, nhwc=x.nhwc)
        self.done.add(quantize.name)
        code = {"Softmax": "SOFTMAX", "HardSwish": "HARD_SWISH", "Sigmoid": "LOGISTIC", "Tanh": "TANH"}[node.op_type]
        self.approximate.add(code)
        options = None
        if code in _FIXED_OUTPUTS:
            self.fixed_output(node, code, out)
        if code == "SOFTMAX":
            rank = len(self.flat.tensors[x.index].shape)
            axis = NodeAttributes(node).integer("axis", -1) % rank
            if (FROM_NHWC[axis] if x.nhwc else axis) != rank - 1:
                raise self.error(node, "SOFTMAX runs over the innermost axis only")
            tfl = self.tfl

            def options(b: object) -> tuple[int, int]:
                tfl.SoftmaxOptionsStart(b)
                tfl.SoftmaxOptionsAddBeta(b, 1.0)
                return tfl.BuiltinOptions.SoftmaxOptions, tfl.SoftmaxOptionsEnd(b)

        self.op(code, [x.index], [out.index], 1 if code == "HARD_SWISH" else 2, options)

    def int_conv_transpose(self, node: NodeProto) -> None:
        """IntConvTranspose + Requantize → TRANSPOSE_CONV: weights ONNX [I, O, kh, kw] → [O, kh, kw, I] with per-axis
        scales on dim 0, int32 bias at `s_in · s_w[o]`, a fused RELU* (version 4) when the clamp narrows; SAME or
        VALID geometry only."""
        attrs = NodeAttributes(node)
        requant = self.single_consumer(node.output[0], "Requantize", node)
        x = self.value(node.input[0], node)
        weights = self.inits[node.input[1]]
        if weights.dtype != np.int8:
            raise self.error(node, "its weights have a non-zero zero point (TFLite needs symmetric int8 weights)")
        source = self.device.params.get(node.input[0])
        if source is None or attrs.integer("x_zero_point") != source.zero_point:
            raise self.error(node, "its input zero point disagrees with the device graph")
        _, out_channels, kh, kw = weights.shape
        strides = attrs.integers("strides")
        if any(d != 1 for d in attrs.integers("dilations")) or any(attrs.integers("output_padding")):
            raise self.error(node, "dilations and output_padding are not written")
        out = self.output(requant.output[0], requant)
        in_shape, out_shape = self.flat.tensors[x.index].shape, self.flat.tensors[out.index].shape
        valid = [(i - 1) * s + k for i, s, k in zip(in_shape[1:3], strides, (kh, kw), strict=True)]
        same = [i * s for i, s in zip(in_shape[1:3], strides, strict=True)]
        pads = attrs.integers("pads")
        totals = [v - o for v, o in zip(valid, out_shape[1:3], strict=True)]
        if out_shape[1:3] == valid and not any(pads):
            padding = self.tfl.Padding.VALID
        elif out_shape[1:3] == same and pads == [
            totals[0] // 2,
            totals[1] // 2,
            totals[0] - totals[0] // 2,
            totals[1] - totals[1] // 2,
        ]:
            padding = self.tfl.Padding.SAME
        else:
            raise self.error(node, f"pads {pads} give neither TFLite's SAME nor VALID output size")
        scales = self.device.weight_scales[node.input[1]]
        w_scale = np.broadcast_to(scales.reshape(-1), (out_channels,)).astype(np.float32)
        w_index = self.constant(
            node.input[1],
            weights.transpose(1, 2, 3, 0),
            self.tfl.TensorType.INT8,
            w_scale,
            np.zeros(out_channels, np.int64),
            0,
        )
        inputs = [self.int32(f"{node.name}/output_shape", out_shape), w_index, x.index]
        if len(node.input) > 2 and node.input[2]:
            bias_scale = (np.float64(x.params.scale) * w_scale.astype(np.float64)).astype(np.float32)
            inputs.append(
                self.constant(
                    f"{node.name}/bias",
                    np.broadcast_to(self.inits[node.input[2]].reshape(-1), (out_channels,)).astype(np.int32),
                    self.tfl.TensorType.INT32,
                    bias_scale,
                    np.zeros(out_channels, np.int64),
                )
            )
        act = self.fused(requant, self.device.params[requant.output[0]], *_bounds(requant))
        self.check_requantize(requant, x.params.scale * w_scale.astype(np.float64) / out.params.scale)
        tfl, (sh, sw) = self.tfl, strides

        def options(b: object) -> tuple[int, int]:
            tfl.TransposeConvOptionsStart(b)
            tfl.TransposeConvOptionsAddPadding(b, padding)
            tfl.TransposeConvOptionsAddStrideH(b, sh)
            tfl.TransposeConvOptionsAddStrideW(b, sw)
            tfl.TransposeConvOptionsAddFusedActivationFunction(b, act)
            return tfl.BuiltinOptions.TransposeConvOptions, tfl.TransposeConvOptionsEnd(b)

        # op_version.cc: a fused activation needs version 4, a bias 3, int8 2.
        version = 4 if act != tfl.ActivationFunctionType.NONE else 3 if len(inputs) > 3 else 2
        self.op("TRANSPOSE_CONV", inputs, [out.index], version, options)
        self.done.add(requant.name)

    # --- serialization -----------------------------------------------------------------------------------------------

    def serialize(self, joins: list[TfliteOutputJoin]) -> TfliteExport:
        tfl, b = self.tfl, self.fb.Builder(4096)
        codes: list[tuple[int, int]] = []
        for op in self.flat.ops:
            if (op.code, op.version) not in codes:
                codes.append((op.code, op.version))
        buffers = [_empty_buffer(tfl, b)]
        tensor_offsets = []
        for tensor in self.flat.tensors:
            buffer_index = 0
            if tensor.data is not None:
                buffers.append(_data_buffer(tfl, b, tensor.data))
                buffer_index = len(buffers) - 1
            tensor_offsets.append(_tensor(tfl, b, tensor, buffer_index))
        op_offsets = []
        for op in self.flat.ops:
            options = op.options(b) if op.options is not None else None
            inputs = b.CreateNumpyVector(np.asarray(op.inputs, np.int32))
            outputs = b.CreateNumpyVector(np.asarray(op.outputs, np.int32))
            tfl.OperatorStart(b)
            tfl.OperatorAddOpcodeIndex(b, codes.index((op.code, op.version)))
            tfl.OperatorAddInputs(b, inputs)
            tfl.OperatorAddOutputs(b, outputs)
            if options is not None:
                tfl.OperatorAddBuiltinOptionsType(b, options[0])
                tfl.OperatorAddBuiltinOptions(b, options[1])
            op_offsets.append(tfl.OperatorEnd(b))
        tensors = _table_vector(b, tensor_offsets)
        operators = _table_vector(b, op_offsets)
        inputs = b.CreateNumpyVector(np.asarray(self.flat.inputs, np.int32))
        outputs = b.CreateNumpyVector(np.asarray(self.flat.outputs, np.int32))
        name = b.CreateString("main")
        tfl.SubGraphStart(b)
        tfl.SubGraphAddTensors(b, tensors)
        tfl.SubGraphAddInputs(b, inputs)
        tfl.SubGraphAddOutputs(b, outputs)
        tfl.SubGraphAddOperators(b, operators)
        tfl.SubGraphAddName(b, name)
        subgraph = tfl.SubGraphEnd(b)
        code_offsets = []
        for code, version in codes:
            tfl.OperatorCodeStart(b)
            tfl.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            tfl.OperatorCodeAddBuiltinCode(b, code)
            tfl.OperatorCodeAddVersion(b, version)
            code_offsets.append(tfl.OperatorCodeEnd(b))
        operator_codes = _table_vector(b, code_offsets)
        subgraphs = _table_vector(b, [subgraph])
        buffer_vector = _table_vector(b, buffers)
        description = b.CreateString("autoptq")
        tfl.ModelStart(b)
        tfl.ModelAddVersion(b, 3)
        tfl.ModelAddOperatorCodes(b, operator_codes)
        tfl.ModelAddSubgraphs(b, subgraphs)
        tfl.ModelAddDescription(b, description)
        tfl.ModelAddBuffers(b, buffer_vector)
        b.Finish(tfl.ModelEnd(b), file_identifier=b"TFL3")
        names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
        counts: dict[str, int] = {}
        for op in self.flat.ops:
            counts[names[op.code]] = counts.get(names[op.code], 0) + 1
        return TfliteExport(
            content=bytes(b.Output()),
            inputs=self.io_in,
            outputs=self.io_out,
            output_names=[value.name for value in self.graph.output],
            output_joins=joins,
            op_counts=dict(sorted(counts.items())),
            approximate_ops=sorted(self.approximate),
            arena_estimate=self.arena_estimate(names),
            tensor_ops={self.flat.tensors[out].name: names[op.code] for op in self.flat.ops for out in op.outputs},
            tensor_inputs={
                self.flat.tensors[out].name: [self.flat.tensors[i].name for i in op.inputs if i >= 0]
                for op in self.flat.ops
                for out in op.outputs
            },
            reordered_tensors=frozenset(self.row_order),
            # Graph I/O in another dtype (uint8) is a tensor of its own, in its value's layout.
            nhwc_tensors=frozenset(self.flat.tensors[v.index].name for v in self.values.values() if v.nhwc)
            | {io.name for io in (*self.io_in, *self.io_out) if io.perm is not None},
        )

    def arena_estimate(self, names: dict[int, str]) -> ArenaEstimate:
        """TFLM's arena: the peak of live activations over the op sequence plus its bookkeeping (ARENA_BASIS)."""
        tensors, ops = self.flat.tensors, self.flat.ops
        last_use = {index: len(ops) for index in self.flat.outputs}
        for position, op in enumerate(ops):
            for index in op.inputs:
                last_use[index] = max(last_use.get(index, position), position)
        first = {index: -1 for index in self.flat.inputs}
        for position, op in enumerate(ops):
            for index in op.outputs:
                first.setdefault(index, position)

        def size(index: int) -> int:
            tensor = tensors[index]
            width = {self.tfl.TensorType.INT32: 4, self.tfl.TensorType.FLOAT32: 4}.get(tensor.dtype, 1)
            return -(-int(np.prod(tensor.shape, dtype=np.int64)) * width // 16) * 16

        planned = max(
            (
                sum(size(i) for i, start in first.items() if start <= position <= last_use.get(i, start))
                for position in range(len(ops))
            ),
            default=0,
        )
        kernel_data = sum(
            _TFLM_WEIGHTED_OP + _TFLM_PER_CHANNEL * tensors[op.outputs[0]].shape[-1]
            if names[op.code] in _WEIGHTED
            else _TFLM_OTHER_OP
            for op in ops
        )
        # Before planning, TFLM's Prepare and planner take temporary space from the same head: ~64 B per activation.
        planned = max(planned, _TFLM_PREPARE_FIXED + _TFLM_PREPARE_PER_ACTIVATION * len(first))
        bookkeeping = (
            _TFLM_PER_TENSOR * len(tensors)
            + _TFLM_PER_OP * len(ops)
            + _TFLM_PER_IO * (len(self.flat.inputs) + len(self.flat.outputs))
            + kernel_data
            + _TFLM_FIXED
        )
        return ArenaEstimate(
            planned_activation_bytes=planned,
            bookkeeping_bytes=bookkeeping,
            total_bytes=planned + bookkeeping,
            basis=ARENA_BASIS,
        )


def _bounds(node: NodeProto) -> tuple[int, int]:
    attrs = NodeAttributes(node)
    return attrs.integer("qmin"), attrs.integer("qmax")


def _activation_range(params: QParams, low: float | None, high: float | None) -> tuple[int, int]:
    """TFLite's CalculateActivationRangeQuantized: `zp + round_half_away(float32(v) / float32(scale))`."""

    def quantized(value: float) -> int:
        return params.zero_point + int(
            kernels.round_half_away(np.asarray(np.float32(value) / np.float32(params.scale)))
        )

    qmin, qmax = -128, 127
    if low is not None:
        qmin = max(qmin, quantized(low))
    if high is not None:
        qmax = min(qmax, quantized(high))
    return qmin, qmax


def _onnx_nearest(size: int, out: int, coordinate: str, nearest: str) -> np.ndarray:
    """Source indices ONNX Resize (nearest) picks along one axis."""
    scale = out / size
    i = np.arange(out, dtype=np.float64)
    if coordinate == "asymmetric":
        x = i / scale
    elif coordinate == "align_corners":
        x = i * (size - 1) / (out - 1) if out > 1 else np.zeros(out)
    elif coordinate in ("half_pixel", "pytorch_half_pixel"):
        x = (i + 0.5) / scale - 0.5
    elif coordinate == "tf_half_pixel_for_nn":
        x = (i + 0.5) / scale
    else:
        return np.full(out, -1)
    rounders = {
        "round_prefer_floor": lambda v: np.where(v - np.floor(v) == 0.5, np.floor(v), np.round(v)),
        "round_prefer_ceil": lambda v: np.where(v - np.floor(v) == 0.5, np.ceil(v), np.round(v)),
        "floor": np.floor,
        "ceil": np.ceil,
    }
    return np.clip(rounders[nearest](x), 0, size - 1).astype(np.int64)


def _tflite_nearest(size: int, out: int, align: bool, half: bool) -> np.ndarray:
    """Source indices TFLite's RESIZE_NEAREST_NEIGHBOR picks (reference kernel, float32 scale)."""
    scale = np.float32((size - 1) / (out - 1)) if align and out > 1 else np.float32(size / out)
    offset = np.float32(0.5) if half else np.float32(0.0)
    i = np.arange(out, dtype=np.float32)
    v = (i + offset) * scale
    picked = np.round(v) if align else np.floor(v)
    return np.minimum(picked.astype(np.int64), size - 1)


def _empty_buffer(tfl: object, b: object) -> int:
    tfl.BufferStart(b)
    return tfl.BufferEnd(b)


def _data_buffer(tfl: object, b: object, data: bytes) -> int:
    """A constant buffer, aligned to 16 bytes as the schema's force_align asks."""
    b.StartVector(1, len(data), 16)
    b.head -= len(data)
    b.Bytes[b.head : b.head + len(data)] = data
    vector = b.EndVector()
    tfl.BufferStart(b)
    tfl.BufferAddData(b, vector)
    return tfl.BufferEnd(b)


def _tensor(tfl: object, b: object, tensor: _Tensor, buffer_index: int) -> int:
    name = b.CreateString(tensor.name)
    shape = b.CreateNumpyVector(np.asarray(tensor.shape, np.int32))
    quantization = None
    if tensor.scale is not None:
        scale = b.CreateNumpyVector(np.asarray(tensor.scale, np.float32).reshape(-1))
        zero_point = b.CreateNumpyVector(np.asarray(tensor.zero_point, np.int64).reshape(-1))
        tfl.QuantizationParametersStart(b)
        tfl.QuantizationParametersAddScale(b, scale)
        tfl.QuantizationParametersAddZeroPoint(b, zero_point)
        tfl.QuantizationParametersAddQuantizedDimension(b, tensor.axis)
        quantization = tfl.QuantizationParametersEnd(b)
    tfl.TensorStart(b)
    tfl.TensorAddShape(b, shape)
    tfl.TensorAddType(b, tensor.dtype)
    tfl.TensorAddBuffer(b, buffer_index)
    tfl.TensorAddName(b, name)
    if quantization is not None:
        tfl.TensorAddQuantization(b, quantization)
    return tfl.TensorEnd(b)


def _attributes(node: NodeProto) -> str:
    return ", ".join(f"{a.name}={onnx.helper.get_attribute_value(a)}" for a in node.attribute)


def _table_vector(b: object, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


_HANDLERS: dict[str, Callable[[_Writer, NodeProto], None]] = {
    "Quantize": _Writer.quantize,
    "Dequantize": _Writer.dequantize,
    "IntConv": _Writer.int_conv,
    "IntConvTranspose": _Writer.int_conv_transpose,
    "IntMatMul": _Writer.int_matmul,
    "IntAdd": _Writer.int_add,
    "IntMul": _Writer.int_mul,
    "Requantize": _Writer.requantize,
    "Lut": _Writer.lut,
    "IntAveragePool": _Writer.int_average_pool,
    "IntMean": _Writer.int_mean,
}
"""Device op → the TFLite op(s) it becomes (a Requantize after IntConv/IntConvTranspose/IntMatMul/IntMul is fused into
them)."""
_STANDARD: dict[str, Callable[[_Writer, NodeProto], None]] = {
    "Identity": _Writer.identity,
    "Dropout": _Writer.identity,
    "Reshape": _Writer.reshape,
    "Flatten": _Writer.reshape,
    "Squeeze": _Writer.reshape,
    "Unsqueeze": _Writer.reshape,
    "Transpose": _Writer.transpose,
    "MaxPool": _Writer.max_pool,
    "Concat": _Writer.concat,
    "Pad": _Writer.pad,
    "Slice": _Writer.slice,
    "Split": _Writer.split,
    "SpaceToDepth": _Writer.space_to_depth,
    "Max": _Writer.min_max,
    "Min": _Writer.min_max,
    "Clip": _Writer.clip,
    "Resize": _Writer.resize,
}
"""Standard ONNX ops the device graph runs on integers of one scale."""
