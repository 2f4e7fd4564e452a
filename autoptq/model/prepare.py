"""Bring a model into the form the quantizers expect, on a copy, checking every step.

Steps: upgrade opsets below 13 (per-channel weights need it), stop listing initializers as inputs, name every
node, fold constant weight paths into initializers, remove Identity nodes, fold a bias Add and BatchNormalization
into the preceding convolution, infer shapes, and run onnxruntime's `quant_pre_process` when symbolic shapes need
it. After each step the result must load in onnxruntime and reproduce the previous outputs within float tolerance;
a step that fails or changes outputs is skipped with a note, never trusted.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from onnx import ModelProto, NodeProto, numpy_helper
from onnx.reference import ReferenceEvaluator
from pydantic import BaseModel, ConfigDict

from autoptq.model.activations import session
from autoptq.model.calibration import Dataset
from autoptq.model.graph import (
    PER_AXIS_OPSET,
    TensorInfo,
    build_graph,
    drop_unused_initializers,
    folds_to_constant,
    model_opset,
    remove_nodes,
)
from autoptq.model.ops import CONV_OPS, SHAPE_OPS
from autoptq.model.ortio import quiet, save_for_ort, scratch_dir

PREPARATION_SAMPLES = 4
"""Samples each preparation step is verified on: enough to catch a changed output."""
RTOL = 1e-3
ATOL_FRACTION = 1e-4
"""Outputs must agree within RTOL and ATOL_FRACTION x the largest reference magnitude."""


class PreparationStep(BaseModel):
    """What one preparation step did."""

    name: str
    applied: bool
    note: str


class PreparedModel(BaseModel):
    """The prepared copy and the log of its steps."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: ModelProto
    steps: list[PreparationStep]


def prepare(model: ModelProto, samples: Dataset) -> PreparedModel:
    """Run every preparation step on a copy of `model`, verifying each on `samples` (a few are enough)."""
    current = ModelProto()
    current.CopyFrom(model)
    reference = _run(current, samples)
    steps: list[PreparationStep] = []
    for name, step in STEPS:
        try:
            candidate, note = step(_copy(current))  # a step that edits its input and then fails leaves no trace
        except Exception as exc:  # any failure of a step means: skip it, keep the previous model
            steps.append(PreparationStep(name=name, applied=False, note=f"skipped: failed ({_one_line(exc)})"))
            continue
        if candidate is None:
            steps.append(PreparationStep(name=name, applied=False, note=note))
            continue
        problem = _check(candidate, samples, reference)
        if problem is not None:
            steps.append(PreparationStep(name=name, applied=False, note=f"skipped: {problem}"))
            continue
        current = candidate
        steps.append(PreparationStep(name=name, applied=True, note=note))
    return PreparedModel(model=current, steps=steps)


def _run(model: ModelProto, samples: Dataset) -> list[list[np.ndarray]]:
    runner = session(model)
    return [runner.run(None, feed) for feed in samples.samples]


def _check(candidate: ModelProto, samples: Dataset, reference: list[list[np.ndarray]]) -> str | None:
    try:
        onnx.checker.check_model(candidate)
        outputs = _run(candidate, samples)
    except Exception as exc:  # the runtime refusing the graph is exactly what this check is for
        return f"the result does not load or run in onnxruntime ({_one_line(exc)})"
    for before, after in zip(reference, outputs, strict=True):
        if len(before) != len(after):
            return f"number of outputs changed from {len(before)} to {len(after)}"
        for ref, got in zip(before, after, strict=True):
            ref, got = np.asarray(ref), np.asarray(got)
            if ref.shape != got.shape:
                return f"output shape changed from {ref.shape} to {got.shape}"
            if np.issubdtype(ref.dtype, np.floating):
                atol = ATOL_FRACTION * float(np.max(np.abs(ref))) if ref.size else 0.0
                if not np.allclose(got, ref, rtol=RTOL, atol=atol, equal_nan=True):
                    return f"outputs changed (max difference {float(np.max(np.abs(got - ref))):.3g})"
            elif not np.array_equal(ref, got):
                return "integer outputs changed"
    return None


def _copy(model: ModelProto) -> ModelProto:
    copy = ModelProto()
    copy.CopyFrom(model)
    return copy


