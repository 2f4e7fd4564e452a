"""Accuracy-aware planning: walk the plan's fallbacks under an accuracy or fidelity budget, measured on the target's
emulator, and always return the best candidate found.

Each trial is a recipe: the plan's own, better calibration, per-channel weights, the k most sensitive nodes kept in
float (greedy, fewest first), 16-bit activations, fp16, weight-only, or float itself. Every trial is measured on the
emulator (accuracy with labels, else SQNR and top-1 agreement against float), sized, costed with the latency
estimate of its device partitioning (excluded nodes move to the host on an integer-only device: the cut and the
transfers are re-audited), and judged against the device. At the end the Pareto front of (accuracy, latency, size)
is computed and the objective picks among the candidates within budget; if none is, the closest is returned and
marked.

The time budget is one `Deadline`, checked between trials and handed down to the loops inside them (per sample, per
node ranked, per calibration sample; the latency timing is capped by the time left). When it passes inside a trial,
the trial is abandoned and recorded with the error STOPPED_BY_TIME_BUDGET (no measurement: never chosen, never
within budget), and the walk stops. The first trial always completes, so a search always has an answer.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from onnx import ModelProto
from pydantic import BaseModel, ConfigDict, Field

from autoptq.deadline import NO_DEADLINE, Deadline, OutOfTime
from autoptq.decide.candidates import (
    Candidate,
    fallback_candidate,
    other_techniques_best,
    slow_paths,
    space_steps,
)
from autoptq.decide.hostcost import load_table, predicted_ratio
from autoptq.decide.job import Job
from autoptq.decide.planner import EXCLUDE_SENSITIVE, Objective, Plan
from autoptq.decide.sensitivity import NodeSensitivity, rank_nodes
from autoptq.devices.canonical import device_graph, float_model_for
from autoptq.devices.coverage import analyse
from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError
from autoptq.evaluate.emulators import TIERS
from autoptq.evaluate.estimate import predict
from autoptq.evaluate.evaluation import SLOWER_TOLERANCE, DeviceQuery, DeviceVerdict, Evaluation, Latency
from autoptq.evaluate.evaluator import Evaluator
from autoptq.evaluate.runner import measurable_here
from autoptq.model.graph import ModelGraph
from autoptq.model.prepare import PREPARATION_SAMPLES, prepare
from autoptq.techniques import KEEP_FLOAT, by_name
from autoptq.techniques.recipe import Recipe, TechniqueName

"""An integer-only device must run at least this share of MACs for a candidate to count as running on it (the
default tree's `integer_runs_most` threshold)."""
MAX_EXCLUDED = 8
"""Greedy exclusion stops after this many nodes: beyond it, a different technique is the better fallback."""
TIMING_BUDGET_S = 0.3
"""Seconds each trial is timed side by side with float where this machine stands in for the target."""
SENSITIVITY_SAMPLES = 16
"""Validation samples the sensitivity ranking measures each node's output SQNR on (on the host: a cheap measure);
the samples `_exclude_greedily` hands the ranking are as many."""
STOPPED_BY_TIME_BUDGET = "stopped by the time budget"
"""The error of a trial abandoned when the time budget passed inside it."""


class Budget(BaseModel):
    """What "accurate enough" means, and how long to look."""

    max_drop: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="largest acceptable drop of top-1 accuracy, or of the user's metric when given",
    )
    relative: bool = Field(default=False, description="max_drop is a fraction of the float accuracy")
    min_sqnr_db: float | None = Field(default=None, allow_inf_nan=False, description="lowest acceptable SQNR (dB)")
    min_top1_agreement: float | None = Field(
        default=None, ge=0, le=1, description="lowest acceptable share of top-1 predictions kept"
    )
    time_budget_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_trials: int = Field(default=40, ge=1)

    @property
    def has_target(self) -> bool:
        """Whether any accuracy or fidelity budget is set."""
        return any(v is not None for v in (self.max_drop, self.min_sqnr_db, self.min_top1_agreement))

    def allowed_drop(self, float_accuracy: float | None) -> float | None:
        """The absolute accuracy drop allowed (None without a drop budget or without labels)."""
        if self.max_drop is None or float_accuracy is None:
            return None
        return self.max_drop * float_accuracy if self.relative else self.max_drop


