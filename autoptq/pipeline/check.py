"""`autoptq check`: what will this quantized model do on that device?

The device's verdict on the quantized graph (rules re-audit), its outputs under the device's arithmetic (the
profile's emulator family and tier), fidelity and accuracy against the float reference, and the latency and memory
estimates, each labelled with what it rests on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import ModelProto
from pydantic import BaseModel, Field

from autoptq.deploy.intgraph import EmulationError
from autoptq.devices.canonical import float_model_for
from autoptq.devices.coverage import CoverageReport, analyse
from autoptq.devices.device_rules import DeviceRulesResult, check_device_rules
from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError
from autoptq.evaluate.emulators import TIERS, emulator_for
from autoptq.evaluate.emulators.base import EmulationResult, NodeFinding, TierAgreement
from autoptq.evaluate.estimate import predict
from autoptq.evaluate.metrics import OutputFidelity, accuracy, compare
from autoptq.evaluate.verify import ModelRunner, measurable_here, measure_latency
from autoptq.io.user_metric import MetricScore, UserMetric
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph
from autoptq.model.intio import read_integer_io
from autoptq.techniques import recognise
from autoptq.techniques.recipe import Recipe


class AccuracyCheck(BaseModel):
    """Top-1 accuracy on labelled data: float reference vs emulated device."""

    float: float
    emulated: float
    drop: float


class LatencyCheck(BaseModel):
    """An estimate (always) and a measurement (where this machine stands in for the target)."""

    estimate_ms: list[float] = Field(description="[low, high], an estimate from the cost model")
    estimate_basis: str
    measured_ratio: float | None = Field(description="quantized / float, measured side by side; null if not measurable")
    measured_note: str
    label: str = "estimate"


class MemoryCheck(BaseModel):
    """Memory of the quantized model on the device, bytes."""

    on_chip_param_bytes: int
    streamed_param_bytes: int
    parameter_cache_bytes: int | None
    peak_activation_bytes: int
    ram_bytes: int | None
    fits_ram: bool | None
    flash_bytes: int | None
    fits_flash: bool | None
    arena_bytes: int | None = Field(default=None, description="tflm tier: the tensor arena TFLite Micro needs")
    ram_basis: str = Field(default="peak activation estimate", description="what fits_ram compares with ram_bytes")


class CheckReport(BaseModel):
    """The answer of `autoptq check` for one target."""

    target: str
    tier: str
    fidelity_statement: str
    device_rules: DeviceRulesResult = Field(description="passed, violations, the rules that apply, op table, memory")
    op_summary: list[dict[str, object]]
    fidelity: list[OutputFidelity]
    accuracy: AccuracyCheck | None
    metric: MetricScore | None = Field(default=None, description="the user's --metric: float vs emulated device")
    latency: LatencyCheck
    memory: MemoryCheck
    findings: list[NodeFinding]
    agreement: list[TierAgreement] = Field(
        default_factory=list, description="litert / tflm tiers: the .tflite's outputs vs the exact tier's"
    )
    passed: bool
    failures: list[str]


def check(
    quantized: ModelProto,
    profile: HardwareProfile,
    reference: ModelGraph,
    data: Dataset,
    tier: str | None = None,
    min_sqnr_db: float | None = None,
    max_drop: float | None = None,
    metric: UserMetric | None = None,
) -> CheckReport:
    """Check a quantized model on `profile`'s emulator against the float `reference` on `data` (with a user
    `metric`, `max_drop` bounds its drop instead of top-1 accuracy's)."""
    family = profile.emulator
    tiers = TIERS[family]
    chosen_tier = tier or tiers[0]
    if chosen_tier not in tiers:
        raise AutoptqError(f"tier {chosen_tier!r} does not apply to {profile.name} (its tiers: {', '.join(tiers)})")
    _check_inputs(quantized, reference)
    order = _reference_order([o.name for o in quantized.graph.output], [o.name for o in reference.model.graph.output])
    rules = check_device_rules(quantized, profile)
    emulated = _emulate(quantized, profile, data, chosen_tier, explicit=tier is not None)
    reference_runner = ModelRunner(float_model_for(reference, profile))
    reference_outputs = [[outputs[i] for i in order] for outputs in map(reference_runner.run, data.samples)]
    fidelity = [
        compare(name, [r[i] for r in reference_outputs], [e[i] for e in emulated.outputs])
        for i, name in enumerate(emulated.output_names)
    ]
    accuracy_check = _accuracy(reference_outputs, emulated.outputs, data)
    score = None
    if metric is not None:
        names = [reference.model.graph.output[i].name for i in order]
        score = metric.compare(names, reference_outputs, emulated.outputs, data.labels)
    coverage = analyse(reference, profile)
    latency = _latency(quantized, profile, reference, coverage, data)
    memory = _memory(rules, coverage, profile, emulated, quantized, data)
    failures = [f"device rule {v.rule} at {v.node}: {v.detail}" for v in rules.violations]
    failures += [
        f"output {a.output!r}: the .tflite differs from the exact tier by {a.max_abs_lsb:g} LSB "
        f"(tolerance {a.tolerance_lsb})"
        for a in emulated.agreement
        if not a.within_tolerance
    ]
    failures += [f"output {f.name!r} is NaN or inf under the emulator" for f in fidelity if not f.finite]
    if min_sqnr_db is not None:
        failures += [
            f"output {f.name!r}: SQNR {f.sqnr_db:.1f} dB below --min-sqnr {min_sqnr_db}"
            for f in fidelity
            if f.sqnr_db < min_sqnr_db
        ]
    if max_drop is not None and score is not None and score.drop > max_drop:
        failures.append(f"metric {score.name} drop {score.drop:.4f} exceeds --max-drop {max_drop}")
    elif max_drop is not None and accuracy_check is not None and accuracy_check.drop > max_drop:
        failures.append(f"accuracy drop {accuracy_check.drop:.4f} exceeds --max-drop {max_drop}")
    return CheckReport(
        target=profile.name,
        tier=emulated.tier,
        fidelity_statement=emulated.fidelity_statement,
        device_rules=rules,
        op_summary=[row.model_dump() for row in rules.op_summary],
        fidelity=fidelity,
        accuracy=accuracy_check,
        metric=score,
        latency=latency,
        memory=memory,
        findings=emulated.findings,
        agreement=emulated.agreement,
        passed=not failures,
        failures=failures,
    )