def name_nodes(model: ModelProto) -> tuple[ModelProto | None, str]:
    """Give every node a unique name (quantizers address nodes by name)."""
    names = Counter(node.name for node in model.graph.node if node.name)
    if all(node.name for node in model.graph.node) and all(count == 1 for count in names.values()):
        return None, "not needed: every node has a unique name"
    result = _copy(model)
    seen: Counter[str] = Counter()
    renamed = 0
    for index, node in enumerate(result.graph.node):
        base = node.name or f"{node.op_type}_{index}"
        seen[base] += 1
        new = base if seen[base] == 1 else f"{base}__{seen[base] - 1}"
        renamed += new != node.name
        node.name = new
    return result, f"named {renamed} nodes"


FOLD_PASSES = 8
"""Folding passes at most: a folded shape makes the next tensors' shapes known, whose Shape nodes then fold."""


def fold_constant_paths(model: ModelProto) -> tuple[ModelProto | None, str]:
    """Replace nodes that fold to constants (Constant; Identity, Reshape, Transpose, Cast... of weights; shape
    arithmetic on static shapes) by the initializers they compute, so weights reach their ops directly as the
    quantizers require and shape computations do not cut a device graph. Passes repeat while they fold something:
    a Reshape whose target shape just folded gives its output a static shape, which a later Shape node reads."""
    current, counts = model, Counter[str]()
    for _ in range(FOLD_PASSES):
        folded = _fold_once(current)
        if folded is None:
            break
        current, found = folded
        counts.update(found)
    if not counts:
        return None, "not needed: no constant weight paths"
    return current, "folded " + ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))


def _fold_once(model: ModelProto) -> tuple[ModelProto, Counter[str]] | None:
    result = _copy(model)
    graph = result.graph
    constants: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    shapes = build_graph(onnx.shape_inference.infer_shapes(model, strict_mode=False)).tensors
    folded: list[NodeProto] = []
    for node in graph.node:
        if not folds_to_constant(node, set(constants), shapes):
            continue
        values = _evaluate(node, constants, result, shapes)
        for name, value in zip(node.output, values, strict=True):
            constants[name] = value
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        folded.append(node)
    if not folded:
        return None
    remove_nodes(graph, folded)
    drop_unused_initializers(graph)
    return result, Counter(node.op_type for node in folded)


def _evaluate(
    node: NodeProto, constants: dict[str, np.ndarray], model: ModelProto, shapes: dict[str, TensorInfo]
) -> list[np.ndarray]:
    if node.op_type in SHAPE_OPS:
        # Only the (static) shape of the input is needed, not its values.
        source = constants.get(node.input[0])
        dims = np.asarray(shapes[node.input[0]].shape if source is None else source.shape, dtype=np.int64)
        if node.op_type == "Size":
            return [np.asarray(np.prod(dims), dtype=np.int64)]
        start = next((a.i for a in node.attribute if a.name == "start"), 0)
        end = next((a.i for a in node.attribute if a.name == "end"), len(dims))
        return [dims[start:end]]
    inputs = [i for i in node.input if i]
    graph = onnx.helper.make_graph(
        [node],
        "fold",
        [],
        [onnx.helper.make_empty_tensor_value_info(o) for o in node.output],
        [numpy_helper.from_array(constants[i], i) for i in dict.fromkeys(inputs)],
    )
    single = onnx.helper.make_model(graph, opset_imports=model.opset_import)
    return list(ReferenceEvaluator(single).run(None, {}))


def drop_identities(model: ModelProto) -> tuple[ModelProto | None, str]:
    """Remove Identity nodes on activations, as device converters and onnxruntime's optimizer do. The quantizers
    leave an Identity in float between the quantized tensors around it (Paddle writes one after every residual Add),
    which then cuts an integer-only device's graph."""
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in model.graph.node for a in n.attribute
    ):
        return None, "not applied: the model has subgraphs, which may read an Identity's output by name"
    result = _copy(model)
    graph = result.graph
    outputs = {o.name for o in graph.output}
    inputs = {i.name for i in graph.input}
    consumers = Counter(name for node in graph.node for name in node.input)
    producers = {out: node for node in graph.node for out in node.output}
    renamed: dict[str, str] = {}
    removed: list[NodeProto] = []
    for node in graph.node:
        if node.op_type != "Identity" or not node.input or not node.input[0]:
            continue
        source, target = renamed.get(node.input[0], node.input[0]), node.output[0]
        if target not in outputs:
            renamed[target] = source
        elif source in producers and source not in outputs | inputs and consumers[node.input[0]] == 1:
            # The graph output keeps its name: the producer writes it directly.
            producer = producers[source]
            producer.output[list(producer.output).index(source)] = target
        else:
            continue
        removed.append(node)
    if not removed:
        return None, "not needed: no Identity on activations"
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    remove_nodes(graph, removed)
    return result, f"removed {len(removed)} Identity"


