"""Produce the planned model: prepare it, run the quantizer, verify, and walk the plan's fallbacks until a candidate
is better than float, or keep float and say why."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
from onnx import ModelProto
from pydantic import BaseModel, ConfigDict, Field

from autoptq.decide.candidates import (
    PREDICTED_TOO_SLOW,
    Candidate,
    candidates,
    measured_choices,
    predicted_too_slow,
    same_recipe,
)
from autoptq.decide.job import Job
from autoptq.decide.planner import Objective, Plan
from autoptq.decide.tuning import Budget, TuningResult, search_evaluator, tune
from autoptq.deploy.device_file import DeviceFile
from autoptq.devices.canonical import float_model_for
from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError
from autoptq.evaluate.evaluation import SLOWER_TOLERANCE, Evaluation, Problem, ProblemCode, not_smaller
from autoptq.evaluate.evaluator import Evaluator
from autoptq.evaluate.runner import LatencyMeasurement, measurable_here
from autoptq.evaluate.verify import Verification, verdict, with_joint_timing
from autoptq.model.calibration import Dataset
from autoptq.model.intio import read_integer_io
from autoptq.model.prepare import PREPARATION_SAMPLES, PreparationStep, prepare
from autoptq.techniques import KEEP_FLOAT, by_name
from autoptq.techniques.common import AppliedRecipe, IOQuantization, QuantizationResult
from autoptq.techniques.qdq import ranges_file
from autoptq.techniques.recipe import Recipe, TechniqueName

AttemptErrorCode = Literal["build_failed", "skipped"] | ProblemCode
"""What stopped a candidate before verification: its build, a skip, or the pre-screen's problem."""


class Attempt(BaseModel):
    """What happened to one candidate."""

    step: str
    technique: TechniqueName
    recipe: Recipe
    accepted: bool
    error: str | None = None
    error_code: AttemptErrorCode | None = Field(default=None, exclude=True, description="what `error` is")
    verification: Verification | None = None
    applied: AppliedRecipe | None = None

    def why_not(self) -> str:
        """Why the candidate was not accepted, as reasons, manifests and reports say it."""
        if self.error:
            return self.error
        return "; ".join(self.verification.problems) if self.verification else "not verified"