def _emulate(
    quantized: ModelProto, profile: HardwareProfile, data: Dataset, tier: str, explicit: bool
) -> EmulationResult:
    """Emulate on `tier`; when the default tier cannot represent the model, the next tier, saying why."""
    tiers = TIERS[profile.emulator]
    try:
        return emulator_for(profile.emulator)(quantized, profile, list(data.samples), tier)
    except EmulationError as exc:
        following = tiers[tiers.index(tier) + 1 :]
        if explicit or not following:
            raise
        emulated = emulator_for(profile.emulator)(quantized, profile, list(data.samples), following[0])
        note = f"The {tier} tier cannot emulate this model ({exc}), so the {following[0]} tier was used instead: "
        return emulated.model_copy(update={"fidelity_statement": note + emulated.fidelity_statement})


def _check_inputs(quantized: ModelProto, reference: ModelGraph) -> None:
    """The quantized model must take the reference's inputs (the data was validated against the reference)."""
    initializers = {init.name for init in quantized.graph.initializer}
    wanted = [value.name for value in quantized.graph.input if value.name not in initializers]
    given = [value.name for value in reference.model.graph.input]
    missing = [name for name in wanted if name not in given]
    if missing:
        raise AutoptqError(
            f"the quantized model's input {missing[0]!r} is not an input of the reference model (quantized: {wanted}, "
            f"reference: {given}): is this the model it was made from?"
        )


