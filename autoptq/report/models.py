"""What the HTML report shows, as plain result models: everything the page needs, computed beforehand.

The renderer (autoptq/report/html_page.py) and the plots (autoptq/report/plots.py) read these models only, never the
modules that compute them; autoptq/report/data.py builds them from the results of audit, plan, quantize, check and the
sensitivity ranking.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Place = Literal["device", "host", "after_cut"]


class Ratio(BaseModel):
    """A ratio against float, with how it was obtained."""

    value: float | None
    kind: Literal["measured", "estimated", "unknown"]
    basis: str


class SummaryCard(BaseModel):
    """The answer for one target at a glance."""

    target: str
    technique: str
    planned_technique: str | None = None
    size_ratio: Ratio
    latency_ratio: Ratio
    metric: str = Field(description="accuracy or fidelity against float, with where it was measured")
    device_verdict: str
    passed: bool
    notes: list[str] = Field(default_factory=list)


class LayerPlacement(BaseModel):
    """Where one node runs."""

    name: str
    op_type: str
    place: Place
    reason: str
    macs: int


class CoverageMap(BaseModel):
    """The model's nodes in execution order with where each runs, the first cut and the bytes crossing."""

    layers: list[LayerPlacement]
    first_cut: str | None
    first_cut_reason: str | None
    transfer_bytes: int
    transitions: int
    device_mac_fraction: float
    basis: str = Field(description="what the placement was judged on (the float model, or a recipe's float nodes)")


class LayerSqnr(BaseModel):
    """SQNR of one activation of the quantized model against the float model."""

    tensor: str
    node: str
    op_type: str
    sqnr_db: float


class SqnrAlongGraph(BaseModel):
    """Per-activation SQNR in execution order."""

    layers: list[LayerSqnr]
    samples: int
    basis: str


class SensitivityBar(BaseModel):
    """One node of the sensitivity ranking."""

    node: str
    op_type: str
    output_sqnr_db: float = Field(description="output SQNR when only this node is quantized")
    activation_sqnr_db: float | None = None
    kept_float: bool = False


class SensitivityView(BaseModel):
    """The per-node ranking, most damaging first."""

    nodes: list[SensitivityBar]
    basis: str


class TrialPoint(BaseModel):
    """One trial of the accuracy loop as the scatter plots it."""

    index: int
    step: str
    technique: str
    metric: float | None
    latency: float | None = Field(description="estimated latency against float (or in ms, see TrialsView)")
    size_bytes: int | None
    meets_budget: bool
    on_front: bool
    chosen: bool
    error: str | None = None


class TrialsView(BaseModel):
    """The accuracy loop: every trial, the Pareto front and the choice."""

    metric_name: str
    latency_name: str
    budget: str
    points: list[TrialPoint]
    message: str
    tier: str


class LatencyPart(BaseModel):
    """One part of the latency estimate."""

    label: str
    part: str
    ms: float


class LatencyBreakdown(BaseModel):
    """The cost model's estimate, part by part (always an estimate)."""

    parts: list[LatencyPart]
    estimate_ms: float
    low_ms: float
    high_ms: float
    basis: str


class DecisionStep(BaseModel):
    """One question of the decision tree and its answer."""

    node: str
    question: str
    answer: bool
    facts: dict[str, str]


class TargetSection(BaseModel):
    """Everything shown for one target; a section left None is not shown (with the reason in `absent`)."""

    summary: SummaryCard
    coverage: CoverageMap | None = None
    sqnr: SqnrAlongGraph | None = None
    sensitivity: SensitivityView | None = None
    trials: TrialsView | None = None
    latency: LatencyBreakdown | None = None
    recipe: dict[str, str] = Field(default_factory=dict)
    decision_path: list[DecisionStep] = Field(default_factory=list)
    absent: dict[str, str] = Field(default_factory=dict, description="section -> why it is not shown")


class HtmlReport(BaseModel):
    """One page: a title, a few lines about the inputs, one section per target."""

    title: str
    context: list[str]
    targets: list[TargetSection]
    warnings: list[str] = Field(default_factory=list)
