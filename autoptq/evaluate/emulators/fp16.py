"""The fp16 emulator: weights and every activation stored in fp16 (rounded), computed in fp32, with per-node
detection of overflow (finite values that become inf) and underflow (non-zero values that flush to zero).

For a model converted by autoptq's fp16 quantizer, the nodes the converter kept in fp32 stay unrounded; a plain
float model is emulated as if every node ran in fp16 (its float inputs, weights and float activations rounded).
Overflow and underflow are counted where they happen, by the same rounding the emulation applies: a value overflows
when fp16 rounding turns it into inf (|x| >= 65520, as values up to that round to 65504) and underflows when a
non-zero value rounds to zero (|x| <= 2^-25); values that were already inf or zero upstream are not counted again.
Integer graph inputs and outputs recorded by autoptq (a full-int8 model checked on an fp16 device) are quantized and
dequantized on the host as `autoptq.evaluate.runner.ModelRunner` does.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper, numpy_helper

from autoptq.deadline import NO_DEADLINE, Deadline
from autoptq.devices.profiles import HardwareProfile
from autoptq.evaluate.emulators.base import EmulationResult, NodeFinding
from autoptq.evaluate.runner import dequantize_output, quantize_input
from autoptq.model.activations import expose, session
from autoptq.model.intio import read_integer_io

FP16_MAX = 65504.0
FP16_SMALLEST = 2.0**-24
"""Smallest positive fp16 subnormal: anything non-zero up to half of it rounds to zero (the tie goes to even, 0)."""

STATEMENT = (
    "fp16-storage tier: every fp16 tensor rounded to fp16 (round to nearest even) between ops, arithmetic in fp32. "
    "Reproduces storage rounding, overflow to inf and underflow to zero; does not reproduce fp16 accumulation "
    "inside a kernel (tensor cores accumulate in fp16 or fp32 depending on the runtime) or kernel-specific fusions."
)


def emulate(
    model: ModelProto,
    profile: HardwareProfile,
    samples: list[dict[str, np.ndarray]],
    tier: str = "fp16-storage",
    deadline: Deadline = NO_DEADLINE,
) -> EmulationResult:
    """Run `model` with fp16 storage rounding and report overflow/underflow per node (`deadline` checked before
    each sample)."""
    del profile, tier  # one tier; the device's op coverage was settled when the model was converted
    emulation, probes = storage_rounded(model)
    output_names = [o.name for o in model.graph.output]
    probe_names = [name for name, _ in probes]
    runner = session(expose(emulation, probe_names), optimize=False)
    io = {item.name: item for item in read_integer_io(model)}
    outputs: list[list[np.ndarray]] = []
    overflow: dict[str, int] = {}
    underflow: dict[str, int] = {}
    for sample in deadline.each(samples):
        feed = {name: quantize_input(v, io[name]) if name in io else v for name, v in sample.items()}
        values = runner.run([*output_names, *probe_names], feed)
        outputs.append(
            [
                dequantize_output(np.asarray(v), io[name]) if name in io else np.asarray(v)
                for name, v in zip(output_names, values[: len(output_names)], strict=True)
            ]
        )
        for (_, node), value in zip(probes, values[len(output_names) :], strict=True):
            big, tiny = rounding_losses(np.asarray(value))
            if big:
                overflow[node] = overflow.get(node, 0) + big
            if tiny:
                underflow[node] = underflow.get(node, 0) + tiny
    findings = [
        *_weight_findings(model),
        *(
            NodeFinding(node=node, kind="overflow", detail=f"{n} values beyond ±{FP16_MAX:g} became inf", count=n)
            for node, n in sorted(overflow.items())
        ),
        *(
            NodeFinding(node=node, kind="underflow", detail=f"{n} non-zero values flushed to zero", count=n)
            for node, n in sorted(underflow.items())
        ),
    ]
    return EmulationResult(
        tier="fp16-storage",
        fidelity_statement=STATEMENT,
        output_names=output_names,
        outputs=outputs,
        findings=findings,
    )


def rounding_losses(raw: np.ndarray) -> tuple[int, int]:
    """(overflows, underflows) when fp32 values `raw` are stored in fp16: finite values that round to ±inf, and
    non-zero values that round to zero."""
    raw = np.asarray(raw)
    if not np.issubdtype(raw.dtype, np.floating):
        return 0, 0
    with np.errstate(over="ignore"):
        half = raw.astype(np.float16)
    big = int(np.count_nonzero(np.isfinite(raw) & np.isinf(half)))
    tiny = int(np.count_nonzero((raw != 0) & (half == 0)))
    return big, tiny


def _weight_findings(model: ModelProto) -> list[NodeFinding]:
    """Overflow/underflow of the weights the emulation rounds (fp16 initializers are already rounded: none)."""
    round_everything = not _fp16_tensors(model)
    readers: dict[str, str] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, node.name or node.op_type)
    findings = []
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if not (round_everything and values.dtype == np.float32):
            continue
        big, tiny = rounding_losses(values)
        node = readers.get(init.name, init.name)
        if big:
            detail = f"weight {init.name!r}: {big} values beyond ±{FP16_MAX:g} became inf"
            findings.append(NodeFinding(node=node, kind="overflow", detail=detail, count=big))
        if tiny:
            detail = f"weight {init.name!r}: {tiny} non-zero values flushed to zero"
            findings.append(NodeFinding(node=node, kind="underflow", detail=detail, count=tiny))
    return findings


def _tensor_types(model: ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    values = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    return types


def _fp16_tensors(model: ModelProto) -> set[str]:
    return {name for name, elem_type in _tensor_types(model).items() if elem_type == TensorProto.FLOAT16}


def storage_rounded(model: ModelProto) -> tuple[ModelProto, list[tuple[str, str]]]:
    """An fp32 model that rounds every fp16 tensor of `model` through fp16, and the (probe tensor, node) pairs
    exposing each rounded tensor's value before rounding."""
    types = _tensor_types(model)
    fp16 = {name for name, elem_type in types.items() if elem_type == TensorProto.FLOAT16}
    round_everything = not fp16  # a float model: emulate the device running every node in fp16

    def stored_in_fp16(name: str) -> bool:
        # In a float model only float32 tensors would be fp16 on the device (not shapes, indices, masks).
        return name in fp16 or (round_everything and types.get(name) == TensorProto.FLOAT)

    result = ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    for index, init in enumerate(graph.initializer):
        values = numpy_helper.to_array(init)
        if values.dtype == np.float16 or (round_everything and values.dtype == np.float32):
            with np.errstate(over="ignore"):
                rounded = values.astype(np.float16).astype(np.float32)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(rounded, init.name))
    nodes: list[onnx.NodeProto] = []
    probes: list[tuple[str, str]] = []
    outputs = {o.name for o in graph.output}
    inputs_read: dict[str, str] = {}
    if round_everything:  # the device takes its inputs in fp16 too (the converter's input Cast)
        initializers = {init.name for init in graph.initializer}
        for value in graph.input:
            if value.name not in initializers and value.name not in outputs and stored_in_fp16(value.name):
                inputs_read[value.name] = f"{value.name}__fp16_input"
                nodes.extend(_round_pair(value.name, inputs_read[value.name], f"{value.name}_input"))
                probes.append((value.name, f"input {value.name}"))
    probed = {name for name, _ in probes}
    for node in graph.node:
        node_inputs = [inputs_read.get(name, name) for name in node.input]
        if node.op_type == "Cast":
            target = next(a.i for a in node.attribute if a.name == "to")
            if target == TensorProto.FLOAT16:
                # Storage rounding of a converter-inserted cast, kept in fp32 afterwards; a cast from fp32 can
                # overflow or underflow, so its source is probed.
                nodes.extend(_round_pair(node_inputs[0], node.output[0], node.name))
                if node.input[0] not in fp16 and node.input[0] not in probed:
                    probes.append((node_inputs[0], node.name or node.output[0]))
                    probed.add(node.input[0])
                continue
            if target == TensorProto.FLOAT and node.input[0] in fp16:
                nodes.append(helper.make_node("Identity", [node_inputs[0]], [node.output[0]], name=node.name))
                continue
        rounded_outputs = [o for o in node.output if o and stored_in_fp16(o)]
        renamed = {o: f"{o}__fp32" for o in rounded_outputs}
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = node_inputs
        copy.output[:] = [renamed.get(o, o) for o in node.output]
        nodes.append(copy)
        for original, raw in renamed.items():
            nodes.extend(_round_pair(raw, original, f"{node.name}_{original}"))
            probes.append((raw, node.name or original))
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
