"""Produce the planned model: prepare it, run the quantizer, verify, and walk the plan's fallbacks until a candidate
is better than float, or keep float and say why."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from autoptq.calibration import Dataset
from autoptq.errors import AutoptqError
from autoptq.graph import ModelGraph
from autoptq.planner import DYNAMIC_QUANT_OPS, Plan, device_conformant_recipe
from autoptq.prepare import PreparationStep, prepare
from autoptq.profiles import HardwareProfile
from autoptq.quantizers import QUANTIZERS
from autoptq.quantizers.common import AppliedRecipe
from autoptq.recipe import Recipe, Technique
from autoptq.verify import DEFAULT_MIN_SQNR_DB, Verification, verify

PREPARATION_SAMPLES = 4


class Candidate(BaseModel):
    """One recipe to try: the plan's own, or one of its fallbacks."""

    step: str = Field(description="'plan' or the fallback's name")
    technique: Technique
    recipe: Recipe


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
    model_bytes: bytes = Field(default=b"", exclude=True, repr=False)


def candidates(plan: Plan, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None) -> list[Candidate]:
    """The plan's recipe followed by its fallbacks, each made device-conformant; those that cannot apply to this
    device or data are left out."""
    if plan.technique == "none":
        return []
    found = [Candidate(step="plan", technique=plan.technique, recipe=plan.recipe)]
    for name in plan.fallbacks:
        candidate = _fallback(name, plan, profile, graph, data)
        if candidate is not None and all(
            c.recipe != candidate.recipe or c.technique != candidate.technique for c in found
        ):
            found.append(candidate)
    return found


def _fallback(
    name: str, plan: Plan, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None
) -> Candidate | None:
    static = plan.technique in ("full_int8", "int16x8")
    if name in ("percentile_calibration", "entropy_calibration") and static:
        method = "percentile" if name == "percentile_calibration" else "entropy"
        return Candidate(
            step=name, technique=plan.technique, recipe=plan.recipe.model_copy(update={"calibration_method": method})
        )
    if name == "per_channel" and not plan.recipe.per_channel:
        return Candidate(
            step=name, technique=plan.technique, recipe=plan.recipe.model_copy(update={"per_channel": True})
        )
    if name == "int16x8" and "int16" in profile.precisions and data is not None:
        return _conformant(name, "int16x8", Recipe(), profile, graph, data)
    if name == "fp16" and "fp16" in profile.precisions:
        return _conformant(name, "fp16", Recipe(), profile, graph, data)
    if name == "weight_only_int8" and not profile.integer_only:
        recipe = Recipe(
            op_types_to_quantize=list(DYNAMIC_QUANT_OPS), per_channel=False, reduce_range=plan.recipe.reduce_range
        )
        return _conformant(name, "weight_only_int8", recipe, profile, graph, data)
    if name == "full_int8" and data is not None:
        recipe = Recipe(
            activation_dtype="uint8", reduce_range=profile.quantization.int8_dot_product != "int32_accumulate"
        )
        return _conformant(name, "full_int8", recipe, profile, graph, data)
    # "exclude_sensitive" needs per-node sensitivity (the accuracy-aware loop); "none" is the float model itself.
    return None


def _conformant(
    step: str, technique: Technique, base: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None
) -> Candidate | None:
    recipe = device_conformant_recipe(base, technique, profile, graph, data)
    if technique == "weight_only_int8" and not recipe.op_types_to_quantize:
        return None  # no op of the types where dynamic quantization pays
    return Candidate(step=step, technique=technique, recipe=recipe)


def produce(
    graph: ModelGraph,
    profile: HardwareProfile,
    plan: Plan,
    calibration: Dataset | None,
    validation: Dataset,
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB,
    measure_latency: bool = True,
) -> Outcome:
    """Prepare, quantize and verify along the plan's candidates; return the first verified one, or float."""
    float_model = graph.model
    # The float model is handed back unchanged, byte for byte, when nothing beats it.
    float_bytes = graph.path.read_bytes() if graph.path else float_model.SerializeToString(deterministic=True)
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
