"""KL-divergence (entropy) calibration thresholds.

The method is TensorRT's, as onnxruntime implements it: for each candidate range around zero, the clipped histogram
`p` (outliers folded into the edge bins) is compared with its quantized version `q` (merged into the available
levels, then spread back over the bins that were non-zero), and the range with the least KL(p‖q) wins.
onnxruntime evaluates every candidate with per-bin Python loops (about half a second per tensor at 2048 bins).
Here every candidate's divergence is first estimated at once from running sums of the histogram (each of `p`'s and
`q`'s sums splits by quantized level, so a candidate costs one pass over the levels, not over the bins), and only
the candidates the estimate cannot tell from the least are evaluated exactly, bin by bin, as onnxruntime does: the
same candidates, the same criterion and the same answer (tested against onnxruntime's own search). A coarse-to-fine
scan would be faster still but the KL curve has local minima: it picked other ranges.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SMOOTHING = 1e-4
"""Probability moved onto empty bins so that KL stays finite (onnxruntime's smooth_distribution)."""
MERGE_ABOVE_BINS = 16384
"""Histograms wider than this are merged before the search. onnxruntime's collector widens a histogram at constant
bin width when a later sample exceeds the range of the first: a tiny first sample leaves millions of bins, and a
bin-by-bin search, quadratic in them, took minutes per tensor (nudenet's loop ran 5 minutes past a 3-minute time
budget in one tensor's search). Up to this width the search runs on onnxruntime's own bins (under half a second per
tensor)."""
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


ESTIMATE_MARGIN = 1e-5
"""How far above the least estimated divergence (relative to it, at least this much) a candidate is still evaluated
exactly, on top of each estimate's own error bound: the exact divergence is float32, as onnxruntime's; on the
calibration histograms of two corpus models (576 tensors) the two differ by at most 1e-6 of the divergence."""


def best_half_width(hist: np.ndarray, levels: int) -> int:
    """The half width (in bins) of the range with the least divergence; the first one on ties, as onnxruntime."""
    low, high = levels // 2, hist.size // 2
    if high < low:
        return high
    widths, estimates, bounds = estimated_divergences(hist, levels)
    trusted = np.isfinite(estimates)
    ceiling = float((estimates + bounds)[trusted].min()) if trusted.any() else 0.0
    near = ~trusted | (estimates - bounds <= ceiling + ESTIMATE_MARGIN * max(abs(ceiling), 1.0))
    return min((int(w) for w in widths[near]), key=lambda w: divergence(hist, w, levels))


def estimated_divergences(hist: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every candidate half width (`levels // 2` to `hist.size // 2`), its estimated `divergence` and a bound on the
    estimate's error; NaN where the estimate is not to be trusted (an empty side, or smoothing that takes half the
    smallest count or more from a bin).

    Smoothing moves the same mass onto the empty bins as it takes from the others, so both sums stay as they were and
    KL = (Σ p·log p − Σ p·log q) / Σp + log(Σq / Σp). `q` is constant over a level, so Σ p·log q is a sum over levels;
    Σ p·log p is read from running sums of h·log h and log h, to first order in the smoothing `a` taken from each
    non-empty bin; the rest of each bin's (p - a)·log(p - a) is at most a² / 2(p - a), which bounds the error (a
    constant tensor's single bin of a few counts gets bounds near 1e-4, its divergences all 0)."""
    counts = hist.astype(np.float64)
    size, zero = counts.size, counts.size // 2
    widths = np.arange(levels // 2, size // 2 + 1)
    start, end = zero - widths, np.minimum(zero + widths + 1, size)
    span = end - start
    nonzero = counts > 0
    logs = _log(counts)
    mass, filled, entropy, log_sum = (
        np.concatenate([[0.0], np.cumsum(column)]) for column in (counts, nonzero, counts * logs, logs)
    )
    total = mass[-1]
    below, above = mass[start], total - mass[end]
    first, last = counts[start], counts[end - 1]
    edge_first, edge_last = first + below, last + above  # p's edge bins: the outliers folded in

    def over_p(table: np.ndarray, term: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Each candidate's sum of `term` over p's bins, from `table` (running sums of `term` of the histogram)
        with the two edge bins' terms swapped for p's."""
        return table[end] - table[start] - term(first) - term(last) + term(edge_first) + term(edge_last)

    p_filled, p_entropy, p_logs = over_p(filled, _filled), over_p(entropy, _h_log_h), over_p(log_sum, _log)
    p_empty = span - p_filled
    merged = span // levels
    head = levels * merged
    level_edges = start[:, None] + np.arange(levels + 1)[None, :] * merged[:, None]
    level_mass = mass[level_edges[:, 1:]] - mass[level_edges[:, :-1]]
    level_filled = filled[level_edges[:, 1:]] - filled[level_edges[:, :-1]]
    no_tail = head == span  # then p's last edge bin is in the last level, else in the unmerged tail
    level_filled[:, 0] += _filled(edge_first) - _filled(first)
    level_filled[no_tail, -1] += _filled(edge_last[no_tail]) - _filled(last[no_tail])
    p_level_mass = level_mass.copy()
    p_level_mass[:, 0] += below
    p_level_mass[no_tail, -1] += above[no_tail]
    tail_mass = mass[end] - mass[start + head]
    level_mass[:, -1] += tail_mass  # onnxruntime adds the tail to the last quantized level
    # onnxruntime keeps q in integers: the spread value is truncated.
    spread = np.where(level_filled > 0, np.trunc(level_mass / np.maximum(level_filled, 1)), 0.0)
    q_total = merged * spread.sum(axis=1)
    q_filled = merged * (spread > 0).sum(axis=1)
    p_taken = SMOOTHING * p_empty / np.maximum(p_filled, 1)
    q_taken = SMOOTHING * (span - q_filled) / np.maximum(q_filled, 1)
    p_log_p = p_empty * SMOOTHING * np.log(SMOOTHING) + p_entropy - p_taken * (p_logs + p_filled)
    tail_filled = filled[end] - filled[start + head] + np.where(no_tail, 0.0, _filled(edge_last) - _filled(last))
    tail_p = tail_mass + np.where(no_tail, 0.0, above) - p_taken * tail_filled + SMOOTHING * (span - head - tail_filled)
    level_p = p_level_mass - p_taken[:, None] * level_filled + SMOOTHING * (merged[:, None] - level_filled)
    level_log_q = np.log(np.where(spread > 0, np.maximum(spread - q_taken[:, None], 1e-300), SMOOTHING))
    p_log_q = (level_p * level_log_q).sum(axis=1) + tail_p * np.log(SMOOTHING)
    smallest = counts[nonzero].min() if nonzero.any() else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty histogram: every estimate untrusted below
        estimates = (p_log_p - p_log_q) / total + np.log(q_total) - np.log(total)
        bounds = p_filled * p_taken**2 / (2 * np.maximum(smallest - p_taken, 1e-12)) / total
    untrusted = (p_filled == 0) | (q_filled == 0) | (p_taken >= smallest / 2) | (q_taken >= 0.5)
    return widths, np.where(untrusted, np.nan, estimates), bounds


def _filled(counts: np.ndarray) -> np.ndarray:
    return (counts > 0).astype(np.float64)


def _log(counts: np.ndarray) -> np.ndarray:
    return np.log(np.where(counts > 0, counts, 1.0))


def _h_log_h(counts: np.ndarray) -> np.ndarray:
    return counts * _log(counts)


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


def searched_histogram(hist: np.ndarray) -> tuple[np.ndarray, int]:
    """The histogram the search runs on (merged when wider than MERGE_ABOVE_BINS) and how many of `hist`'s bins
    each of its bins holds."""
    factor = -(-hist.size // MERGED_BINS) if hist.size > MERGE_ABOVE_BINS else 1
    return (hist if factor == 1 else merged_about_zero(hist, factor)), factor


def entropy_threshold(histogram: tuple[np.ndarray, np.ndarray, object, object], levels: int) -> tuple[object, object]:
    """The (low, high) range for one tensor from onnxruntime's collected `(hist, edges, min, max)`, within the
    observed min and max, in the edges' dtype (as onnxruntime's collector returns it)."""
    hist, edges, min_value, max_value = histogram[:4]
    zero = hist.size // 2
    searched, factor = searched_histogram(hist)
    width = best_half_width(searched, levels) * factor
    low = edges[max(zero - width, 0)]
    high = edges[min(zero + width + 1, hist.size)]
    return max(low, min_value), min(high, max_value)
