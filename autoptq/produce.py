"""Produce the planned model: prepare it, run the quantizer, verify, and walk the plan's fallbacks until a candidate
is better than float, or keep float and say why."""

from __future__ import annotations

from collections.abc import Callable

import onnx
from pydantic import BaseModel, ConfigDict, Field

from autoptq.calibration import Dataset
from autoptq.candidates import candidates
from autoptq.errors import AutoptqError
from autoptq.graph import ModelGraph
from autoptq.intio import read_integer_io
from autoptq.planner import Objective, Plan
from autoptq.prepare import PREPARATION_SAMPLES, PreparationStep, prepare
from autoptq.profiles import HardwareProfile
from autoptq.quantizers import QUANTIZERS
from autoptq.quantizers.common import AppliedRecipe
from autoptq.recipe import Recipe, Technique
from autoptq.tuning import Budget, TuningResult, tune
from autoptq.user_metric import UserMetric
from autoptq.verify import DEFAULT_MIN_SQNR_DB, Verification, verify


class Attempt(BaseModel):
    """What happened to one candidate."""

    step: str
    technique: Technique
    recipe: Recipe
    accepted: bool
    error: str | None = None
    verification: Verification | None = None
    applied: AppliedRecipe | None = None


class Outcome(BaseModel):
    """The produced model for one target and how it was reached."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    target: str
    planned_technique: Technique
    technique: Technique = Field(description="what the output actually is ('none': the float model)")
    kept_float: bool
    reason: str
    attempts: list[Attempt]
    preparation: list[PreparationStep]
    applied: AppliedRecipe | None = None
    verification: Verification | None = None
    synthetic_data: bool = False
    tuning: TuningResult | None = Field(default=None, description="the accuracy-aware search, when a budget was set")
    model_bytes: bytes = Field(default=b"", exclude=True, repr=False)


def produce(
    graph: ModelGraph,
    profile: HardwareProfile,
    plan: Plan,
    calibration: Dataset | None,
    validation: Dataset,
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB,
    measure_latency: bool = True,
    metric: UserMetric | None = None,
) -> Outcome:
    """Prepare, quantize and verify along the plan's candidates; return the first verified one, or float."""
    float_model = graph.model
    # The float model is handed back unchanged, byte for byte, when nothing beats it.
    float_bytes = graph.original_bytes()
    found = candidates(plan, profile, graph, calibration)
    # Preparation feeds the quantizers: a plan that keeps float neither needs it nor reports it.
    source = float_model
    preparation: list[PreparationStep] = []
    if found:
        prepared = prepare(float_model, validation.take(PREPARATION_SAMPLES))
        source, preparation = prepared.model, prepared.steps
    synthetic = bool(calibration is not None and calibration.synthetic)
    attempts: list[Attempt] = []
    for candidate in found:
        if candidate.step in CALIBRATION_STEPS and _rejected_only_for_cost(attempts):
            # Calibration moves ranges, not kernels: it cannot make a slower or larger model faster or smaller.
            attempts.append(
                Attempt(**candidate.model_dump(), accepted=False, error="skipped: the last rejection was speed/size")
            )
            continue
        try:
            result = QUANTIZERS[candidate.technique](source, candidate.recipe, calibration, profile)
        except AutoptqError as exc:
            attempts.append(Attempt(**candidate.model_dump(), accepted=False, error=str(exc)))
            continue
        verification = verify(
            float_model,
            result.model,
            result.applied.integer_io,
            validation,
            profile,
            min_sqnr_db,
            measure_latency,
            float_size_bytes=len(float_bytes),
            metric=metric,
        )
        attempt = Attempt(
            **candidate.model_dump(), accepted=verification.passed, verification=verification, applied=result.applied
        )
        attempts.append(attempt)
        if verification.passed:
            return Outcome(
                target=profile.name,
                planned_technique=plan.technique,
                technique=candidate.technique,
                kept_float=False,
                reason=_accepted_reason(attempt, attempts),
                attempts=attempts,
                preparation=preparation,
                applied=result.applied,
                verification=verification,
                synthetic_data=synthetic,
                model_bytes=result.model.SerializeToString(deterministic=True),
            )
    return Outcome(
        target=profile.name,
        planned_technique=plan.technique,
        technique="none",
        kept_float=True,
        reason=_float_reason(plan, profile, attempts),
        attempts=attempts,
        preparation=preparation,
        synthetic_data=synthetic,
        model_bytes=float_bytes,
    )


