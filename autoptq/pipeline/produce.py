"""Produce the planned model: prepare it, run the quantizer, verify, and walk the plan's fallbacks until a candidate
is better than float, or keep float and say why."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto
from pydantic import BaseModel, ConfigDict, Field

from autoptq.decide.candidates import Candidate, candidates, measured_choices, same_recipe
from autoptq.decide.planner import Objective, Plan
from autoptq.decide.tuning import Budget, TuningResult, tune
from autoptq.deploy.device_file import DeviceFile
from autoptq.devices.canonical import float_model_for
from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError
from autoptq.evaluate.metrics import compare
from autoptq.evaluate.verify import (
    DEFAULT_MIN_SQNR_DB,
    SLOWER_TOLERANCE,
    ModelRunner,
    Verification,
    measurable_here,
    measure_together,
    verify,
)
from autoptq.io.user_metric import UserMetric
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph
from autoptq.model.intio import read_integer_io
from autoptq.model.prepare import PREPARATION_SAMPLES, PreparationStep, prepare
from autoptq.techniques import KEEP_FLOAT, by_name
from autoptq.techniques.common import AppliedRecipe, IOQuantization, QuantizationResult
from autoptq.techniques.qdq import ranges_file
from autoptq.techniques.recipe import Recipe, TechniqueName


class Attempt(BaseModel):
    """What happened to one candidate."""

    step: str
    technique: TechniqueName
    recipe: Recipe
    accepted: bool
    error: str | None = None
    verification: Verification | None = None
    applied: AppliedRecipe | None = None


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
    """Prepare, quantize and verify along the plan's candidates; return the first verified one (on a CPU measured
    here: the best measured of a handful, see autoptq.decide.candidates.measured_choices), or float."""
    float_model = float_model_for(graph, profile)
    # The float model is handed back unchanged, byte for byte, when nothing beats it.
    float_bytes = graph.original_bytes()
    found = candidates(plan, profile, graph, calibration)
    # On a CPU this machine stands in for, the default choice is the best measured of a handful, not the first
    # that passes; the plan's remaining fallbacks follow in case none of them passes. A plan that keeps float stays
    # float: on the digits CNN (the "too small" leaf) every recipe measured 1.04-1.05x (weight-only) or 1.3x
    # (static) float, so quantizing would hinge on timing noise against the 5% margin and flip run to run.
    measured = measure_latency and measurable_here(profile) and bool(found)
    measured_count = 0
    if measured:
        choices = measured_choices(found, plan, profile, graph, calibration)
        found = [*choices, *(c for c in found if not any(same_recipe(c, m) for m in choices))]
        measured_count = len(choices)
    # Preparation feeds the quantizers: a plan that keeps float neither needs it nor reports it.
    source = float_model
    preparation: list[PreparationStep] = []
    if found:
        prepared = prepare(float_model, validation.take(PREPARATION_SAMPLES))
        source, preparation = prepared.model, prepared.steps
    synthetic = bool(calibration is not None and calibration.synthetic)
    attempts: list[Attempt] = []
    passed: list[tuple[Attempt, bytes]] = []
    screen = _Screen(float_model, validation, min_sqnr_db, len(float_bytes))
    with tempfile.TemporaryDirectory(prefix="autoptq-ranges-") as ranges:
        for candidate in found:
            if passed and len(attempts) >= measured_count:
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
                    )
                )
                continue
            try:
                result = _quantize(candidate, source, calibration, profile, Path(ranges))
            except AutoptqError as exc:
                attempts.append(Attempt(**candidate.model_dump(), accepted=False, error=str(exc)))
                continue
            problem = screen.problem(result.model, result.applied.integer_io) if measured else None
            if problem is not None:
                attempts.append(
                    Attempt(**candidate.model_dump(), accepted=False, error=problem, applied=result.applied)
                )
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
                **candidate.model_dump(),
                accepted=verification.passed,
                verification=verification,
                applied=result.applied,
            )
            attempts.append(attempt)
            if verification.passed:
                passed.append((attempt, result.model.SerializeToString(deterministic=True)))
                if not measured:
                    break
    if measured and len(passed) > 1 and validation.samples:
        originals = [attempt for attempt, _ in passed]
        passed = _retime(float_model, passed, validation)
        for original, (retimed, _) in zip(originals, passed, strict=True):
            attempts[attempts.index(original)] = retimed
        # The joint timing is the better one: a candidate it finds slower than float is rejected after all.
        passed = [(a, data) for a, data in passed if a.accepted]
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


_NOT_CALIBRATION = ("slower than float", "not smaller than float", "does not run in onnxruntime")
TIE = 0.05
"""Measured latency ratios (timer noise on a shared machine) and sizes within this fraction of the best count as a
tie; among the fastest and smallest the most faithful output wins."""


def _retime(
    float_model: ModelProto, passed: list[tuple[Attempt, bytes]], validation: Dataset
) -> list[tuple[Attempt, bytes]]:
    """The verified candidates timed again all together, interleaved with float in one round robin: the pairwise
    ratios of verification were taken at different moments, and on a loaded machine that noise can exceed the
    differences being chosen on."""
    runners = [
        ModelRunner(onnx.load_from_string(data), read_integer_io(onnx.load_from_string(data))) for _, data in passed
    ]
    ratios = measure_together(
        ModelRunner(float_model), runners, validation.samples[0], budget_s=0.5 + 0.3 * len(passed)
    )
    retimed = []
    for (attempt, data), ratio in zip(passed, ratios, strict=True):
        latency = attempt.verification.latency if attempt.verification else None
        if latency is not None and attempt.verification is not None:
            joint = latency.model_copy(update={"ratio": ratio, "candidate_ms": round(latency.float_ms * ratio, 5)})
            update: dict[str, object] = {"latency": joint}
            if ratio > 1 + SLOWER_TOLERANCE:
                problem = f"slower than float on the host (measured ratio above {1 + SLOWER_TOLERANCE:.2f})"
                update |= {"passed": False, "problems": [*attempt.verification.problems, problem]}
            verification = attempt.verification.model_copy(update=update)
            attempt = attempt.model_copy(update={"verification": verification, "accepted": verification.passed})
        retimed.append((attempt, data))
    return retimed


def best_measured(passed: list[tuple[Attempt, bytes]], plan: Plan) -> tuple[Attempt, bytes]:
    """The objective's pick among verified, measured candidates: fastest (speed), smallest (size) or most faithful
    (accuracy: the user's metric, else the lowest output SQNR), the others breaking ties."""

    def ratio(a: Attempt) -> float:
        latency = a.verification.latency if a.verification else None
        return latency.ratio if latency is not None else 1.0

    def fidelity(a: Attempt) -> float:
        ver = a.verification
        if ver is None:
            return float("-inf")
        if ver.metric is not None:
            return ver.metric.candidate
        return min((f.sqnr_db for f in ver.fidelity), default=float("-inf"))

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
        "speed": lambda a: (not fast(a), not small(a), -fidelity(a), ratio(a), size(a)),
        "size": lambda a: (not small(a), not fast(a), -fidelity(a), size(a), ratio(a)),
        "accuracy": lambda a: (-fidelity(a), ratio(a), size(a)),
    }
    return min(passed, key=lambda pair: keys[str(prefer)](pair[0]))