class Trial(BaseModel):
    """One candidate tried, with everything the choice looks at."""

    index: int
    step: str
    technique: TechniqueName
    recipe: Recipe | None
    excluded: list[str] = Field(default_factory=list)
    accuracy: float | None = None
    accuracy_drop: float | None = None
    min_sqnr_db: float | None = None
    top1_agreement: float | None = None
    size_bytes: int | None = None
    latency_ms: float | None = Field(default=None, description="estimate (cost model), not a measurement")
    latency_range_ms: list[float] | None = None
    latency_ratio: float | None = Field(
        default=None, description="latency / float latency: measured on this machine where it stands in, else estimated"
    )
    latency_ratio_source: str = ""
    device_mac_fraction: float | None = None
    device_verdict: str = ""
    runnable: bool = True
    meets_budget: bool = False
    error: str | None = None
    seconds: float = 0.0

    @property
    def abandoned(self) -> bool:
        """Stopped by the time budget part way: nothing was measured."""
        return self.error == STOPPED_BY_TIME_BUDGET


class TuningResult(BaseModel):
    """The trials, the sensitivity ranking, and the chosen candidate."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    target: str
    budget: Budget
    tier: str
    metric: str | None = Field(default=None, description="the user metric the accuracy columns hold (else top-1)")
    float_accuracy: float | None
    trials: list[Trial]
    sensitivity: list[NodeSensitivity]
    pareto: list[int]
    chosen: int
    within_budget: bool
    message: str
    stopped_by: str = Field(description="'walk complete', 'time budget' or 'trial budget'")
    model_bytes: bytes = Field(default=b"", exclude=True, repr=False)
    evaluation: Evaluation | None = Field(default=None, exclude=True, repr=False, description="the chosen trial's")


class Search:
    """The state of one accuracy-aware search (kept in one place so the steps stay small functions). A benchmark
    subclasses it to walk differently (`stops_early`, `exclude`); `tune` takes the class."""

    def __init__(
        self,
        job: Job,
        plan: Plan,
        budget: Budget,
        progress: Callable[[str], None],
        prefer: Objective,
        evaluator: Evaluator,
        deadline: Deadline | None = None,
    ) -> None:
        # The time budget runs from here (default: `budget.time_budget_s` on the wall clock; a test passes its own).
        self.deadline = deadline if deadline is not None else Deadline(budget.time_budget_s)
        # Candidates are made on the graph the target's converter sees, as the evaluator judges them.
        self.job = replace(job, graph=evaluator.analysis_graph)
        self.graph, self.profile, self.plan, self.prefer = self.job.graph, job.profile, plan, prefer
        self.calibration, self.validation, self.budget = job.calibration, job.validation, budget
        self.progress = progress
        self.tier = _search_tier(self.profile)
        self.evaluator = evaluator
        self.float_model = evaluator.float_model
        self.prepared = prepare(self.float_model, self.validation.take(PREPARATION_SAMPLES)).model
        self.host_table = load_table() if measurable_here(self.profile) else None
        self.float_accuracy = self._score(evaluator.evaluate_float())
        self.trials: list[Trial] = []
        self.models: dict[int, bytes] = {}
        self.evaluations: dict[int, Evaluation] = {}
        self.sensitivity: list[NodeSensitivity] = []
        self.stopped_by = "walk complete"
        self.in_flight: tuple[Trial, float] | None = None  # the trial being run and when it started
        # Last: nothing after it can fail before the caller's try/finally removes it.
        self.cache_dir = Path(tempfile.mkdtemp(prefix="autoptq-tune-"))

    # --- limits -------------------------------------------------------------------------------------------------

    def out_of_budget(self) -> bool:
        if len(self.trials) >= self.budget.max_trials:
            self.stopped_by = "trial budget"
            return True
        if self.deadline.passed():
            self.stopped_by = "time budget"
            return True
        return False

    def best_within(self) -> Trial | None:
        """The best trial within budget so far for the objective (None if there is none)."""
        within = [t for t in self.trials if t.meets_budget]
        if not within:
            return None
        index, _ = choose(within, choice_front(within), self.prefer)
        return next(t for t in within if t.index == index)

    def worth_trying(self, name: TechniqueName, recipe: Recipe | None) -> bool:
        """Whether a candidate could beat the best within budget on the objective, judged from the cost model's
        predictions (cheap: nothing is quantized). Before anything meets the budget every candidate is worth it."""
        best = self.best_within()
        if best is None or not self.stops_early():
            return True
        quantizes = by_name(name).quantizes
        if not quantizes and self.profile.integer_only:
            return False  # float is no deployment on an integer-only device
        if self.prefer == "accuracy":
            return quantizes  # a more faithful quantized candidate may exist; float is the last resort
        if self.prefer == "speed" and self._unvouched_slow_path(name, recipe, best):
            return False
        size, estimate, baseline = predict(self.graph, analyse(self.graph, self.profile), self.profile, name,
                                           recipe or Recipe())  # fmt: skip
        if self.prefer == "size":
            return best.size_bytes is None or size.size_bytes < best.size_bytes
        if not quantizes:
            ratio = 1.0
        elif self.host_table is not None and by_name(name).host_timed:
            # Kernel ratios timed on this machine (`autoptq calibrate-host`) beat the roofline's assumed constants.
            ratio = predicted_ratio(self.graph, self.profile, name, recipe or Recipe(), self.host_table)
        elif baseline is not None and baseline.estimate_ms:
            ratio = estimate.estimate_ms / baseline.estimate_ms
        else:
            return best.latency_ms is None or estimate.estimate_ms < best.latency_ms
        return best.latency_ratio is None or ratio < best.latency_ratio / (1 + SLOWER_TOLERANCE)

    def _unvouched_slow_path(self, name: TechniqueName, recipe: Recipe | None, best: Trial) -> bool:
        """Whether the candidate takes more of the slow paths the device's rules mark (dynamic Conv, int8
        activations, Q/DQ around float-only ops) than the best within budget and than any measured trial of its
        technique. The cost model does not price those paths (on ddddocr-ocr and ppocr-cls, weight-only recipes with
        Conv were predicted faster than the pick and measured 2.5-7x float); a trial of the technique measured on
        as many is the evidence that overrides the rule (full int8 on every op type, 0.65x on a convnet)."""
        count = slow_paths(name, recipe, self.profile, self.graph)
        vouched = [
            slow_paths(t.technique, t.recipe, self.profile, self.graph)
            for t in self.trials
            if t.technique == name and t.latency_ratio is not None
        ]
        return count > max([slow_paths(best.technique, best.recipe, self.profile, self.graph), *vouched])

    # --- one trial ----------------------------------------------------------------------------------------------

    def run(self, step: str, technique: TechniqueName, recipe: Recipe | None) -> Trial:
        start = time.perf_counter()
        excluded = list(recipe.nodes_to_exclude) if recipe else []
        trial = Trial(index=len(self.trials), step=step, technique=technique, recipe=recipe, excluded=excluded)
        # The first trial runs to its end whatever the deadline, so that the search always has an answer.
        deadline = self.deadline if self.trials else NO_DEADLINE
        self.in_flight = trial, start
        try:
            model = self._build(technique, recipe, deadline)
        except AutoptqError as exc:
            trial.error = str(exc)
        else:
            self._measure(trial, model, deadline)
            self.models[trial.index] = model.SerializeToString(deterministic=True)
        self.in_flight = None
        self._record(trial, start)
        return trial

    def _record(self, trial: Trial, start: float) -> None:
        trial.seconds = round(time.perf_counter() - start, 3)
        self.trials.append(trial)
        self.progress(_progress_line(trial, len(self.trials), self.budget))

    def _build(self, name: TechniqueName, recipe: Recipe | None, deadline: Deadline) -> ModelProto:
        chosen = by_name(name)
        if not chosen.quantizes or recipe is None:
            return self.float_model
        cache = None
        if chosen.calibrated:
            cache = self.cache_dir / f"{name}-{recipe.calibration_method}-{recipe.calibration_percentile}.json"
        return chosen.quantize(
            self.prepared, recipe, self.calibration, self.profile, calibration_cache=cache, deadline=deadline
        ).model

    def _measure(self, trial: Trial, model: ModelProto, deadline: Deadline) -> None:
        """The search's policy over the evaluator: a trial on the target's emulator tier, scored, sized, judged
        against the device and costed on the partitioning it gets there."""
        quantized = by_name(trial.technique).quantizes
        device = DeviceQuery(technique=trial.technique, recipe=trial.recipe or Recipe(), kept_float=trial.excluded)
        evaluation = (
            self.evaluator.evaluate(
                model, tier=self.tier, timing_budget_s=TIMING_BUDGET_S, device=device, deadline=deadline
            )
            if quantized
            else self.evaluator.evaluate_float(device, deadline)
        )
        self.evaluations[trial.index] = evaluation
        broken = evaluation.problem("not_runnable")
        if broken is not None:
            trial.error, trial.runnable = broken.text, False
            return
        trial.min_sqnr_db = evaluation.lowest_sqnr_db
        trial.top1_agreement = evaluation.fidelity[0].top1_agreement if evaluation.fidelity else None
        failed = evaluation.problem("metric_failed")
        if failed is not None:  # the user's metric failed on this candidate's outputs (e.g. NaN): no score
            trial.accuracy, trial.error = None, failed.text
        else:
            trial.accuracy = self._score(evaluation)
        if trial.accuracy is not None and self.float_accuracy is not None:
            trial.accuracy_drop = round(self.float_accuracy - trial.accuracy, 6)
        trial.size_bytes = evaluation.size_bytes
        assert evaluation.device is not None and evaluation.latency.estimate is not None  # a device was asked
        self._judge_device(trial, evaluation.device)
        estimate = evaluation.latency.estimate
        trial.latency_ms = round(estimate.estimate_ms, 5)
        trial.latency_range_ms = [round(estimate.low_ms, 5), round(estimate.high_ms, 5)]
        self._latency_ratio(trial, evaluation.latency)
        trial.meets_budget = trial.runnable and self._within_budget(trial)

    def _latency_ratio(self, trial: Trial, latency: Latency) -> None:
        """Latency relative to float: measured side by side where this machine stands in for the target (the
        estimate cannot see, e.g., that tiny int8 kernels lose to float), else from the cost model."""
        float_ms = latency.float_estimate.estimate_ms if latency.float_estimate else None
        if not by_name(trial.technique).quantizes:
            trial.latency_ratio, trial.latency_ratio_source = 1.0, "float itself"
        elif latency.measured is not None:
            trial.latency_ratio, trial.latency_ratio_source = latency.measured.ratio, "measured"
        elif float_ms and latency.estimate is not None:
            ratio = round(latency.estimate.estimate_ms / float_ms, 4)
            trial.latency_ratio, trial.latency_ratio_source = ratio, "estimate"

    def _score(self, evaluation: Evaluation) -> float | None:
        """The user's metric when given, else top-1 accuracy with labels on a classifier, else None."""
        if self.evaluator.metric is not None:
            return evaluation.metric.candidate if evaluation.metric else None
        return None if evaluation.accuracy_candidate is None else round(evaluation.accuracy_candidate, 6)

    def _judge_device(self, trial: Trial, verdict: DeviceVerdict) -> None:
        coverage = verdict.coverage
        trial.device_mac_fraction = round(coverage.device_mac_fraction, 4)
        if not by_name(trial.technique).quantizes and self.profile.integer_only:
            # Float is no deployment for an integer-only device: it would run entirely on the host, if there is one.
            trial.runnable = False
            trial.device_verdict = "float cannot run on this integer-only device" + (
                f" (it would run entirely on the host {self.profile.host})" if self.profile.host else ""
            )
            trial.device_mac_fraction = 0.0
            return
        trial.runnable = coverage.runnable
        on_host = sum(1 for n in coverage.nodes if not n.on_device)
        floor = self.plan.device_share_floor
        if self.profile.integer_only and floor is not None and coverage.device_mac_fraction < floor:
            # Mostly-on-the-host is the float model by another name: the tree's own rule (integer_runs_most in the
            # shipped tree) says quantizing for the device cannot help then.
            trial.runnable = False
            trial.device_verdict = (
                f"not a deployment on the device: only {100 * coverage.device_mac_fraction:.1f}% of MACs run on it"
            )
        elif not coverage.runnable:
            trial.device_verdict = "cannot run: nodes the device lacks have no host to fall back to"
        elif on_host == 0:
            trial.device_verdict = "all on the device"
        else:
            cut = f"; first cut at {coverage.first_cut.node}" if coverage.first_cut else ""
            nodes = "1 node" if on_host == 1 else f"{on_host} nodes"
            trial.device_verdict = (
                f"{nodes} on the host{cut}; {100 * coverage.device_mac_fraction:.1f}% of MACs on the device, "
                f"{coverage.transitions} device<->host transitions"
            )
        broken = [v for v in verdict.rules.violations if v.rule != "integer_compute"] if verdict.rules else []
        if broken and trial.runnable:
            # Any other broken rule is a model the device cannot run at all (not a matter of placement).
            trial.runnable = False
            trial.device_verdict = (
                f"breaks {len(broken)} device rule(s), e.g. {broken[0].rule} at {broken[0].node}: {broken[0].detail}"
            )

    def _within_budget(self, trial: Trial) -> bool:
        budget = self.budget
        allowed = budget.allowed_drop(self.float_accuracy)
        if allowed is not None and (trial.accuracy_drop is None or trial.accuracy_drop > allowed + 1e-12):
            return False
        if budget.min_sqnr_db is not None and (trial.min_sqnr_db is None or trial.min_sqnr_db < budget.min_sqnr_db):
            return False
        agreement = budget.min_top1_agreement
        return agreement is None or (trial.top1_agreement is not None and trial.top1_agreement >= agreement)

    # --- the walk -----------------------------------------------------------------------------------------------

    def search(self) -> None:
        """The walk, stopped where the time budget passes: between trials (`out_of_budget`), or inside one, where
        the inner loop that finds it passed raises OutOfTime, caught here alone. The trial in flight is recorded as
        abandoned (STOPPED_BY_TIME_BUDGET) and the search returns what it has."""
        try:
            self.walk()
        except OutOfTime:
            self.stopped_by = "time budget"
            if self.in_flight is not None:
                trial, start = self.in_flight
                trial.error = STOPPED_BY_TIME_BUDGET
                self._record(trial, start)
        finally:
            self.in_flight = None

    def walk(self) -> None:
        """The plan; the best candidate of each other technique the plan allows; the recipe spaces of the
        techniques tried, the closest to the budget first (only those within it once one is); then the plan's
        fallbacks in order (better calibration, exclusions by sensitivity, the techniques not tried yet, float).
        Once a candidate meets the budget, only candidates the cost model says could beat it are tried (so the walk
        returns the best, not the first); limits stop it at any point."""
        if not by_name(self.plan.technique).quantizes:
            self.run("plan (keep float)", self.plan.technique, None)
            return
        self.run("plan", self.plan.technique, self.plan.recipe)
        # Each technique's first candidate before any technique's recipe space: a space moves fidelity by a few dB,
        # while another technique can be tens of dB apart (on ddddocr-ocr the full-int8 space reached 24.8 dB at
        # best, weight-only's first candidate 40.5 dB), so the spaces come after and in order of closeness.
        leaders = other_techniques_best(self.job, self.plan)
        self._try_each(leaders)
        own = Candidate(step="plan", technique=self.plan.technique, recipe=self.plan.recipe)
        for start in self._spaces_to_walk([own, *leaders]):
            self._try_each(space_steps(self.job, start.technique, start.recipe))
        steps = [*self.plan.fallbacks, *([] if KEEP_FLOAT in self.plan.fallbacks else [KEEP_FLOAT])]
        for name in steps:
            if self.out_of_budget():
                return
            if name == EXCLUDE_SENSITIVE:
                # Exclusions only add float work to a recipe already tried: once within budget, none can be faster.
                if self.best_within() is None or not self.stops_early():
                    self._exclude_sensitive()
            elif name == KEEP_FLOAT:
                if self.worth_trying(KEEP_FLOAT, None):
                    self.run("float (none)", KEEP_FLOAT, None)
            else:
                candidate = self._fallback(name)
                if candidate is not None:
                    self._try_each([candidate])

    def _try_each(self, found: list[Candidate]) -> None:
        """Each candidate not tried yet that could beat the best within budget (all of them until something meets
        it), until a limit stops the walk."""
        for candidate in found:
            if self.out_of_budget():
                return
            if not self._tried(candidate) and self.worth_trying(candidate.technique, candidate.recipe):
                self.run(candidate.step, candidate.technique, candidate.recipe)

    def _spaces_to_walk(self, starts: list[Candidate]) -> list[Candidate]:
        """The techniques whose recipe spaces the walk descends into, by the candidate each space starts from: the
        closest to the budget first (`_standing`; ties keep the given order, the plan's first). Once a technique
        meets the budget, only the techniques that do: the others' first candidates missed it, and a recipe space
        moves fidelity by a few dB, not the tens that can separate two techniques."""
        ranked = sorted(starts, key=lambda start: self._standing(start.technique), reverse=True)
        if self.best_within() is None or not self.stops_early():
            return ranked
        return [start for start in ranked if self._standing(start.technique)[0]]

    def _standing(self, technique: TechniqueName) -> tuple[bool, tuple[float, float]]:
        """How close a technique came to the budget: whether a trial of it meets it, then the quality of its best
        measured trial (accuracy, then SQNR). Fidelity only: the order adds no dependence on timings (the pruning
        reads measured latency only where this machine stands in for the target)."""
        measured = [t for t in self.trials if t.technique == technique and t.error is None and t.runnable]
        if not measured:
            return False, (-1.0, -1e9)  # not tried (pruned) or failed: its space last
        return any(t.meets_budget for t in measured), max(_quality(t) for t in measured)

    def _fallback(self, name: str) -> Candidate | None:
        return fallback_candidate(name, self.job, self.plan)

    def _tried(self, candidate: Candidate) -> bool:
        return any(t.technique == candidate.technique and t.recipe == candidate.recipe for t in self.trials)

    def _best_static_recipe(self) -> Recipe | None:
        static = [
            t
            for t in self.trials
            if t.technique == self.plan.technique and t.recipe is not None and t.error is None and not t.excluded
        ]
        if not static:
            return None
        return max(static, key=_quality).recipe

    def stops_early(self) -> bool:
        """Whether the walk stops trying what cannot beat the best within budget (a benchmark's exhaustive walk
        overrides this to try everything)."""
        return True

    def _exclude_sensitive(self) -> None:
        """Rank the nodes on the best calibration found so far, then keep the most sensitive in float."""
        base = self._best_static_recipe()
        if base is None or not by_name(self.plan.technique).calibrated or self.calibration is None:
            return
        if self.profile.integer_only and self.profile.host is None:
            self.progress("  exclude_sensitive: skipped, a node kept in float has no host to run on")
            return
        self.sensitivity = rank_nodes(
            self.prepared,
            base,
            self.plan.technique,
            self.calibration,
            self.validation.take(16),
            self._output_sqnr,
            self.cache_dir / f"sensitivity-{base.calibration_method}.json",
            self.deadline,
        )
        self.exclude(base)

    def exclude(self, base: Recipe) -> None:
        """Keep the ranked nodes in float, one more at a time, until a set meets the budget; then prune it."""
        for count in range(1, min(MAX_EXCLUDED, len(self.sensitivity)) + 1):
            if (self.best_within() is not None and self.stops_early()) or self.out_of_budget():
                return
            excluded = [s.node for s in self.sensitivity[:count]]
            recipe = base.model_copy(update={"nodes_to_exclude": [*base.nodes_to_exclude, *excluded]})
            trial = self.run(f"exclude {count} most sensitive", self.plan.technique, recipe)
            if trial.meets_budget and count > 1 and self.stops_early():
                self._prune(base, excluded)
                return
            if not trial.runnable and self.profile.integer_only and self.stops_early():
                return  # more exclusions only move more of the model off the device

    def _prune(self, base: Recipe, excluded: list[str]) -> None:
        """Backward pass over a set that meets the budget: put each node back (least sensitive first) and keep it
        quantized if the budget still holds. Ranking order is only a guide: a later node can make an earlier one
        unnecessary, and every node kept quantized is latency and size saved."""
        kept = list(excluded)
        for node in reversed(excluded[:-1]):
            if self.out_of_budget():
                return
            trial_set = [n for n in kept if n != node]
            recipe = base.model_copy(update={"nodes_to_exclude": [*base.nodes_to_exclude, *trial_set]})
            trial = self.run(f"exclude {len(trial_set)}: without {node}", self.plan.technique, recipe)
            if trial.meets_budget:
                kept = trial_set

    def _output_sqnr(self, model: ModelProto) -> float:
        """Output SQNR of a candidate on a few samples, on the host (the cheap measure of sensitivity)."""
        evaluation = self.evaluator.evaluate(
            model, [], samples=SENSITIVITY_SAMPLES, measure=False, deadline=self.deadline
        )
        broken = evaluation.problem("not_runnable")
        if broken is not None or evaluation.lowest_sqnr_db is None:
            raise AutoptqError(
                f"ranking sensitivity: a node quantized alone {broken.text if broken else 'has no output'}"
            )
        return evaluation.lowest_sqnr_db


