"""The variants manifest: what was produced for each target, with hashes and versions. Deterministic by design:
no timestamps, no absolute paths, no timings (those go to measurements.json, which varies run to run)."""

from __future__ import annotations

import hashlib

import onnx
import onnxruntime
from pydantic import BaseModel, Field

from autoptq.decide.sensitivity import NodeSensitivity
from autoptq.decide.tuning import Budget, TuningResult
from autoptq.deploy.device_file import DeviceFile
from autoptq.evaluate.metrics import OutputFidelity
from autoptq.io.user_metric import MetricScore
from autoptq.model.intio import IOQuantization
from autoptq.model.prepare import PreparationStep
from autoptq.pipeline.check import CheckReport
from autoptq.pipeline.produce import Outcome
from autoptq.techniques import by_name
from autoptq.techniques.recipe import Recipe, TechniqueName

MANIFEST_VERSION = 1


def sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


class VerificationSummary(BaseModel):
    """The deterministic part of a verification (measured timings are left to measurements.json)."""

    passed: bool
    problems: list[str]
    samples: int
    fidelity: list[OutputFidelity]
    size_ratio: float
    latency_checked: bool
    accuracy_float: float | None = None
    accuracy_candidate: float | None = None
    metric: MetricScore | None = None


class AttemptSummary(BaseModel):
    """One candidate tried for a target."""

    step: str
    technique: TechniqueName
    accepted: bool
    why_not: str | None = None


class TrialSummary(BaseModel):
    """One trial of the accuracy-aware search (timings left to measurements.json)."""

    index: int
    step: str
    technique: TechniqueName
    excluded: list[str]
    accuracy: float | None
    accuracy_drop: float | None
    min_sqnr_db: float | None
    top1_agreement: float | None
    size_bytes: int | None
    latency_ms_estimate: list[float] | None
    device_verdict: str
    meets_budget: bool
    error: str | None


class TuningSummary(BaseModel):
    """The accuracy-aware search of one variant."""

    budget: Budget
    tier: str
    metric: str | None = None
    float_accuracy: float | None
    within_budget: bool
    message: str
    stopped_by: str
    chosen: int
    pareto: list[int]
    most_sensitive: list[NodeSensitivity]
    trials: list[TrialSummary]


def tuning_summary(result: TuningResult) -> TuningSummary:
    """The deterministic part of a search, for the manifest."""
    return TuningSummary(
        budget=result.budget,
        tier=result.tier,
        metric=result.metric,
        float_accuracy=result.float_accuracy,
        within_budget=result.within_budget,
        message=result.message,
        stopped_by=result.stopped_by,
        chosen=result.chosen,
        pareto=result.pareto,
        most_sensitive=result.sensitivity[:10],
        trials=[
            TrialSummary(
                index=t.index,
                step=t.step,
                technique=t.technique,
                excluded=t.excluded,
                accuracy=t.accuracy,
                accuracy_drop=t.accuracy_drop,
                min_sqnr_db=t.min_sqnr_db,
                top1_agreement=t.top1_agreement,
                size_bytes=t.size_bytes,
                latency_ms_estimate=t.latency_range_ms,
                device_verdict=t.device_verdict,
                meets_budget=t.meets_budget,
                error=t.error,
            )
            for t in result.trials
        ],
    )


class Variant(BaseModel):
    """One produced model."""

    target: str
    planned_technique: TechniqueName
    technique: TechniqueName
    kept_float: bool
    reason: str
    recipe: Recipe | None
    excluded_nodes: dict[str, str] = Field(default_factory=dict)
    integer_io: list[IOQuantization] = Field(default_factory=list)
    path: str
    size_bytes: int
    sha256: str
    verification: VerificationSummary | None
    attempts: list[AttemptSummary]
    preparation: list[PreparationStep]
    warnings: list[str]
    failed: bool = Field(description="quantization was planned but nothing beat float, or the budget was not met")
    tuning: TuningSummary | None = None
    check: dict[str, object] | None = Field(
        default=None, description="`autoptq check` on the target's emulator (measured timings left out)"
    )
    device_file: DeviceFile | None = Field(default=None, description="the .tflite beside the ONNX (format: tflite)")


class InputModel(BaseModel):
    """The model the variants were made from."""

    name: str
    sha256: str
    size_bytes: int


class DataInfo(BaseModel):
    """The representative data used."""

    source: str
    calibration_samples: int
    validation_samples: int
    validation_source: str
    synthetic: bool


class Manifest(BaseModel):
    """manifest.json of `autoptq variants`."""

    manifest_version: int = MANIFEST_VERSION
    autoptq_version: str
    onnx_version: str = onnx.__version__
    onnxruntime_version: str = onnxruntime.__version__
    input_model: InputModel
    data: DataInfo | None
    variants: list[Variant]


def variant_from(outcome: Outcome, path: str, warnings: list[str]) -> Variant:
    """Summarise an outcome for the manifest."""
    verification = outcome.verification
    summary = None
    if verification is not None:
        summary = VerificationSummary(
            passed=verification.passed,
            problems=verification.problems,
            samples=verification.samples,
            fidelity=verification.fidelity,
            size_ratio=verification.size_ratio,
            latency_checked=verification.latency is not None,
            accuracy_float=verification.accuracy_float,
            accuracy_candidate=verification.accuracy_candidate,
            metric=verification.metric,
        )
    attempts = [
        AttemptSummary(
            step=a.step,
            technique=a.technique,
            accepted=a.accepted,
            why_not=None if a.accepted else a.why_not(),
        )
        for a in outcome.attempts
    ]
    return Variant(
        target=outcome.target,
        planned_technique=outcome.planned_technique,
        technique=outcome.technique,
        kept_float=outcome.kept_float,
        reason=outcome.reason,
        recipe=outcome.applied.recipe if outcome.applied else None,
        excluded_nodes=outcome.applied.excluded if outcome.applied else {},
        integer_io=outcome.applied.integer_io if outcome.applied else [],
        path=path,
        size_bytes=len(outcome.model_bytes),
        sha256=sha256(outcome.model_bytes),
        verification=summary,
        attempts=attempts,
        preparation=outcome.preparation,
        warnings=warnings,
        failed=outcome_failed(outcome),
        tuning=tuning_summary(outcome.tuning) if outcome.tuning else None,
        device_file=outcome.device_file,
    )


def outcome_failed(outcome: Outcome) -> bool:
    """A budget set and not met, or quantization planned and float kept."""
    if outcome.tuning is not None:
        return not outcome.tuning.within_budget
    return by_name(outcome.planned_technique).quantizes and outcome.kept_float


def check_summary(result: CheckReport) -> dict[str, object]:
    """The deterministic part of a check report for the manifest (the measured latency varies run to run)."""
    summary = result.model_dump(mode="json")
    summary["latency"].pop("measured_ratio", None)
    summary["latency"].pop("measured_note", None)
    return summary
