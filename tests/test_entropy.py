"""autoptq's KL threshold search picks what onnxruntime's own search picks."""

from __future__ import annotations

import numpy as np
import pytest
from onnxruntime.quantization.calibrate import HistogramCollector

from autoptq.techniques.entropy import entropy_threshold


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
