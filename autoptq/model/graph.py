"""Load an ONNX model safely and turn it into a networkx graph annotated with shapes, MACs and bytes.

Data flows one way from here: the `ModelGraph` is what coverage, the planner and the quantizers look at.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto
from onnx import helper as onnx_helper
from pydantic import BaseModel, Field

from autoptq.errors import ModelLoadError
from autoptq.model.ops import CONTROL_FLOW_OPS, OUTPUT_TAIL_OPS, RECURRENT_OPS, SHAPE_OPS

if TYPE_CHECKING:
    from autoptq.model.shapes import ShapeBinding

WEIGHT_PATH_OPS = frozenset(
    {
        "Constant",
        "Identity",
        "Reshape",
        "Transpose",
        "Cast",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "DequantizeLinear",
    }
)
"""Ops that, fed only constants, produce a constant: exporters route weights through them."""

SHAPE_ARITHMETIC_OPS = frozenset(
    {"Gather", "Concat", "Slice", "Add", "Sub", "Mul", "Div", "ConstantOfShape", "Range", "Equal", "Where", "Expand"}
)
"""Ops exporters use to compute shapes at run time; fed only constants (or a static Shape) they fold away."""


def folds_to_constant(node: NodeProto, constants: set[str], tensors: dict[str, TensorInfo]) -> bool:
    """Whether a converter folds `node` away: a Constant, a Shape/Size of a statically shaped or constant tensor, or a
    weight-path or shape-arithmetic op whose inputs are all constant."""
    if node.op_type == "Constant":
        return True
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type in SHAPE_OPS and node.input:
        # A constant's shape is known once it is folded, even where shape inference left it open (YOLOv8's anchor
        # grid: a Range of folded sizes).
        info = tensors.get(node.input[0])
        return node.input[0] in constants or (info is not None and info.is_static)
    foldable = node.op_type in WEIGHT_PATH_OPS or node.op_type in SHAPE_ARITHMETIC_OPS
    return foldable and all(not i or i in constants for i in node.input)


DATA_MOVEMENT_OPS = frozenset(
    {
        "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Concat", "Split", "Slice", "Gather",
        "GatherND", "GatherElements", "Pad", "Expand", "Tile", "Shape", "Size", "Cast", "Constant", "ConstantOfShape",
        "DepthToSpace", "SpaceToDepth", "Dropout", "QuantizeLinear", "DequantizeLinear",
    }
)  # fmt: skip
"""Ops that move or relabel data without arithmetic: 0 MACs."""


class TensorInfo(BaseModel):
    """A tensor's static description. `shape` entries are ints, symbolic names, or None when unknown."""

    name: str
    dtype: str
    shape: list[int | str | None] | None = None
    constant: bool = False

    @property
    def itemsize(self) -> int:
        """Bytes per element (0 for unknown or variable-size types)."""
        return dtype_itemsize(self.dtype)

    def numel(self, unknown: int = 1) -> int | None:
        """Element count, with symbolic or unknown dims taken as `unknown`; None when the rank is unknown."""
        if self.shape is None:
            return None
        return math.prod(d if isinstance(d, int) else unknown for d in self.shape)

    @property
    def is_static(self) -> bool:
        """True when every dimension is a known integer."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


class SubgraphSummary(BaseModel):
    """What a control-flow node's subgraphs contain."""

    op_counts: dict[str, int] = Field(default_factory=dict)
    macs: int = 0
    macs_per: str = Field(default="call", description="'call', or 'iteration' when the trip count is unknown")
    macs_exact: bool = Field(default=True, description="every shape inside the subgraphs was known")
    param_count: int = Field(default=0, description="constant parameters the subgraphs' compute nodes consume")
    param_bytes: int = 0


class NodeInfo(BaseModel):
    """One ONNX node with what autoptq needs to reason about it. MACs and bytes are counts, not estimates."""

    name: str
    op_type: str
    domain: str = ""
    attributes: dict[str, object] = Field(default_factory=dict)
    inputs: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    weight_inputs: list[str] = Field(default_factory=list, description="inputs that are constant parameters")
    macs: int = 0
    macs_exact: bool = True
    param_count: int = 0
    param_bytes: int = 0
    activation_bytes: int = 0
    weight_path: bool = Field(default=False, description="only transforms constants (folded away by converters)")
    subgraph: SubgraphSummary | None = None

    @property
    def key(self) -> str:
        """Op identity including its domain, as written in op tables (`com.microsoft.Attention`)."""
        return self.op_type if self.domain in ("", "ai.onnx") else f"{self.domain}.{self.op_type}"


class Rewrite(BaseModel):
    """One node the converter would rewrite, and into what."""

    node: str
    op_type: str
    into: list[str]
    rule: str