class Outcome(BaseModel):
    """The produced model for one target and how it was reached."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    target: str
    planned_technique: TechniqueName
    technique: TechniqueName = Field(description="what the output actually is ('none': the float model)")
    kept_float: bool
    reason: str
    attempts: list[Attempt]
    preparation: list[PreparationStep]
    applied: AppliedRecipe | None = None
    verification: Verification | None = None
    synthetic_data: bool = False
    tuning: TuningResult | None = Field(default=None, description="the accuracy-aware search, when a budget was set")
    model_bytes: bytes = Field(default=b"", exclude=True, repr=False)
    device_file: DeviceFile | None = Field(default=None, description="the .tflite of a 'format: tflite' target")


SearchMode = Literal["measured", "first"]
"""How the default choice is found on a CPU this machine stands in for. `measured`: the best measured of a handful
and of its contenders' range variants (autoptq.decide.candidates.measured_choices); on the corpus it matched or beat
an exhaustive oracle in 21 and 22 of 22 cells in two runs, at 20% of the oracle's time (10-31% per cell where it
quantizes). `first`: the plan's candidates in order, the first that passes verification (timed once) kept, as on
every other target: 4.3% of the oracle's time (1.7-11% per cell), the same pick in 9 and 10 of 22 cells
(docs/benchmarks.md, decision quality)."""


def produce(job: Job, plan: Plan, measure_latency: bool = True, search: SearchMode = "measured") -> Outcome:
    """Prepare, quantize and verify along the plan's candidates; return the first verified one (on a CPU measured
    here, by default: the best measured of a handful, see SearchMode), or float."""
    graph, profile, calibration, validation = job.graph, job.profile, job.calibration, job.validation
    float_model = float_model_for(graph, profile)
    # The float model is handed back unchanged, byte for byte, when nothing beats it.
    float_bytes = graph.original_bytes()
    found = candidates(job, plan)
    # On a CPU this machine stands in for, the default choice is the best measured of a handful, not the first
    # that passes; the plan's remaining fallbacks follow in case none of them passes. A plan that keeps float stays
    # float: on the digits CNN (the "too small" leaf) every recipe measured 1.04-1.05x (weight-only) or 1.3x
    # (static) float, so quantizing would hinge on timing noise against the 5% margin and flip run to run.
    measured = search == "measured" and measure_latency and measurable_here(profile) and bool(found)
    measured_count = 0
    attempts: list[Attempt] = []
    if measured:
        choices = measured_choices(found, job, plan)
        slow = predicted_too_slow(choices, job)
        attempts = [_predicted_slow(candidate, ratio) for candidate, ratio in slow]
        unbuilt = [candidate for candidate, _ in slow]
        choices = [c for c in choices if not any(same_recipe(c, s) for s in unbuilt)]
        found = [*choices, *(c for c in found if not any(same_recipe(c, m) for m in [*choices, *unbuilt]))]
        measured_count = len(choices) + len(unbuilt)
    # Preparation feeds the quantizers: a plan that keeps float neither needs it nor reports it.
    source = float_model
    preparation: list[PreparationStep] = []
    if found:
        prepared = prepare(float_model, validation.take(PREPARATION_SAMPLES))
        source, preparation = prepared.model, prepared.steps
    synthetic = bool(calibration is not None and calibration.synthetic)
    built: list[tuple[Attempt, bytes]] = []  # passed, or (measured) rejected only as slower than float
    twinned = _twinned(found)
    evaluator = Evaluator(
        float_model,
        profile,
        validation,
        metric=job.metric,
        min_sqnr_db=job.min_sqnr_db,
        float_size_bytes=len(float_bytes),
    )
    with tempfile.TemporaryDirectory(prefix="autoptq-ranges-") as ranges:
        for candidate in found:
            if any(a.accepted for a, _ in built) and len(attempts) >= measured_count:
                break  # the measured handful is done and one passed (further fallbacks only run when none did)
            if candidate.step in by_name(candidate.technique).range_steps and not _calibration_can_help(
                candidate, attempts
            ):
                # Calibration moves ranges, not kernels: it cannot make a slower or larger model faster or smaller.
                attempts.append(
                    Attempt(
                        **candidate.model_dump(),
                        accepted=False,
                        error="skipped: no static candidate failed on fidelity alone",
                        error_code="skipped",
                    )
                )
                continue
            try:
                result = _quantize(candidate, source, calibration, profile, Path(ranges))
            except AutoptqError as exc:
                attempts.append(
                    Attempt(**candidate.model_dump(), accepted=False, error=str(exc), error_code="build_failed")
                )
                continue
            problem = _screen(evaluator, result.model, result.applied.integer_io) if measured else None
            if problem is not None:
                attempts.append(
                    Attempt(
                        **candidate.model_dump(),
                        accepted=False,
                        error=problem.text,
                        error_code=problem.code,
                        applied=result.applied,
                    )
                )
                continue
            evaluation = evaluator.evaluate(result.model, result.applied.integer_io, measure=measure_latency)
            attempt = _judged(candidate, result, verdict(evaluation))
            attempts.append(attempt)
            if attempt.accepted or (measured and _slower_alone(attempt) and _twin_class(attempt) in twinned):
                built.append((attempt, result.model.SerializeToString(deterministic=True)))
                if attempt.accepted and not measured:
                    break
        passed = _timed_together(evaluator, built, attempts, bool(validation.samples)) if measured else built
        if measured:
            variants = RangeVariants(evaluator, source, calibration, profile, Path(ranges))
            passed = variants.around(passed, attempts, plan)
        if passed:
            best, best_bytes = best_measured(passed, plan) if measured else passed[0]
            return Outcome(
                target=profile.name,
                planned_technique=plan.technique,
                technique=best.technique,
                kept_float=False,
                reason=_measured_reason(best, attempts) if measured else _accepted_reason(best, attempts),
                attempts=attempts,
                preparation=preparation,
                applied=best.applied,
                verification=best.verification,
                synthetic_data=synthetic,
                model_bytes=best_bytes,
            )
    return Outcome(
        target=profile.name,
        planned_technique=plan.technique,
        technique=KEEP_FLOAT,
        kept_float=True,
        reason=_float_reason(plan, profile, attempts),
        attempts=attempts,
        preparation=preparation,
        synthetic_data=synthetic,
        model_bytes=float_bytes,
    )


RANGE_FIXABLE: frozenset[str] = frozenset({"below_sqnr_floor", "not_finite"})
"""Rejections other ranges can turn into a pass: the output's fidelity, not its kernels."""