def fold_bias_add(model: ModelProto) -> tuple[ModelProto | None, str]:
    """Fold `Add(conv, c)`, a constant per output channel (or scalar), into the Conv / ConvTranspose that feeds only
    it as its bias. Paddle exports write a transposed convolution's bias as a separate Add, which leaves a float Add
    (and any BatchNormalization after it) between the convolution and the next op."""
    result = _copy(model)
    graph = result.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    uses = Counter(name for node in graph.node for name in node.input)
    uses.update(o.name for o in graph.output)
    removed: list[NodeProto] = []
    for add in graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        for conv_out, other in (add.input, add.input[::-1]):
            conv = producers.get(conv_out)
            if conv is None or conv.op_type not in CONV_OPS or uses[conv_out] != 1:
                continue
            output = _output_channels(conv, constants)
            extra = _per_channel(constants.get(other), output)
            if extra is None or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in constants):
                continue
            bias = constants[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else np.zeros(extra.size)
            bias_name = f"{conv.name}_biasfolded_b"
            folded = (bias.astype(np.float64) + extra).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(folded, bias_name))
            constants[bias_name] = folded
            conv.input[:] = [conv.input[0], conv.input[1], bias_name]
            conv.output[0] = add.output[0]
            removed.append(add)
            break
    if not removed:
        return None, "not needed: no Conv / ConvTranspose -> Add of a per-channel constant"
    remove_nodes(graph, removed)
    drop_unused_initializers(graph)
    return result, f"folded {len(removed)} bias Add into the convolution before it"


def _output_channels(conv: NodeProto, constants: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """(output channels, output rank) of a convolution with constant weights."""
    weight = constants.get(conv.input[1])
    if weight is None or weight.ndim < 3:
        return None
    if conv.op_type == "Conv":
        return int(weight.shape[0]), weight.ndim
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    return int(weight.shape[1]) * group, weight.ndim


def _per_channel(value: np.ndarray | None, output: tuple[int, int] | None) -> np.ndarray | None:
    """`value` as one float per channel of an [N, C, ...] output of the given rank, when it broadcasts that way (a
    scalar, or C along the channel axis and 1 elsewhere, e.g. [1, C, 1, 1] or [C, 1, 1]); None otherwise."""
    if value is None or output is None or not np.issubdtype(value.dtype, np.floating):
        return None
    channels, rank = output
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]))
    axis = value.ndim - (rank - 1)  # numpy broadcasting aligns the trailing axes
    if value.ndim > rank or axis < 0 or value.shape[axis] != channels or value.size != channels:
        return None
    return value.astype(np.float64).reshape(-1)