@dataclass
class ModelGraph:
    """A loaded model: the shape-inferred ModelProto, its node graph and tensor table."""

    model: ModelProto
    graph: nx.DiGraph
    order: list[str]
    tensors: dict[str, TensorInfo]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    constants: set[str]
    opset: int
    path: Path | None = None
    symbolic_dims: list[str] = field(default_factory=list)
    source_files: list[Path] = field(default_factory=list)
    """The model file and its external data files: outputs must never overwrite them."""
    declared_model: ModelProto | None = None
    """The model as exported (with any --input-shape applied) when `model` has shapes bound for analysis."""
    user_shapes: dict[str, list[int]] = field(default_factory=dict)
    binding: ShapeBinding | None = None
    """How open input dimensions were bound (autoptq.model.shapes), once data or the user has been consulted."""
    rewrites: list[Rewrite] = field(default_factory=list)
    """The converter rewrites applied to this analysis graph (autoptq.devices.canonical)."""
    _constant_cache: dict[str, np.ndarray | None] = field(default_factory=dict, repr=False)
    _constant_sources: dict[str, TensorProto | NodeProto] = field(default_factory=dict, repr=False)

    @property
    def declared(self) -> ModelProto:
        """The model to produce from: as exported, with the user's input shapes, without analysis-only bindings."""
        return self.model if self.declared_model is None else self.declared_model

    def constant_value(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant output), or None if it is not a plain constant."""
        if not self._constant_sources:
            self._constant_sources.update(_constant_sources(self.model.graph))
        if name not in self._constant_cache:
            source = self._constant_sources.get(name)
            self._constant_cache[name] = None if source is None else _to_array(source)
        return self._constant_cache[name]

    def original_bytes(self) -> bytes:
        """The model as given: the file's bytes, or the ModelProto serialized deterministically."""
        if self.path is not None:
            return self.path.read_bytes()
        return self.declared.SerializeToString(deterministic=True)

    def node(self, name: str) -> NodeInfo:
        """The NodeInfo of node `name`."""
        return self.graph.nodes[name]["info"]

    def nodes(self) -> list[NodeInfo]:
        """All nodes in topological (execution) order."""
        return [self.graph.nodes[n]["info"] for n in self.order]

    def compute_nodes(self) -> list[NodeInfo]:
        """Nodes in execution order, without those that only transform constants."""
        return [n for n in self.nodes() if not n.weight_path]

    @property
    def total_macs(self) -> int:
        """Multiply-accumulates of one inference (element ops count one each)."""
        return sum(n.macs for n in self.compute_nodes())

    @property
    def param_bytes(self) -> int:
        """Bytes of every constant parameter consumed by a compute node (a weight shared by several counts once),
        plus the parameters inside control-flow subgraphs."""
        shared = {w for n in self.compute_nodes() for w in n.weight_inputs if w in self.tensors}
        top_level = sum((self.tensors[w].numel() or 0) * self.tensors[w].itemsize for w in shared)
        inner = sum(n.subgraph.param_bytes for n in self.compute_nodes() if n.subgraph is not None)
        return top_level + inner

    @property
    def has_dynamic_shapes(self) -> bool:
        """True when an input has a symbolic or unknown dimension."""
        return any(not t.is_static for t in self.inputs)


def dtype_itemsize(dtype: str) -> int:
    """Bytes per element of an ONNX dtype name (`float32`, `int8`, ...), 0 when not fixed-size."""
    try:
        np_dtype = onnx_helper.tensor_dtype_to_np_dtype(getattr(TensorProto, dtype.upper()))
    except (AttributeError, KeyError, TypeError, ValueError):
        return 0
    return 0 if np_dtype == np.dtype(object) else int(np.dtype(np_dtype).itemsize)


def load_model(source: str | Path | ModelProto) -> ModelGraph:
    """Load, check and analyse a model from a path or a ModelProto.

    External data must sit inside the model's folder. Raises ModelLoadError with one line on any problem.
    """
    if isinstance(source, ModelProto):
        proto, path, data_files = copy_model(source), None, []
    else:
        path = Path(source)
        proto, data_files = read_model(path)
    check_model(proto, path)
    check_sanity(proto, path)
    open_sizes_as_symbols(proto)
    inferred = infer_shapes(proto)
    graph = build_graph(inferred, path)
    graph.source_files = [*([path] if path else []), *data_files]
    return graph


