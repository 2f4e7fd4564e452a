"""The candidates a plan offers: its own recipe, then each of its fallbacks made device-conformant."""

from __future__ import annotations

from pydantic import BaseModel, Field

from autoptq.decide.hostcost import load_table, predicted_ratio
from autoptq.decide.planner import Plan, device_conformant_recipe
from autoptq.devices.coverage import analyse
from autoptq.devices.profiles import HardwareProfile
from autoptq.evaluate.estimate import predict
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph
from autoptq.techniques.recipe import Recipe, Technique
from autoptq.techniques.space import OP_GROUPS, device_int8_ops, full_int8_space, weight_only_space

CALIBRATION_STEPS = frozenset({"percentile_calibration", "entropy_calibration"})
"""Fallbacks that move ranges, not kernels: they cannot change speed or size, only accuracy."""
MEASURED_CHOICES = 4
"""How many candidates the default choice measures on a CPU target (besides onnxruntime's plain defaults): the
plan's own and the best the cost model ranks among the recipe space."""


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
        return conformant(name, "int16x8", Recipe(), profile, graph, data)
    if name == "fp16" and "fp16" in profile.precisions:
        return conformant(name, "fp16", Recipe(), profile, graph, data)
    if name == "weight_only_int8" and not profile.integer_only:
        recipe = Recipe(reduce_range=plan.recipe.reduce_range)  # the device's default weight-only space point
        return conformant(name, "weight_only_int8", recipe, profile, graph, data)
    if name == "full_int8" and data is not None:
        recipe = Recipe(
            activation_dtype="uint8", reduce_range=profile.quantization.int8_dot_product != "int32_accumulate"
        )
        return conformant(name, "full_int8", recipe, profile, graph, data)
    # "exclude_sensitive" needs per-node sensitivity (the accuracy-aware loop); "none" is the float model itself.
    return None


def conformant(
    step: str, technique: Technique, base: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None
) -> Candidate | None:
    recipe = device_conformant_recipe(base, technique, profile, graph, data)
    if technique == "weight_only_int8" and not recipe.op_types_to_quantize:
        return None  # no op of the types where dynamic quantization pays
    return Candidate(step=step, technique=technique, recipe=recipe)


def ort_defaults(profile: HardwareProfile, graph: ModelGraph, data: Dataset | None) -> list[Candidate]:
    """onnxruntime's plain defaults as candidates: `quantize_dynamic` (per-tensor int8 weights, every op type it
    handles) and, with data, `quantize_static` (QDQ, int8 activations and weights, per tensor, min-max), each
    made conformant with the device's rules (the hard limit)."""
    found = []
    if not profile.integer_only:
        every_op = sorted({op for ops in OP_GROUPS.values() for op in ops})
        dynamic = conformant(
            "onnxruntime quantize_dynamic defaults",
            "weight_only_int8",
            Recipe(per_channel=False, op_types_to_quantize=every_op),
            profile,
            graph,
            data,
        )
        found.append(dynamic)
    if data is not None:
        static = Recipe(activation_dtype="int8", per_channel=False)
        found.append(conformant("onnxruntime quantize_static defaults", "full_int8", static, profile, graph, data))
    return [c for c in found if c is not None]


def measured_choices(
    found: list[Candidate], plan: Plan, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None
) -> list[Candidate]:
    """The candidates the default choice measures on a CPU target: the plan's own, then the best the cost model
    ranks among the plan's fallbacks and the weight-only recipe space (up to MEASURED_CHOICES in all), then
    onnxruntime's plain defaults, so the choice is never worse than them where they beat float."""
    if not found:
        return found
    recipes = weight_only_space(profile, graph, Recipe(reduce_range=plan.recipe.reduce_range))
    space = [
        candidate
        for recipe in recipes
        if (candidate := conformant(f"weight-only {_label(recipe)}", "weight_only_int8", recipe, profile, graph, data))
    ]
    if data is not None:
        base = Recipe(calibration_method=plan.recipe.calibration_method)
        # SmoothQuant is left to the accuracy loop: it calibrates twice (the smoother, then the smoothed graph), and
        # on MiniLM static MatMul + SmoothQuant kept cosine 0.953 where weight-only keeps 0.99 at the same speed.
        space += [
            candidate
            for recipe in full_int8_space(profile, graph, base)
            if not recipe.smooth_quant
            and (
                candidate := conformant(f"full int8 {_static_label(recipe)}", "full_int8", recipe, profile, graph, data)
            )
        ]
    coverage = analyse(graph, profile)
    table = load_table()  # measured on this machine by `autoptq calibrate-host`, when it was run

    def predicted_ms(candidate: Candidate) -> float:
        if table is not None and candidate.technique in ("weight_only_int8", "full_int8"):
            return predicted_ratio(graph, profile, candidate.technique, candidate.recipe, table)
        size, estimate, baseline = predict(graph, coverage, profile, candidate.technique, candidate.recipe)
        del size
        return (
            estimate.estimate_ms / baseline.estimate_ms if baseline and baseline.estimate_ms else estimate.estimate_ms
        )

    # Only techniques the plan allows (its own and its fallbacks'): a --technique override stays that technique.
    allowed = {plan.technique, *plan.fallbacks}
    pool = _distinct([*(c for c in found[1:] if c.step not in CALIBRATION_STEPS), *space])
    int8_ops = set(device_int8_ops(profile, graph))
    ranked = sorted(
        (c for c in pool if c.technique in allowed),
        key=lambda c: (_known_slow(c, profile, int8_ops), predicted_ms(c), _size_rank(c)),
    )
    # The best of each technique goes in before the rest of the ranking: the cost model ranks within a technique
    # better than across (on ddddocr-ocr weight-only Gemm+LSTM is as fast as full int8 and 0.30x against 0.48x size,
    # since static QDQ leaves the LSTM weights float), unless the rules mark its best as the slow path.
    firsts: list[Candidate] = []
    for candidate in ranked:
        taken = {c.technique for c in [found[0], *firsts]}
        if candidate.technique not in taken and not _known_slow(candidate, profile, int8_ops):
            firsts.append(candidate)
    chosen = _distinct([found[0], *firsts, *ranked])[:MEASURED_CHOICES]
    return _distinct([*chosen, *(c for c in ort_defaults(profile, graph, data) if c.technique in allowed)])


