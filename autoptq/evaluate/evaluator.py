"""One judge of candidates against their float model, for one target and one held-out set.

The float model runs once (its outputs, accuracy and user metric are kept); each candidate then runs on the host (the
model as is in onnxruntime, sample by sample, so inputs whose shape varies between samples are never stacked) or on
an emulator tier of the target, and one `Evaluation` says what was found: fidelity per output, accuracy or the
user's metric, size, latency (measured side by side, or estimated, or neither and why), the device's verdict when
asked, and the problems as codes with texts. Policies (verify, the accuracy loop's trials, check) decide what passes
from it: none runs a model or compares outputs itself, and none reads the texts to decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from onnx import ModelProto

from autoptq.deadline import NO_DEADLINE, Deadline
from autoptq.deploy.intgraph import EmulationError
from autoptq.devices.coverage import analyse
from autoptq.devices.device_rules import check_device_rules
from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError
from autoptq.evaluate.emulators import TIERS, emulator_for
from autoptq.evaluate.emulators.base import EmulationResult, Tier
from autoptq.evaluate.emulators.host import STATEMENT as HOST_STATEMENT
from autoptq.evaluate.estimate import predict
from autoptq.evaluate.evaluation import (
    SLOWER_TOLERANCE,
    DeviceQuery,
    DeviceVerdict,
    Evaluation,
    Latency,
    Problem,
    not_smaller,
    slower,
)
from autoptq.evaluate.metrics import FidelityAccumulator, OutputFidelity, accuracy_of, predicted_class
from autoptq.evaluate.runner import ModelRunner, measurable_here, measure_latency, measure_together
from autoptq.io.user_metric import MetricScore, UserMetric
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph
from autoptq.model.intio import IOQuantization, read_integer_io

TIMING_BUDGET_S = 0.6
"""Seconds of interleaved runs a side-by-side latency measurement takes (at least 15 runs each)."""
FLOAT_KEPT_BYTES = 64 * 2**20
"""Float's outputs over the held-out set are kept across candidates up to this size (one float run serves every
candidate); above it they are computed again beside each candidate, sample by sample, so memory holds one sample's
outputs: a text recogniser's per-step class scores (ppocr-rec: 6625 classes per step) reach hundreds of MB over 100
lines."""


@dataclass
class _Run:
    """A candidate's outputs on one tier: streamed sample by sample on the host, a list from an emulator."""

    outputs: Iterable[list[np.ndarray]]
    emulation: EmulationResult | None = None
    runner: ModelRunner | None = None


