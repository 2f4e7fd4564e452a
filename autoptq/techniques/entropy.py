"""KL-divergence (entropy) calibration thresholds.

The method is TensorRT's, as onnxruntime implements it: for each candidate range around zero, the clipped histogram
`p` (outliers folded into the edge bins) is compared with its quantized version `q` (merged into the available
levels, then spread back over the bins that were non-zero), and the range with the least KL(p‖q) wins.
onnxruntime evaluates every candidate with per-bin Python loops (about half a second per tensor at 2048 bins); here
each candidate is a handful of array operations: the same candidates, the same criterion and the same answer
(tested against onnxruntime's own search), about ten times faster. A coarse-to-fine scan would be faster still but
the KL curve has local minima: it picked other ranges.
"""

from __future__ import annotations

import numpy as np

SMOOTHING = 1e-4
"""Probability moved onto empty bins so that KL stays finite (onnxruntime's smooth_distribution)."""
MERGE_ABOVE_BINS = 16384
"""Histograms wider than this are merged before the search. onnxruntime's collector widens a histogram at constant
bin width when a later sample exceeds the range of the first: a tiny first sample leaves millions of bins, and the
search, quadratic in them, took minutes per tensor (nudenet's loop ran 5 minutes past a 3-minute time budget in one
tensor's search). Up to this width the search runs on onnxruntime's own bins (about a second per tensor at most)."""
MERGED_BINS = 2048
"""Bins a merged histogram gets, from the zero bin outwards: the width the method is defined at (TensorRT's, and
onnxruntime's starting histogram), since the least-divergence range depends on the bin count."""


def _smooth(p: np.ndarray) -> np.ndarray | None:
    zeros = p == 0
    nonzero_count = p.size - int(zeros.sum())
    if nonzero_count == 0:
        return None
    taken = SMOOTHING * int(zeros.sum()) / nonzero_count
    return np.where(zeros, SMOOTHING, p - taken).astype(np.float32)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    q = q / q.sum()
    if np.any((p > 0) & (q <= 0)):
        return float("inf")
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def divergence(hist: np.ndarray, half_width: int, levels: int) -> float:
    """KL(p‖q) of the range of `2·half_width + 1` bins centred on the histogram's zero bin, squeezed into `levels`."""
    zero = hist.size // 2
    start, end = zero - half_width, min(zero + half_width + 1, hist.size)
    sliced = hist[start:end].astype(np.float64)
    p = sliced.copy()
    p[0] += hist[:start].sum()
    p[-1] += hist[end:].sum()
    merged = sliced.size // levels
    head = levels * merged
    quantized = sliced[:head].reshape(levels, merged).sum(axis=1)
    quantized[-1] += sliced[head:].sum()
    counts = (p[:head] != 0).reshape(levels, merged).sum(axis=1)
    # onnxruntime keeps q in integers: the spread value is truncated.
    spread = np.where(counts > 0, np.trunc(quantized / np.maximum(counts, 1)), 0.0)
    q = np.zeros(p.size)
    q[:head] = np.repeat(spread, merged)
    p_smooth, q_smooth = _smooth(p), _smooth(q)
    if p_smooth is None or q_smooth is None:
        return float("inf")
    return _kl(p_smooth, q_smooth)


def best_half_width(hist: np.ndarray, levels: int) -> int:
    """The half width (in bins) of the range with the least divergence; the first one on ties, as onnxruntime."""
    low, high = levels // 2, hist.size // 2
    if high < low:
        return high
    return min(range(low, high + 1), key=lambda w: divergence(hist, w, levels))


def merged_about_zero(hist: np.ndarray, factor: int) -> np.ndarray:
    """`hist` with every `factor` bins on each side of its zero bin (`size // 2`) summed into one, the zero bin kept
    alone and the sides padded to the same length, so that half width `w` of the result is half width `w · factor`
    of `hist`."""
    zero = hist.size // 2
    side = -(-max(zero, hist.size - zero - 1) // factor)
    left = np.zeros(side * factor, hist.dtype)
    right = np.zeros(side * factor, hist.dtype)
    left[:zero] = hist[:zero][::-1]
    right[: hist.size - zero - 1] = hist[zero + 1 :]
    left, right = left.reshape(side, factor).sum(axis=1), right.reshape(side, factor).sum(axis=1)
    return np.concatenate([left[::-1], hist[zero : zero + 1], right])


def entropy_threshold(histogram: tuple[np.ndarray, np.ndarray, object, object], levels: int) -> tuple[object, object]:
    """The (low, high) range for one tensor from onnxruntime's collected `(hist, edges, min, max)`, within the
    observed min and max, in the edges' dtype (as onnxruntime's collector returns it)."""
    hist, edges, min_value, max_value = histogram[:4]
    zero = hist.size // 2
    factor = -(-hist.size // MERGED_BINS) if hist.size > MERGE_ABOVE_BINS else 1
    searched = hist if factor == 1 else merged_about_zero(hist, factor)
    width = best_half_width(searched, levels) * factor
    low = edges[max(zero - width, 0)]
    high = edges[min(zero + width + 1, hist.size)]
    return max(low, min_value), min(high, max_value)
