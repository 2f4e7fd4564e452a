"""Input shapes bound from the user and from the data, so that every count uses the sizes the model really runs at.

Real exports leave dimensions open: a symbolic batch (`batch`, `batch_size`, `unk__123`), `-1` or `0` written as a
size (paddle2onnx), unknown height, width or sequence length. Device toolchains run at one fixed shape, usually
batch 1, and MACs, memory and "is it worth quantizing" depend on the sizes. So "dynamic" means "not bound yet":

- `--input-shape NAME=1,3,480,640` binds an input as given (checked against what the export declares);
- data binds every open dimension it fixes: to its size when all samples agree, and, when samples differ (a
  recogniser's line width), to the largest seen for counting only, with a note;
- an open leading (batch) axis left after that is counted at 1, the unit the device toolchains compile;
- a dimension nothing binds stays unknown and is reported, never silently taken as 1.

Two models come out of a binding: the analysis model (every binding applied: what audit, plan and the cost model
count) and the model to produce from (`model_for_target`): the export with the user's shapes for targets that accept
dynamic shapes, and with every fixed binding for devices that need static shapes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from onnx import ModelProto
from pydantic import BaseModel

from autoptq.errors import DataError
from autoptq.model.graph import ModelGraph, TensorInfo, build_graph, infer_shapes, set_input_dims

AxisSource = Literal["declared", "user", "data", "data-max", "batch", "unknown"]
FIXED_SOURCES: frozenset[str] = frozenset({"declared", "user", "data", "batch"})
"""Bindings a static-shape device compiles in; `data-max` only sizes the counts."""


class AxisBinding(BaseModel):
    """One dimension of one input: what the export declares and what autoptq counts it as."""

    axis: int
    declared: int | str | None
    value: int | None
    source: AxisSource
    seen: list[int] = []


class InputBinding(BaseModel):
    """The dimensions of one model input."""

    name: str
    axes: list[AxisBinding]

    @property
    def shape(self) -> list[int | None]:
        """The sizes counted (None: still unknown)."""
        return [a.value for a in self.axes]


class ShapeBinding(BaseModel):
    """How every open input dimension was bound, for reports and for producing device models."""

    inputs: list[InputBinding]

    @property
    def changed(self) -> bool:
        """Whether anything was bound beyond what the export declares."""
        return any(a.source != "declared" for i in self.inputs for a in i.axes)

    def unknown(self) -> list[str]:
        """`input[axis]` of every dimension that stays unknown."""
        return [f"{i.name}[{a.axis}]" for i in self.inputs for a in i.axes if a.value is None]

    def notes(self) -> list[str]:
        """One line per bound input: declared shape, counted shape and where each open dim came from."""
        lines = []
        for binding in self.inputs:
            open_axes = [a for a in binding.axes if a.source != "declared"]
            if not open_axes:
                continue
            declared = "[" + ", ".join("?" if a.declared is None else str(a.declared) for a in binding.axes) + "]"
            counted = "[" + ", ".join("?" if v is None else str(v) for v in binding.shape) + "]"
            how = "; ".join(f"dim {a.axis} {_explain(a)}" for a in open_axes)
            lines.append(f"input {binding.name!r} declared {declared}, counted as {counted}: {how}")
        return lines


def _explain(axis: AxisBinding) -> str:
    if axis.source == "user":
        return f"= {axis.value} from --input-shape"
    if axis.source == "data":
        return f"= {axis.value} from the data"
    if axis.source == "data-max":
        return f"varies in the data ({min(axis.seen)}..{max(axis.seen)}), counted at the largest, {axis.value}"
    if axis.source == "batch":
        return "= 1: an open batch axis, counted (and compiled for static-shape devices) at batch 1"
    return "unknown: pass --input-shape or data to bind it"


def parse_input_shapes(values: list[str] | None) -> dict[str, list[int]]:
    """`["x=1,3,480,640", "mask=1,128"]` → `{"x": [1, 3, 480, 640], "mask": [1, 128]}`."""
    shapes: dict[str, list[int]] = {}
    for value in values or []:
        name, sep, dims = value.rpartition("=")
        try:
            sizes = [int(d) for d in dims.replace("x", ",").split(",")]
        except ValueError:
            sizes = []
        if not sep or not name or not sizes or any(s <= 0 for s in sizes):
            raise DataError(f"--input-shape {value!r}: expected NAME=d1,d2,... with positive sizes, e.g. x=1,3,224,224")
        if name in shapes:
            raise DataError(f"--input-shape: input {name!r} given twice")
        shapes[name] = sizes
    return shapes


def apply_user_shapes(graph: ModelGraph, shapes: dict[str, list[int]]) -> ModelGraph:
    """The model with the user's input shapes set (checked against the declared ones); unchanged without any."""
    if not shapes:
        return graph
    declared = {t.name: t.shape for t in graph.inputs}
    for name, sizes in shapes.items():
        if name not in declared:
            raise DataError(f"--input-shape: the model has no input {name!r}; its inputs are {sorted(declared)}")
        want = declared[name]
        if want is not None and len(want) != len(sizes):
            raise DataError(f"--input-shape {name}: gives {len(sizes)} dims, the input {name!r} {want} has {len(want)}")
        for axis, (given, fixed) in enumerate(zip(sizes, want or sizes, strict=True)):
            if isinstance(fixed, int) and fixed != given:
                raise DataError(
                    f"--input-shape {name}: dim {axis} is {given}, but the model fixes it at {fixed} ({want})"
                )
    declared_model = set_input_dims(graph.declared, dict(shapes))
    with_user = _rebuilt(graph, declared_model, declared_model, None)
    with_user.user_shapes = dict(shapes)
    return with_user


