"""Per-node sensitivity to quantization, computed cheaply.

Two measures: the error each activation carries once the whole model is quantized (SQNR along the graph, one run
of each model), and the effect on the model's output of quantizing each node alone (one quantization per node,
reusing one calibration through a cache). Nodes are ranked by the second, most damaging first.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnx import ModelProto
from pydantic import BaseModel, Field

from autoptq.deadline import NO_DEADLINE, Deadline
from autoptq.errors import AutoptqError
from autoptq.evaluate.metrics import compare, sqnr_from_powers
from autoptq.evaluate.runner import ModelRunner, quantize_input
from autoptq.model.activations import expose, float_tensors, session
from autoptq.model.calibration import Dataset
from autoptq.model.intio import read_integer_io
from autoptq.techniques import by_name
from autoptq.techniques.recipe import Recipe
from autoptq.techniques.static import StaticQdq

QUANTIZABLE_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Sigmoid", "Softmax", "AveragePool",
        "GlobalAveragePool", "MaxPool", "Concat", "LeakyRelu", "Resize", "Gather", "Split", "Pad", "Where",
        "InstanceNormalization", "LayerNormalization",
    }
)  # fmt: skip
"""Op types onnxruntime's static quantizer turns into quantized groups (data movement ops follow their inputs)."""
MAX_CANDIDATES = 48
"""Nodes quantized alone at most; beyond that the worst activations along the graph pick the candidates."""


class NodeSensitivity(BaseModel):
    """How much quantizing one node hurts."""

    node: str
    op_type: str
    output_sqnr_db: float
    activation_sqnr_db: float | None = None


class LayerSqnrValue(BaseModel):
    """SQNR of one activation of the fully quantized model against float."""

    tensor: str
    node: str
    op_type: str
    sqnr_db: float


class SensitivityReport(BaseModel):
    """`autoptq sensitivity`: the per-node ranking on its own, without a budget search."""

    target: str
    technique: str
    technique_note: str
    recipe: Recipe = Field(description="the recipe each node was quantized under")
    calibration_samples: int
    samples: int = Field(description="held-out samples the SQNRs are measured on")
    full_output_sqnr_db: float = Field(description="output SQNR with every node quantized")
    basis: str
    nodes: list[NodeSensitivity] = Field(description="most damaging first")
    along_graph: list[LayerSqnrValue] = Field(description="activation SQNR of the fully quantized model, in order")


