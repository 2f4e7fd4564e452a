"""The `litert` and `tflm` tiers of the integer family: the `.tflite` autoptq writes for a `format: tflite` profile,
run in a real TFLite runtime and held to the exact tier.

- `litert`: LiteRT's interpreter (`ai-edge-litert`) with its reference kernels (`OpResolverType.BUILTIN_REF`: no
  XNNPACK, which differs by 1 LSB on some depthwise convolutions).
- `tflm`: TFLite Micro's Python interpreter (`tflite-micro`), which also reports the tensor arena the model needs.

Both compare every output element with the exact tier, in LSB of the output's scale: ops the exact tier computes
bit for bit (convolutions, transposed convolutions, fully connected, add/sub/mul, pools, mean, data movement) must
agree exactly; the ops the exact tier only approximates (SOFTMAX, LOGISTIC, TANH, HARD_SWISH, RESIZE_BILINEAR:
dequantize → float32 → quantize or a float-built table, where TFLite's reference kernels use fixed-point arithmetic)
are allowed 1 LSB at their own output, which later layers can amplify: the comparison states it. LiteRT's reference
FULLY_CONNECTED requantizes in double (one rounding) where TFLM and the exact tier use the fixed-point multiplier, so
the litert tier allows it 1 LSB too.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import ModelProto, helper, shape_inference
from pydantic import BaseModel, Field

from autoptq.deploy import kernels
from autoptq.deploy.tflite_writer import FROM_NHWC, INSTALL_HINT, TfliteExport, TfliteTensorIO, export_tflite
from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError, DataError
from autoptq.evaluate.emulators.base import EmulationResult, NodeFinding, TierAgreement
from autoptq.evaluate.emulators.integer import (
    build_exact_model,
    exact_session,
    lsb_difference,
    output_scales,
    quantize_inputs,
)
from autoptq.evaluate.emulators.integer import emulate as emulate_integer

TFLITE_TIERS = ("litert", "tflm")
APPROXIMATE_TOLERANCE_LSB = 1
"""LSB allowed at the output of an op the exact tier only approximates (see the module docstring)."""
_ARENA_LINE = re.compile(r"Arena allocation total (\d+) bytes")
_ARENA_SEARCH_SPAN = 4096
"""Bytes above the recorded total searched for the smallest arena that runs (TFLM's Prepare needs a little more)."""


class ArenaMeasurement(BaseModel):
    """TFLite Micro's tensor arena for a model, bytes."""

    recorded_bytes: int = Field(description="'Arena allocation total' of TFLM's RecordingMicroAllocator")
    needed_bytes: int = Field(description="smallest arena_size (16-byte steps) with which TFLM allocated and ran")


def emulate(
    model: ModelProto, profile: HardwareProfile, samples: list[dict[str, np.ndarray]], tier: str
) -> EmulationResult:
    """Write `model` as `.tflite`, run it in LiteRT or TFLM, and compare every output with the exact tier."""
    if tier not in TFLITE_TIERS:
        raise AutoptqError(f"unknown device-file tier {tier!r} (tiers: {', '.join(TFLITE_TIERS)})")
    if profile.format != "tflite":
        raise AutoptqError(
            f"tier {tier!r} runs the .tflite file of a 'format: tflite' profile; {profile.name} deploys "
            f"{profile.format}"
        )
    exported = export_tflite(model, profile, sample_shapes(samples))
    arena = None
    per_op: list[TierAgreement] = []
    if tier == "litert":
        raw, per_op = run_litert_per_op(exported, build_exact_model(model, profile), model, samples)
    else:
        raw = run_tflm(exported, samples)
        arena = measure_tflm_arena(exported)
    exact = emulate_integer(model, profile, samples, "exact")
    outputs = model_outputs(exported, raw)
    agreements = agreement(model, exported, exact.outputs, outputs, tier)
    if per_op and all(a.within_tolerance for a in per_op):
        agreements = [_carried(a) for a in agreements]
    agreements = [*agreements, *per_op]
    findings = [
        NodeFinding(
            node=a.output,
            kind="device_file_mismatch",
            detail=f"{tier} differs from the exact tier by up to {a.max_abs_lsb:g} LSB"
            + (f" at {a.op} on its own inputs" if a.op else "")
            + f" (tolerance {a.tolerance_lsb})",
        )
        for a in agreements
        if not a.within_tolerance
    ]
    return EmulationResult(
        tier=tier,  # type: ignore[arg-type]
        fidelity_statement=_statement(tier, exported, agreements, arena),
        output_names=exact.output_names,
        outputs=outputs,
        findings=[*exact.findings, *findings],
        agreement=agreements,
        arena_bytes=None if arena is None else arena.needed_bytes,
        arena_recorded_bytes=None if arena is None else arena.recorded_bytes,
    )


def agreement(
    model: ModelProto,
    exported: TfliteExport,
    exact: Sequence[list[np.ndarray]],
    device: Sequence[list[np.ndarray]],
    tier: str,
) -> list[TierAgreement]:
    """Per output: how far the device file's outputs are from the exact tier's, in LSB, and the tolerance."""
    scales = output_scales(model)
    reasons = []
    if exported.approximate_ops:
        reasons.append(
            f"{', '.join(exported.approximate_ops)}: the exact tier computes them in float32 (or a float-built table), "
            "TFLite's reference kernels in fixed point"
        )
    if tier == "litert" and "FULLY_CONNECTED" in exported.op_counts:
        reasons.append(
            "FULLY_CONNECTED: LiteRT's reference kernel requantizes it in double, round(acc · s_in·s_w / s_out), one "
            "rounding (TFLM, CONV_2D and the exact tier use the fixed-point multiplier, which rounds twice)"
        )
    tolerance = APPROXIMATE_TOLERANCE_LSB if reasons else 0
    reason = (
        "; ".join(reasons) + f": {tolerance} LSB at those ops' outputs, which later layers can amplify"
        if reasons
        else "every op of the file is computed bit for bit by the exact tier"
    )
    found = []
    for index, name in enumerate(exported.output_names):
        scale = scales.get(name) or 1.0
        a = np.concatenate([np.asarray(s[index], np.float64).reshape(-1) for s in exact]) if exact else np.zeros(0)
        b = np.concatenate([np.asarray(s[index], np.float64).reshape(-1) for s in device]) if device else np.zeros(0)
        stats = lsb_difference(a, b, scale)
        found.append(
            TierAgreement(
                output=name,
                elements=int(stats["elements"]),
                bit_exact_fraction=round(1.0 - stats["differing_fraction"], 6),
                max_abs_lsb=stats["max_abs_lsb"],
                tolerance_lsb=tolerance,
                reason=reason,
                within_tolerance=stats["max_abs_lsb"] <= tolerance,
            )
        )
    return found


def _carried(output: TierAgreement) -> TierAgreement:
    """An output whose every op agreed on its own inputs: what differs was carried there from those ops."""
    if output.max_abs_lsb <= output.tolerance_lsb:
        return output
    return output.model_copy(
        update={
            "within_tolerance": True,
            "reason": output.reason + "; every op of the file agrees with the exact tier on its own inputs within its "
            "stated tolerance (per op), so this is those ops' differences carried through later layers",
        }
    )


_ANCHORED = "@litert"
"""Suffix of the exact tier's inputs that take LiteRT's own value of a tensor (per-op comparison)."""


def run_litert_per_op(
    exported: TfliteExport, lowered: ModelProto, model: ModelProto, samples: Sequence[dict[str, np.ndarray]]
) -> tuple[list[list[np.ndarray]], list[TierAgreement]]:
    """The file's outputs in LiteRT, and every op of the file held to the exact tier on LiteRT's own inputs.

    Comparing outputs alone cannot tell a 1-LSB rounding at a LOGISTIC, carried and grown through later layers, from a
    wrong kernel. Here each tensor a TFLite op writes is recomputed by the exact tier's lowered model from LiteRT's
    values of that op's inputs (`lowered` rewired so), and compared element by element: each op answers only for
    itself, against its own tolerance."""
    interpreter = litert_interpreter(exported.content, preserve_all_tensors=True)
    indices = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    produced = {name for node in lowered.graph.node for name in node.output if name}
    # A flatten kept in NHWC order holds the exact tier's values in another order: it is checked within its reader.
    anchors = sorted(
        name
        for name in exported.tensor_ops
        if name in produced and name in indices and name not in exported.reordered_tensors
    )
    declared = _declared_dtypes(lowered)
    dtypes = {name: declared.get(name, interpreter.get_tensor(indices[name]).dtype) for name in anchors}
    rewired = _anchored(lowered, anchors, dtypes)
    session = exact_session(rewired)
    fed = {value.name for value in rewired.graph.input}
    stats: dict[str, list[float]] = {name: [0, 0, 0.0] for name in anchors}  # elements, differing, max
    results = []
    for sample in samples:
        results.append(_invoke(interpreter, exported, sample))
        own = {
            name: _as_dtype(
                _stored_as_onnx(interpreter.get_tensor(indices[name]), name in exported.nhwc_tensors), dtypes[name]
            )
            for name in anchors
        }
        feeds = quantize_inputs(model, sample) | {name + _ANCHORED: own[name] for name in anchors}
        recomputed = session.run(anchors, {k: v for k, v in feeds.items() if k in fed})
        for name, value in zip(anchors, recomputed, strict=True):
            difference = np.abs(np.asarray(value, np.float64).reshape(-1) - own[name].astype(np.float64).reshape(-1))
            entry = stats[name]
            entry[0] += difference.size
            entry[1] += int(np.count_nonzero(difference))
            entry[2] = max(entry[2], float(difference.max(initial=0.0)))
    return results, _per_op_type(exported, stats)


def _anchored(lowered: ModelProto, anchors: list[str], dtypes: dict[str, np.dtype]) -> ModelProto:
    """`lowered` with each read of an anchor tensor taken from a new graph input (LiteRT's value), and every
    anchor an output: each op's output is then computed from the file's own inputs to that op."""
    rewired = ModelProto()
    rewired.CopyFrom(lowered)
    wanted = set(anchors)
    for node in rewired.graph.node:
        node.input[:] = [name + _ANCHORED if name in wanted else name for name in node.input]
    for name in anchors:
        elem = helper.np_dtype_to_tensor_dtype(dtypes[name])
        rewired.graph.input.append(helper.make_tensor_value_info(name + _ANCHORED, elem, None))
    del rewired.graph.output[:]
    rewired.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in anchors)
    return rewired


