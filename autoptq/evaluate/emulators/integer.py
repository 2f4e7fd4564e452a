"""The integer emulator family (Edge TPU, microcontrollers, NPUs, x86 integer kernels), in two tiers.

- `fast`: the QDQ model as is in onnxruntime with pinned settings (all graph optimizations, one thread). The
  optimized graph is inspected to see which compute nodes became integer kernels (QLinearConv, QGemm, ...); each
  that still runs in float between DequantizeLinear and QuantizeLinear is reported as a `float_kernel` finding.
  Within ~1 LSB per layer of TFLite-style devices: onnxruntime rounds half to even in float32 requantization.
- `exact`: the model rewritten into the device's integer arithmetic (`autoptq.deploy.intgraph`: int32 accumulation
  or x86's int16 pair saturation, per-channel fixed-point requantization with the profile's rounding, integer
  clamps, lookup-table activations) and lowered to standard ONNX ops (`intgraph.lower`) that onnxruntime computes
  bit for bit. What cannot be made exact (Softmax, ops without an integer kernel here) runs dequantize → float →
  quantize and is reported as an `approximate` finding and in the fidelity statement.

Samples are float feeds: integer graph inputs are quantized here, as TFLite's QUANTIZE does (float32 division,
round half away from zero); integer outputs come back dequantized.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import ModelProto

from autoptq.deadline import NO_DEADLINE, Deadline
from autoptq.deploy import kernels
from autoptq.deploy.intgraph import MOVEMENT_OPS, DeviceGraph, EmulationError, build_device_graph, lower
from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError, DataError
from autoptq.evaluate.emulators.base import EmulationResult, NodeFinding
from autoptq.model.graph import output_tail
from autoptq.model.intio import IOQuantization, read_integer_io
from autoptq.model.ops import QDQ_OPS

TIERS = ("exact", "fast", "litert", "tflm")
VALUE_CHANGING_FUSIONS = ("ConvMulFusion", "MatMulScaleFusion")
"""onnxruntime graph rewrites that fold a following multiply into float weights: they would turn the exact tier's
integer-valued float sums into rounded ones, so its session disables them (the rest of ORT_ENABLE_ALL stays on)."""
FAST_FIDELITY = (
    "within ~1 LSB per layer of TFLite-style devices (onnxruntime rounds half to even in float32 requantization)"
)
_INTEGER_KERNEL_PREFIXES = ("QLinear", "QGemm", "QAttention", "QEmbed", "DynamicQuantize")
_QUIET_OPS = MOVEMENT_OPS | QDQ_OPS | {"Shape", "Cast"}
"""Ops that move or select values: running them on dequantized values loses nothing, so they are not reported."""
_ARITHMETIC = {
    "tflite_double": "TFLite's reference integer kernels (int32 accumulation; gemmlowp double-rounding "
    "requantization, SaturatingRoundingDoublingHighMul then RoundingDivideByPOT, per-channel multipliers)",
    "tflite_single": "TFLite's integer kernels built with TFLITE_SINGLE_ROUNDING, as CMSIS-NN's single-rounding "
    "option (int32 accumulation; one rounding, half up, per requantization)",
    "float_rne": "a model of onnxruntime's MLAS CPU kernels (int32 accumulation; float32 requantization rounded half "
    "to even)",
}


def emulate(
    model: ModelProto,
    profile: HardwareProfile,
    samples: list[dict[str, np.ndarray]],
    tier: str = "exact",
    deadline: Deadline = NO_DEADLINE,
) -> EmulationResult:
    """Outputs of a quantized QDQ model under `profile`'s integer arithmetic, one list per float sample.
    `deadline` is checked before each sample on the exact and fast tiers (the litert and tflm tiers, which no search
    runs, do not take it)."""
    if tier not in TIERS:
        raise AutoptqError(f"unknown tier {tier!r} for the integer emulator (its tiers: {', '.join(TIERS)})")
    if tier in (
        "litert",
        "tflm",
    ):  # the device file in a real TFLite runtime (autoptq.evaluate.emulators.tflite_runtime)
        from autoptq.evaluate.emulators import tflite_runtime

        return tflite_runtime.emulate(model, profile, samples, tier)
    io = {item.name: item for item in read_integer_io(model)}
    inputs = data_inputs(model)
    if tier == "fast":
        runner, findings, statement = _fast_runner(model, profile)
    else:
        device = build_device_graph(model, profile)
        runner = exact_session(lower(device.model))
        findings, statement = device.findings, exact_fidelity(device, profile)
    output_names = [value.name for value in model.graph.output]
    outputs = []
    for sample in deadline.each(samples):
        raw = runner.run(output_names, _feeds(sample, inputs, io))
        outputs.append([_real(np.asarray(value), io.get(name)) for name, value in zip(output_names, raw, strict=True)])
    return EmulationResult(
        tier="fast" if tier == "fast" else "exact",
        fidelity_statement=statement,
        output_names=output_names,
        outputs=outputs,
        findings=findings,
    )


def build_exact_model(model: ModelProto, profile: HardwareProfile) -> ModelProto:
    """The exact tier's lowered model (standard ONNX ops, same inputs and outputs as `model`), e.g. to time it."""
    return lower(build_device_graph(model, profile).model)


