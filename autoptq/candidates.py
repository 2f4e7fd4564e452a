"""The candidates a plan offers: its own recipe, then each of its fallbacks made device-conformant."""

from __future__ import annotations

from pydantic import BaseModel, Field

from autoptq.calibration import Dataset
from autoptq.graph import ModelGraph
from autoptq.planner import Plan, device_conformant_recipe
from autoptq.profiles import HardwareProfile
from autoptq.recipe import Recipe, Technique


class Candidate(BaseModel):
    """One recipe to try: the plan's own, or one of its fallbacks."""

    step: str = Field(description="'plan' or the fallback's name")
    technique: Technique
    recipe: Recipe


def candidates(plan: Plan, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None) -> list[Candidate]:
    """The plan's recipe followed by its fallbacks, each made device-conformant; those that cannot apply to this
    device or data are left out."""
    if plan.technique == "none":
        return []
    found = [Candidate(step="plan", technique=plan.technique, recipe=plan.recipe)]
    for name in plan.fallbacks:
        candidate = fallback_candidate(name, plan, profile, graph, data)
        if candidate is not None and all(
            c.recipe != candidate.recipe or c.technique != candidate.technique for c in found
        ):
            found.append(candidate)
    return found


def fallback_candidate(
    name: str, plan: Plan, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None
) -> Candidate | None:
    """The candidate a named fallback stands for on this device and data, or None where it cannot apply
    ("exclude_sensitive" is the accuracy loop's own, "none" is the float model itself)."""
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
        recipe = Recipe(reduce_range=plan.recipe.reduce_range)  # the device's default weight-only space point
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