CALIBRATION_STEPS = frozenset({"percentile_calibration", "entropy_calibration"})
_COST_PROBLEMS = ("slower than float", "not smaller than float")


def _rejected_only_for_cost(attempts: list[Attempt]) -> bool:
    """Whether the last verified attempt failed on speed or size alone."""
    last = next((a for a in reversed(attempts) if a.verification is not None), None)
    if last is None or not last.verification.problems:
        return False
    return all(any(p in problem for p in _COST_PROBLEMS) for problem in last.verification.problems)


def _accepted_reason(attempt: Attempt, attempts: list[Attempt]) -> str:
    if attempt.step == "plan":
        return f"the planned {attempt.technique} passed verification"
    rejected = "; ".join(f"{a.step} ({a.technique}): {_why(a)}" for a in attempts[:-1])
    return f"fell back to {attempt.step} ({attempt.technique}) after: {rejected}"


def _why(attempt: Attempt) -> str:
    if attempt.error:
        return attempt.error
    return "; ".join(attempt.verification.problems) if attempt.verification else "not verified"


def _float_reason(plan: Plan, profile: HardwareProfile, attempts: list[Attempt]) -> str:
    if plan.technique == "none":
        return f"the plan keeps float: {plan.summary}"
    tried = "; ".join(f"{a.step} ({a.technique}): {_why(a)}" for a in attempts) or "no candidate applied"
    consequence = " This device runs integers only: the float model cannot run on it." if profile.integer_only else ""
    return f"no candidate beat float, so the output is the float model. Tried: {tried}.{consequence}"


def produce_tuned(
    graph: ModelGraph,
    profile: HardwareProfile,
    plan: Plan,
    calibration: Dataset | None,
    validation: Dataset,
    budget: Budget,
    prefer: Objective,
    progress: Callable[[str], None],
    measure_latency: bool = True,
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB,
    metric: UserMetric | None = None,
) -> Outcome:
    """The accuracy-aware path: search the plan's candidates under `budget` (see autoptq.tuning), then verify the
    chosen one as every produced model is (its problems become part of the reason; the search result stands)."""
    result = tune(graph, profile, plan, calibration, validation, budget, prefer, progress, metric=metric)
    trial = result.trials[result.chosen]
    float_bytes = graph.original_bytes()
    is_float = trial.technique == "none"
    model_bytes = float_bytes if is_float else result.model_bytes
    verification = None
    applied = None
    reason = result.message
    if not is_float:
        candidate = onnx.load_from_string(model_bytes)
        # What the chosen trial was made with, so a manifest records it and `--recipe` can replay it.
        applied = AppliedRecipe(
            technique=trial.technique,
            recipe=trial.recipe or Recipe(),
            excluded={name: "kept in float by the accuracy loop" for name in trial.excluded},
            integer_io=read_integer_io(candidate),
        )
        verification = verify(
            graph.model,
            candidate,
            read_integer_io(candidate),
            validation,
            profile,
            min_sqnr_db,
            measure=measure_latency,
            float_size_bytes=len(float_bytes),
            metric=metric,
        )
        if not verification.passed:
            reason += "; verification found: " + "; ".join(verification.problems)
    return Outcome(
        target=profile.name,
        planned_technique=plan.technique,
        technique=trial.technique,
        kept_float=is_float,
        reason=reason,
        attempts=[],
        preparation=[],
        applied=applied,
        verification=verification,
        synthetic_data=bool(calibration is not None and calibration.synthetic),
        tuning=result,
        model_bytes=model_bytes,
    )