def _reference_order(names: Sequence[str], reference_names: Sequence[str]) -> list[int]:
    """For each quantized output, the index of the reference output to compare it with: the same name, or the same
    position when the quantized model renamed its outputs (same count)."""
    if all(name in reference_names for name in names):
        return [list(reference_names).index(name) for name in names]
    if len(names) == len(reference_names):
        return list(range(len(names)))
    raise AutoptqError(
        f"the quantized model's outputs {list(names)} do not match the reference model's {list(reference_names)}: "
        "is this the model it was made from?"
    )


def _accuracy(
    reference_outputs: Sequence[list[np.ndarray]], emulated_outputs: Sequence[list[np.ndarray]], data: Dataset
) -> AccuracyCheck | None:
    if data.labels is None or not reference_outputs or np.asarray(reference_outputs[0][0]).ndim != 2:
        return None
    float_accuracy = accuracy([r[0] for r in reference_outputs], data.labels)
    emulated_accuracy = accuracy([e[0] for e in emulated_outputs], data.labels)
    return AccuracyCheck(
        float=round(float_accuracy, 6),
        emulated=round(emulated_accuracy, 6),
        drop=round(float_accuracy - emulated_accuracy, 6),
    )


def _latency(
    quantized: ModelProto, profile: HardwareProfile, reference: ModelGraph, coverage: CoverageReport, data: Dataset
) -> LatencyCheck:
    technique = recognise(quantized).name
    _, estimate, _ = predict(reference, coverage, profile, technique, Recipe())
    measured, note = None, "not measured: this machine does not stand in for the target"
    if measurable_here(profile) and data.samples:
        timing = measure_latency(
            ModelRunner(float_model_for(reference, profile)),
            ModelRunner(quantized, read_integer_io(quantized)),
            data.samples[0],
        )
        measured, note = timing.ratio, f"measured side by side on this machine ({timing.machine}), {timing.runs} runs"
    return LatencyCheck(
        estimate_ms=[round(estimate.low_ms, 4), round(estimate.high_ms, 4)],
        estimate_basis=f"{technique} on {estimate.basis}",
        measured_ratio=measured,
        measured_note=note,
    )


def _memory(
    rules: DeviceRulesResult,
    coverage: CoverageReport,
    profile: HardwareProfile,
    emulated: EmulationResult,
    quantized: ModelProto,
    data: Dataset,
) -> MemoryCheck:
    flash = profile.memory.flash_bytes
    mem = coverage.memory
    on_chip, streamed = rules.on_chip_param_bytes, rules.streamed_param_bytes
    arena, basis = emulated.arena_bytes, "tensor arena measured in TFLite Micro (tflm tier)"
    if arena is None and profile.kind == "mcu" and profile.format == "tflite":
        shapes = {k: list(np.shape(v)) for k, v in data.samples[0].items()} if data.samples else None
        arena, basis = _arena_estimate(quantized, profile, shapes)
    fits = mem.fits_ram if arena is None else (None if mem.ram_bytes is None else arena <= mem.ram_bytes)
    return MemoryCheck(
        on_chip_param_bytes=on_chip,
        streamed_param_bytes=streamed,
        parameter_cache_bytes=profile.memory.parameter_cache_bytes,
        peak_activation_bytes=mem.peak_activation_bytes,
        ram_bytes=mem.ram_bytes,
        fits_ram=fits,
        flash_bytes=flash,
        fits_flash=None if flash is None else on_chip + streamed <= flash,
        arena_bytes=arena,
        ram_basis=basis,
    )


def _arena_estimate(
    quantized: ModelProto, profile: HardwareProfile, shapes: dict[str, list[int]] | None
) -> tuple[int | None, str]:
    """TFLM's arena estimated from the .tflite autoptq would write (None without the tflite extra, or when the
    model cannot be written), with its basis."""
    from autoptq.deploy.tflite_writer import export_tflite  # needs the tflite extra

    try:
        estimate = export_tflite(quantized, profile, shapes).arena_estimate
    except Exception:  # not writable (or a writer bug): the ONNX-based estimate still stands
        return None, "peak activation estimate"
    return estimate.total_bytes, f"TFLM tensor arena {estimate.basis}"
