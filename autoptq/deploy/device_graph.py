"""The device integer graph as a value, and the vocabulary its builder, its lowering and its writers share: the domain
of the device ops, per-tensor quantization parameters, typed node attributes, findings, and the error for what
cannot be emulated. `autoptq.deploy.intgraph` builds and lowers the graph (and re-exports these names)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import ModelProto, NodeProto, helper
from pydantic import BaseModel

from autoptq.deploy import kernels
from autoptq.deploy.kernels import Rounding
from autoptq.errors import AutoptqError

DEVICE_DOMAIN = "autoptq.device"
"""Domain of the device ops (version 1)."""


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