class Evaluator:
    """Judges candidates against `float_model` on `data` for `profile` (see the module docstring).

    `min_sqnr_db` and `max_drop` set the floor and the allowed drop problems are judged against (None: not judged);
    `float_size_bytes` is the float file's size when known (default: its serialized size); `graph` is the analysis
    graph the device verdict and the latency estimate are made on (needed only when a device question is asked)."""

    def __init__(
        self,
        float_model: ModelProto,
        profile: HardwareProfile,
        data: Dataset,
        *,
        metric: UserMetric | None = None,
        min_sqnr_db: float | None = None,
        max_drop: float | None = None,
        float_size_bytes: int | None = None,
        graph: ModelGraph | None = None,
    ) -> None:
        self.float_model, self.profile, self.data = float_model, profile, data
        self.metric, self.min_sqnr_db, self.max_drop = metric, min_sqnr_db, max_drop
        self.float_size_bytes = float_size_bytes if float_size_bytes is not None else float_model.ByteSize()
        self.graph = graph
        self.output_names = [o.name for o in float_model.graph.output]

    @property
    def analysis_graph(self) -> ModelGraph:
        """The graph device verdicts and latency estimates are made on."""
        if self.graph is None:
            raise ValueError("a device question needs the Evaluator's analysis graph")
        return self.graph

    # --- float, run once on first use ---------------------------------------------------------------------------

    @cached_property
    def float_runner(self) -> ModelRunner:
        """The float model's session: its outputs once, and the side of every timing."""
        return ModelRunner(self.float_model)

    @cached_property
    def float_outputs(self) -> list[list[np.ndarray]]:
        """The float model's outputs on every sample, kept."""
        return [self.float_runner.run(sample) for sample in self.data.samples]

    @cached_property
    def _first_float_outputs(self) -> list[np.ndarray]:
        return self.float_runner.run(self.data.samples[0]) if self.data.samples else []

    @cached_property
    def keeps_float_outputs(self) -> bool:
        """Whether float's outputs over the set fit FLOAT_KEPT_BYTES (judged from the first sample's)."""
        return sum(np.asarray(o).nbytes for o in self._first_float_outputs) * len(self.data) <= FLOAT_KEPT_BYTES

    def float_stream(self, count: int) -> Iterable[list[np.ndarray]]:
        """Float's outputs on the first `count` samples: the kept ones, or computed again one sample at a time."""
        if self.keeps_float_outputs:
            return self.float_outputs[:count]
        return (self.float_runner.run(sample) for sample in self.data.samples[:count])

    @cached_property
    def float_classes(self) -> list[int]:
        """The class float predicts on each sample (its first output's arg max)."""
        return [predicted_class(outputs[0]) for outputs in self.float_stream(len(self.data))]

    @cached_property
    def float_accuracy(self) -> float | None:
        """Top-1 accuracy of float with labels on a [batch, classes] first output, else None."""
        return self._accuracy(self.float_classes)

    @cached_property
    def float_score(self) -> float | None:
        """The user's metric on float (a metric that fails on float is bad input: it raises AutoptqError). The
        metric scores the whole set at once, so float's outputs are kept for it."""
        if self.metric is None:
            return None
        return self.metric.score(self.output_names, self.float_outputs, self.data.labels)

    # --- judging ------------------------------------------------------------------------------------------------

    def evaluate(
        self,
        candidate: ModelProto,
        integer_io: Sequence[IOQuantization] | None = None,
        *,
        tier: Tier = "host",
        fall_back: bool = False,
        samples: int | None = None,
        measure: bool = True,
        timing_budget_s: float = TIMING_BUDGET_S,
        device: DeviceQuery | None = None,
        deadline: Deadline = NO_DEADLINE,
    ) -> Evaluation:
        """Judge `candidate` (see the module docstring).

        `integer_io`: its integer graph I/O (default: as recorded in the model). `tier`: "host" runs it as is, any
        other tier of the profile's emulator family under the device's arithmetic; with `fall_back`, a tier that
        cannot emulate the model hands over to the next one, saying why. `samples`: judge on the first few only (a
        quick look: the user's metric, which scores the whole set, is left out). `measure`: time it side by side
        with float where this machine stands in for the target. `device`: also audit it for the device and
        estimate its latency there. `deadline`: checked before each sample is run and before the timing, whose
        budget it caps by the time left; once passed, OutOfTime abandons the evaluation."""
        io = read_integer_io(candidate) if integer_io is None else list(integer_io)
        count = len(self.data) if samples is None else min(samples, len(self.data))
        names = [o.name for o in candidate.graph.output]
        order = match_outputs(names, self.output_names)
        verdict = self._device_verdict(candidate, device) if device is not None else None
        try:
            run = self._run(candidate, io, tier, fall_back, count, deadline)
            keep = self.metric is not None and samples is None  # the metric scores the whole set
            kept, fidelity, classes = self._compare(run.outputs, names, order, count, keep=keep, deadline=deadline)
        except Exception as exc:
            if tier != "host":
                raise  # an emulator that cannot represent the model, or bad input: not a verdict on the candidate
            # On the host, a candidate onnxruntime cannot load or run is broken, whatever the reason.
            broken = self._evaluation(None, count, candidate.ByteSize(), verdict, device)
            broken.problems = [Problem(code="not_runnable", text=f"does not run in onnxruntime: {exc}")]
            return broken
        evaluation = self._evaluation(run.emulation, count, candidate.ByteSize(), verdict, device)
        evaluation.fidelity = fidelity
        evaluation.accuracy_float, evaluation.accuracy_candidate = self._accuracies(classes, count)
        evaluation.accuracy_note = self.labels_unread
        failed = None
        if kept is not None:
            evaluation.metric, failed = self._metric([self.output_names[i] for i in order], kept)
        if measure and measurable_here(self.profile) and count:
            deadline.check()
            self._time(evaluation.latency, run.runner or ModelRunner(candidate, io), deadline.cap(timing_budget_s))
        self._close_float_session()
        evaluation.problems = [
            *self._quality_problems(evaluation),
            *([failed] if failed else []),
            *self._drop_and_device_problems(evaluation),
        ]
        return evaluation

    def evaluate_float(self, device: DeviceQuery | None = None, deadline: Deadline = NO_DEADLINE) -> Evaluation:
        """The float model judged as a candidate of its own (a search's baseline row): its own outputs, no device
        rules to audit (it is no quantized deployment), not timed against itself. `deadline`: as `evaluate`'s."""
        order = list(range(len(self.output_names)))
        stream = self.float_stream(len(self.data))
        _, fidelity, classes = self._compare(stream, self.output_names, order, len(self.data), False, deadline)
        verdict = None
        if device is not None:
            verdict = DeviceVerdict(rules=None, coverage=analyse(self.analysis_graph, self.profile))
        evaluation = self._evaluation(None, len(self.data), self.float_model.ByteSize(), verdict, device)
        evaluation.fidelity = fidelity
        evaluation.accuracy_float, evaluation.accuracy_candidate = self._accuracies(classes, len(self.data))
        evaluation.accuracy_note = self.labels_unread
        if self.metric is not None:
            score = self.float_score
            assert score is not None
            evaluation.metric = MetricScore(
                name=self.metric.name, float=round(score, 6), candidate=round(score, 6), drop=0.0
            )
        return evaluation

    def time_together(self, candidates: Sequence[ModelProto], budget_s: float) -> list[float]:
        """Latency ratios to float of several candidates timed in one interleaved round robin (comparable with
        each other, which pairwise measurements taken at different moments are not)."""
        runners = [ModelRunner(model, read_integer_io(model)) for model in candidates]
        ratios = measure_together(self.float_runner, runners, self.data.samples[0], budget_s=budget_s)
        self._close_float_session()
        return ratios

    def _close_float_session(self) -> None:
        """Close float's session until a later candidate needs it again (to time it, or to run float beside it):
        kept open, its weights and activation arena sit in memory while the next candidate is quantized. Measured
        on the corpus: peak RSS of `quantize` +13-27% on light-resnet50 and +15% on ddddocr-det with it kept."""
        vars(self).pop("float_runner", None)

    # --- the steps ----------------------------------------------------------------------------------------------

    def _run(
        self,
        candidate: ModelProto,
        io: list[IOQuantization],
        tier: Tier,
        fall_back: bool,
        count: int,
        deadline: Deadline,
    ) -> _Run:
        samples = self.data.samples[:count]
        if tier == "host":
            # Lazy: each sample runs when `_compare` takes it, which checks the deadline first.
            runner = ModelRunner(candidate, io)
            return _Run(outputs=(runner.run(sample) for sample in samples), runner=runner)
        emulation = self._emulate(candidate, tier, fall_back, samples, deadline)
        return _Run(outputs=emulation.outputs, emulation=emulation)

    def _emulate(
        self,
        candidate: ModelProto,
        tier: Tier,
        fall_back: bool,
        samples: list[dict[str, np.ndarray]],
        deadline: Deadline = NO_DEADLINE,
    ) -> EmulationResult:
        """Emulate on `tier`; with `fall_back`, when that tier cannot represent the model, the next tier, saying
        why."""
        family = self.profile.emulator
        emulate = emulator_for(family)
        try:
            return emulate(candidate, self.profile, samples, tier, deadline=deadline)
        except EmulationError as exc:
            tiers = TIERS[family]
            following = tiers[tiers.index(tier) + 1 :]
            if not fall_back or not following:
                raise
            emulated = emulate(candidate, self.profile, samples, following[0], deadline=deadline)
            note = f"The {tier} tier cannot emulate this model ({exc}), so the {following[0]} tier was used instead: "
            return emulated.model_copy(update={"fidelity_statement": note + emulated.fidelity_statement})

    def _compare(
        self,
        outputs: Iterable[list[np.ndarray]],
        names: list[str],
        order: list[int],
        count: int,
        keep: bool,
        deadline: Deadline = NO_DEADLINE,
    ) -> tuple[list[list[np.ndarray]] | None, list[OutputFidelity], list[int]]:
        """The one comparison loop: each sample's candidate outputs (`names`) against float's (`order`: the float
        output each is compared with), accumulated so memory holds one sample's candidate outputs (kept only for a
        user metric, which scores the whole set at once). Returns (kept outputs, fidelity per candidate output, the
        predicted class of each sample). `deadline` is checked before each sample (float's and the candidate's
        outputs on the host are computed as they are taken)."""
        accumulators = [FidelityAccumulator(name) for name in names]
        kept: list[list[np.ndarray]] | None = [] if keep else None
        classes = []
        for reference, candidate in deadline.each(zip(self.float_stream(count), outputs, strict=True)):
            for accumulator, index, value in zip(accumulators, order, candidate, strict=True):
                accumulator.add(reference[index], value)
            classes.append(predicted_class(candidate[0]))
            if kept is not None:
                kept.append(candidate)
        return kept, [accumulator.result() for accumulator in accumulators], classes

    def _accuracy(self, classes: list[int]) -> float | None:
        labels = self.data.labels
        if labels is None or not self._classifier_output or self.labels_unread is not None:
            return None  # no class labels (reference data for a user metric), not a classifier, or not its classes
        return accuracy_of(classes, labels[: len(classes)])

    @cached_property
    def _classifier_output(self) -> bool:
        """Whether labels could be class ids of the first output: one label per sample, a [batch, classes] output."""
        labels, first = self.data.labels, self._first_float_outputs
        return labels is not None and labels.ndim == 1 and bool(first) and np.asarray(first[0]).ndim == 2

    @cached_property
    def labels_unread(self) -> str | None:
        """Why the labels given are not read as class ids of the first output, so that no top-1 accuracy is
        computed on them; None where they are, or where there are none. An embedding model's validation labels
        (MiniLM's sentence topics, for a retrieval --metric) fit a [batch, 384] output's shape, and scored as
        classes gave float and every candidate 0.0 accuracy: a --max-drop budget every candidate met."""
        labels = self.data.labels
        if labels is None or not self._classifier_output:
            return None
        name, classes = self.output_names[0], int(np.asarray(self._first_float_outputs[0]).shape[1])
        if not _class_ids(labels, classes):
            return f"the labels are not class ids of output '{name}' (integers 0 to {classes - 1})"
        accuracy = accuracy_of(self.float_classes, labels[: len(self.float_classes)])
        if accuracy <= 1 / classes:
            return (
                f"float's own top-1 accuracy on the labels is {accuracy:.3f}, not above chance (1/{classes}): they do "
                f"not score output '{name}' as class ids"
            )
        return None

    def _accuracies(self, classes: list[int], count: int) -> tuple[float | None, float | None]:
        if count == len(self.data):
            return self.float_accuracy, self._accuracy(classes)
        return self._accuracy(self.float_classes[:count]), self._accuracy(classes)

    def _metric(self, names: list[str], outputs: list[list[np.ndarray]]) -> tuple[MetricScore | None, Problem | None]:
        """The user's metric on float and on the candidate; a failure on the candidate's outputs (e.g. NaN) is a
        problem of the candidate."""
        assert self.metric is not None
        reference = self.float_score
        assert reference is not None
        try:
            candidate = self.metric.score(names, outputs, self.data.labels)
        except AutoptqError as exc:
            return None, Problem(code="metric_failed", text=str(exc))
        score = MetricScore(
            name=self.metric.name,
            float=round(reference, 6),
            candidate=round(candidate, 6),
            drop=round(reference - candidate, 6),
        )
        return score, None

    def _device_verdict(self, candidate: ModelProto, query: DeviceQuery) -> DeviceVerdict:
        rules = check_device_rules(candidate, self.profile)
        in_float = set(query.kept_float)
        if query.reaudit:
            # Nodes left computing in float (kept by the recipe, or left so by the quantizer around them) run on
            # the host of an integer-only device: the partitioning is re-audited with them there.
            in_float |= {v.node for v in rules.violations if v.rule == "integer_compute"}
        return DeviceVerdict(rules=rules, coverage=analyse(self.analysis_graph, self.profile, float_nodes=in_float))

    def _evaluation(
        self,
        emulation: EmulationResult | None,
        count: int,
        size: int,
        verdict: DeviceVerdict | None,
        query: DeviceQuery | None,
    ) -> Evaluation:
        """What every evaluation states: where the outputs came from (the host without an emulation), the size, and
        the device's verdict with the latency estimate on its partitioning."""
        latency = Latency()
        if verdict is not None and query is not None:
            graph = self.analysis_graph
            _, estimate, baseline = predict(graph, verdict.coverage, self.profile, query.technique, query.recipe)
            latency = Latency(estimate=estimate, float_estimate=baseline)
        return Evaluation(
            tier=emulation.tier if emulation else "host",
            fidelity_statement=emulation.fidelity_statement if emulation else HOST_STATEMENT,
            samples=count,
            sqnr_floor_db=self.min_sqnr_db,
            size_bytes=size,
            float_size_bytes=self.float_size_bytes,
            latency=latency,
            device=verdict,
            findings=emulation.findings if emulation else [],
            agreement=emulation.agreement if emulation else [],
            arena_bytes=emulation.arena_bytes if emulation else None,
        )

    def _time(self, latency: Latency, runner: ModelRunner, budget_s: float) -> None:
        """The candidate timed side by side with float, on the first sample."""
        timing = measure_latency(self.float_runner, runner, self.data.samples[0], budget_s)
        latency.measured = timing
        latency.note = f"measured on this machine ({timing.machine}) as a stand-in for {self.profile.name}"

    def _quality_problems(self, evaluation: Evaluation) -> Iterator[Problem]:
        """Outputs not finite or below the floor, a file not smaller than float, a measured slowness."""
        floor = self.min_sqnr_db
        for output in evaluation.fidelity:
            if not output.finite:
                yield Problem(code="not_finite", text=f"output {output.name!r} has NaN or inf")
            elif floor is not None and output.sqnr_db < floor:
                text = f"output {output.name!r} SQNR {output.sqnr_db:.1f} dB is below the floor {floor} dB"
                yield Problem(code="below_sqnr_floor", text=text)
        if evaluation.size_bytes >= evaluation.float_size_bytes:
            yield not_smaller(evaluation.size_bytes, evaluation.float_size_bytes)
        measured = evaluation.latency.measured
        if measured is not None and measured.ratio > 1 + SLOWER_TOLERANCE:
            yield slower()

    def _drop_and_device_problems(self, evaluation: Evaluation) -> Iterator[Problem]:
        """The drop beyond `max_drop`, the device's broken rules, and a device file's disagreement."""
        if self.max_drop is not None:
            yield from _drop_problems(evaluation, self.max_drop)
        rules = evaluation.device.rules if evaluation.device else None
        for v in rules.violations if rules else []:
            yield Problem(code="device_rules", text=f"device rule {v.rule} at {v.node}: {v.detail}")
        for a in evaluation.agreement:
            if not a.within_tolerance:
                where = f"{a.op} {a.output!r} on its own inputs" if a.op else f"output {a.output!r}"
                text = (
                    f"{where}: the .tflite differs from the exact tier by {a.max_abs_lsb:g} LSB "
                    f"(tolerance {a.tolerance_lsb})"
                )
                yield Problem(code="tier_disagrees", text=text)