def fold_batchnorm(model: ModelProto) -> tuple[ModelProto | None, str]:
    """Fold BatchNormalization into the Conv or ConvTranspose that feeds only it: w' = w·γ/σ per output channel,
    b' = (b−μ)·γ/σ + β."""
    result = _copy(model)
    graph = result.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    uses = Counter(name for node in graph.node for name in node.input)
    uses.update(o.name for o in graph.output)
    removed: list[NodeProto] = []
    into: Counter[str] = Counter()
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producers.get(bn.input[0])
        params = bn.input[1:5]
        if (
            conv is None
            or conv.op_type not in CONV_OPS
            or uses[conv.output[0]] != 1
            or not all(p in initializers for p in params)
            or conv.input[1] not in initializers
            or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in initializers)
        ):
            continue
        epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(initializers[p]).astype(np.float64) for p in params)
        weight = numpy_helper.to_array(initializers[conv.input[1]]).astype(np.float64)
        factor = gamma / np.sqrt(var + epsilon)
        new_weight = _scaled_output_channels(conv, weight, factor).astype(np.float32)
        bias = (
            numpy_helper.to_array(initializers[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(factor.size)
        )
        new_bias = ((bias - mean) * factor + beta).astype(np.float32)
        weight_name, bias_name = f"{conv.name}_bnfolded_w", f"{conv.name}_bnfolded_b"
        graph.initializer.extend(
            [numpy_helper.from_array(new_weight, weight_name), numpy_helper.from_array(new_bias, bias_name)]
        )
        conv.input[:] = [conv.input[0], weight_name, bias_name]
        conv.output[0] = bn.output[0]
        removed.append(bn)
        into[conv.op_type] += 1
    if not removed:
        return None, "not needed: no Conv / ConvTranspose -> BatchNormalization pair"
    remove_nodes(graph, removed)
    drop_unused_initializers(graph)
    return result, f"folded {len(removed)} BatchNormalization into " + ", ".join(
        f"{n} {op}" for op, n in sorted(into.items())
    )


def _scaled_output_channels(conv: NodeProto, weight: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """`weight` with each output channel multiplied by its factor. Conv weights are [C_out, C_in/g, k...];
    ConvTranspose weights are [C_in, C_out/g, k...], where input row r belongs to group r // (C_in/g) and
    column j is output channel group·(C_out/g) + j."""
    if conv.op_type == "Conv":
        return weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    per_group_in, per_group_out = weight.shape[0] // group, weight.shape[1]
    rows = np.arange(weight.shape[0]) // per_group_in
    table = factor.reshape(group, per_group_out)[rows]  # [C_in, C_out/g]: the factor of each (row, column)
    return weight * table.reshape(*table.shape, *([1] * (weight.ndim - 2)))


def infer_shapes(model: ModelProto) -> tuple[ModelProto | None, str]:
    """ONNX shape inference, so the quantizers know every tensor's type and shape."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    known = len(inferred.graph.value_info)
    return inferred, f"{known} intermediate tensors typed"


def symbolic_shapes(model: ModelProto) -> tuple[ModelProto | None, str]:
    """onnxruntime's quant_pre_process (symbolic shape inference, no graph rewrites) for symbolic dimensions."""
    dims = [
        d.dim_param
        for v in model.graph.input
        for d in v.type.tensor_type.shape.dim
        if d.HasField("dim_param") or not d.HasField("dim_value")
    ]
    if not dims:
        return None, "not needed: all input shapes are static"
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with scratch_dir() as folder, quiet(), working_directory(folder):
        source = save_for_ort(model, folder)
        target = folder / "preprocessed.onnx"
        # Graph optimizations would rename and merge nodes, which breaks node-level recipes: shapes only.
        quant_pre_process(str(source), str(target), skip_optimization=True)
        return onnx.load(str(target)), f"symbolic shape inference for dims {sorted(set(dims))}"


@contextlib.contextmanager
def working_directory(folder: Path) -> Iterator[None]:
    """Run in `folder`: onnxruntime's symbolic shape inference dumps `sym_shape_infer_temp.onnx` and its external
    data into the current directory when inference is incomplete, which must never be the user's folder."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def initializers_out_of_inputs(model: ModelProto) -> tuple[ModelProto | None, str]:
    """Stop listing initializers as graph inputs (IR 3 exports do): a quantizer replaces such a weight by its
    quantized form and leaves the input behind, so the produced model would ask for every weight as an input."""
    weights = {init.name for init in model.graph.initializer}
    listed = [value for value in model.graph.input if value.name in weights]
    if not listed:
        return None, "not needed: no initializer is listed as a graph input"
    result = _copy(model)
    kept = [value for value in result.graph.input if value.name not in weights]
    del result.graph.input[:]
    result.graph.input.extend(kept)
    result.ir_version = max(result.ir_version, 4)  # IR 4 is the first that lets an initializer be no input
    return result, f"{len(listed)} initializers no longer listed as graph inputs"


def upgrade_opset(model: ModelProto) -> tuple[ModelProto | None, str]:
    """Convert a model below opset 13 with onnx's version converter: onnxruntime's quantizers write per-axis
    DequantizeLinear nodes without upgrading, and opset 11/12 (Paddle's default) rejects their `axis`."""
    opset = model_opset(model)
    if opset >= PER_AXIS_OPSET:
        return None, f"not needed: opset {opset}"
    converted = onnx.version_converter.convert_version(model, PER_AXIS_OPSET)
    return converted, f"opset {opset} -> {PER_AXIS_OPSET} (onnx version converter), for per-channel weights"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("..." if len(text) > 200 else "")


STEPS: list[tuple[str, Callable[[ModelProto], tuple[ModelProto | None, str]]]] = [
    ("upgrade opset", upgrade_opset),  # first: the converter adds unnamed nodes (Softmax 11 -> 13 wraps a Flatten)
    ("initializers out of inputs", initializers_out_of_inputs),
    ("name nodes", name_nodes),
    ("fold constant weight paths", fold_constant_paths),
    ("remove Identity", drop_identities),
    ("fold bias Add", fold_bias_add),
    ("fold BatchNormalization", fold_batchnorm),
    ("infer shapes", infer_shapes),
    ("quant_pre_process (symbolic shapes)", symbolic_shapes),
]