def read_model(path: Path) -> tuple[ModelProto, list[Path]]:
    """Read an ONNX file with its external data, confined to the model's folder; also return the data files."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for non-ONNX bytes
        raise ModelLoadError(f"{path}: not an ONNX model ({_one_line(exc)})") from exc
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (empty or truncated: no graph)")
    data_files = _load_external_data(proto, path.resolve().parent, path)
    return proto, data_files


PROTOBUF_LIMIT = 2**31 - 1
"""A ModelProto serializes to at most 2 GiB: onnxruntime and the quantizers take the model as one protobuf."""


def _load_external_data(proto: ModelProto, base_dir: Path, path: Path) -> list[Path]:
    files: list[Path] = []
    tensors = list(_external_tensors(proto))
    total = proto.ByteSize()
    for tensor in tensors:  # every entry is checked before anything is read
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        target = (base_dir / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(base_dir):
            raise ModelLoadError(
                f"{path}: tensor {tensor.name!r} points to external data {location!r} outside the model's folder"
            )
        if not target.is_file():
            raise ModelLoadError(f"{path}: external data file {location!r} of tensor {tensor.name!r} is missing")
        offset = _external_int(entries, "offset", tensor.name, path) or 0
        length = _external_int(entries, "length", tensor.name, path)
        size = target.stat().st_size
        if offset + (length or 0) > size:
            raise ModelLoadError(
                f"{path}: external data of {tensor.name!r} (offset {offset}, length {length}) lies beyond the end "
                f"of {location!r} ({size} bytes)"
            )
        total += size - offset if length is None else length
    if total > PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"{path}: the model with its external data is {total / 2**30:.1f} GiB; autoptq handles models up to "
            "2 GiB (one protobuf, as onnxruntime's quantizers need)"
        )
    for tensor in tensors:
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries["location"]
        target = (base_dir / location).resolve()
        offset = _external_int(entries, "offset", tensor.name, path) or 0
        length = _external_int(entries, "length", tensor.name, path)
        with target.open("rb") as handle:
            handle.seek(offset)
            tensor.raw_data = handle.read() if length is None else handle.read(length)
        if length is not None and len(tensor.raw_data) != length:
            raise ModelLoadError(f"{path}: external data for {tensor.name!r} is truncated in {location!r}")
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT
        if target not in files:
            files.append(target)
    return files


def _external_int(entries: dict[str, str], key: str, tensor: str, path: Path) -> int | None:
    """A non-negative integer field of an external data entry (None when absent)."""
    if key not in entries:
        return None
    text = entries[key]
    if not text.isdigit() or len(text) > 19:
        raise ModelLoadError(f"{path}: external data {key} of tensor {tensor!r} is {text!r}, not a byte count")
    return int(text)


def check_sanity(proto: ModelProto, path: Path | None = None) -> None:
    """What the ONNX checker lets through and onnxruntime or numpy then fail on, refused with one line before any
    work: an opset outside what onnxruntime supports, no outputs, duplicate node names, tensors declared larger
    than this machine's memory."""
    label = str(path) if path else "model"
    low, high = supported_opsets()
    opset = model_opset(proto)
    if opset and not low <= opset <= high:
        raise ModelLoadError(
            f"{label}: opset {opset} of the default ONNX domain is not supported: onnx {onnx.__version__} and "
            f"onnxruntime {ort_version()} support opsets {low} to {high}"
        )
    if not proto.graph.output:
        raise ModelLoadError(f"{label}: the graph declares no outputs, so there is nothing to run or compare")
    for graph in _all_graphs(proto.graph):  # protobuf hands invalid UTF-8 back as bytes
        texts = [graph.name, *(v.name for v in [*graph.input, *graph.output, *graph.value_info])]
        texts += [t.name for t in graph.initializer]
        texts += [text for n in graph.node for text in (n.name, n.op_type, n.domain, *n.input, *n.output)]
        if any(isinstance(text, bytes) for text in texts):
            raise ModelLoadError(f"{label}: a name in graph {graph.name!r} is not valid UTF-8 (a corrupt file?)")
    names = Counter(node.name for node in proto.graph.node if node.name)
    repeated = sorted(name for name, count in names.items() if count > 1)
    if repeated:
        raise ModelLoadError(
            f"{label}: node name {repeated[0]!r} is used by {names[repeated[0]]} nodes; onnxruntime requires "
            "unique node names"
        )
    memory = machine_memory_bytes()
    declared = [(v.name, _tensor_info(v)) for v in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]]
    declared += [(t.name, TensorInfo(name=t.name, dtype=_dtype_name(t.data_type), shape=list(t.dims))) for t in
                 proto.graph.initializer]  # fmt: skip
    for name, info in declared:
        size = (info.numel() or 0) * max(info.itemsize, 1)
        if size > memory:
            raise ModelLoadError(
                f"{label}: tensor {name!r} of shape {info.shape} needs {size / 2**30:,.0f} GiB, more than this "
                f"machine's memory ({memory / 2**30:,.1f} GiB)"
            )
    for tensor in proto.graph.initializer:
        problem = _initializer_problem(tensor)
        if problem:
            raise ModelLoadError(f"{label}: initializer {tensor.name!r} of shape {list(tensor.dims)} {problem}")


