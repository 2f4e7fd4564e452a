"""What an evaluation of a candidate says: fidelity, accuracy or the user's metric, size, latency, the device's
verdict, and the problems found, each a code to branch on with a text to read (see autoptq.evaluate.evaluator)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from autoptq.devices.cost import LatencyEstimate
from autoptq.devices.coverage import CoverageReport
from autoptq.devices.device_rules import DeviceRulesResult
from autoptq.evaluate.emulators.base import NodeFinding, Tier, TierAgreement
from autoptq.evaluate.metrics import OutputFidelity
from autoptq.evaluate.runner import LatencyMeasurement
from autoptq.io.user_metric import MetricScore
from autoptq.techniques.recipe import Recipe, TechniqueName

SLOWER_TOLERANCE = 0.05
"""Measured latency ratios up to 1 + this count as 'not slower' (timer noise on a shared machine)."""
NOT_MEASURED = "not measured: this machine does not stand in for the target"

ProblemCode = Literal[
    "not_runnable",  # onnxruntime cannot load or run the candidate on the host
    "not_finite",  # an output has NaN or inf
    "below_sqnr_floor",  # an output's SQNR is below the floor
    "not_smaller",  # the file is not smaller than float
    "slower",  # measured slower than float beyond SLOWER_TOLERANCE
    "metric_failed",  # the user's metric failed on the candidate's outputs
    "accuracy_drop",  # the metric's or top-1 accuracy's drop exceeds the allowed drop
    "device_rules",  # the candidate breaks a rule of the device
    "tier_disagrees",  # a device file's outputs differ from the exact tier beyond tolerance
]


class Problem(BaseModel):
    """Something found wrong with a candidate: a code to branch on and a text to read."""

    code: ProblemCode
    text: str


def not_smaller(size: int, float_size: int) -> Problem:
    """The candidate's file is not smaller than float's."""
    return Problem(code="not_smaller", text=f"file is not smaller than float ({size} B vs {float_size} B)")


def slower() -> Problem:
    """The candidate measured slower than float; the measured ratio goes to the measurement record, so the text
    stays the same run to run."""
    return Problem(
        code="slower", text=f"slower than float on the host (measured ratio above {1 + SLOWER_TOLERANCE:.2f})"
    )


class Latency(BaseModel):
    """Latency of a candidate: measured side by side with float where this machine stands in for the target, and
    estimated by the cost model where the device was asked about."""

    measured: LatencyMeasurement | None = None
    estimate: LatencyEstimate | None = Field(default=None, description="the candidate on the device, cost model")
    float_estimate: LatencyEstimate | None = Field(default=None, description="float on the device (None: cannot)")
    note: str = Field(default=NOT_MEASURED, description="where it was measured, or why it was not")


class DeviceQuery(BaseModel):
    """What the device verdict and the latency estimate of a candidate rest on."""

    technique: TechniqueName
    recipe: Recipe = Field(default_factory=Recipe)
    kept_float: list[str] = Field(default_factory=list, description="nodes the recipe keeps in float")
    reaudit: bool = Field(
        default=True,
        description="partition with the kept nodes and those the rules find computing in float moved off an "
        "integer-only device (False: the analysis graph's own audit)",
    )


class DeviceVerdict(BaseModel):
    """The device's rules re-audited on the candidate, and its partitioning."""

    rules: DeviceRulesResult | None = Field(description="None for the float model itself: no deployment to audit")
    coverage: CoverageReport


class Evaluation(BaseModel):
    """Everything found about one candidate against the float model."""

    tier: Tier = Field(description="where the candidate's outputs came from")
    fidelity_statement: str
    samples: int
    sqnr_floor_db: float | None = Field(description="the floor `below_sqnr_floor` is judged against")
    fidelity: list[OutputFidelity] = Field(default_factory=list)
    accuracy_float: float | None = Field(default=None, description="top-1, with labels on a [batch, classes] output")
    accuracy_candidate: float | None = None
    accuracy_note: str | None = Field(default=None, description="why no top-1 accuracy though labels were given")
    metric: MetricScore | None = Field(default=None, description="the user's metric on float and on the candidate")
    size_bytes: int
    float_size_bytes: int
    latency: Latency = Field(default_factory=Latency)
    device: DeviceVerdict | None = None
    findings: list[NodeFinding] = Field(default_factory=list)
    agreement: list[TierAgreement] = Field(default_factory=list)
    arena_bytes: int | None = None
    problems: list[Problem] = Field(default_factory=list)

    @property
    def codes(self) -> set[ProblemCode]:
        """The codes of the problems found."""
        return {p.code for p in self.problems}

    def problem(self, code: ProblemCode) -> Problem | None:
        """The first problem with `code`, if any."""
        return next((p for p in self.problems if p.code == code), None)

    @property
    def lowest_sqnr_db(self) -> float | None:
        """The worst output's SQNR (None when no output was compared)."""
        return min((f.sqnr_db for f in self.fidelity), default=None)