def bind(graph: ModelGraph, samples: list[dict[str, object]] | None) -> ModelGraph:
    """Bind every open input dimension (see the module docstring); `samples` are feed dicts (None: no data)."""
    declared = {t.name: t.shape for t in _declared_inputs(graph)}
    inputs = [_bind_input(name, shape, graph.user_shapes.get(name), samples) for name, shape in declared.items()]
    binding = ShapeBinding(inputs=inputs)
    if graph.binding is None and all(a.source in ("declared", "user") for i in inputs for a in i.axes):
        return replace(graph, binding=binding)  # nothing open: the loaded graph is already the analysis graph
    analysis = set_input_dims(graph.declared, {i.name: i.shape for i in inputs})
    return _rebuilt(graph, analysis, graph.declared, binding)


def _declared_inputs(graph: ModelGraph) -> list[TensorInfo]:
    """The inputs as the export (plus --input-shape) declares them, even on an already bound graph."""
    return graph.inputs if graph.binding is None else build_graph(graph.declared).inputs


def _bind_input(
    name: str, shape: list[int | str | None] | None, user: list[int] | None, samples: list[dict[str, object]] | None
) -> InputBinding:
    axes = []
    for axis, declared in enumerate(shape or []):
        seen = sorted({int(s[name].shape[axis]) for s in samples or [] if name in s and s[name].ndim > axis})
        if isinstance(declared, int) and user is None:
            axes.append(AxisBinding(axis=axis, declared=declared, value=declared, source="declared"))
        elif user is not None:
            axes.append(AxisBinding(axis=axis, declared=None, value=user[axis], source="user"))
        elif len(seen) == 1:
            axes.append(AxisBinding(axis=axis, declared=declared, value=seen[0], source="data", seen=seen))
        elif seen:
            axes.append(AxisBinding(axis=axis, declared=declared, value=seen[-1], source="data-max", seen=seen))
        elif axis == 0 and len(shape or []) > 1:
            axes.append(AxisBinding(axis=axis, declared=declared, value=1, source="batch"))
        else:
            axes.append(AxisBinding(axis=axis, declared=declared, value=None, source="unknown"))
    return InputBinding(name=name, axes=axes)


def model_for_target(graph: ModelGraph, static_shapes: bool) -> ModelProto:
    """The float model to quantize and verify for a target: the export (with the user's shapes), and for a device
    that compiles static shapes, every fixed binding too (never a size that only counts, such as a varying width)."""
    if not static_shapes or graph.binding is None:
        return graph.declared
    fixed = {
        i.name: [a.value if a.source in FIXED_SOURCES else None for a in i.axes]
        for i in graph.binding.inputs
        if any(a.source in FIXED_SOURCES - {"declared"} for a in i.axes)
    }
    return set_input_dims(graph.declared, fixed) if fixed else graph.declared


def _rebuilt(graph: ModelGraph, analysis: ModelProto, declared: ModelProto, binding: ShapeBinding | None) -> ModelGraph:
    rebuilt = build_graph(infer_shapes(analysis), graph.path)
    rebuilt.source_files = graph.source_files
    rebuilt.declared_model = declared
    rebuilt.user_shapes = graph.user_shapes
    rebuilt.binding = binding
    return rebuilt
