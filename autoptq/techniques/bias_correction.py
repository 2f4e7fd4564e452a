"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction", section 4.2, the empirical variant).

Rounding weights to int8 per tensor (or per channel) and activations to 8 bits shifts the mean of a layer's output:
E[quantized output] - E[float output] is not zero per output channel, and the next layers see that shift as a
systematic error that a per-tensor scale cannot absorb. The shift is measured on the calibration data, in the QDQ
model against the float one, and subtracted from the node's float bias before quantizing again with the same
activation ranges. Only float bias values change: the graph, its ops and the device's integer rules do not.

Corrected: Conv, ConvTranspose and Gemm with a quantized constant weight (a zero bias is added where the node has
none). MatMul is skipped: it has no bias input, and adding one means adding an Add node the device would then have
to run, which is a graph change, not a value change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from autoptq.model.calibration import Dataset
from autoptq.model.ortio import save_for_ort

CORRECTED_OPS = ("Conv", "ConvTranspose", "Gemm")
"""The ops whose bias input absorbs a per-output-channel shift."""

PASSES = 2
"""Measurement passes. The first measures each layer's own shift on the uncorrected model; once the layers before
it are corrected, a layer's input moves, and the second pass adds what is left. Measured on the corpus (x86-vnni,
quick data, bench/bench_bias_correction.py), output SQNR off / one pass / two: ddddocr-det 7.37 / 2.50 / 9.32 dB,
ppocr-det 14.72 / 14.44 / 15.11 dB: one pass overshoots at the outputs, two stay within the two-extra-passes cost."""

Quantizer = Callable[[ModelProto], ModelProto]
"""Quantizes a float model to QDQ with the recipe's fixed activation ranges (the same ranges every call)."""


@dataclass(frozen=True)
class BiasSite:
    """One node whose bias is corrected, and the tensor of the QDQ model whose per-channel mean is compared."""

    node: str
    quantized_tensor: str
    """The node's output as the QDQ model passes it on: the DequantizeLinear after the output's QuantizeLinear, or
    the node's own output where onnxruntime fused a following Relu/Clip into the output's quantization (see
    `correction_sites`)."""
    axis: int
    """The output channel axis (1 for convolutions, the last of Gemm's 2-D output)."""

    @property
    def reference(self) -> str:
        """The float node's output on the same (quantized) input, added to the measurement copy."""
        return f"{self.node}_bias_correction_reference"


def bias_corrected(
    model: ModelProto, quantize: Quantizer, samples: Dataset, folder: Path, passes: int | None = None
) -> tuple[ModelProto, list[str]]:
    """`model` with the bias of every quantized Conv/ConvTranspose/Gemm corrected for its measured mean output
    shift, and notes saying what changed. `quantize` is called `passes` times (default PASSES; the caller quantizes
    the result)."""
    passes = PASSES if passes is None else passes
    quantized = quantize(model)
    sites = correction_sites(model, quantized)
    if not sites:
        return model, ["bias correction: no quantized Conv/ConvTranspose/Gemm with a correctable bias"]
    shifts: dict[str, np.ndarray] = {}
    corrected = model
    for index in range(passes):
        if index:
            # A later pass measures what is left on the corrected model: each layer's input moved a little once
            # the layers before it were corrected (same sites: same graph, new bias values).
            quantized = quantize(corrected)
        for node, shift in own_shifts(model, quantized, sites, samples, folder).items():
            shifts[node] = shifts[node] + shift if node in shifts else shift
        corrected = with_shifted_biases(model, shifts)
    largest = max(float(np.abs(s).max()) for s in shifts.values())
    note = (
        f"bias correction: {len(sites)} nodes' biases corrected for their mean quantization shift "
        f"({passes} pass{'es' if passes > 1 else ''}, largest {largest:.3g})"
    )
    return corrected, [note]