def _drop_problems(evaluation: Evaluation, max_drop: float) -> Iterator[Problem]:
    """The user's metric bounds the drop when given; top-1 accuracy's drop is judged when the metric's is within."""
    score = evaluation.metric
    if score is not None and score.drop > max_drop:
        yield Problem(
            code="accuracy_drop", text=f"metric {score.name} drop {score.drop:.4f} exceeds --max-drop {max_drop}"
        )
        return
    if evaluation.accuracy_float is None or evaluation.accuracy_candidate is None:
        return
    drop = round(evaluation.accuracy_float - evaluation.accuracy_candidate, 6)
    if drop > max_drop:
        yield Problem(code="accuracy_drop", text=f"accuracy drop {drop:.4f} exceeds --max-drop {max_drop}")


def match_outputs(names: Sequence[str], reference_names: Sequence[str]) -> list[int]:
    """For each candidate output, the index of the float output to compare it with: the same name, or the same
    position when the candidate renamed its outputs (same count)."""
    if all(name in reference_names for name in names):
        return [list(reference_names).index(name) for name in names]
    if len(names) == len(reference_names):
        return list(range(len(names)))
    raise AutoptqError(
        f"the quantized model's outputs {list(names)} do not match the reference model's {list(reference_names)}: "
        "is this the model it was made from?"
    )


def _class_ids(labels: np.ndarray, classes: int) -> bool:
    """Whether every label is a whole number from 0 to classes - 1."""
    if labels.size == 0 or not np.issubdtype(labels.dtype, np.number):
        return False
    values = labels.astype(np.float64)
    return bool(np.all(values == np.round(values)) and values.min() >= 0 and values.max() < classes)
