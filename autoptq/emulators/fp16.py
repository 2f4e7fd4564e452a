"""The fp16 emulator: weights and every activation stored in fp16 (rounded), computed in fp32, with per-node
detection of overflow (|x| > 65504 becomes inf) and underflow (non-zero values that flush to zero).

For a model converted by autoptq's fp16 quantizer, the nodes the converter kept in fp32 stay unrounded; a plain
float model is emulated as if every node ran in fp16.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper, numpy_helper

from autoptq.activations import expose, session
from autoptq.emulators.base import EmulationResult, NodeFinding
from autoptq.profiles import HardwareProfile

FP16_MAX = 65504.0
FP16_SMALLEST = 2.0**-24
"""Smallest positive fp16 subnormal: anything non-zero below half of it rounds to zero."""

STATEMENT = (
    "fp16-storage tier: every fp16 tensor rounded to fp16 (round to nearest even) between ops, arithmetic in fp32. "
    "Reproduces storage rounding, overflow to inf and underflow to zero; does not reproduce fp16 accumulation "
    "inside a kernel (tensor cores accumulate in fp16 or fp32 depending on the runtime) or kernel-specific fusions."
)


def emulate(
    model: ModelProto, profile: HardwareProfile, samples: list[dict[str, np.ndarray]], tier: str = "fp16-storage"
) -> EmulationResult:
    """Run `model` with fp16 storage rounding and report overflow/underflow per node."""
    del profile, tier  # one tier; the device's op coverage was settled when the model was converted
    emulation, probes = storage_rounded(model)
    output_names = [o.name for o in model.graph.output]
    probe_names = [name for name, _ in probes]
    runner = session(expose(emulation, probe_names), optimize=False)
    outputs: list[list[np.ndarray]] = []
    overflow: dict[str, int] = {}
    underflow: dict[str, int] = {}
    for sample in samples:
        values = runner.run([*output_names, *probe_names], sample)
        outputs.append([np.asarray(v) for v in values[: len(output_names)]])
        for (_, node), value in zip(probes, values[len(output_names) :], strict=True):
            raw = np.asarray(value, dtype=np.float64)
            big = int(np.count_nonzero(np.isfinite(raw) & (np.abs(raw) > FP16_MAX)))
            tiny = int(np.count_nonzero((raw != 0) & (np.abs(raw) < FP16_SMALLEST / 2)))
            if big:
                overflow[node] = overflow.get(node, 0) + big
            if tiny:
                underflow[node] = underflow.get(node, 0) + tiny
    findings = [
        NodeFinding(node=node, kind="overflow", detail=f"{count} values above {FP16_MAX:g} became inf", count=count)
        for node, count in sorted(overflow.items())
    ] + [
        NodeFinding(node=node, kind="underflow", detail=f"{count} non-zero values flushed to zero", count=count)
        for node, count in sorted(underflow.items())
    ]
    return EmulationResult(
        tier="fp16-storage",
        fidelity_statement=STATEMENT,
        output_names=output_names,
        outputs=outputs,
        findings=findings,
    )


def _fp16_tensors(model: ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    values = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    return {v.name for v in values if v.type.tensor_type.elem_type == TensorProto.FLOAT16}


def storage_rounded(model: ModelProto) -> tuple[ModelProto, list[tuple[str, str]]]:
    """An fp32 model that rounds every fp16 tensor of `model` through fp16, and the (probe tensor, node) pairs
    exposing each rounded tensor's value before rounding."""
    fp16 = _fp16_tensors(model)
    round_everything = not fp16  # a float model: emulate the device running every node in fp16
    result = ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    for index, init in enumerate(graph.initializer):
        values = numpy_helper.to_array(init)
        if values.dtype == np.float16 or (round_everything and values.dtype == np.float32):
            rounded = values.astype(np.float16).astype(np.float32)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(rounded, init.name))
    nodes: list[onnx.NodeProto] = []
    probes: list[tuple[str, str]] = []
    for node in graph.node:
        if node.op_type == "Cast":
            target = next(a.i for a in node.attribute if a.name == "to")
            if target == TensorProto.FLOAT16:
                # Storage rounding of a converter-inserted cast, kept in fp32 afterwards.
                nodes.extend(_round_pair(node.input[0], node.output[0], node.name))
                continue
            if target == TensorProto.FLOAT:
                nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
                continue
        rounded_outputs = [o for o in node.output if o and (o in fp16 or round_everything)]
        renamed = {o: f"{o}__fp32" for o in rounded_outputs}
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.output[:] = [renamed.get(o, o) for o in node.output]
        nodes.append(copy)
        for original, raw in renamed.items():
            nodes.extend(_round_pair(raw, original, f"{node.name}_{original}"))
            probes.append((raw, node.name))
    del graph.node[:]
    graph.node.extend(nodes)
    for value in [*graph.value_info]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    return result, probes


def _round_pair(source: str, target: str, name: str) -> list[onnx.NodeProto]:
    half = f"{target}__fp16"
    return [
        helper.make_node("Cast", [source], [half], to=TensorProto.FLOAT16, name=f"{name}__to_fp16"),
        helper.make_node("Cast", [half], [target], to=TensorProto.FLOAT, name=f"{name}__to_fp32"),
    ]