def _declared_dtypes(model: ModelProto) -> dict[str, np.dtype]:
    """Element types of the model's tensors, as onnx's inference finds them."""
    inferred = shape_inference.infer_shapes(model, strict_mode=False)
    values = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    return {
        v.name: np.dtype(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
        for v in values
        if v.type.tensor_type.elem_type
    }


def _as_dtype(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """LiteRT's value as the exact tier types it: a uint8 device tensor is written int8 with its zero point - 128."""
    if value.dtype == np.int8 and dtype == np.uint8:
        return (value.astype(np.int16) + 128).astype(np.uint8)
    return value.astype(dtype, copy=False)


def _stored_as_onnx(value: np.ndarray, nhwc: bool) -> np.ndarray:
    return np.asarray(value).transpose(FROM_NHWC) if nhwc else np.asarray(value)


def _span(name: str, exported: TfliteExport, anchors: set[str]) -> list[str]:
    """The ops recomputed together for anchor `name`: its own, and those writing tensors the exact tier does not
    name on the way from anchored inputs (the PAD before a CONV_2D, the FULLY_CONNECTED before a uint8 output's
    QUANTIZE), first the anchor's."""
    ops, pending, seen = [exported.tensor_ops[name]], list(exported.tensor_inputs.get(name, [])), set()
    while pending:
        tensor = pending.pop()
        if tensor in anchors or tensor in seen or tensor not in exported.tensor_ops:
            continue
        seen.add(tensor)
        ops.append(exported.tensor_ops[tensor])
        pending += exported.tensor_inputs.get(tensor, [])
    return ops


def _per_op_type(exported: TfliteExport, stats: dict[str, list[float]]) -> list[TierAgreement]:
    """One row per TFLite op (or ops recomputed together, `PAD+CONV_2D`): elements, how many differ, the largest
    difference and where, against the largest tolerance of the ops involved."""
    spans = {name: _span(name, exported, set(stats)) for name in stats}
    labels = {name: "+".join(dict.fromkeys(reversed(spans[name]))) for name in stats}
    rows = []
    for op in sorted(set(labels.values())):
        names = [name for name in stats if labels[name] == op]
        elements = sum(int(stats[name][0]) for name in names)
        differing = sum(int(stats[name][1]) for name in names)
        worst = max(names, key=lambda name: stats[name][2])
        tolerance, reason = max(_op_tolerance(part, exported) for part in dict.fromkeys(spans[worst]))
        largest = stats[worst][2]
        rows.append(
            TierAgreement(
                output=worst,
                op=op,
                elements=elements,
                bit_exact_fraction=round(1.0 - differing / elements, 6) if elements else 1.0,
                max_abs_lsb=largest,
                tolerance_lsb=tolerance,
                reason=f"{len(names)} {op} op(s) re-run by the exact tier on LiteRT's own inputs; {reason}",
                within_tolerance=largest <= tolerance,
            )
        )
    return rows


def _op_tolerance(op: str, exported: TfliteExport) -> tuple[int, str]:
    if op in exported.approximate_ops:
        return APPROXIMATE_TOLERANCE_LSB, (
            "the exact tier computes it in float32 (or a float-built table), TFLite's reference kernel in fixed point"
        )
    if op == "FULLY_CONNECTED":
        return APPROXIMATE_TOLERANCE_LSB, (
            "LiteRT's reference kernel requantizes it in double, one rounding (the exact tier rounds twice)"
        )
    if op == "MUL":
        return APPROXIMATE_TOLERANCE_LSB, (
            "LiteRT derives its multiplier s1·s2/s_out in float32 (kernels/mul.cc), TFLite Micro and the exact tier "
            "in double: the two can round a rare element 1 LSB apart"
        )
    return 0, "the exact tier computes it bit for bit"


def sample_shapes(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, list[int]]:
    """The input shapes of the first sample (they fix a dynamic model's dimensions in the file)."""
    return {name: list(np.shape(value)) for name, value in samples[0].items()} if samples else {}


# --- LiteRT ----------------------------------------------------------------------------------------------------------


def litert_interpreter(content: bytes, preserve_all_tensors: bool = False) -> object:
    """A LiteRT interpreter on the reference kernels, tensors allocated (`preserve_all_tensors`: every intermediate
    stays readable after `invoke`)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as exc:
        raise AutoptqError(f"tier 'litert' needs LiteRT: {INSTALL_HINT}") from exc
    interpreter = Interpreter(
        model_content=content,
        experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
        num_threads=1,
        experimental_preserve_all_tensors=preserve_all_tensors,
    )
    interpreter.allocate_tensors()
    return interpreter


def run_litert(exported: TfliteExport, samples: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Raw outputs (integers, ONNX layout) of the file in LiteRT, one list per sample."""
    interpreter = litert_interpreter(exported.content)
    return [_invoke(interpreter, exported, sample) for sample in samples]


def _invoke(interpreter: object, exported: TfliteExport, sample: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One sample through a LiteRT interpreter of the file: its outputs in ONNX layout."""
    inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    for io in exported.inputs:
        interpreter.set_tensor(inputs[io.name], feed(sample, io))
    interpreter.invoke()
    return [_onnx_layout(interpreter.get_tensor(outputs[io.name]), io) for io in exported.outputs]


# --- TFLite Micro ----------------------------------------------------------------------------------------------------


def _tflm_runtime() -> object:
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as exc:
        raise AutoptqError(f"tier 'tflm' needs TFLite Micro: {INSTALL_HINT}") from exc
    return runtime


def run_tflm(exported: TfliteExport, samples: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Raw outputs (integers, ONNX layout) of the file in TFLite Micro, one list per sample."""
    runtime = _tflm_runtime()
    interpreter = runtime.Interpreter.from_bytes(exported.content)
    results = []
    for sample in samples:
        for position, io in enumerate(exported.inputs):
            interpreter.set_input(feed(sample, io), position)
        interpreter.invoke()
        results.append(
            [_onnx_layout(interpreter.get_output(position), io) for position, io in enumerate(exported.outputs)]
        )
    return results


def measure_tflm_arena(exported: TfliteExport) -> ArenaMeasurement:
    """The arena TFLM records for the model, and the smallest `arena_size` that allocates and runs, found by
    bisection in child processes (a far too small arena can crash the process)."""
    with tempfile.TemporaryDirectory(prefix="autoptq-tflm-") as folder:
        path = Path(folder) / "model.tflite"
        path.write_bytes(exported.content)
        inputs = len(exported.inputs)
        recorded = _recorded_arena(path, inputs)
        low, high = recorded - 16, recorded + _ARENA_SEARCH_SPAN
        if not _runs_with_arena(path, inputs, high):
            raise AutoptqError(f"TFLite Micro did not run the model with a {high}-byte arena")
        while high - low > 16:  # invariant: `high` runs, `low` does not (the recorded total is a lower bound)
            middle = (low + high) // 32 * 16
            if middle <= low:
                break
            if _runs_with_arena(path, inputs, middle):
                high = middle
            else:
                low = middle
    return ArenaMeasurement(recorded_bytes=recorded, needed_bytes=high)


_PROBE = """
import sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
it = runtime.Interpreter.from_bytes(open(sys.argv[1], "rb").read(), arena_size=int(sys.argv[2]))
for i in range(int(sys.argv[4])):
    d = it.get_input_details(i)
    it.set_input(np.zeros(d["shape"], d["dtype"]), i)
it.invoke()
if sys.argv[3] == "record":
    it.print_allocations()
"""


def _recorded_arena(path: Path, inputs: int) -> int:
    """TFLM's 'Arena allocation total' (printed to the C-level stderr of a child process, with a roomy arena)."""
    roomy = max(64 * 1024, 10 * path.stat().st_size)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), str(roomy), "record", str(inputs)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = _ARENA_LINE.search(done.stdout + done.stderr)
    if done.returncode != 0 or found is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise AutoptqError(f"TFLite Micro could not run the model: {tail}")
    return int(found.group(1))


def _runs_with_arena(path: Path, inputs: int, arena: int) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), str(arena), "run", str(inputs)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return done.returncode == 0


# --- feeds and outputs -----------------------------------------------------------------------------------------------


def feed(sample: dict[str, np.ndarray], io: TfliteTensorIO) -> np.ndarray:
    """A float sample for one input of the file: quantized as the exact tier's host does (float32 division, round
    half away from zero), in the file's layout."""
    if io.name not in sample:
        raise DataError(f"sample has no array for model input {io.name!r}")
    value = np.asarray(sample[io.name])
    if io.scale is not None and io.zero_point is not None:
        value = kernels.quantize(
            value, scale=io.scale, zero_point=io.zero_point, dtype=np.dtype(io.dtype), rounding="half_away"
        )
    else:
        value = value.astype(np.float32)
    if io.perm is not None:
        value = value.transpose(io.perm)
    return np.ascontiguousarray(value.reshape(io.shape))


def model_outputs(exported: TfliteExport, raw: Sequence[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """The file's outputs, one list per sample, as the ONNX model's: dequantized, and the parts of an output a
    host-less file returns in parts joined by the model's own float tail, as the application does."""
    tails = {
        join.output: ort.InferenceSession(join.tail, providers=["CPUExecutionProvider"])
        for join in exported.output_joins
    }
    joined = []
    for sample in raw:
        values = {io.name: _real(value, io) for value, io in zip(sample, exported.outputs, strict=True)}
        for join in exported.output_joins:
            feeds = {part: np.asarray(values[part], np.float32) for part in join.parts}
            values[join.output] = tails[join.output].run([join.output], feeds)[0]
        joined.append([values[name] for name in exported.output_names])
    return joined


def _onnx_layout(value: np.ndarray, io: TfliteTensorIO) -> np.ndarray:
    return np.asarray(value).transpose(io.perm) if io.perm is not None else np.asarray(value)


def _real(value: np.ndarray, io: TfliteTensorIO) -> np.ndarray:
    if io.scale is None or io.zero_point is None:
        return value
    return kernels.dequantize(value, scale=io.scale, zero_point=io.zero_point)


def _statement(
    tier: str, exported: TfliteExport, agreements: list[TierAgreement], arena: ArenaMeasurement | None
) -> str:
    runtime = (
        "LiteRT's interpreter with the reference kernels (BUILTIN_REF, no XNNPACK)"
        if tier == "litert"
        else "TFLite Micro's Python interpreter (reference kernels, not CMSIS-NN)"
    )
    ops = ", ".join(f"{op} ×{n}" for op, n in exported.op_counts.items())
    parts = [f"{tier} tier: the model.tflite autoptq writes ({len(exported.content)} bytes; {ops}) run in {runtime}."]
    per_op = [a for a in agreements if a.op is not None]
    if per_op:
        exact = ", ".join(a.op for a in per_op if a.max_abs_lsb == 0)  # type: ignore[misc]
        differing = "; ".join(
            f"{a.op}: {a.max_abs_lsb:g} LSB on {1 - a.bit_exact_fraction:.4%} of {a.elements} elements "
            f"(tolerance {a.tolerance_lsb}; {a.reason.split('; ', 1)[1]})"
            for a in per_op
            if a.max_abs_lsb > 0
        )
        named = {part for a in per_op for part in (a.op or "").split("+")}
        folded = ", ".join(op for op in exported.op_counts if op not in named)
        parts.append(
            "Every op of the file re-run by the exact tier on LiteRT's own inputs: "
            + (f"{exact} bit for bit" if exact else "none bit for bit")
            + (f"; {differing}" if differing else "")
            + (
                f"; {folded} checked within the op that reads its output (the exact tier folds it there)"
                if folded
                else ""
            )
            + "."
        )
    for a in agreements:
        if a.op is not None:
            continue
        verdict = "bit for bit" if a.max_abs_lsb == 0 else f"within {a.max_abs_lsb:g} LSB"
        parts.append(
            f"Output {a.output!r} vs the exact tier: {verdict} ({a.bit_exact_fraction:.2%} of {a.elements} elements "
            f"equal; tolerance {a.tolerance_lsb} LSB: {a.reason})."
        )
    parts += [
        f"Output {join.output!r} is the join of the file's {len(join.parts)} int8 outputs, as the application does it "
        f"({', '.join(join.steps)} after dequantizing each): one int8 scale cannot hold its parts."
        for join in exported.output_joins
    ]
    if arena is not None:
        parts.append(
            f"Tensor arena: {arena.needed_bytes} bytes, the smallest arena_size that ran (TFLM records "
            f"{arena.recorded_bytes} bytes of allocations; Prepare needs a little more)."
        )
    parts.append("Integer inputs are quantized on the host with round half away from zero (float32 division).")
    return " ".join(parts)


__all__ = [
    "TFLITE_TIERS",
    "ArenaMeasurement",
    "TierAgreement",
    "emulate",
    "measure_tflm_arena",
    "model_outputs",
    "run_litert",
]