def search_evaluator(job: Job, min_sqnr_db: float | None = None, float_size_bytes: int | None = None) -> Evaluator:
    """The evaluator a search judges its trials with: the float model as the target compiles it, on the analysis
    graph as the target's converter sees it. `min_sqnr_db`: the floor its problems are judged against (None: the
    search judges its budget itself)."""
    return Evaluator(
        float_model_for(job.graph, job.profile),
        job.profile,
        job.validation,
        metric=job.metric,
        min_sqnr_db=min_sqnr_db,
        float_size_bytes=float_size_bytes,
        graph=device_graph(job.graph, job.profile),
    )


def _is_classifier(graph: ModelGraph) -> bool:
    shape = graph.outputs[0].shape if graph.outputs else None
    return shape is not None and len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 1


def _search_tier(profile: HardwareProfile) -> str:
    # The integer family searches on its fast tier (onnxruntime integer kernels, ~1 LSB from the device); the chosen
    # candidate is re-checked on the exact tier by `autoptq check`. Where autoptq writes the device's own file
    # (format: tflite), the search holds the file's numbers, which are the exact tier's bit for bit: a metric with a
    # threshold turns on that LSB (ddddocr-det's box F1 was 1.0 on the fast tier, 0.984 on the exact tier and LiteRT).
    if profile.emulator == "integer":
        return "exact" if profile.format == "tflite" else "fast"
    return TIERS[profile.emulator][0]