_RAW_TYPES = frozenset(
    getattr(TensorProto, name)
    for name in ("FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE", "INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32",
                 "INT64", "UINT64", "BOOL")
)  # fmt: skip


def _initializer_problem(tensor: TensorProto) -> str | None:
    """Why the data of an initializer does not fit its declared shape, or None (the checker does not look)."""
    if tensor.data_location == TensorProto.EXTERNAL:
        return None
    if any(d < 0 for d in tensor.dims):
        return "has a negative dimension"
    if tensor.raw_data and tensor.data_type in _RAW_TYPES:
        expected = math.prod(tensor.dims) * dtype_itemsize(_dtype_name(tensor.data_type))
        return None if len(tensor.raw_data) == expected else f"holds {len(tensor.raw_data)} bytes, not {expected}"
    try:
        onnx.numpy_helper.to_array(tensor)  # typed fields: small by nature (big weights are raw or external)
    except Exception as exc:  # numpy/onnx raise ValueError, TypeError, ... for data that does not fit
        return f"holds data that does not fit it ({_one_line(exc)})"
    return None


@cache
def supported_opsets() -> tuple[int, int]:
    """The default-domain opsets both the installed onnx and onnxruntime know (the latter from its op schemas)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    ort_high = max(s.since_version for s in ort_state.get_all_operator_schema() if s.domain in ("", "ai.onnx"))
    return 1, min(onnx.defs.onnx_opset_version(), ort_high)


def onnx_version() -> str:
    """The installed onnx package's version."""
    return onnx.__version__


def ort_version() -> str:
    """The installed onnxruntime's version (imported on demand: loading a model does not need it)."""
    import onnxruntime

    return onnxruntime.__version__


def machine_memory_bytes() -> int:
    """Physical memory of this machine (a generous bound: no single tensor can be larger)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a large machine
        return 1 << 40


def _external_tensors(proto: ModelProto) -> Iterable[TensorProto]:
    for graph in _all_graphs(proto.graph):
        for tensor in graph.initializer:
            if tensor.data_location == TensorProto.EXTERNAL:
                yield tensor
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR and attr.t.data_location == TensorProto.EXTERNAL:
                    yield attr.t


def _all_graphs(graph: GraphProto) -> Iterable[GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _all_graphs(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_graphs(sub)


def check_model(proto: ModelProto, path: Path | None = None) -> None:
    """Run the ONNX checker; a failure becomes one line naming the model."""
    label = str(path) if path else "model"
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelLoadError(f"{label}: fails the ONNX checker: {_one_line(exc)}") from exc


def infer_shapes(proto: ModelProto) -> ModelProto:
    """ONNX shape inference with data propagation; a model it cannot handle keeps the shapes it declares."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort: an exotic op must not stop the analysis
        return proto
    return _completed_by_folding(inferred)