SPACE_STEPS = 6
"""How many points of the plan's own recipe space the accuracy loop walks before the technique fallbacks."""


def space_steps(plan: Plan, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None) -> list[Candidate]:
    """Points of the plan technique's recipe space other than the plan's own, the most faithful first (per-channel
    before per-tensor, then the most ops quantized), at most SPACE_STEPS: the accuracy loop's first walk."""
    if plan.technique == "weight_only_int8":
        base = Recipe(reduce_range=plan.recipe.reduce_range)
        recipes = [(f"weight-only {_label(r)}", r) for r in weight_only_space(profile, graph, base)]
    elif plan.technique == "full_int8" and data is not None:
        base = plan.recipe.model_copy(update={"op_types_to_quantize": []})
        recipes = [(f"full int8 {_static_label(r)}", r) for r in full_int8_space(profile, graph, base)]
    else:
        return []
    found = [c for step, r in recipes if (c := conformant(step, plan.technique, r, profile, graph, data))]
    found = [c for c in _distinct(found) if c.recipe != plan.recipe]
    found.sort(key=lambda c: (not c.recipe.per_channel, -len(c.recipe.op_types_to_quantize or ["*"] * 99)))
    return found[:SPACE_STEPS]


def _label(recipe: Recipe) -> str:
    granularity = "per-channel" if recipe.per_channel else "per-tensor"
    return f"{granularity} {recipe.weight_dtype} {'+'.join(recipe.op_types_to_quantize)}"


def _static_label(recipe: Recipe) -> str:
    granularity = "per-channel" if recipe.per_channel else "per-tensor"
    ops = "+".join(recipe.op_types_to_quantize) if recipe.op_types_to_quantize else "all ops"
    spelled = (" QOperator" if recipe.quant_format == "qoperator" else "") + (
        " SmoothQuant" if recipe.smooth_quant else ""
    )
    return f"{recipe.activation_dtype} activations {granularity} {ops}{spelled}"


def _known_slow(candidate: Candidate, profile: HardwareProfile, int8_ops: set[str]) -> int:
    """How many of a candidate's knobs the device's rules mark as the slow path (the cost model times kernels, not
    these): activations other than the device's preferred (first listed) dtype, Q/DQ pairs around ops the device
    has no int8 kernel for, dynamic Conv (ConvInteger). Measured on the corpus on x86-vnni: int8 activations 1.5x
    float where uint8 is 0.46x (ddddocr-det), weight-only Conv 3-5x float."""
    recipe = candidate.recipe
    if candidate.technique == "weight_only_int8":
        return int("Conv" in recipe.op_types_to_quantize)
    if candidate.technique != "full_int8":
        return 0
    preferred = profile.quantization.activations.dtype[0]
    beyond = bool(int8_ops) and not set(recipe.op_types_to_quantize or ["*"]) <= int8_ops
    return int(recipe.activation_dtype != preferred) + int(beyond and not profile.integer_only)


def _size_rank(candidate: Candidate) -> tuple[int, int, int]:
    # Among equal latency estimates: QOperator (measured on onnxruntime's CPU on 4 corpus convnets: 0-9% faster and
    # ~4% smaller than the same recipe in QDQ, same outputs; the cost model cannot tell the two apart), then more op
    # types quantized (smaller), then per-channel (more faithful).
    recipe = candidate.recipe
    return (
        0 if recipe.quant_format == "qoperator" else 1,
        -len(recipe.op_types_to_quantize),
        0 if recipe.per_channel else 1,
    )


def same_recipe(a: Candidate, b: Candidate) -> bool:
    """Whether two candidates build the same model (whatever step offered them)."""
    return a.technique == b.technique and a.recipe == b.recipe


def _distinct(found: list[Candidate]) -> list[Candidate]:
    kept: list[Candidate] = []
    for candidate in found:
        if all(c.technique != candidate.technique or c.recipe != candidate.recipe for c in kept):
            kept.append(candidate)
    return kept
