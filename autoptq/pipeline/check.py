"""`autoptq check`: what will this quantized model do on that device?

A policy over the Evaluator: the device's verdict on the quantized graph (rules re-audit), its outputs under the
device's arithmetic (the profile's emulator family and tier), fidelity and accuracy against the float reference, and
the latency and memory estimates, each labelled with what it rests on; the check fails on broken device rules, a
device file that disagrees with the exact tier, outputs that are not finite, and the given --min-sqnr and --max-drop.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto
from pydantic import BaseModel, Field

from autoptq.devices.canonical import float_model_for
from autoptq.devices.coverage import CoverageReport
from autoptq.devices.device_rules import DeviceRulesResult
from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError
from autoptq.evaluate.emulators import TIERS
from autoptq.evaluate.emulators.base import NodeFinding, TierAgreement
from autoptq.evaluate.evaluation import DeviceQuery, Evaluation, Latency
from autoptq.evaluate.evaluator import Evaluator
from autoptq.evaluate.metrics import OutputFidelity
from autoptq.io.user_metric import MetricScore, UserMetric
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph
from autoptq.techniques import recognise
from autoptq.techniques.recipe import Recipe, TechniqueName


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
    tiers = TIERS[profile.emulator]
    chosen_tier = tier or tiers[0]
    if chosen_tier not in tiers:
        raise AutoptqError(f"tier {chosen_tier!r} does not apply to {profile.name} (its tiers: {', '.join(tiers)})")
    _check_inputs(quantized, reference)
    technique = recognise(quantized).name
    evaluator = Evaluator(
        float_model_for(reference, profile), profile, data, metric=metric, max_drop=max_drop, graph=reference
    )
    # The partitioning reported is the reference's as audited, as `autoptq plan` states it.
    device = DeviceQuery(technique=technique, recipe=Recipe(), reaudit=False)
    evaluation = evaluator.evaluate(quantized, tier=chosen_tier, fall_back=tier is None, device=device)
    broken = evaluation.problem("not_runnable")
    if broken is not None:  # (on the host tier) nothing to check
        raise AutoptqError(f"the quantized model {broken.text}")
    failed = evaluation.problem("metric_failed")
    if failed is not None:  # the user's metric is theirs to fix
        raise AutoptqError(failed.text)
    assert evaluation.device is not None and evaluation.device.rules is not None  # a device was asked
    rules, coverage = evaluation.device.rules, evaluation.device.coverage
    failures = _failures(evaluation, min_sqnr_db)
    return CheckReport(
        target=profile.name,
        tier=evaluation.tier,
        fidelity_statement=evaluation.fidelity_statement,
        device_rules=rules,
        op_summary=[row.model_dump() for row in rules.op_summary],
        fidelity=evaluation.fidelity,
        accuracy=_accuracy(evaluation),
        metric=evaluation.metric,
        latency=_latency(evaluation.latency, technique),
        memory=_memory(rules, coverage, profile, evaluation.arena_bytes, quantized, data),
        findings=evaluation.findings,
        agreement=evaluation.agreement,
        passed=not failures,
        failures=failures,
    )


def _failures(evaluation: Evaluation, min_sqnr_db: float | None) -> list[str]:
    """What fails the check, in its report's words: broken device rules, a device file off the exact tier, outputs
    that are not finite, outputs below --min-sqnr, and a drop beyond --max-drop."""
    failures = [p.text for p in evaluation.problems if p.code in ("device_rules", "tier_disagrees")]
    failures += [f"output {f.name!r} is NaN or inf under the emulator" for f in evaluation.fidelity if not f.finite]
    if min_sqnr_db is not None:
        failures += [
            f"output {f.name!r}: SQNR {f.sqnr_db:.1f} dB below --min-sqnr {min_sqnr_db}"
            for f in evaluation.fidelity
            if f.sqnr_db < min_sqnr_db
        ]
    return failures + [p.text for p in evaluation.problems if p.code == "accuracy_drop"]


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


def _accuracy(evaluation: Evaluation) -> AccuracyCheck | None:
    float_accuracy, emulated = evaluation.accuracy_float, evaluation.accuracy_candidate
    if float_accuracy is None or emulated is None:
        return None
    return AccuracyCheck(
        float=round(float_accuracy, 6), emulated=round(emulated, 6), drop=round(float_accuracy - emulated, 6)
    )


def _latency(latency: Latency, technique: TechniqueName) -> LatencyCheck:
    estimate, measured = latency.estimate, latency.measured
    assert estimate is not None  # a device was asked
    note = latency.note
    if measured is not None:
        note = f"measured side by side on this machine ({measured.machine}), {measured.runs} runs"
    return LatencyCheck(
        estimate_ms=[round(estimate.low_ms, 4), round(estimate.high_ms, 4)],
        estimate_basis=f"{technique} on {estimate.basis}",
        measured_ratio=measured.ratio if measured else None,
        measured_note=note,
    )


def _memory(
    rules: DeviceRulesResult,
    coverage: CoverageReport,
    profile: HardwareProfile,
    arena: int | None,
    quantized: ModelProto,
    data: Dataset,
) -> MemoryCheck:
    flash = profile.memory.flash_bytes
    mem = coverage.memory
    on_chip, streamed = rules.on_chip_param_bytes, rules.streamed_param_bytes
    basis = "tensor arena measured in TFLite Micro (tflm tier)"
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