def _quality(trial: Trial) -> tuple[float, float]:
    """Higher is better: accuracy when known, then SQNR."""
    return (
        trial.accuracy if trial.accuracy is not None else -1.0,
        trial.min_sqnr_db if trial.min_sqnr_db is not None else -1e9,
    )


def _latency(trial: Trial) -> float | None:
    """What the choice compares: the ratio to float (measured or estimated), else the estimate in ms."""
    return trial.latency_ratio if trial.latency_ratio is not None else trial.latency_ms


def _progress_line(trial: Trial, count: int, budget: Budget) -> str:
    if trial.abandoned:
        return f"  trial {count}: {trial.step} ({trial.technique}): {trial.error} after {trial.seconds:g} s"
    if trial.error:
        return f"  trial {count}: {trial.step} ({trial.technique}): failed: {trial.error}"
    metric = (
        f"accuracy {trial.accuracy:.4f}"
        if trial.accuracy is not None
        else f"SQNR {trial.min_sqnr_db:.1f} dB"
        if trial.min_sqnr_db is not None
        else "no metric"
    )
    verdict = "within budget" if trial.meets_budget else "misses budget" if budget.has_target else ""
    return f"  trial {count}: {trial.step} ({trial.technique}): {metric}, {trial.size_bytes} B; {verdict}".rstrip("; ")