def _dequantized_names(qdq: ModelProto) -> dict[str, str]:
    """Float tensor name → the name of its value after quantize-dequantize in a QDQ model."""
    quantized_of = {n.output[0]: n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    mapping = {}
    for node in qdq.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in quantized_of:
            mapping.setdefault(quantized_of[node.input[0]], node.output[0])
    return mapping


def activation_sqnr(
    float_model: ModelProto, qdq: ModelProto, samples: Dataset, deadline: Deadline = NO_DEADLINE
) -> dict[str, float]:
    """SQNR (dB) of each activation of the quantized model against the float model, over `samples` (`deadline`
    checked before each)."""
    dequantized = _dequantized_names(qdq)
    pairs = [(name, dequantized[name]) for name in float_tensors(float_model) if name in dequantized]
    return dict(_paired_sqnr(float_model, qdq, pairs, samples, deadline))


def sqnr_along_graph(float_model: ModelProto, quantized: ModelProto, samples: Dataset) -> list[tuple[str, float]]:
    """SQNR (dB) of each float activation of `float_model` that the quantized model of any technique still has,
    in execution order, over `samples`: after quantize-dequantize where the activation is quantized (QDQ), else the
    tensor of the same name (fp16, weight-only, kept in float). Integer graph inputs are fed as the device would."""
    quantized_outputs = {out for node in quantized.graph.node for out in node.output}
    dequantized = _dequantized_names(quantized)
    pairs = []
    for name in float_tensors(float_model):
        if name in dequantized:
            pairs.append((name, dequantized[name]))
        elif name in quantized_outputs:
            pairs.append((name, name))
    return _paired_sqnr(float_model, quantized, pairs, samples)


def _paired_sqnr(
    float_model: ModelProto,
    quantized: ModelProto,
    pairs: list[tuple[str, str]],
    samples: Dataset,
    deadline: Deadline = NO_DEADLINE,
) -> list[tuple[str, float]]:
    """SQNR of each (float tensor, quantized tensor) pair over `samples`, in pair order; integer graph inputs fed
    as the device would. Powers are summed sample by sample: memory holds one sample's activations, whatever the
    sample count (kept whole, a recogniser's activations over 8 lines of varying width took `variants` to 4.1 GB
    on ppocr-rec)."""
    if not pairs:
        return []
    float_run = session(expose(float_model, [a for a, _ in pairs]), optimize=False)
    quantized_run = session(expose(quantized, [b for _, b in pairs]), optimize=False)
    integer_io = {io.name: io for io in read_integer_io(quantized)}
    signal = dict.fromkeys((a for a, _ in pairs), 0.0)
    noise = dict.fromkeys((a for a, _ in pairs), 0.0)
    floating: dict[str, bool] = {}
    for feed in deadline.each(samples.samples):
        quantized_feed = {k: quantize_input(v, integer_io[k]) if k in integer_io else v for k, v in feed.items()}
        references = float_run.run([a for a, _ in pairs], feed)
        candidates = quantized_run.run([b for _, b in pairs], quantized_feed)
        for (a, _), ref, got in zip(pairs, references, candidates, strict=True):
            # A same-named tensor that is integer in the quantized graph (e.g. a weight-only MatMulInteger) is no
            # activation to compare: only float values on both sides are.
            if not floating.setdefault(a, np.issubdtype(np.asarray(got).dtype, np.floating)):
                continue
            ref = np.asarray(ref, np.float64).reshape(-1)
            difference = ref - np.asarray(got, np.float64).reshape(-1)
            signal[a] += float(np.dot(ref, ref))
            noise[a] += float(np.dot(difference, difference))
    return [(a, sqnr_from_powers(signal[a], noise[a])) for a, _ in pairs if floating.get(a)]


def static_technique(name: str) -> StaticQdq:
    """The static technique named `name`: per-node ranking quantizes one node at a time, which static QDQ can."""
    chosen = by_name(name)
    if not isinstance(chosen, StaticQdq):
        raise AutoptqError(f"per-node sensitivity ranks static quantization, not {name}")
    return chosen


def rank_nodes(
    model: ModelProto,
    recipe: Recipe,
    technique: str,
    calibration: Dataset,
    samples: Dataset,
    output_sqnr: Callable[[ModelProto], float],
    cache: Path,
    deadline: Deadline = NO_DEADLINE,
) -> list[NodeSensitivity]:
    """Rank the quantizable nodes of `model` by the output SQNR (`output_sqnr`, lower is worse) reached when only
    that node is quantized; ties keep graph order. `cache` holds the shared calibration ranges. `deadline` is checked
    before each node is quantized (and inside the calibration and the SQNR along the graph); `output_sqnr` checks
    its own."""
    # Ranking compares float tensors: integer graph I/O (a deployment detail) would only get in the way.
    recipe = recipe.model_copy(update={"io_dtype": "float32"})
    excluded = set(recipe.nodes_to_exclude)
    candidates = [n for n in model.graph.node if n.op_type in QUANTIZABLE_OPS and n.name not in excluded]
    static = static_technique(technique)
    full = static.quantize_nodes(model, recipe, calibration, cache, deadline=deadline).model
    along_graph = activation_sqnr(model, full, samples, deadline)
    node_sqnr = {n.name: along_graph.get(n.output[0]) for n in candidates}
    if len(candidates) > MAX_CANDIDATES:
        # Unknown (a fused activation, a renamed graph output) counts as worst: better to measure than to drop it.
        candidates = sorted(candidates, key=lambda n: node_sqnr[n.name] if node_sqnr[n.name] is not None else -1e9)
        candidates = candidates[:MAX_CANDIDATES]
    ranked = []
    for node in deadline.each(candidates):
        try:
            alone = static.quantize_nodes(model, recipe, calibration, cache, nodes=[node.name])
        except AutoptqError:
            continue
        ranked.append(
            NodeSensitivity(
                node=node.name,
                op_type=node.op_type,
                output_sqnr_db=round(output_sqnr(alone.model), 3),
                activation_sqnr_db=None if node_sqnr[node.name] is None else round(node_sqnr[node.name], 3),
            )
        )
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    return sorted(ranked, key=lambda s: (s.output_sqnr_db, order[s.node]))


def sensitivity_report(
    model: ModelProto,
    target: str,
    technique: str,
    technique_note: str,
    recipe: Recipe,
    calibration: Dataset,
    samples: Dataset,
) -> SensitivityReport:
    """Rank the nodes of `model` (prepared for quantization) for `technique` under `recipe`, and measure the SQNR
    along the graph of the fully quantized model; every SQNR is on the host (onnxruntime), over `samples`."""
    float_runner = ModelRunner(model)
    reference = [float_runner.run(sample) for sample in samples.samples]

    def output_sqnr(candidate: ModelProto) -> float:
        runner = ModelRunner(candidate)
        outputs = [runner.run(sample) for sample in samples.samples]
        return min(
            compare(str(i), [r[i] for r in reference], [o[i] for o in outputs]).sqnr_db
            for i in range(len(reference[0]))
        )

    float_io = recipe.model_copy(update={"io_dtype": "float32"})
    with tempfile.TemporaryDirectory(prefix="autoptq-sensitivity-") as folder:
        cache = Path(folder) / "calibration.json"
        ranked = rank_nodes(model, recipe, technique, calibration, samples, output_sqnr, cache)
        full = static_technique(technique).quantize_nodes(model, float_io, calibration, cache).model
    producers = {out: node for node in model.graph.node for out in node.output}
    along = [
        LayerSqnrValue(tensor=name, node=producers[name].name, op_type=producers[name].op_type, sqnr_db=round(value, 3))
        for name, value in sqnr_along_graph(model, full, samples)
    ]
    capped = (
        f"; the {MAX_CANDIDATES} nodes with the worst activation SQNR were ranked"
        if len(ranked) >= MAX_CANDIDATES
        else ""
    )
    return SensitivityReport(
        target=target,
        technique=technique,
        technique_note=technique_note,
        recipe=recipe,
        calibration_samples=len(calibration),
        samples=len(samples),
        full_output_sqnr_db=round(output_sqnr(full), 3),
        basis=(
            f"each quantizable node quantized alone ({technique}, the rest float), output SQNR against float on "
            f"{len(samples)} held-out samples in onnxruntime on this machine{capped}"
        ),
        nodes=ranked,
        along_graph=along,
    )