def own_shifts(
    model: ModelProto, quantized: ModelProto, sites: list[BiasSite], samples: Dataset, folder: Path
) -> dict[str, np.ndarray]:
    """Each site's per-channel mean of (quantized output - float output), both on the quantized model's own input
    to the node.

    The float reference is the node with its float weight and bias from `model`, fed what the quantized node reads.
    Comparing with the float model's tensor instead would also count the shift every earlier layer passed down:
    corrected all at once, each layer would then also remove what its predecessors' corrections already removed.
    Measured on ddddocr-det (x86-vnni), that double count took box F1 from 0.98 to 0.16 in one pass and to 0.00
    in two; measuring each layer's own shift needs no layer order and no float model run."""
    measured = _with_references(model, quantized, sites)
    tensors = {name: site.axis for site in sites for name in (site.quantized_tensor, site.reference)}
    means = channel_means(measured, tensors, samples, folder, "quantized")
    return {site.node: means[site.quantized_tensor] - means[site.reference] for site in sites}


def _with_references(model: ModelProto, quantized: ModelProto, sites: list[BiasSite]) -> ModelProto:
    """A copy of the QDQ model with, for each site, the float node beside the quantized one: same op and attributes,
    the quantized node's activation input, the float weight and bias of `model` (as new initializers)."""
    copy = ModelProto()
    copy.CopyFrom(quantized)
    float_nodes = {node.name: node for node in model.graph.node}
    quantized_nodes = {node.name: node for node in quantized.graph.node}
    constants = {init.name: init for init in model.graph.initializer}
    for site in sites:
        original, node = float_nodes[site.node], quantized_nodes[site.node]
        inputs = [node.input[0]]
        for role, name in (
            ("weight", original.input[1]),
            ("bias", original.input[2] if len(original.input) > 2 else ""),
        ):
            if not name:
                continue
            tensor = TensorProto()
            tensor.CopyFrom(constants[name])
            tensor.name = f"{site.node}_bias_correction_{role}"
            copy.graph.initializer.append(tensor)
            inputs.append(tensor.name)
        reference = helper.make_node(original.op_type, inputs, [site.reference], name=site.reference)
        reference.attribute.extend(original.attribute)
        copy.graph.node.append(reference)  # reads only tensors that exist already: graph order stays topological
    return copy


def correction_sites(model: ModelProto, quantized: ModelProto) -> list[BiasSite]:
    """The nodes of `model` quantized in `quantized` (their weight now comes from a DequantizeLinear) whose bias
    can take a per-channel correction, in graph order."""
    float_nodes = {node.name: node for node in model.graph.node if node.name}
    constants = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in quantized.graph.node for out in node.output}
    consumers: dict[str, list[NodeProto]] = {}
    for node in quantized.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    sites: list[BiasSite] = []
    for node in quantized.graph.node:
        original = float_nodes.get(node.name)
        if node.op_type not in CORRECTED_OPS or original is None or original.op_type != node.op_type:
            continue
        weight = producers.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None or weight.op_type != "DequantizeLinear" or not _correctable(original, constants):
            continue
        tensor = _dequantized(node.output[0], consumers)
        # The float name is the node's output, or the DequantizeLinear's where the output is a graph output (the
        # node then writes `<name>_QuantizeLinear_Input`). Any other name is a fused activation's.
        if original.output[0] not in (node.output[0], tensor):
            # onnxruntime removed the Relu/Clip after this node and renamed the node's output to the activation's
            # output: the QuantizeLinear's range now starts at the activation's floor, so what its DequantizeLinear
            # gives is post-activation. A post-activation mean shift is not a pre-activation one (the clip hides
            # the negative part), so compare the node's own output, pre-activation, computed from the dequantized
            # input and weight, with the float node's pre-activation output on that input: like with like. It
            # leaves out only the output's own rounding, which is zero-mean.
            tensor = node.output[0]
        axis = 1 if node.op_type != "Gemm" else -1
        sites.append(BiasSite(node=node.name, quantized_tensor=tensor, axis=axis))
    return sites