def _measured_reason(best: Attempt, attempts: list[Attempt]) -> str:
    verified = [a for a in attempts if a.verification is not None and a.verification.passed]
    others = "; ".join(f"{a.step} ({a.technique}): {_why(a)}" for a in attempts if not a.accepted)
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


class _Screen:
    """Fidelity on a few validation samples against float outputs computed once for every candidate."""

    def __init__(self, float_model: ModelProto, validation: Dataset, min_sqnr_db: float, float_size: int) -> None:
        self.samples = validation.take(SCREEN_SAMPLES) if len(validation) > SCREEN_SAMPLES else None
        self.floor = min_sqnr_db
        self.float_model = float_model
        self.float_size = float_size
        self.reference: list[list[np.ndarray]] | None = None

    def problem(self, model: ModelProto, integer_io: Sequence[IOQuantization]) -> str | None:
        """Why the candidate cannot pass verification, seen on its size or the first samples; None to verify it
        fully. The wording of a size problem is verification's, so the fallbacks read it the same way."""
        size = model.ByteSize()
        if size >= self.float_size:
            return f"file is not smaller than float ({size} B vs {self.float_size} B): not verified further"
        if self.samples is None:
            return None
        if self.reference is None:
            runner = ModelRunner(self.float_model)
            self.reference = [runner.run(s) for s in self.samples.samples]
        try:
            candidate = ModelRunner(model, integer_io)
            outputs = [candidate.run(s) for s in self.samples.samples]
        except Exception:  # whatever onnxruntime raises: the full verification reports it in its own words
            return None
        worst = min(
            compare(str(i), [r[i] for r in self.reference], [o[i] for o in outputs]).sqnr_db
            for i in range(len(self.reference[0]))
        )
        if worst >= self.floor - SCREEN_MARGIN_DB:
            return None
        return (
            f"output SQNR {worst:.1f} dB on the first {len(self.samples)} validation samples, more than "
            f"{SCREEN_MARGIN_DB:g} dB below the floor {self.floor:g} dB: not verified further"
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
    """Whether another calibration method could turn a failure into a pass: only where a verified attempt of the
    same technique failed on fidelity alone, or failed to build (calibration moves ranges, not kernels: it cannot
    make a slower or larger model faster or smaller, nor run one onnxruntime could not)."""
    for attempt in attempts:
        ver = attempt.verification
        if attempt.technique != candidate.technique or (ver is not None and ver.passed):
            continue
        if ver is None:
            # A build failure, or a pre-screen rejection for fidelity (a size rejection is worded as verification's)
            error = attempt.error or ""
            if error and not error.startswith("skipped") and not any(p in error for p in _NOT_CALIBRATION):
                return True
            continue
        if not any(any(p in problem for p in _NOT_CALIBRATION) for problem in ver.problems):
            return True
    return False


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
    if not by_name(plan.technique).quantizes:
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
    """The accuracy-aware path: search the plan's candidates under `budget` (see autoptq.decide.tuning), then verify the
    chosen one as every produced model is (its problems become part of the reason; the search result stands)."""
    result = tune(graph, profile, plan, calibration, validation, budget, prefer, progress, metric=metric)
    trial = result.trials[result.chosen]
    float_bytes = graph.original_bytes()
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
        verification = verify(
            float_model_for(graph, profile),
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
