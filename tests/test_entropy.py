"""autoptq's KL threshold search picks what onnxruntime's own search picks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnxruntime.quantization.calibrate import HistogramCollector

from autoptq.techniques.entropy import best_half_width, divergence, entropy_threshold


@pytest.mark.parametrize("shape", ["normal", "relu_squared", "laplace"])
def test_same_range_as_onnxruntime(shape: str) -> None:
    rng = np.random.default_rng(3)
    values = {
        "normal": rng.standard_normal(50_000),
        "relu_squared": np.maximum(rng.standard_normal(50_000), 0) ** 2,
        "laplace": rng.laplace(size=50_000),
    }[shape].astype(np.float32)
    collector = HistogramCollector(
        method="entropy", symmetric=False, num_bins=2048, num_quantized_bins=256, percentile=99.99, scenario="same"
    )
    collector.collect({"t": [values]})
    histogram = collector.histogram_dict["t"]
    expected = collector.get_entropy_threshold(histogram, 256)
    got = entropy_threshold(histogram, 256)
    assert float(got[0]) == float(expected[0]) and float(got[1]) == float(expected[1])
    assert float(got[1]) < float(values.max())  # a real search: the range is clipped below the max


def test_a_histogram_widened_to_millions_of_bins_is_searched_merged_and_lands_near_the_2048_bin_answer() -> None:
    # onnxruntime widens a histogram at constant bin width: a first sample 1000x narrower than the rest leaves about
    # 2 million bins, and an unmerged search over them takes minutes.
    rng = np.random.default_rng(5)
    values = rng.laplace(size=50_000).astype(np.float32)
    ranges = []
    narrow = values / 1000
    for order in ((values, narrow), (narrow, values)):  # the same data, the wide sample first, then the narrow one
        collector = HistogramCollector(
            method="entropy", symmetric=False, num_bins=2048, num_quantized_bins=256, percentile=99.99, scenario="same"
        )
        for sample in order:
            collector.collect({"t": [sample]})
        ranges.append((collector.histogram_dict["t"][0].size, entropy_threshold(collector.histogram_dict["t"], 256)))
    (plain_bins, plain), (wide_bins, wide) = ranges
    assert plain_bins == 2048 and wide_bins > 1_000_000
    # A real search on the merged bins: a range clipped inside the data's, around zero.
    assert float(values.min()) < float(wide[0]) < 0 < float(wide[1]) < float(values.max())
    # Two histograms of the same data binned differently (2048 bins from -max, or about 2048 merged from the zero
    # bin): the least-divergence range moves with the binning (the KL curve has local minima), not by an order.
    assert 0.5 < float(wide[1]) / float(plain[1]) < 2 and 0.5 < float(wide[0]) / float(plain[0]) < 2


def test_merging_about_zero_keeps_half_widths_in_step() -> None:
    from autoptq.techniques.entropy import merged_about_zero

    hist = np.arange(10)  # zero bin: index 5
    merged = merged_about_zero(hist, 2)
    assert merged.tolist() == [0 + 0, 1 + 2, 3 + 4, 5, 6 + 7, 8 + 9, 0]
    assert merged.size // 2 == 3 and merged[3] == hist[5]  # the zero bin stays the centre, alone
    assert merged.sum() == hist.sum()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    bins=st.sampled_from([512, 1024, 2048, 2154]),
    levels=st.sampled_from([128, 256]),
    empty_share=st.floats(0.0, 0.95),
    tail=st.floats(0.5, 4.0),
)
def test_the_estimated_search_picks_the_exact_searchs_width(
    seed: int, bins: int, levels: int, empty_share: float, tail: float
) -> None:
    # Sparse, heavy-tailed and one-sided histograms: the estimate only narrows the candidates, the exact divergence
    # (onnxruntime's, bin by bin) still decides among them, first on ties.
    rng = np.random.default_rng(seed)
    hist = np.floor(rng.pareto(tail, bins) * rng.integers(1, 10_000))
    hist[rng.random(bins) < empty_share] = 0
    if rng.random() < 0.3:
        hist[: bins // 2] = 0  # a ReLU's output: nothing below zero
    levels = min(levels, bins)
    exact = min(range(levels // 2, bins // 2 + 1), key=lambda w: divergence(hist, w, levels))
    assert best_half_width(hist, levels) == exact


@pytest.mark.parametrize("count", [1, 8, 5000])
def test_a_constant_tensors_single_bin_gets_the_first_width_as_onnxruntime_gives_it(count: int) -> None:
    # Every range has divergence 0 here, so the first candidate wins; the estimate's first-order error is largest
    # on so few counts and must not drop it (ppocr-det's constant helper tensors, 8 counts each).
    hist = np.zeros(2048)
    hist[1024 + 3] = count
    assert best_half_width(hist, 256) == 128