def pareto_front(trials: list[Trial]) -> list[int]:
    """Indices of the trials no other trial beats on accuracy/fidelity, latency estimate and size at once."""
    usable = [t for t in trials if t.error is None and t.runnable and _latency(t) is not None and t.size_bytes]

    def dominates(a: Trial, b: Trial) -> bool:
        la, lb = _latency(a), _latency(b)
        better_or_equal = _quality(a) >= _quality(b) and la <= lb and a.size_bytes <= b.size_bytes
        strictly = _quality(a) > _quality(b) or la < lb or a.size_bytes < b.size_bytes
        return better_or_equal and strictly

    return [t.index for t in usable if not any(dominates(o, t) for o in usable if o is not t)]


def choice_front(trials: list[Trial]) -> list[int]:
    """The Pareto front the choice is made on: of the trials within budget when there are any (one that misses the
    budget must not knock out one that meets it), else of all."""
    within = [t for t in trials if t.meets_budget]
    return pareto_front(within or trials)


def choose(trials: list[Trial], front: list[int], prefer: Objective) -> tuple[int, bool]:
    """The trial the objective picks among those within budget on the front, or the closest if none is.

    `prefer=accuracy` picks the most accurate quantized candidate within budget (float only if none is), since the
    float model is always the most accurate and choosing it would make the objective mean "never quantize"."""
    by_index = {t.index: t for t in trials}
    within = [by_index[i] for i in front if by_index[i].meets_budget]
    if prefer == "accuracy" and any(by_name(t.technique).quantizes for t in within):
        within = [t for t in within if by_name(t.technique).quantizes]
    if within:
        key = {
            "speed": lambda t: (_latency(t), t.size_bytes, tuple(-q for q in _quality(t))),
            "size": lambda t: (t.size_bytes, _latency(t), tuple(-q for q in _quality(t))),
            "accuracy": lambda t: (tuple(-q for q in _quality(t)), _latency(t), t.size_bytes),
        }[prefer]
        return min(within, key=key).index, True
    candidates = [t for t in trials if t.error is None and t.runnable] or [t for t in trials if t.error is None]
    if not candidates:
        raise AutoptqError("every candidate failed to build; see the trials")
    return max(candidates, key=_quality).index, False