RANGE_KNOBS = ("calibration_method", "calibration_percentile", "bias_correction")
"""The knobs that move ranges and float biases, not kernels."""


def _kernels(recipe: Recipe) -> str:
    """What fixes a recipe's kernels: the recipe with its range knobs at their defaults."""
    defaults = Recipe()
    return recipe.model_copy(update={k: getattr(defaults, k) for k in RANGE_KNOBS}).model_dump_json()


TWIN_TIE = 0.10
"""How far apart a dynamic recipe's per-tensor and per-channel weights may time and still count as one speed. They
differ only in the scale applied after the integer product: measured 0-5% apart on the corpus (MiniLM-L6 about 3%,
where per-channel keeps min cosine 0.99 to fp32 and per-tensor 0.95), 12% on a 20-microsecond toy encoder."""


def _twin_class(attempt: Attempt | Candidate) -> str:
    """Its kernels, and for a dynamic technique its kernels up to the weight granularity."""
    recipe = attempt.recipe
    if not by_name(attempt.technique).calibrated:
        recipe = recipe.model_copy(update={"per_channel": Recipe().per_channel})
    return f"{attempt.technique} {_kernels(recipe)}"


def _twinned(candidates: Sequence[Candidate]) -> set[str]:
    """The twin classes (`_twin_class`) that more than one candidate shares: only there can a twin's timing readmit
    a candidate rejected as slower than float, so only there is its model kept until the joint re-timing."""
    counts = Counter(_twin_class(candidate) for candidate in candidates)
    return {key for key, count in counts.items() if count > 1}


def _slower_alone(attempt: Attempt) -> bool:
    """Whether a timed candidate failed verification only on being slower than float."""
    ver = attempt.verification
    return ver is not None and not ver.passed and bool(ver.issues) and all(p.code == "slower" for p in ver.issues)


def timed_as_twins(pairs: list[tuple[Attempt, bytes]]) -> list[tuple[Attempt, bytes]]:
    """`pairs`, where a candidate rejected only as slower than float has a twin (the same kernels, or a dynamic
    recipe's other weight granularity: `_twin_class`) that passed within TWIN_TIE of its timing, with that twin's
    timing and passed: one speed timed twice (ppocr-cls on x86-vnni: per-channel weight-only MatMul measured 1.052x
    float, 99.7 dB, its per-tensor twin 1.018x, 87.5 dB)."""
    fastest: dict[str, Attempt] = {}
    for attempt, _ in pairs:
        latency = attempt.verification.latency if attempt.verification else None
        known = fastest.get(_twin_class(attempt))
        if attempt.accepted and latency is not None and (known is None or latency.ratio < _ratio(known)):
            fastest[_twin_class(attempt)] = attempt
    judged = []
    for attempt, data in pairs:
        twin = fastest.get(_twin_class(attempt))
        if twin is not None and _slower_alone(attempt) and _ratio(attempt) <= _ratio(twin) * (1 + TWIN_TIE):
            attempt = _with_twins_timing(attempt, twin)
        judged.append((attempt, data))
    return judged


def _with_twins_timing(attempt: Attempt, twin: Attempt) -> Attempt:
    """`attempt` passed, with its twin's timing, its own stated in its latency note."""
    ver, twin_ver = attempt.verification, twin.verification
    assert ver is not None and twin_ver is not None
    note = (
        f"{ver.latency_note}; timed alone {_ratio(attempt):.2f}x float, above the {1 + SLOWER_TOLERANCE:.2f} margin, "
        f"and its twin '{twin.step}' (the same integer kernels) {_ratio(twin):.2f}x: within {TWIN_TIE:.0%}, one "
        "speed, so the twin's timing is shown"
    )
    update = {"latency": twin_ver.latency, "latency_note": note, "passed": True, "issues": []}
    return attempt.model_copy(update={"verification": ver.model_copy(update=update), "accepted": True})


