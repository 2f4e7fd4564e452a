"""Verification after every quantizer run: "never worse than float, silently".

The candidate must load in onnxruntime, produce finite outputs close to the float model's on held-out samples
(SQNR above a floor), be smaller than the float file, and, where this machine can stand in for the target, not be
slower than float measured side by side in the same process.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
from onnx import ModelProto
from pydantic import BaseModel, ConfigDict, Field

from autoptq.deploy import kernels
from autoptq.devices.profiles import HardwareProfile
from autoptq.evaluate.metrics import FidelityAccumulator, OutputFidelity, accuracy_of, predicted_class
from autoptq.io.user_metric import MetricScore, UserMetric
from autoptq.model.activations import session
from autoptq.model.calibration import Dataset
from autoptq.model.intio import IOQuantization

DEFAULT_MIN_SQNR_DB = 10.0
"""Below this the output is dominated by quantization noise: treated as numerically broken."""
SLOWER_TOLERANCE = 0.05
"""Measured latency ratios up to 1 + this count as 'not slower' (timer noise on a shared machine)."""


class LatencyMeasurement(BaseModel):
    """Median latency of float and candidate, measured interleaved in one process on this machine."""

    float_ms: float
    candidate_ms: float
    ratio: float
    runs: int
    machine: str


class Verification(BaseModel):
    """The verdict on one quantized candidate."""

    passed: bool
    problems: list[str] = Field(default_factory=list)
    samples: int
    min_sqnr_db: float
    fidelity: list[OutputFidelity] = Field(default_factory=list)
    size_bytes: int
    float_size_bytes: int
    size_ratio: float
    latency: LatencyMeasurement | None = Field(default=None, description="None where not measurable here")
    latency_note: str = ""
    accuracy_float: float | None = None
    accuracy_candidate: float | None = None
    metric: MetricScore | None = Field(default=None, description="the user's --metric on float and on the candidate")


def quantize_input(values: np.ndarray, io: IOQuantization) -> np.ndarray:
    """Real → integer as TFLite does at a device's input: float32 division, round half away from zero, clamp."""
    return kernels.quantize(
        values, scale=io.scale, zero_point=io.zero_point, dtype=np.dtype(io.dtype), rounding="half_away"
    )


def dequantize_output(values: np.ndarray, io: IOQuantization) -> np.ndarray:
    """Integer → real: scale · (q − zero_point)."""
    return ((values.astype(np.float64) - io.zero_point) * io.scale).astype(np.float32)


class ModelRunner:
    """Runs a model on float feeds and returns float outputs, converting integer graph I/O on the way."""

    def __init__(self, model: ModelProto, integer_io: Sequence[IOQuantization] = (), threads: int = 1) -> None:
        self.session: ort.InferenceSession = session(model, threads=threads)
        self.io = {io.name: io for io in integer_io}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def feed(self, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The sample as this model takes it (integer inputs quantized)."""
        return {name: quantize_input(v, self.io[name]) if name in self.io else v for name, v in sample.items()}

    def run(self, sample: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Float outputs for one sample."""
        raw = self.session.run(None, self.feed(sample))
        return [
            dequantize_output(np.asarray(v), self.io[name]) if name in self.io else np.asarray(v)
            for name, v in zip(self.output_names, raw, strict=True)
        ]


class Comparison(BaseModel):
    """A candidate against its reference over a dataset, streamed sample by sample: per-output fidelity, the
    predicted class of each sample where the model is a classifier, and the outputs themselves only when kept for a
    user metric (which scores the whole validation set at once)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    fidelity: list[OutputFidelity]
    reference_classes: list[int]
    candidate_classes: list[int]
    reference_outputs: list[list[np.ndarray]] | None = None
    candidate_outputs: list[list[np.ndarray]] | None = None


def compare_runs(
    reference: ModelRunner, candidate: ModelRunner, data: Dataset, keep_outputs: bool = False
) -> Comparison:
    """Run both models sample by sample and accumulate the comparison: memory holds one sample's outputs, not the
    dataset's (a recogniser's outputs over 100 lines are hundreds of MB)."""
    accumulators = [FidelityAccumulator(name) for name in reference.output_names]
    comparison = Comparison(
        fidelity=[],
        reference_classes=[],
        candidate_classes=[],
        reference_outputs=[] if keep_outputs else None,
        candidate_outputs=[] if keep_outputs else None,
    )
    for sample in data.samples:
        ref, cand = reference.run(sample), candidate.run(sample)
        for accumulator, ref_output, cand_output in zip(accumulators, ref, cand, strict=True):
            accumulator.add(ref_output, cand_output)
        comparison.reference_classes.append(predicted_class(ref[0]))
        comparison.candidate_classes.append(predicted_class(cand[0]))
        if comparison.reference_outputs is not None and comparison.candidate_outputs is not None:
            comparison.reference_outputs.append(ref)
            comparison.candidate_outputs.append(cand)
    comparison.fidelity = [accumulator.result() for accumulator in accumulators]
    return comparison


def fidelity(reference: ModelRunner, candidate: ModelRunner, data: Dataset) -> list[OutputFidelity]:
    """Per-output SQNR, cosine, max |Δ| and top-1 agreement of candidate against reference over `data`."""
    return compare_runs(reference, candidate, data).fidelity


def measurable_here(profile: HardwareProfile) -> bool:
    """Whether this machine can stand in for the target's CPU when timing (a CPU profile of this architecture)."""
    return profile.architecture is not None and profile.architecture == platform.machine()


