"""A model run as is on this machine: onnxruntime with pinned settings, float feeds in and float outputs out
(integer graph I/O converted as the device's host does), and latency timed side by side with float."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
from onnx import ModelProto
from pydantic import BaseModel

from autoptq.deploy import kernels
from autoptq.devices.profiles import HardwareProfile
from autoptq.model.activations import session
from autoptq.model.intio import IOQuantization


class LatencyMeasurement(BaseModel):
    """Median latency of float and candidate, measured interleaved in one process on this machine."""

    float_ms: float
    candidate_ms: float
    ratio: float
    runs: int
    machine: str


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