def _ratio(attempt: Attempt) -> float:
    latency = attempt.verification.latency if attempt.verification else None
    assert latency is not None, "a timed candidate"
    return latency.ratio


def _with_latency(attempt: Attempt, latency: LatencyMeasurement | None) -> Attempt:
    """The attempt with another timing of its kernels, where there is one."""
    if latency is None or attempt.verification is None:
        return attempt
    return attempt.model_copy(update={"verification": attempt.verification.model_copy(update={"latency": latency})})


def _range_fixable(verification: Verification) -> bool:
    """Whether a verification failed on fidelity alone (RANGE_FIXABLE)."""
    codes = {problem.code for problem in verification.issues}
    return not verification.passed and bool(codes) and codes <= RANGE_FIXABLE


@dataclass
class RangeVariants:
    """Builds candidates again with other ranges (`Technique.range_variants`: every other calibration method x bias
    correction). Those move ranges and float biases, not kernels, so speed and size stay the candidate's and only
    fidelity is measured: untimed, with the candidate's latency (no timing, so this part of the choice does not hang
    on timer noise)."""

    evaluator: Evaluator
    source: ModelProto
    calibration: Dataset | None
    profile: HardwareProfile
    ranges: Path

    def around(
        self, passed: list[tuple[Attempt, bytes]], attempts: list[Attempt], plan: Plan
    ) -> list[tuple[Attempt, bytes]]:
        """`passed` and the variants that pass, of every calibrated candidate that is or, passing, would be as fast
        and as small as the pick (`measured_contenders`): the pick's own contenders, and those rejected on fidelity
        alone (on ppocr-rec, x86-avx2, static int8 at 0.83x float fails with min-max ranges and passes with
        percentile ones, where the pick was weight-only at 1.00x). A QOperator recipe computes what its QDQ twin
        does, so only one of the two is varied: the first in the objective's order (on ppocr-rec the QOperator twin
        is 6% smaller). Every variant tried joins `attempts`."""
        # One latency per set of kernels: a passed candidate's (the joint re-timing's) for the rejected ones and
        # the variants with its kernels, so that no choice among them turns on two timings of the same kernels.
        timed: dict[str, LatencyMeasurement | None] = {}
        for attempt, _ in passed:
            timed.setdefault(_kernels(attempt.recipe), attempt.verification.latency if attempt.verification else None)
        fixable = [
            (_with_latency(a, timed.get(_kernels(a.recipe))), b"")
            for a in attempts
            if a.verification is not None and _range_fixable(a.verification)
        ]
        pool = [*passed, *fixable]
        if not pool:
            return []
        contenders = [*(measured_contenders(passed, plan) if passed else []), *measured_contenders(pool, plan)]
        bases = sorted({id(a): a for a, _ in contenders}.values(), key=_objective(pool, plan))
        varied: list[str] = []
        found = list(passed)
        for base in bases:
            numerics = _kernels(base.recipe.model_copy(update={"quant_format": "qdq"}))
            if numerics not in varied and base.verification is not None and base.verification.latency is not None:
                varied.append(numerics)
                found += self.variants(base, attempts)
        return found

    def variants(self, base: Attempt, attempts: list[Attempt]) -> list[tuple[Attempt, bytes]]:
        """The base's range variants not tried yet, each joining `attempts`; those that pass."""
        assert base.verification is not None and base.verification.latency is not None
        passing = []
        for label, recipe in by_name(base.technique).range_variants(base.recipe):
            if any(a.technique == base.technique and a.recipe == recipe for a in attempts):
                continue
            # Named after the candidate it varies: "<candidate> + entropy calibration + bias correction".
            candidate = Candidate(step=f"{base.step} + {label}", technique=base.technique, recipe=recipe)
            try:
                result = _quantize(candidate, self.source, self.calibration, self.profile, self.ranges)
            except AutoptqError as exc:
                attempts.append(
                    Attempt(**candidate.model_dump(), accepted=False, error=str(exc), error_code="build_failed")
                )
                continue
            evaluation = self.evaluator.evaluate(result.model, result.applied.integer_io, measure=False)
            verification = verdict(evaluation, timed=False).model_copy(update={"latency": base.verification.latency})
            attempt = _judged(candidate, result, verification)
            attempts.append(attempt)
            if attempt.accepted:
                passing.append((attempt, result.model.SerializeToString(deterministic=True)))
        return passing