def _correctable(node: NodeProto, constants: dict[str, TensorProto]) -> bool:
    """A constant float32 weight and a bias that is absent or a constant float32 vector (Gemm: of shape [N] or
    [1, N], with beta not zero), so one value per output channel can be added to it."""
    weight = constants.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or weight.data_type != TensorProto.FLOAT:
        return False
    if node.op_type == "Gemm" and _attribute(node, "beta", 1.0) == 0.0:
        return False
    if len(node.input) < 3 or not node.input[2]:
        return True
    bias = constants.get(node.input[2])
    if bias is None or bias.data_type != TensorProto.FLOAT:
        return False
    dims = list(bias.dims)
    return len(dims) == 1 or (node.op_type == "Gemm" and len(dims) == 2 and dims[0] == 1)


def _dequantized(tensor: str, consumers: dict[str, list[NodeProto]]) -> str:
    """The float value of `tensor` as the quantized model passes it on: the output of the DequantizeLinear after its
    QuantizeLinear, or the tensor itself where its output is not quantized (the next node is kept float)."""
    for quant in consumers.get(tensor, []):
        if quant.op_type != "QuantizeLinear":
            continue
        for dequant in consumers.get(quant.output[0], []):
            if dequant.op_type == "DequantizeLinear":
                return dequant.output[0]
    return tensor


def channel_means(
    model: ModelProto, tensors: dict[str, int], samples: Dataset, folder: Path, label: str
) -> dict[str, np.ndarray]:
    """Per-channel means of `tensors` (name -> channel axis) over every sample and every other axis, in float64 so
    the sums do not depend on the sample count's rounding. One sample at a time: memory holds one sample's
    tensors, whatever the count, and samples of different sizes weigh by their element count."""
    names = sorted(tensors)
    session = _session(_with_outputs(model, names), folder, label)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(names, 0)
    for sample in samples.samples:
        for name, value in zip(names, session.run(names, sample), strict=True):
            axis = tensors[name] % value.ndim
            total = value.astype(np.float64).sum(axis=tuple(i for i in range(value.ndim) if i != axis))
            sums[name] = sums[name] + total if name in sums else total
            counts[name] += value.size // value.shape[axis]
    return {name: sums[name] / counts[name] for name in names}


def _with_outputs(model: ModelProto, names: list[str]) -> ModelProto:
    """A copy of `model` that also outputs `names` (the caller's model is left as it is)."""
    copy = ModelProto()
    copy.CopyFrom(model)
    present = {out.name for out in copy.graph.output}
    copy.graph.output.extend(
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in present
    )
    return copy


def _session(model: ModelProto, folder: Path, label: str) -> ort.InferenceSession:
    """An onnxruntime session without graph optimizations: the QDQ model then runs as written (dequantize, float op,
    quantize), so every tensor named exists, and the float model is not rewritten either. No memory patterns:
    samples of many sizes would each cache an allocation plan."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_mem_pattern = False
    path = save_for_ort(model, folder, f"bias-correction-{label}.onnx")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def with_shifted_biases(model: ModelProto, shifts: dict[str, np.ndarray]) -> ModelProto:
    """A copy of `model` with `shifts[node]` subtracted from each named node's bias (Gemm: divided by its beta,
    which scales the bias), adding a zero bias where a node has none."""
    corrected = ModelProto()
    corrected.CopyFrom(model)
    graph = corrected.graph
    initializers = {init.name: init for init in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    for node in graph.node:
        shift = shifts.get(node.name)
        if shift is None:
            continue
        scale = _attribute(node, "beta", 1.0) if node.op_type == "Gemm" else 1.0
        delta = (shift / scale).astype(np.float32)
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if has_bias:
            old = initializers[node.input[2]]
            bias = numpy_helper.to_array(old)
            values = (bias.reshape(-1).astype(np.float64) - delta).astype(np.float32).reshape(bias.shape)
        else:
            values = -delta
        if has_bias and users[node.input[2]] == 1:
            old.CopyFrom(numpy_helper.from_array(values, old.name))
            continue
        # A new initializer: where the node had no bias, or shares it with another node that keeps its own.
        name = f"{node.name}_bias_corrected"
        graph.initializer.append(numpy_helper.from_array(values, name))
        if has_bias:
            node.input[2] = name
        else:
            while len(node.input) < 2:
                node.input.append("")
            node.input.append(name)
    return corrected


def _attribute(node: NodeProto, name: str, default: float) -> float:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)