def _completed_by_folding(inferred: ModelProto) -> ModelProto:
    """`inferred` with the shapes ONNX's data propagation stops short of on static inputs, read from a copy whose
    shape arithmetic is folded (the graph itself unchanged). Paddle computes a Reshape's target as Shape → Cast
    (int32) → Slice → Cast (int64) → Concat, and propagation stops at the Cast: ppocr-cls's classifier head then had
    no shape, and a static-shape device refused it while its written .tflite ran."""
    graph = inferred.graph
    if not graph.input or not all(_has_static_shape(v) for v in graph.input):
        return inferred  # an open input dim: the missing shapes are open too
    known = {v.name for v in (*graph.value_info, *graph.output) if _has_static_shape(v)}
    missing = {name for node in graph.node for name in node.output if name and name not in known}
    if not missing:
        return inferred
    from autoptq.model.prepare import fold_constant_paths  # prepare builds on this module

    try:  # best effort, as inference itself: folding runs the reference evaluator on whatever the model holds
        folded, _ = fold_constant_paths(inferred)
        if folded is None:
            return inferred
        refolded = onnx.shape_inference.infer_shapes(folded, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        return inferred
    found = {v.name: v for v in (*refolded.graph.value_info, *refolded.graph.output) if v.name in missing}
    found = {name: v for name, v in found.items() if _has_static_shape(v)}
    if not found:
        return inferred
    completed = copy_model(inferred)
    outputs = {v.name: v for v in completed.graph.output}
    for name in found.keys() & outputs.keys():
        outputs[name].type.CopyFrom(found[name].type)
    values = [v for v in completed.graph.value_info if v.name not in found]
    del completed.graph.value_info[:]
    completed.graph.value_info.extend([*values, *(v for name, v in found.items() if name not in outputs)])
    return completed


def _has_static_shape(value: ValueInfoProto) -> bool:
    kind = value.type.tensor_type
    return kind.HasField("shape") and all(d.HasField("dim_value") for d in kind.shape.dim)


def output_tail(model: ModelProto, output: str) -> list[NodeProto]:
    """The joins and data movement (OUTPUT_TAIL_OPS) that end at graph output `output`, from the output backwards,
    each read only by the tail itself or as an output."""
    producers = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
    path: list[NodeProto] = []
    pending = [output]
    while pending:
        node = producers.get(pending.pop())
        if node is None or not node.name or node.op_type not in OUTPUT_TAIL_OPS or node in path:
            continue
        path.append(node)
        pending += list(node.input) if node.op_type == "Concat" else [node.input[0]]
    names = {node.name for node in path}
    if any(reader not in names for node in path for out in node.output for reader in readers.get(out, [])):
        return []  # a tensor on the way is also read inside the graph: the tail is not the output's alone
    return path


def copy_model(proto: ModelProto) -> ModelProto:
    """A deep copy of a ModelProto."""
    copy = ModelProto()
    copy.CopyFrom(proto)
    return copy


def open_sizes_as_symbols(proto: ModelProto) -> None:
    """Treat `-1` and `0` written as sizes (paddle2onnx, some tf2onnx graphs) as what they mean: open dimensions.

    Graph inputs get a name per open dim (`x_dim2`) so that reports can point at it; intermediate and output dims
    become unknown."""
    graph = proto.graph
    for value in graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                dim.dim_param = f"{value.name}_dim{axis}"
    for value in [*graph.value_info, *graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                dim.Clear()


def set_input_dims(proto: ModelProto, dims: dict[str, list[int | None]]) -> ModelProto:
    """A copy of `proto` whose graph inputs have the given sizes (None keeps a dim as it is), with intermediate
    shapes and open output dims dropped so that shape inference recomputes them from the new sizes."""
    result = copy_model(proto)
    for value in result.graph.input:
        sizes = dims.get(value.name)
        if sizes is None:
            continue
        shape = value.type.tensor_type.shape
        if len(shape.dim) != len(sizes):
            continue
        for dim, size in zip(shape.dim, sizes, strict=True):
            if size is not None:
                dim.Clear()
                dim.dim_value = size
    # Open output dims (-1, 0 or symbolic) are cleared too: inference fills them from the new sizes, where a
    # declared -1 would conflict with the size it infers and stay open in the file.
    for value in result.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            if not (dim.HasField("dim_value") and dim.dim_value > 0):
                dim.Clear()
    del result.graph.value_info[:]
    return result


def build_graph(proto: ModelProto, path: Path | None = None) -> ModelGraph:
    """Build the annotated node graph of a shape-inferred model."""
    g = proto.graph
    tensors = _tensor_table(g)
    constants = _constant_tensors(g, tensors)
    for name in constants:
        if name in tensors:
            tensors[name].constant = True
    initializer_sizes = _constant_sizes(tensors)
    scalars = _integer_scalars(g)
    graph = nx.DiGraph()
    producers: dict[str, str] = {}
    names = _unique_node_names(g.node)
    for node, name in zip(g.node, names, strict=True):
        info = _node_info(node, name, tensors, constants, initializer_sizes, scalars)
        graph.add_node(name, info=info)
        for out in node.output:
            if out:
                producers[out] = name
    for node, name in zip(g.node, names, strict=True):
        for tensor in _consumed_tensors(node):
            producer = producers.get(tensor)
            if producer is None or producer == name:
                continue
            if graph.has_edge(producer, name):  # a second tensor between the same two nodes (Split -> Concat)
                carried = graph.edges[producer, name]["tensors"]
                if tensor not in carried:
                    carried.append(tensor)
            else:
                graph.add_edge(producer, name, tensor=tensor, tensors=[tensor])
    order = _execution_order(graph, names)
    symbolic = sorted(
        {d for t in tensors.values() if t.shape for d in t.shape if isinstance(d, str)}
        | {d for t in _io(g.input, tensors, constants) if t.shape for d in t.shape if isinstance(d, str)}
    )
    return ModelGraph(
        model=proto,
        graph=graph,
        order=order,
        tensors=tensors,
        inputs=_io(g.input, tensors, constants),
        outputs=[tensors.get(o.name) or _tensor_info(o) for o in g.output],
        constants=constants,
        opset=model_opset(proto),
        path=path,
        symbolic_dims=symbolic,
    )


def _execution_order(graph: nx.DiGraph, names: list[str]) -> list[str]:
    # The file's node order is the exporter's execution order; keep it as the tie-break so that "first
    # unsupported op in execution order" means what the device compiler means by it.
    position = {name: i for i, name in enumerate(names)}
    try:
        return list(nx.lexicographical_topological_sort(graph, key=position.__getitem__))
    except nx.NetworkXUnfeasible as exc:
        raise ModelLoadError("the model's graph has a cycle") from exc


def _io(values: Iterable[ValueInfoProto], tensors: dict[str, TensorInfo], constants: set[str]) -> list[TensorInfo]:
    # Old exporters list initializers among graph inputs; they are parameters, not inputs.
    return [tensors.get(v.name) or _tensor_info(v) for v in values if v.name not in constants]


def _tensor_table(g: GraphProto) -> dict[str, TensorInfo]:
    table: dict[str, TensorInfo] = {}
    for init in g.initializer:
        table[init.name] = TensorInfo(name=init.name, dtype=_dtype_name(init.data_type), shape=list(init.dims))
    for value in [*g.input, *g.value_info, *g.output]:
        info = _tensor_info(value)
        if value.name not in table or table[value.name].shape is None:
            table[value.name] = info
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            value = _constant_value(node)
            if value is not None:
                table[node.output[0]] = TensorInfo(
                    name=node.output[0], dtype=_np_dtype_name(value.dtype), shape=list(value.shape)
                )
    return table


def _tensor_info(value: ValueInfoProto) -> TensorInfo:
    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        return TensorInfo(name=value.name, dtype="undefined", shape=None)
    shape: list[int | str | None] | None = None
    if tensor_type.HasField("shape"):
        shape = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                shape.append(dim.dim_param)
            else:
                shape.append(None)
    return TensorInfo(name=value.name, dtype=_dtype_name(tensor_type.elem_type), shape=shape)


def _dtype_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return "undefined"


def _np_dtype_name(dtype: np.dtype) -> str:
    return _dtype_name(onnx_helper.np_dtype_to_tensor_dtype(dtype))


def _constant_value(node: NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return onnx.numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_int"):
            return np.asarray(onnx_helper.get_attribute_value(attr))
        if attr.name in ("value_floats", "value_ints"):
            return np.asarray(onnx_helper.get_attribute_value(attr))
    return None


def _constant_sources(g: GraphProto) -> dict[str, TensorProto | NodeProto]:
    sources: dict[str, TensorProto | NodeProto] = {init.name: init for init in g.initializer}
    sources.update({n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output})
    return sources


def _to_array(source: TensorProto | NodeProto) -> np.ndarray | None:
    if isinstance(source, TensorProto):
        return onnx.numpy_helper.to_array(source)
    return _constant_value(source)


def _constant_tensors(g: GraphProto, tensors: dict[str, TensorInfo], outer: Iterable[str] = ()) -> set[str]:
    """Initializers, constants of enclosing scopes (`outer`) and the outputs of every node that folds to a constant
    (see `folds_to_constant`)."""
    constants = {init.name for init in g.initializer} | set(outer)
    for node in g.node:  # nodes are topologically sorted in a valid model
        if folds_to_constant(node, constants, tensors):
            constants.update(o for o in node.output if o)
    return constants


def _constant_sizes(tensors: dict[str, TensorInfo]) -> dict[str, tuple[int, int]]:
    """(element count, bytes) of each constant whose shape is known."""
    sizes: dict[str, tuple[int, int]] = {}
    for name, info in tensors.items():
        if info.constant and info.is_static:
            count = info.numel() or 0
            sizes[name] = (count, count * info.itemsize)
    return sizes


def _unique_node_names(nodes: Iterable[NodeProto]) -> list[str]:
    seen: Counter[str] = Counter()
    names = []
    for index, node in enumerate(nodes):
        base = node.name or f"{node.op_type}_{index}"
        seen[base] += 1
        names.append(base if seen[base] == 1 else f"{base}__{seen[base] - 1}")
    return names


def _consumed_tensors(node: NodeProto) -> list[str]:
    """Inputs of a node, plus outer-scope tensors its subgraphs read (so control flow keeps its edges)."""
    consumed = [i for i in node.input if i]
    for attr in node.attribute:
        subgraphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
        for sub in subgraphs:
            consumed.extend(sorted(_outer_scope_reads(sub)))
    return consumed


def _outer_scope_reads(g: GraphProto) -> set[str]:
    local = {i.name for i in g.input} | {i.name for i in g.initializer}
    reads: set[str] = set()
    for node in g.node:
        for name in node.input:
            if name and name not in local:
                reads.add(name)
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                reads |= _outer_scope_reads(sub) - local
        local.update(node.output)
    return reads


def _node_info(
    node: NodeProto,
    name: str,
    tensors: dict[str, TensorInfo],
    constants: set[str],
    constant_sizes: dict[str, tuple[int, int]],
    scalars: dict[str, int],
) -> NodeInfo:
    attrs = _attributes(node)
    weight_path = folds_to_constant(node, constants, tensors)
    weight_inputs = [] if weight_path else [i for i in node.input if i and i in constants]
    params = [constant_sizes[w] for w in dict.fromkeys(weight_inputs) if w in constant_sizes]
    activation_bytes = sum((tensors[o].numel() or 0) * tensors[o].itemsize for o in node.output if o and o in tensors)
    macs, exact = (0, True) if weight_path else count_macs(node.op_type, attrs, node, tensors)
    subgraph = None
    if node.op_type in CONTROL_FLOW_OPS:
        subgraph = _summarise_subgraphs(node, tensors, constants, scalars)
        macs, exact = subgraph.macs, subgraph.macs_exact and subgraph.macs_per == "call"
        params.append((subgraph.param_count, subgraph.param_bytes))
    return NodeInfo(
        name=name,
        op_type=node.op_type,
        domain=node.domain,
        attributes=attrs,
        inputs=list(node.input),
        outputs=list(node.output),
        weight_inputs=weight_inputs,
        macs=macs,
        macs_exact=exact,
        param_count=sum(count for count, _ in params),
        param_bytes=sum(size for _, size in params),
        activation_bytes=activation_bytes,
        weight_path=weight_path,
        subgraph=subgraph,
    )


def _attributes(node: NodeProto) -> dict[str, object]:
    """Attributes as plain JSON-able values; tensors and graphs are summarised, not copied."""
    out: dict[str, object] = {}
    for attr in node.attribute:
        if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            out[attr.name] = "<subgraph>"
        elif attr.type == AttributeProto.TENSOR:
            out[attr.name] = f"<tensor {list(attr.t.dims)}>"
        else:
            value = onnx_helper.get_attribute_value(attr)
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            elif isinstance(value, list):
                value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
            out[attr.name] = value
    return out


def _shape(tensors: dict[str, TensorInfo], name: str) -> list[int | str | None] | None:
    info = tensors.get(name) if name else None
    return info.shape if info else None


def _dims(shape: list[int | str | None] | None) -> tuple[list[int], bool]:
    """Shape with unknown dimensions taken as 1, and whether it was fully known."""
    if shape is None:
        return [], False
    return [d if isinstance(d, int) else 1 for d in shape], all(isinstance(d, int) for d in shape)


def count_macs(
    op_type: str, attrs: dict[str, object], node: NodeProto, tensors: dict[str, TensorInfo]
) -> tuple[int, bool]:
    """Multiply-accumulates of one node and whether the count is exact (all shapes known).

    Convolutions, Gemm/MatMul and recurrent cells count true MACs; pooling counts one per window element; other
    arithmetic counts one per output element; pure data movement counts zero.
    """
    if op_type in DATA_MOVEMENT_OPS:
        return 0, True
    out, out_known = _dims(_shape(tensors, node.output[0]) if node.output else None)
    first, first_known = _dims(_shape(tensors, node.input[0]) if node.input else None)
    if op_type == "Conv":
        weight, w_known = _dims(_shape(tensors, node.input[1]))
        if len(weight) < 3 or not out:
            return 0, False
        macs = math.prod(out) * math.prod(weight[1:])
        return macs, out_known and w_known
    if op_type == "ConvTranspose":
        weight, w_known = _dims(_shape(tensors, node.input[1]))
        if len(weight) < 3 or not first:
            return 0, False
        group = int(attrs.get("group", 1) or 1)
        macs = math.prod(first) * (weight[1] * group // max(group, 1)) * math.prod(weight[2:])
        return macs, first_known and w_known
    if op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        if not out or not first:
            return 0, False
        k = first[0] if op_type == "Gemm" and attrs.get("transA") else first[-1]
        return math.prod(out) * k, out_known and first_known
    if op_type in RECURRENT_OPS:
        return _recurrent_macs(op_type, attrs, node, tensors)
    if op_type in ("MaxPool", "AveragePool", "LpPool"):
        kernel = attrs.get("kernel_shape") or []
        return math.prod(out) * math.prod(kernel), out_known  # type: ignore[arg-type]
    if op_type.startswith("Global") or op_type.startswith("Reduce"):
        return math.prod(first), first_known
    if not out:
        return 0, False
    return math.prod(out), out_known


def _recurrent_macs(
    op_type: str, attrs: dict[str, object], node: NodeProto, tensors: dict[str, TensorInfo]
) -> tuple[int, bool]:
    x, x_known = _dims(_shape(tensors, node.input[0]))
    if len(x) != 3:
        return 0, False
    layout = int(attrs.get("layout", 0) or 0)
    seq, batch, features = (x[1], x[0], x[2]) if layout else (x[0], x[1], x[2])
    hidden = int(attrs.get("hidden_size", 0) or 0)
    directions = 2 if attrs.get("direction") == "bidirectional" else 1
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op_type]
    macs = seq * batch * directions * gates * hidden * (features + hidden)
    return macs, x_known and hidden > 0


def _summarise_subgraphs(
    node: NodeProto, tensors: dict[str, TensorInfo], constants: set[str], scalars: dict[str, int]
) -> SubgraphSummary:
    counts: Counter[str] = Counter()
    branch_macs: list[int] = []
    exact = True
    params: dict[str, tuple[int, int]] = {}  # by tensor name, so a weight read twice counts once
    for attr in node.attribute:
        subgraphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
        for sub in subgraphs:
            inner_tensors = {**tensors, **_tensor_table(sub)}
            inner_constants = _constant_tensors(sub, inner_tensors, outer=constants)
            inner_scalars = {**scalars, **_integer_scalars(sub)}
            macs = 0
            for inner in sub.node:
                counts[inner.op_type] += 1
                if folds_to_constant(inner, inner_constants, inner_tensors):
                    continue  # only transforms constants
                for name in inner.input:
                    info = inner_tensors.get(name) if name in inner_constants else None
                    if info is not None and info.is_static:
                        params.setdefault(name, (info.numel() or 0, (info.numel() or 0) * info.itemsize))
                if inner.op_type in CONTROL_FLOW_OPS:
                    nested = _summarise_subgraphs(inner, inner_tensors, inner_constants, inner_scalars)
                    counts.update(nested.op_counts)
                    macs += nested.macs
                    exact = exact and nested.macs_exact and nested.macs_per == "call"
                    params.setdefault(
                        f"<{inner.name or inner.op_type} subgraphs>", (nested.param_count, nested.param_bytes)
                    )
                else:
                    inner_macs, inner_exact = count_macs(inner.op_type, _attributes(inner), inner, inner_tensors)
                    macs += inner_macs
                    exact = exact and inner_exact
            branch_macs.append(macs)
    if node.op_type == "If":
        # One branch runs per call: count the costlier one.
        macs, macs_per = max(branch_macs, default=0), "call"
    else:
        trips = _loop_trip_count(node, scalars) if node.op_type == "Loop" else _scan_trip_count(node, tensors)
        per_iteration = sum(branch_macs)
        macs, macs_per = (per_iteration, "iteration") if trips is None else (per_iteration * trips, "call")
    return SubgraphSummary(
        op_counts=dict(counts),
        macs=macs,
        macs_per=macs_per,
        macs_exact=exact,
        param_count=sum(count for count, _ in params.values()),
        param_bytes=sum(size for _, size in params.values()),
    )


def _loop_trip_count(node: NodeProto, scalars: dict[str, int]) -> int | None:
    # The trip count is known only when input M is a constant; a data-dependent loop is counted per iteration.
    return scalars.get(node.input[0]) if node.input and node.input[0] else None


def _integer_scalars(g: GraphProto) -> dict[str, int]:
    """Values of the one-element integer constants of a graph (loop trip counts, mostly)."""
    scalars: dict[str, int] = {}
    candidates = [(init.name, onnx.numpy_helper.to_array(init)) for init in g.initializer if _is_scalar(init.dims)]
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            value = _constant_value(node)
            if value is not None and value.size == 1:
                candidates.append((node.output[0], value))
    for name, value in candidates:
        if np.issubdtype(value.dtype, np.integer):
            scalars[name] = int(value.reshape(-1)[0])
    return scalars


def _is_scalar(dims: Iterable[int]) -> bool:
    return math.prod(dims) == 1


def _scan_trip_count(node: NodeProto, tensors: dict[str, TensorInfo]) -> int | None:
    num_scan_inputs = next((a.i for a in node.attribute if a.name == "num_scan_inputs"), 0)
    if num_scan_inputs <= 0:
        return None
    scan_input = node.input[len(node.input) - num_scan_inputs]
    shape = _shape(tensors, scan_input)
    if shape and isinstance(shape[0], int):
        return shape[0]
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


PER_AXIS_OPSET = 13
"""Per-axis QuantizeLinear/DequantizeLinear (per-channel weights) exist from this opset on."""


def model_opset(proto: ModelProto) -> int:
    """The default-domain opset a model imports (0 when it imports none)."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def drop_unused_initializers(graph: GraphProto) -> None:
    """Remove initializers no node reads (subgraph reads of outer-scope tensors count) and no output names."""
    used = {name for node in graph.node for name in _consumed_tensors(node)} | {o.name for o in graph.output}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def remove_nodes(graph: GraphProto, removed: Iterable[NodeProto]) -> None:
    """Delete `removed` (the node objects themselves) from `graph`, keeping the others in order."""
    gone = {id(node) for node in removed}
    kept = [node for node in graph.node if id(node) not in gone]
    del graph.node[:]
    graph.node.extend(kept)