def _judged(candidate: Candidate, result: QuantizationResult, verification: Verification) -> Attempt:
    return Attempt(
        **candidate.model_dump(), accepted=verification.passed, verification=verification, applied=result.applied
    )


def _predicted_slow(candidate: Candidate, ratio: float) -> Attempt:
    return Attempt(
        **candidate.model_dump(),
        accepted=False,
        error=f"not built: the host table (`autoptq calibrate-host`) predicts {ratio:.2f}x float latency, above "
        f"{PREDICTED_TOO_SLOW}x (the 1.05x limit widened by the table's error)",
        error_code="skipped",
    )


NOT_FOR_CALIBRATION: frozenset[str] = frozenset({"slower", "not_smaller", "not_runnable", "skipped"})
"""Rejections another calibration cannot turn into a pass: calibration moves ranges, not kernels, so it cannot make a
slower or larger model faster or smaller, nor run one onnxruntime could not (and a skipped candidate was not tried)."""
TIE = 0.05
"""Measured latency ratios (timer noise on a shared machine) and sizes within this fraction of the best count as a
tie; among the fastest and smallest the most faithful output wins."""


def _timed_together(
    evaluator: Evaluator, built: list[tuple[Attempt, bytes]], attempts: list[Attempt], retime: bool
) -> list[tuple[Attempt, bytes]]:
    """Those of `built` that pass once re-timed together (`_retime`, where `retime`: the passed ones, and those
    rejected only as slower than float that have a passed twin) and once the twins of one speed share a timing
    (`timed_as_twins`); `attempts` takes the new verdicts."""
    passing = {_twin_class(attempt) for attempt, _ in built if attempt.accepted}
    again = [i for i, (attempt, _) in enumerate(built) if _twin_class(attempt) in passing]
    timed = list(built)
    if retime and len(again) > 1:
        for i, pair in zip(again, _retime(evaluator, [built[i] for i in again]), strict=True):
            timed[i] = pair
    judged = timed_as_twins(timed)
    for (attempt, _), (original, _) in zip(judged, built, strict=True):
        attempts[attempts.index(original)] = attempt
    return [(attempt, data) for attempt, data in judged if attempt.accepted]


def _retime(evaluator: Evaluator, passed: list[tuple[Attempt, bytes]]) -> list[tuple[Attempt, bytes]]:
    """The verified candidates timed again all together, interleaved with float in one round robin: the pairwise
    ratios of verification were taken at different moments, and on a loaded machine that noise can exceed the
    differences being chosen on."""
    models = [onnx.load_from_string(data) for _, data in passed]
    ratios = evaluator.time_together(models, budget_s=0.5 + 0.3 * len(passed))
    again = []
    for (attempt, data), ratio in zip(passed, ratios, strict=True):
        if attempt.verification is not None:
            verification = with_joint_timing(attempt.verification, ratio)
            attempt = attempt.model_copy(update={"verification": verification, "accepted": verification.passed})
        again.append((attempt, data))
    return again


def best_measured(passed: list[tuple[Attempt, bytes]], plan: Plan) -> tuple[Attempt, bytes]:
    """The objective's pick among verified, measured candidates: fastest (speed), smallest (size) or most faithful
    (accuracy: the user's metric, else the lowest output SQNR), the others breaking ties."""
    return _ranked(passed, plan)[0]


def measured_contenders(passed: list[tuple[Attempt, bytes]], plan: Plan) -> list[tuple[Attempt, bytes]]:
    """The pick and the candidates tied with it on the objective's first two criteria (as fast and as small within
    TIE), in the objective's order: among them fidelity decides."""
    ranked = _ranked(passed, plan)
    key = _objective(passed, plan)
    return [pair for pair in ranked if key(pair[0])[:2] == key(ranked[0][0])[:2]]


def _ranked(passed: list[tuple[Attempt, bytes]], plan: Plan) -> list[tuple[Attempt, bytes]]:
    key = _objective(passed, plan)
    return sorted(passed, key=lambda pair: key(pair[0]))