def measure_latency(
    reference: ModelRunner, candidate: ModelRunner, sample: dict[str, np.ndarray], budget_s: float = 0.6
) -> LatencyMeasurement:
    """Median latency of both models, interleaved run by run so both see the same machine conditions."""
    float_feed, cand_feed = reference.feed(sample), candidate.feed(sample)
    for _ in range(3):  # warm-up: first runs allocate
        reference.session.run(None, float_feed)
        candidate.session.run(None, cand_feed)
    float_times: list[float] = []
    cand_times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(float_times) < 15 or (time.perf_counter() < deadline and len(float_times) < 2000):
        start = time.perf_counter()
        reference.session.run(None, float_feed)
        middle = time.perf_counter()
        candidate.session.run(None, cand_feed)
        end = time.perf_counter()
        float_times.append(middle - start)
        cand_times.append(end - middle)
    float_ms = statistics.median(float_times) * 1e3
    cand_ms = statistics.median(cand_times) * 1e3
    return LatencyMeasurement(
        float_ms=round(float_ms, 5),
        candidate_ms=round(cand_ms, 5),
        ratio=round(cand_ms / float_ms, 3) if float_ms else 1.0,
        runs=len(float_times),
        machine=f"{platform.machine()} {platform.processor() or ''}".strip() + ", 1 thread",
    )


def measure_together(
    reference: ModelRunner, candidates: Sequence[ModelRunner], sample: dict[str, np.ndarray], budget_s: float = 1.0
) -> list[float]:
    """Latency ratios to float of several candidates timed in one interleaved round robin (float, then each
    candidate, run after run), so all see the same machine conditions: comparable with each other, which ratios
    measured pair by pair at different moments on a loaded machine are not."""
    runners = [reference, *candidates]
    feeds = [r.feed(sample) for r in runners]
    for _ in range(3):
        for runner, feed in zip(runners, feeds, strict=True):
            runner.session.run(None, feed)
    times: list[list[float]] = [[] for _ in runners]
    deadline = time.perf_counter() + budget_s
    while len(times[0]) < 15 or (time.perf_counter() < deadline and len(times[0]) < 2000):
        for runner, feed, found in zip(runners, feeds, times, strict=True):
            start = time.perf_counter()
            runner.session.run(None, feed)
            found.append(time.perf_counter() - start)
    float_s = statistics.median(times[0])
    return [round(statistics.median(found) / float_s, 3) if float_s else 1.0 for found in times[1:]]


def verify(
    float_model: ModelProto,
    candidate: ModelProto,
    integer_io: Sequence[IOQuantization],
    data: Dataset,
    profile: HardwareProfile,
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB,
    measure: bool = True,
    float_size_bytes: int | None = None,
    metric: UserMetric | None = None,
) -> Verification:
    """Check a quantized candidate against its float model on held-out `data` (see the module docstring).

    `float_size_bytes` is the float model's file size when known (defaults to its serialized size)."""
    float_size = float_size_bytes if float_size_bytes is not None else float_model.ByteSize()
    size = candidate.ByteSize()
    base = {
        "samples": len(data),
        "min_sqnr_db": min_sqnr_db,
        "size_bytes": size,
        "float_size_bytes": float_size,
        "size_ratio": round(size / float_size, 4) if float_size else 1.0,
    }
    reference = ModelRunner(float_model)
    try:
        runner = ModelRunner(candidate, integer_io)
        comparison = compare_runs(reference, runner, data, keep_outputs=metric is not None)
        outputs = comparison.fidelity
    except Exception as exc:  # a candidate onnxruntime cannot load or run is broken, whatever the reason
        return Verification(passed=False, problems=[f"does not run in onnxruntime: {exc}"], **base)
    problems = []
    for output in outputs:
        if not output.finite:
            problems.append(f"output {output.name!r} has NaN or inf")
        elif output.sqnr_db < min_sqnr_db:
            problems.append(f"output {output.name!r} SQNR {output.sqnr_db:.1f} dB is below the floor {min_sqnr_db} dB")
    if size >= float_size:
        problems.append(f"file is not smaller than float ({size} B vs {float_size} B)")
    latency, note = None, "not measured: this machine does not stand in for the target"
    if measure and measurable_here(profile) and data.samples:
        latency = measure_latency(reference, runner, data.samples[0])
        note = f"measured on this machine ({latency.machine}) as a stand-in for {profile.name}"
        if latency.ratio > 1 + SLOWER_TOLERANCE:
            # The measured ratio goes to the measurement record; the verdict text stays the same run to run.
            problems.append(f"slower than float on the host (measured ratio above {1 + SLOWER_TOLERANCE:.2f})")
    accuracy_float = accuracy_candidate = None
    if data.labels is not None and outputs and outputs[0].top1_agreement is not None:
        accuracy_float = accuracy_of(comparison.reference_classes, data.labels)
        accuracy_candidate = accuracy_of(comparison.candidate_classes, data.labels)
    score = None
    if metric is not None and comparison.reference_outputs is not None and comparison.candidate_outputs is not None:
        score = metric.compare(
            reference.output_names, comparison.reference_outputs, comparison.candidate_outputs, data.labels
        )
    return Verification(
        passed=not problems,
        problems=problems,
        fidelity=outputs,
        metric=score,
        latency=latency,
        latency_note=note,
        accuracy_float=accuracy_float,
        accuracy_candidate=accuracy_candidate,
        **base,
    )