def tune(
    job: Job,
    plan: Plan,
    budget: Budget,
    prefer: Objective = "speed",
    progress: Callable[[str], None] = lambda _line: None,
    evaluator: Evaluator | None = None,
    search_class: type[Search] = Search,
    deadline: Deadline | None = None,
) -> TuningResult:
    """Search the plan's candidates under `budget` on the target's emulator; return the best found (see module).

    `evaluator` judges the trials (default: `search_evaluator(job)`); a caller passes its own to judge the chosen
    candidate further against the same float run. `search_class`: how to walk (a benchmark passes its own).
    `deadline`: the time budget's end (default: `budget.time_budget_s` from now, on the wall clock).
    """
    metric = evaluator.metric if evaluator is not None else job.metric
    labels = job.validation.labels
    if budget.max_drop is not None and metric is None and labels is not None and labels.ndim != 1:
        raise AutoptqError(
            f"'labels' of shape {list(labels.shape)} are per-sample reference data that only a --metric reads: "
            "--max-drop needs that --metric (or class indices, one per sample)"
        )
    if budget.max_drop is not None and metric is None and (labels is None or not _is_classifier(job.graph)):
        raise AutoptqError(
            "--max-drop needs a --metric, or a classifier ([batch, classes] first output) with labelled validation "
            "data (a 'labels' array in --val or --data); otherwise budget fidelity with --min-sqnr or "
            "--min-top1-agreement"
        )
    evaluator = evaluator or search_evaluator(job)
    if budget.max_drop is not None and metric is None and evaluator.labels_unread is not None:
        raise AutoptqError(
            f"--max-drop needs top-1 accuracy, and {evaluator.labels_unread}: give a --metric that scores them, or "
            "budget fidelity with --min-sqnr or --min-top1-agreement"
        )
    search = search_class(job, plan, budget, progress, prefer, evaluator, deadline)
    try:
        search.search()
    finally:
        shutil.rmtree(search.cache_dir, ignore_errors=True)
    front = choice_front(search.trials)
    chosen, within = choose(search.trials, front, prefer)
    trial = search.trials[chosen]
    if within:
        message = f"trial {chosen + 1} ({trial.step}, {trial.technique}) meets the budget and is the {prefer} choice"
    else:
        message = (
            f"NO candidate meets the budget; returning the closest: trial {chosen + 1} ({trial.step}, "
            f"{trial.technique}), clearly not within budget"
        )
    return TuningResult(
        target=job.profile.name,
        budget=budget,
        tier=search.tier,
        metric=metric.name if metric else None,
        float_accuracy=search.float_accuracy,
        trials=search.trials,
        sensitivity=search.sensitivity,
        pareto=front,
        chosen=chosen,
        within_budget=within,
        message=message,
        stopped_by=search.stopped_by,
        model_bytes=search.models.get(chosen, b""),
        evaluation=search.evaluations.get(chosen),
    )