def _objective(passed: list[tuple[Attempt, bytes]], plan: Plan) -> Callable[[Attempt], tuple]:
    """The sort key of the user's objective over these candidates. Candidates with the same kernels (the same recipe
    up to its range knobs) are compared on the fastest timing among them: what tells them apart is timer noise. A
    dynamic recipe's weight-granularity twin is compared on its twin's timing when within TWIN_TIE of it."""

    def own_ratio(a: Attempt) -> float:
        latency = a.verification.latency if a.verification else None
        return latency.ratio if latency is not None else 1.0

    same_kernels: dict[str, float] = {}
    twins: dict[str, float] = {}
    for attempt, _ in passed:
        for table, key in ((same_kernels, _kernels(attempt.recipe)), (twins, _twin_class(attempt))):
            table[key] = min(table.get(key, own_ratio(attempt)), own_ratio(attempt))

    def ratio(a: Attempt) -> float:
        same = same_kernels.get(_kernels(a.recipe), own_ratio(a))
        twin = twins.get(_twin_class(a), same)
        return twin if same <= twin * (1 + TWIN_TIE) else same

    def size(a: Attempt) -> int:
        return a.verification.size_bytes if a.verification else 0

    fastest = min(ratio(a) for a, _ in passed)
    smallest = min(size(a) for a, _ in passed)
    prefer = plan.facts.get("user.prefer", "speed")

    def fast(a: Attempt) -> bool:
        return ratio(a) <= fastest * (1 + TIE)

    def small(a: Attempt) -> bool:
        return size(a) <= smallest * (1 + TIE)

    keys = {
        "speed": lambda a: (not fast(a), not small(a), -fidelity_of(a), ratio(a), size(a)),
        "size": lambda a: (not small(a), not fast(a), -fidelity_of(a), size(a), ratio(a)),
        "accuracy": lambda a: (-fidelity_of(a), ratio(a), size(a)),
    }
    return keys[str(prefer)]


def fidelity_of(attempt: Attempt) -> float:
    """The user's metric on the candidate, else its lowest output SQNR (dB)."""
    ver = attempt.verification
    if ver is None:
        return float("-inf")
    if ver.metric is not None:
        return ver.metric.candidate
    return min((f.sqnr_db for f in ver.fidelity), default=float("-inf"))


def _measured_reason(best: Attempt, attempts: list[Attempt]) -> str:
    verified = [a for a in attempts if a.verification is not None and a.verification.passed]
    others = "; ".join(f"{a.step} ({a.technique}): {a.why_not()}" for a in attempts if not a.accepted)
    ratio = best.verification.latency.ratio if best.verification and best.verification.latency else None
    measured = f"{ratio:.2f}x float latency measured, " if ratio is not None else ""
    size = f"{best.verification.size_ratio:.2f}x size" if best.verification else ""
    return (
        f"best measured of {len(attempts)} candidates ({len(verified)} passed): {best.step} ({best.technique}), "
        f"{measured}{size}" + (f"; rejected: {others}" if others else "")
    )


SCREEN_SAMPLES = 4
SCREEN_MARGIN_DB = 3.0
"""The measured handful's pre-screen: a candidate not smaller than float, or whose output SQNR on the first
SCREEN_SAMPLES validation samples is more than SCREEN_MARGIN_DB below the floor, is rejected before the full
verification (all samples, then timing), which it could not pass (on light-resnet50 every static recipe is larger
than the float file and at 0 dB)."""


def _screen(evaluator: Evaluator, model: ModelProto, integer_io: Sequence[IOQuantization]) -> Problem | None:
    """Why the candidate cannot pass verification, seen on its size or the first samples; None to verify it fully.
    The size problem is verification's own, so the fallbacks read it the same way."""
    size, float_size = model.ByteSize(), evaluator.float_size_bytes
    if size >= float_size:
        problem = not_smaller(size, float_size)
        return problem.model_copy(update={"text": f"{problem.text}: not verified further"})
    floor = evaluator.min_sqnr_db
    if len(evaluator.data) <= SCREEN_SAMPLES or floor is None:
        return None
    evaluation = evaluator.evaluate(model, integer_io, samples=SCREEN_SAMPLES, measure=False)
    worst = evaluation.lowest_sqnr_db
    # A candidate that does not run is left to the full verification, which reports it in its own words.
    if evaluation.problem("not_runnable") is not None or worst is None or worst >= floor - SCREEN_MARGIN_DB:
        return None
    return Problem(
        code="below_sqnr_floor",
        text=f"output SQNR {worst:.1f} dB on the first {SCREEN_SAMPLES} validation samples, more than "
        f"{SCREEN_MARGIN_DB:g} dB below the floor {floor:g} dB: not verified further",
    )


