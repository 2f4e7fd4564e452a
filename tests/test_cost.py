"""devices.cost: the latency roofline, its device/host/transfer split, ranges, and the fitted Edge TPU constants."""

from __future__ import annotations

import math
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from autoptq.devices.cost import LatencyEstimate, estimate_latency
from autoptq.devices.coverage import CoverageReport, analyse
from autoptq.devices.profiles import HardwareProfile, Precision, load_profile, shipped_profile_names
from autoptq.model import zoo
from autoptq.model.graph import ModelGraph, load_model

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


@cache
def fit_module() -> ModuleType:
    """bench/bench_cost_fit.py: the shape-only builders of the published models and the fit's helpers."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    import bench_cost_fit

    return bench_cost_fit


@cache
def mobilenet(size: int = 64, leaky: bool = False) -> ModelGraph:
    return load_model(zoo.mobilenet_style(size=size, leaky_after_first=leaky))


def estimate(graph: ModelGraph, profile: HardwareProfile, coverage: CoverageReport | None = None) -> LatencyEstimate:
    """Every node the device runs at the precision the audit chose (fp32 on a CPU, int8 on the Edge TPU)."""
    coverage = coverage or analyse(graph, profile)
    precision_of: dict[str, Precision] = {n.name: n.precision or "fp32" for n in coverage.nodes if n.on_device}
    return estimate_latency(graph, coverage, profile, precision_of)


def with_memory(profile: HardwareProfile, **update: object) -> HardwareProfile:
    return profile.model_copy(update={"memory": profile.memory.model_copy(update=update)})


# --- the roofline ---


@pytest.mark.parametrize("target", ["edgetpu", "x86-vnni", "arm-a53", "mcu-cortex-m"])
def test_more_macs_take_more_time(target: str) -> None:
    profile = load_profile(target)
    small, large = estimate(mobilenet(32), profile), estimate(mobilenet(96), profile)
    assert mobilenet(96).total_macs > 8 * mobilenet(32).total_macs
    assert large.device_ms > small.device_ms
    assert large.estimate_ms > small.estimate_ms


def test_compute_time_scales_with_the_effective_rate() -> None:
    tpu = load_profile("edgetpu")
    graph = mobilenet(96)
    slower = tpu.model_copy(
        update={"precisions": {"int8": tpu.precisions["int8"].model_copy(update={"efficiency": 0.1})}}
    )
    fast, slow = estimate(graph, tpu), estimate(graph, slower)
    work = graph.total_macs * (
        1 / slower.precisions["int8"].effective_macs_per_s - 1 / tpu.precisions["int8"].effective_macs_per_s
    )
    assert slow.device_ms - fast.device_ms == pytest.approx(work * 1e3)


def test_parameters_beyond_the_cache_are_streamed_on_the_edgetpu() -> None:
    tpu = load_profile("edgetpu")
    graph = mobilenet(64)
    coverage = analyse(graph, tpu)
    params = coverage.memory.device_param_bytes
    assert coverage.compatible and 0 < params < (tpu.memory.parameter_cache_bytes or 0)
    cached = estimate(graph, tpu)
    # Shrink the cache until the parameters spill, and slow the stream down so that it outlasts the compute.
    spilling = with_memory(tpu, parameter_cache_bytes=params // 10, streamed_bandwidth_bytes_per_s=1e6)
    spilled = analyse(graph, spilling)
    assert spilled.memory.streamed_param_bytes == params - params // 10
    streamed = estimate(graph, spilling, spilled)
    stream_ms = spilled.memory.streamed_param_bytes / 1e6 * 1e3
    assert streamed.device_ms == pytest.approx(cached.device_ms)
    # Streaming overlaps the device's compute: only the excess over it is added, reported with the transfers.
    compute_ms = cached.device_ms - tpu.cost.fixed_overhead_s * 1e3
    assert streamed.transfer_ms - cached.transfer_ms == pytest.approx(stream_ms - compute_ms)
    assert streamed.estimate_ms == pytest.approx(cached.estimate_ms + stream_ms - compute_ms)
    # A stream faster than the compute hides behind it.
    hidden = with_memory(spilling, streamed_bandwidth_bytes_per_s=1e15)
    assert estimate(graph, hidden).estimate_ms == pytest.approx(cached.estimate_ms)


def test_a_first_cut_moves_work_to_the_host_and_adds_transfers() -> None:
    tpu = load_profile("edgetpu")
    mapped, cut = mobilenet(224), mobilenet(224, leaky=True)
    mapped_coverage, cut_coverage = analyse(mapped, tpu), analyse(cut, tpu)
    assert mapped_coverage.compatible and cut_coverage.first_cut is not None
    assert cut_coverage.transitions == 1 and cut_coverage.transfer_bytes > mapped_coverage.transfer_bytes
    on_tpu, fallback = estimate(mapped, tpu, mapped_coverage), estimate(cut, tpu, cut_coverage)
    fixed_ms = tpu.cost.fixed_overhead_s * 1e3
    assert on_tpu.host_ms == 0
    # Everything after the stem runs on the Cortex-A53: the device keeps the stem and its fixed overhead.
    assert fallback.host_ms > 10 * (fallback.device_ms - fixed_ms)
    assert fallback.device_ms < on_tpu.device_ms
    assert fallback.transfer_ms > on_tpu.transfer_ms  # the stem's output crosses, plus a second crossing
    assert fallback.estimate_ms > 3 * on_tpu.estimate_ms
    assert "with host arm-a53" in fallback.basis


def test_host_segments_are_costed_with_the_host_profile() -> None:
    tpu = load_profile("edgetpu")
    graph = mobilenet(64, leaky=True)
    coverage = analyse(graph, tpu)
    faster_host = estimate(graph, tpu, coverage).host_ms
    a53 = load_profile("arm-a53")
    host_macs = sum(n.macs for n in coverage.nodes if not n.on_device)
    host_compute_ms = host_macs / a53.precisions["fp32"].effective_macs_per_s * 1e3
    assert faster_host >= host_compute_ms  # the roofline only adds (DRAM traffic, per-op overheads)
    assert faster_host < 3 * host_compute_ms


def test_a_cpu_has_no_transfers() -> None:
    result = estimate(mobilenet(64), load_profile("x86-vnni"))
    assert result.transfer_ms == 0 and result.host_ms == 0


# --- ranges and labels ---


@pytest.mark.parametrize("target", shipped_profile_names())
def test_estimates_are_labelled_ranges(target: str) -> None:
    profile = load_profile(target)
    result = estimate(mobilenet(64), profile)
    assert result.label == "estimate"
    assert 0 < result.low_ms < result.estimate_ms < result.high_ms
    spread = profile.cost.uncertainty
    assert result.high_ms / result.estimate_ms == pytest.approx(1 + spread)
    assert result.estimate_ms / result.low_ms == pytest.approx(1 + spread)
    assert result.estimate_ms == pytest.approx(result.device_ms + result.host_ms + result.transfer_ms)
    assert profile.cost.basis in result.basis


FITTED = {"edgetpu", "arm-a53"}


@pytest.mark.parametrize("target", shipped_profile_names())
def test_each_profile_says_whether_its_constants_are_fitted(target: str) -> None:
    cost = load_profile(target).cost
    if target in FITTED:
        assert "fitted to" in cost.basis and "coral.ai/docs/edgetpu/benchmarks" in cost.basis
    else:
        assert cost.basis.startswith("assumed, not fitted")
        assert cost.uncertainty >= max(load_profile(name).cost.uncertainty for name in FITTED)


# --- the fit against the published Edge TPU figures (bench/bench_cost_fit.py, docs/cost-model.md) ---


def _published(name: str) -> Any:  # bench_cost_fit.Published (loaded from a path)
    return next(p for p in fit_module().PUBLISHED if p.name == name)


def test_fitted_constants_reproduce_the_published_mobilenet_v2_latency() -> None:
    bench = fit_module()
    graph = bench.model_graph("MobileNet v2 224")
    assert bench.conv_macs(graph) == pytest.approx(300e6, rel=0.02)
    assert graph.param_bytes / 4 == pytest.approx(3.5e6, rel=0.02)  # shape-only float32 initializers
    result = bench.device_estimate(graph, load_profile("edgetpu"))
    assert result.low_ms <= _published("MobileNet v2 224").usb_ms <= result.high_ms


@pytest.mark.parametrize(
    "name", ["MobileNet v1 224", "Inception v1 224", "ResNet-50 v1 299", "VGG16 224", "ResNet-152 v2 299"]
)
def test_published_latencies_fall_in_the_range(name: str) -> None:
    bench = fit_module()
    entry = _published(name)
    assert entry.role in ("fit", "held-out")
    result = bench.device_estimate(bench.model_graph(name), load_profile("edgetpu"))
    assert result.low_ms <= entry.usb_ms <= result.high_ms


def test_streaming_bound_models_are_costed_by_their_parameters() -> None:
    bench = fit_module()
    tpu = load_profile("edgetpu")
    graph = bench.model_graph("VGG16 224")
    coverage = analyse(graph, tpu)
    assert coverage.memory.device_param_bytes == pytest.approx(138e6, rel=0.01)  # one byte per int8 parameter
    result = bench.device_estimate(graph, tpu)
    stream_ms = coverage.memory.streamed_param_bytes / (tpu.memory.streamed_bandwidth_bytes_per_s or math.inf) * 1e3
    assert result.transfer_ms > stream_ms * 0.9 > result.device_ms
    features = bench.edgetpu_features(graph, tpu)
    closed = bench.closed_form_ms(
        features, bench.constants_of(tpu), tpu.memory.host_link_bandwidth_bytes_per_s, tpu.cost.transfer_overhead_s
    )
    assert result.estimate_ms == pytest.approx(closed, rel=1e-9)


@pytest.mark.parametrize("leaky", [False, True])
def test_parts_follow_the_segments_and_sum_to_the_estimate(leaky: bool) -> None:
    """The per-part breakdown the HTML report draws: one part per coverage segment in order, then the transfers."""
    tpu = load_profile("edgetpu")
    graph = mobilenet(224, leaky=leaky)
    coverage = analyse(graph, tpu)
    result = estimate(graph, tpu, coverage)
    segments = [p for p in result.parts if p.part in ("device", "host")]
    assert [(p.part, p.first_node, p.last_node, p.nodes) for p in segments] == [
        (s.on, s.first_node, s.last_node, s.nodes) for s in coverage.segments
    ]
    assert math.isclose(sum(p.ms for p in result.parts), result.estimate_ms, rel_tol=1e-9)
    assert math.isclose(sum(p.ms for p in result.parts if p.part == "host"), result.host_ms, rel_tol=1e-9)
