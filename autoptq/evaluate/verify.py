"""Verification after every quantizer run: "never worse than float, silently".

A policy over the Evaluator's host run: the candidate must load in onnxruntime, produce finite outputs close to the
float model's on held-out samples (SQNR above a floor), be smaller than the float file, and, where this machine can
stand in for the target, not be slower than float measured side by side in the same process.
"""

from __future__ import annotations

from collections.abc import Sequence

from onnx import ModelProto
from pydantic import BaseModel, Field, computed_field

from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError
from autoptq.evaluate.evaluation import NOT_MEASURED, SLOWER_TOLERANCE, Evaluation, Problem, slower
from autoptq.evaluate.evaluator import Evaluator
from autoptq.evaluate.metrics import OutputFidelity
from autoptq.evaluate.runner import LatencyMeasurement, measurable_here
from autoptq.io.user_metric import MetricScore, UserMetric
from autoptq.model.calibration import Dataset
from autoptq.model.intio import IOQuantization

# measurable_here stays importable from here: the planner asks it of verification.
__all__ = ["DEFAULT_MIN_SQNR_DB", "Verification", "measurable_here", "verdict", "verify", "with_joint_timing"]

DEFAULT_MIN_SQNR_DB = 10.0
"""Below this the output is dominated by quantization noise: treated as numerically broken."""
FAILS_VERIFICATION = frozenset({"not_runnable", "not_finite", "below_sqnr_floor", "not_smaller", "slower"})


class Verification(BaseModel):
    """The verdict on one quantized candidate."""

    passed: bool
    issues: list[Problem] = Field(default_factory=list, exclude=True, description="the problems, as codes and texts")
    samples: int
    min_sqnr_db: float
    fidelity: list[OutputFidelity] = Field(default_factory=list)
    size_bytes: int
    float_size_bytes: int
    size_ratio: float
    latency: LatencyMeasurement | None = Field(default=None, description="None where not measurable here")
    latency_note: str = ""
    accuracy_float: float | None = None
    accuracy_candidate: float | None = None
    accuracy_note: str | None = Field(default=None, description="why no top-1 accuracy though labels were given")
    metric: MetricScore | None = Field(default=None, description="the user's --metric on float and on the candidate")

    @computed_field
    @property
    def problems(self) -> list[str]:
        """The problems' texts, as reports and manifests show them."""
        return [problem.text for problem in self.issues]


def verify(
    float_model: ModelProto,
    candidate: ModelProto,
    integer_io: Sequence[IOQuantization],
    data: Dataset,
    profile: HardwareProfile,
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB,
    measure: bool = True,
    float_size_bytes: int | None = None,
    metric: UserMetric | None = None,
) -> Verification:
    """Check a quantized candidate against its float model on held-out `data` (see the module docstring).

    `float_size_bytes` is the float model's file size when known (defaults to its serialized size). To verify
    several candidates against one float run, evaluate them with one Evaluator and take each `verdict`."""
    evaluator = Evaluator(
        float_model, profile, data, metric=metric, min_sqnr_db=min_sqnr_db, float_size_bytes=float_size_bytes
    )
    return verdict(evaluator.evaluate(candidate, integer_io, measure=measure))


def verdict(evaluation: Evaluation, timed: bool = True) -> Verification:
    """The verification policy over a host evaluation: any problem in FAILS_VERIFICATION fails the candidate.
    Untimed (`timed=False`), a latency measured on the way is left out, and with it any slowness. A user metric
    that fails on the candidate's outputs is the user's input to fix: it raises AutoptqError."""
    floor = evaluation.sqnr_floor_db
    assert floor is not None, "verification judges against a floor"
    size, float_size = evaluation.size_bytes, evaluation.float_size_bytes
    base = {
        "samples": evaluation.samples,
        "min_sqnr_db": floor,
        "size_bytes": size,
        "float_size_bytes": float_size,
        "size_ratio": round(size / float_size, 4) if float_size else 1.0,
    }
    failed = evaluation.problem("metric_failed")
    if failed is not None:
        raise AutoptqError(failed.text)
    broken = evaluation.problem("not_runnable")
    if broken is not None:  # nothing else is known of a candidate that does not run
        return Verification(passed=False, issues=[broken], **base)
    counted = FAILS_VERIFICATION if timed else FAILS_VERIFICATION - {"slower"}
    issues = [problem for problem in evaluation.problems if problem.code in counted]
    classifier = bool(evaluation.fidelity) and evaluation.fidelity[0].top1_agreement is not None
    return Verification(
        passed=not issues,
        issues=issues,
        fidelity=evaluation.fidelity,
        metric=evaluation.metric,
        latency=evaluation.latency.measured if timed else None,
        latency_note=evaluation.latency.note if timed else NOT_MEASURED,
        accuracy_float=evaluation.accuracy_float if classifier else None,
        accuracy_candidate=evaluation.accuracy_candidate if classifier else None,
        accuracy_note=evaluation.accuracy_note,
        **base,
    )


def with_joint_timing(verification: Verification, ratio: float) -> Verification:
    """`verification` with its latency ratio replaced by a joint re-timing's, which also decides whether it is slower
    than float: the joint timing is the better one."""
    latency = verification.latency
    if latency is None:
        return verification
    joint = latency.model_copy(update={"ratio": ratio, "candidate_ms": round(latency.float_ms * ratio, 5)})
    issues = [problem for problem in verification.issues if problem.code != "slower"]
    if ratio > 1 + SLOWER_TOLERANCE:
        issues.append(slower())
    return verification.model_copy(update={"latency": joint, "issues": issues, "passed": not issues})