def _quantize(
    candidate: Candidate, source: ModelProto, calibration: Dataset | None, profile: HardwareProfile, ranges: Path
) -> QuantizationResult:
    """Build a candidate; static ones share their calibration ranges (one calibration per method and activation
    width, whatever the op set, granularity or format: the ranges are of the float model's tensors)."""
    chosen = by_name(candidate.technique)
    cache = ranges / ranges_file(candidate.recipe) if chosen.calibrated else None
    return chosen.quantize(source, candidate.recipe, calibration, profile, calibration_cache=cache)


def _calibration_can_help(candidate: Candidate, attempts: list[Attempt]) -> bool:
    """Whether another calibration method could turn a failure into a pass: only where an attempt of the same
    technique failed to build, or was rejected on fidelity alone (see NOT_FOR_CALIBRATION)."""
    for attempt in attempts:
        ver = attempt.verification
        if attempt.technique != candidate.technique or (ver is not None and ver.passed):
            continue
        codes = {problem.code for problem in ver.issues} if ver is not None else {attempt.error_code}
        if not codes & NOT_FOR_CALIBRATION:
            return True
    return False


def _accepted_reason(attempt: Attempt, attempts: list[Attempt]) -> str:
    if attempt.step == "plan":
        return f"the planned {attempt.technique} passed verification"
    rejected = "; ".join(f"{a.step} ({a.technique}): {a.why_not()}" for a in attempts[:-1])
    return f"fell back to {attempt.step} ({attempt.technique}) after: {rejected}"


def _float_reason(plan: Plan, profile: HardwareProfile, attempts: list[Attempt]) -> str:
    if not by_name(plan.technique).quantizes:
        return f"the plan keeps float: {plan.summary}"
    tried = "; ".join(f"{a.step} ({a.technique}): {a.why_not()}" for a in attempts) or "no candidate applied"
    consequence = " This device runs integers only: the float model cannot run on it." if profile.integer_only else ""
    return f"no candidate beat float, so the output is the float model. Tried: {tried}.{consequence}"


def produce_tuned(
    job: Job,
    plan: Plan,
    budget: Budget,
    prefer: Objective,
    progress: Callable[[str], None],
    measure_latency: bool = True,
) -> Outcome:
    """The accuracy-aware path: search the plan's candidates under `budget` (see autoptq.decide.tuning), then verify the
    chosen one as every produced model is (its problems become part of the reason; the search result stands)."""
    float_bytes = job.graph.original_bytes()
    evaluator = search_evaluator(job, job.min_sqnr_db, len(float_bytes))
    result = tune(job, plan, budget, prefer, progress, evaluator=evaluator)
    trial = result.trials[result.chosen]
    is_float = not by_name(trial.technique).quantizes
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
        verification = verdict(_on_host(evaluator, result.evaluation, candidate, measure_latency), measure_latency)
        reason = with_findings(reason, verification)
    return Outcome(
        target=job.profile.name,
        planned_technique=plan.technique,
        technique=trial.technique,
        kept_float=is_float,
        reason=reason,
        attempts=[],
        preparation=[],
        applied=applied,
        verification=verification,
        synthetic_data=bool(job.calibration is not None and job.calibration.synthetic),
        tuning=result,
        model_bytes=model_bytes,
    )


def _on_host(evaluator: Evaluator, searched: Evaluation | None, candidate: ModelProto, measure: bool) -> Evaluation:
    """The chosen candidate as verification judges it, on the host: the search's own evaluation where the search
    ran there (nothing to run again), else a host run (the search's tier was the device's arithmetic)."""
    if searched is not None and searched.tier == "host":
        return searched
    return evaluator.evaluate(candidate, measure=measure)


def with_findings(reason: str, verification: Verification) -> str:
    """A reason with what a failed verification found appended."""
    if verification.passed:
        return reason
    return f"{reason}; verification found: {'; '.join(verification.problems)}"