def exact_session(lowered: ModelProto) -> ort.InferenceSession:
    """A session for a lowered model: all graph optimizations but the value-changing fusions, one thread."""
    return ort.InferenceSession(
        lowered.SerializeToString(),
        _pinned_options(),
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(VALUE_CHANGING_FUSIONS),
    )


def quantize_inputs(model: ModelProto, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A float sample as the model takes it: integer inputs quantized as the device's host does."""
    io = {item.name: item for item in read_integer_io(model)}
    return _feeds(sample, data_inputs(model), io)


def output_scales(model: ModelProto) -> dict[str, float | None]:
    """One LSB of each graph output in real units: the scale of an integer output, or of the DequantizeLinear that
    produces a float output (None for an output that was never quantized)."""
    io = {item.name: item for item in read_integer_io(model)}
    producers = {out: node for node in model.graph.node for out in node.output}
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    scales: dict[str, float | None] = {}
    for value in model.graph.output:
        producer = producers.get(value.name)
        if value.name in io:
            scales[value.name] = io[value.name].scale
        elif producer is not None and producer.op_type == "DequantizeLinear" and producer.input[1] in constants:
            scales[value.name] = float(constants[producer.input[1]].reshape(-1)[0])
        else:
            scales[value.name] = _tail_scale(model, value.name, producers, constants)
    return scales


def _tail_scale(
    model: ModelProto, output: str, producers: dict[str, onnx.NodeProto], constants: dict[str, np.ndarray]
) -> float | None:
    """An output joined in float from dequantized parts (autoptq.model.graph.output_tail): the coarsest part's LSB,
    in which every part's difference is at most what it reads (None when a part is not dequantized)."""
    tail = output_tail(model, output)
    inside = {out for node in tail for out in node.output}
    read = [name for node in tail for name in (node.input if node.op_type == "Concat" else node.input[:1])]
    feeding = [producers.get(name) for name in read if name not in inside]
    if not tail or any(p is None or p.op_type != "DequantizeLinear" or p.input[1] not in constants for p in feeding):
        return None
    return max(float(constants[p.input[1]].max()) for p in feeding if p is not None)


def lsb_difference(a: np.ndarray, b: np.ndarray, scale: float = 1.0) -> dict[str, float]:
    """How far two quantized tensors are apart in LSB (`scale` = one LSB in the arrays' units; 1 for integers):
    element count, fraction of elements that differ, largest and mean |Δ| in LSB."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    delta = np.rint(np.abs(a - b) / scale)
    return {
        "elements": float(delta.size),
        "differing_fraction": float(np.count_nonzero(delta) / delta.size) if delta.size else 0.0,
        "max_abs_lsb": float(delta.max(initial=0.0)),
        "mean_abs_lsb": float(delta.mean()) if delta.size else 0.0,
    }


def exact_fidelity(device: DeviceGraph, profile: HardwareProfile) -> str:
    """What the exact tier reproduces for this model and device, and what it does not."""
    rounding = device.rounding
    ops = ", ".join(sorted(device.exact_ops)) or "no op"
    parts = [
        f"exact tier: bit-exact with {_ARITHMETIC[rounding]} for {ops} in this model (rounding from the "
        f"{profile.name} profile: {rounding}), run in onnxruntime through a lowering that autoptq's tests hold bit "
        "for bit to a numpy reference of the same kernels."
    ]
    if device.saturating_nodes:
        parts.append(
            f"u8×s8 dot products of {len(device.saturating_nodes)} node(s) as x86 without VNNI computes them "
            "(vpmaddubsw): adjacent pairs of products along K summed and saturated to int16 before int32 "
            "accumulation; assumed pair order (kh, kw, C/group) for convolutions, the reduction axis for "
            "MatMul/Gemm; depthwise and s8×s8 kernels accumulate in int32 directly."
        )
    if {"Sigmoid", "Tanh"} & device.exact_ops:
        source = "onnxruntime's QLinearSigmoid" if rounding == "float_rne" else "TFLite's optimized kernels"
        parts.append(
            f"Sigmoid/Tanh are 256-entry tables built in float32 as {source} build them (the libm function can "
            "differ in the last bit, which moves an entry only at an exact rounding tie)."
        )
    approximate = device.approximate_nodes
    if approximate:
        named = ", ".join(approximate[:6]) + (f" and {len(approximate) - 6} more" if len(approximate) > 6 else "")
        parts.append(
            f"Approximate (dequantize → float32 op → quantize with the model's output parameters): {named}; "
            "typically within 1 LSB of the device's own kernel, never claimed exact."
        )
    floats = [f.node for f in device.findings if f.kind == "float_op"]
    if floats:
        parts.append(f"{len(floats)} op(s) left in float32 by the quantizer run in float32.")
    if rounding == "float_rne":
        parts.append(
            "QLinearAdd/Mul/GlobalAveragePool follow their float formulas, which onnxruntime may evaluate in another "
            "order: rare 1-LSB differences at float ties."
        )
    else:
        parts.append(
            "Assumes what a TFLite converter writes: uint8 tensors as int8 (q − 128), and a requantization (QUANTIZE "
            "int8 → int8) where an input of Concat, MaxPool or a reshape has other parameters than the output. "
            "Reproduces the reference kernels' arithmetic, not the silicon: vendor kernels can differ by a few LSB "
            "(the Edge TPU differs from TFLite's CPU kernels by 2-5 LSB on MobileNet, coral issue #503)."
        )
    parts.append("Integer inputs are quantized on the host with round half away from zero (float32 division).")
    return " ".join(parts)


# --- fast tier -------------------------------------------------------------------------------------------------------


def _fast_runner(model: ModelProto, profile: HardwareProfile) -> tuple[ort.InferenceSession, list[NodeFinding], str]:
    """The pinned session, the nodes that stayed float (from the optimized graph), and the fidelity statement."""
    with tempfile.TemporaryDirectory(prefix="autoptq-fast-") as folder:
        optimized_path = Path(folder) / "optimized.onnx"
        options = _pinned_options()
        options.optimized_model_filepath = str(optimized_path)
        runner = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(optimized_path))
    integer_kernels, floats = _kernel_inventory(optimized)
    findings = [
        NodeFinding(
            node=node.name or node.op_type,
            kind="float_kernel",
            detail=f"{node.op_type} runs in float32 between DequantizeLinear and QuantizeLinear: onnxruntime did not "
            "fuse it into an integer kernel",
        )
        for node in floats
    ]
    return runner, findings, _fast_statement(integer_kernels, floats, profile)


def _pinned_options() -> ort.SessionOptions:
    """The pinned settings of autoptq's sessions (as `model.activations.session`): all optimizations, 1 thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _kernel_inventory(optimized: ModelProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """(integer kernels, compute nodes running in float on dequantized inputs) of an optimized graph."""
    dequantized = {out for node in optimized.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    integer, floats = [], []
    for node in optimized.graph.node:
        if node.op_type.startswith(_INTEGER_KERNEL_PREFIXES) or node.op_type.endswith("Integer"):
            integer.append(node)
        elif node.op_type not in _QUIET_OPS and dequantized.intersection(node.input):
            floats.append(node)
    return integer, floats


def _fast_statement(
    integer: Sequence[onnx.NodeProto], floats: Sequence[onnx.NodeProto], profile: HardwareProfile
) -> str:
    counts: dict[str, int] = {}
    for node in integer:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    kernels_ran = ", ".join(f"{op} ×{n}" for op, n in sorted(counts.items())) or "none"
    parts = [
        f"fast tier: the QDQ model in onnxruntime {ort.__version__} (CPU, all graph optimizations, one thread); "
        f"integer kernels that ran: {kernels_ran}. Fidelity: {FAST_FIDELITY}, where the device rounds "
        f"{profile.quantization.rounding}; differences compound over chained layers (a few LSB after 5)."
    ]
    if floats:
        parts.append(
            f"{len(floats)} compute node(s) ran in float32 between dequantize and quantize (findings 'float_kernel'): "
            "there the outputs can differ from the device's integer kernels by more than 1 LSB."
        )
    if profile.quantization.int8_dot_product == "int16_pair_saturating":
        parts.append(
            "The target's int16 pair saturation (u8×s8 without VNNI) is not modelled unless this CPU lacks VNNI "
            "too: use tier='exact'."
        )
    parts.append("Integer inputs are quantized on the host with round half away from zero (float32 division).")
    return " ".join(parts)


# --- feeds and outputs -----------------------------------------------------------------------------------------------


def data_inputs(model: ModelProto) -> list[str]:
    """The graph inputs a sample must give: an input with an initializer (IR 3 exports list every weight so) has a
    default value and is a parameter, not data."""
    weights = {init.name for init in model.graph.initializer}
    return [value.name for value in model.graph.input if value.name not in weights]


def _feeds(sample: dict[str, np.ndarray], inputs: list[str], io: dict[str, IOQuantization]) -> dict[str, np.ndarray]:
    missing = [name for name in inputs if name not in sample]
    if missing:
        raise DataError(f"sample has no array for model input {missing[0]!r} (model inputs: {inputs})")
    feeds = {}
    for name in inputs:
        value = np.asarray(sample[name])
        if name in io:
            item = io[name]
            value = kernels.quantize(
                value, scale=item.scale, zero_point=item.zero_point, dtype=np.dtype(item.dtype), rounding="half_away"
            )
        feeds[name] = value
    return feeds


def _real(value: np.ndarray, io: IOQuantization | None) -> np.ndarray:
    if io is None:
        return value
    return kernels.dequantize(value, scale=io.scale, zero_point=io.zero_point)


__all__ = [
    "FAST_FIDELITY",
    "TIERS",
    "EmulationError",
    "build_exact_model",
    "emulate",
    "exact_fidelity",
    "exact_session",
    "lsb_difference",
    "output_scales",
    "quantize_inputs",
]
