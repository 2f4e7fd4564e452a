"""The lowering context: device integer graph → standard ONNX ops that onnxruntime runs bit for bit (the exact tier).
The lowering of each device op is in its module of `autoptq.deploy.ops`; `autoptq.deploy.intgraph.lower` runs them.

Exactness rests on properties of IEEE arithmetic and of integer types, not on any kernel's summation order:

- float32 holds every integer of magnitude below 2^24, so a float Conv / MatMul of integer-valued tensors whose
  partial sums all stay below 2^24 is exact in any order (FMA or not). The bound is checked per output channel from
  the actual weights (`max|x − zp| · Σ|w| + |bias|`); above it the input channels are split into chunks whose
  convolutions are summed in int64, and MatMul runs in float64 (exact below 2^53).
- int64 Mul/Add/Sub are exact in range. uint64 arithmetic wraps modulo 2^64, so a signed value biased by 2^63 and
  shifted right (BitShift, unsigned only in ONNX) is an exact floor division by a power of two: the fixed-point
  requantizations are built from that (int64 Div, slow and truncating, only divides the small pooled tensors).
- Cast of an integral float is exact; Round is round-half-to-even; Cast int64 → float32 rounds to nearest even.
- Clamps run on floats: onnxruntime 1.31's int64 Clip, Max and Min leave some values beyond the int32 range
  unclamped (measured: 2^31 + 100 passes [−128, 127]), while comparisons (Less, Greater) are correct.

Every lowering is checked bit for bit against the numpy kernels in the tests, through the golden reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from autoptq.deploy import kernels
from autoptq.deploy.device_graph import DEVICE_DOMAIN

FLOAT32_EXACT = 1 << 24
"""Integers below this magnitude are exact in float32, and so are their sums while partial sums stay below it."""
MIN_OPSET = 13
"""Lowered ops take axes, shapes and bounds as inputs (ReduceSum, Slice, Clip): ONNX opset 13 and later."""
NUMPY_TYPES = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.INT64: np.int64,
    TensorProto.UINT64: np.uint64,
    TensorProto.INT32: np.int32,
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
}
"""ONNX element type → numpy type of the tensors a lowering reads and writes."""


class Lowering:
    """Emits standard nodes; tracks each device tensor's lowered name and element type (an int32 accumulator may
    live as exact float32 or as int64) and converts on demand."""

    def __init__(self, device: ModelProto) -> None:
        graph = device.graph
        self.device = device
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.nodes: list[NodeProto] = []
        self.initializers: dict[str, TensorProto] = {i.name: i for i in graph.initializer}
        self.types: dict[str, int] = {i.name: i.data_type for i in graph.initializer}
        for value in (*graph.input, *graph.value_info, *graph.output):
            if value.type.tensor_type.elem_type:
                self.types[value.name] = value.type.tensor_type.elem_type
        self.lowered: dict[str, tuple[str, int]] = {name: (name, t) for name, t in self.types.items()}
        self._casts: dict[tuple[str, int], str] = {}
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__l{self._count}"

    def const(self, array: np.ndarray | float | int, dtype: type, hint: str = "c") -> str:
        name = self.fresh(hint)
        self.initializers[name] = numpy_helper.from_array(np.asarray(array, dtype=dtype), name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str, output: str | None = None, **attrs: object) -> str:
        output = output or self.fresh(hint)
        node = helper.make_node(op_type, list(inputs), [output], name=self.fresh(f"{hint}/{op_type}"), **attrs)
        self.nodes.append(node)
        return output

    def bind(self, device_name: str, lowered: str, elem_type: int) -> None:
        self.lowered[device_name] = (lowered, elem_type)

    def value(self, device_name: str, elem_type: int) -> str:
        """The device tensor as `elem_type` (a Cast, made once, when it lives in another type)."""
        name, current = self.lowered[device_name]
        if current == elem_type:
            return name
        key = (device_name, elem_type)
        if key not in self._casts:
            self._casts[key] = self.op("Cast", [name], f"{device_name}/as{elem_type}", to=elem_type)
        return self._casts[key]

    def elem_type(self, device_name: str) -> int:
        return self.lowered[device_name][1]

    def centred(self, device_name: str, zero_point: int, elem_type: int = TensorProto.FLOAT) -> str:
        """`q − zp` as float32 (or float64): exact for 8-bit values."""
        value = self.value(device_name, elem_type)
        if zero_point == 0:
            return value
        return self.op("Sub", [value, self.const(zero_point, NUMPY_TYPES[elem_type])], f"{device_name}/centred")

    def input_reach(self, device_name: str, zero_point: int) -> int:
        """Largest |q − zp| of an 8-bit input."""
        low, high = kernels.integer_range(NUMPY_TYPES[self.elem_type(device_name)])
        return max(zero_point - low, high - zero_point)

    def emit_int(
        self, source: str, zero_point: int | np.ndarray, qmin: int, qmax: int, elem_type: int, output: str
    ) -> None:
        """`clamp(source + zero_point, qmin, qmax)` (int64 source) cast to the device type, named `output`.

        The clamp runs in float64 (see the module docstring): the conversion is exact below 2^53 and monotone above,
        which is all a clamp to int32-range bounds needs."""
        shifted = source
        if np.any(np.asarray(zero_point) != 0):
            shifted = self.op("Add", [source, self.const(zero_point, np.int64)], output)
        wide = self.op("Cast", [shifted], output, to=TensorProto.DOUBLE)
        clipped = self.op("Clip", [wide, self.const(qmin, np.float64), self.const(qmax, np.float64)], output)
        self.op("Cast", [clipped], output, output=output, to=elem_type)
        self.bind(output, output, elem_type)

    def emit_float(self, source: str, zero_point: int, qmin: int, qmax: int, elem_type: int, output: str) -> None:
        """`clamp(round_half_even(source) + zero_point, qmin, qmax)` (float32 source) cast to the device type; the
        bounds must be exact in float32 (8- and 16-bit outputs)."""
        if max(abs(qmin), abs(qmax)) > FLOAT32_EXACT:
            raise ValueError(f"float32 clamp bounds [{qmin}, {qmax}] are not exact in float32")
        rounded = self.op("Round", [source], output)
        if zero_point:
            rounded = self.op("Add", [rounded, self.const(zero_point, np.float32)], output)
        bounds = [self.const(qmin, np.float32), self.const(qmax, np.float32)]
        clipped = self.op("Clip", [rounded, *bounds], output)
        self.op("Cast", [clipped], output, output=output, to=elem_type)
        self.bind(output, output, elem_type)

    def copy(self, node: NodeProto) -> None:
        """A standard node of the device graph, as is, on its inputs converted to the types it declares."""
        copy = NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [self.value(name, self.types[name]) if name else name for name in node.input]
        self.nodes.append(copy)
        for out in node.output:
            if out:
                self.bind(out, out, self.types.get(out, TensorProto.UNDEFINED))

    def finish(self) -> ModelProto:
        graph = self.device.graph
        used = {name for node in self.nodes for name in node.input}
        initializers = [init for name, init in self.initializers.items() if name in used]
        lowered = helper.make_graph(self.nodes, graph.name, list(graph.input), list(graph.output), initializers)
        opsets = [o for o in self.device.opset_import if o.domain != DEVICE_DOMAIN]
        model = helper.make_model(lowered, opset_imports=opsets)
        model.ir_version = self.device.ir_version
        return model
