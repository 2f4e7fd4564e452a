"""Integer device kernels in plain numpy (int64 math), written from the formulas of the TFLite reference integer
kernels, gemmlowp's fixed-point helpers and onnxruntime's MLAS requantization.

Two users: the device-graph builder (multiplier encoding, lookup tables, computed once per model) and the golden
reference of the tests, which runs a device graph node by node with these functions. The exact emulator tier runs a
separate lowering of the same arithmetic to standard ONNX ops; the tests hold the two to bit-for-bit agreement.

Conventions: integer arrays go in as any integer dtype and come out as int64 holding the device's values (an int32
accumulator, an int8 / uint8 activation); `rounding` names the requantization arithmetic:

- `tflite_double`: gemmlowp SaturatingRoundingDoublingHighMul then RoundingDivideByPOT (TFLite's default);
- `tflite_single`: one rounding, `(x·M + 2^(s−1)) >> s` (TFLITE_SINGLE_ROUNDING, CMSIS-NN's option);
- `float_rne`: onnxruntime / MLAS, `round_half_even(float32(acc) · float32(multiplier))`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

Rounding = Literal["tflite_double", "tflite_single", "float_rne"]
Accumulation = Literal["int32", "int16_pairs"]
InputRounding = Literal["half_away", "half_even"]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
INT16_MIN = -(1 << 15)
INT16_MAX = (1 << 15) - 1
ADD_LEFT_SHIFT = 20
"""Headroom bits TFLite's int8 Add/Sub give both inputs before bringing them to a common scale."""


def integer_range(dtype: np.dtype | type) -> tuple[int, int]:
    """(min, max) of an integer dtype."""
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def round_half_away(values: np.ndarray) -> np.ndarray:
    """Round to nearest, ties away from zero (C's `round`), exactly: `sign(x)·(⌊|x|⌋ + [|x| − ⌊|x|⌋ ≥ ½])`.

    The fractional part `|x| − ⌊|x|⌋` is exact in floating point, unlike `x + 0.5`, which rounds for values just
    below one half. Keeps the input's float dtype."""
    magnitude = np.abs(values)
    whole = np.floor(magnitude)
    return np.copysign(whole + (magnitude - whole >= 0.5), values)


def wrap_int32(values: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to int32, as a C `int32_t` multiplication overflows on every target."""
    return ((values + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _div_trunc(numerator: np.ndarray, denominator: int | np.ndarray) -> np.ndarray:
    """C integer division (truncates toward zero) of int64 values by positive integers."""
    return np.sign(numerator) * (np.abs(numerator) // denominator)


# --- multiplier encoding ---------------------------------------------------------------------------------------------


def quantize_multiplier(real: float, rounding: Rounding = "tflite_double") -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: `real ≈ M · 2^(e − 31)` with M an int32 in [2^30, 2^31) (or 0).

    `real = f · 2^e` with f in [0.5, 1); `M = round_half_away(f · 2^31)`; M reaching 2^31 is halved and e incremented;
    e < −31 makes the multiplier 0 (all bits would be shifted out). Single rounding cannot shift left by more than 30
    (its shift is `31 − e ≥ 1`), so it saturates there as TFLite does. Returns (M, e)."""
    if real < 0 or not math.isfinite(real):
        raise ValueError(f"a requantization multiplier must be finite and non-negative, got {real}")
    if real == 0:
        return 0, 0
    fraction, exponent = math.frexp(real)
    # fraction · 2^31 is exact in double and below 2^31, so adding 0.5 is exact: floor(x + 0.5) rounds half away.
    multiplier = math.floor(fraction * (1 << 31) + 0.5)
    if multiplier == 1 << 31:
        multiplier //= 2
        exponent += 1
    if exponent < -31:
        return 0, 0
    if rounding == "tflite_single" and exponent > 30:
        return INT32_MAX, 30
    return multiplier, exponent


def quantize_multipliers(reals: np.ndarray, rounding: Rounding) -> tuple[np.ndarray, np.ndarray]:
    """`quantize_multiplier` over an array: (M as int32, e as int32), same shape."""
    flat = [quantize_multiplier(float(r), rounding) for r in np.asarray(reals, dtype=np.float64).reshape(-1)]
    shape = np.shape(reals)
    multipliers = np.array([m for m, _ in flat], dtype=np.int32).reshape(shape)
    shifts = np.array([e for _, e in flat], dtype=np.int32).reshape(shape)
    return multipliers, shifts


# --- fixed-point requantization --------------------------------------------------------------------------------------


def srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul: the high 32 bits of the doubled product `2·a·b`, rounded.

    `(a·b + nudge) / 2^31` truncated toward zero, `nudge = 2^30` if `a·b ≥ 0` else `1 − 2^30`; `a = b = −2^31`
    saturates to `2^31 − 1`."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    overflow = (a == b) & (a == INT32_MIN)
    product = a * b  # |a·b| <= 2^62: exact in int64
    nudge = np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    return np.where(overflow, INT32_MAX, _div_trunc(product + nudge, 1 << 31))


def rdbpot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: `x / 2^exponent` rounded half away from zero, exponent in [0, 31].

    `(x >> exponent) + (remainder > threshold)` with `remainder = x & mask`, `threshold = (mask >> 1) + [x < 0]`."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = np.left_shift(np.int64(1), exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(
    x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, rounding: Rounding
) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier(x, M, e) for int32 x: `x · M · 2^(e − 31)` rounded the device's way.

    Double rounding: `RDBPOT(SRDHM(x · 2^max(e, 0), M), max(−e, 0))`, the left shift wrapping in int32 as the C code
    does. Single rounding: `(x · M + 2^(s − 1)) >> s` with `s = 31 − e`, in 64 bits."""
    x = np.asarray(x, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if rounding == "tflite_double":
        left = np.maximum(shift, 0)
        right = np.maximum(-shift, 0)
        shifted = wrap_int32(x * np.left_shift(np.int64(1), left)) if np.any(left > 0) else x
        return rdbpot(srdhm(shifted, multiplier), right)
    if rounding == "tflite_single":
        total = 31 - shift
        return (x * multiplier + np.left_shift(np.int64(1), total - 1)) >> total
    raise ValueError(f"{rounding!r} has no fixed-point multiplier")


def requantize(
    acc: np.ndarray,
    multiplier: np.ndarray,
    shift: np.ndarray | None,
    *,
    rounding: Rounding,
    input_zero_point: int = 0,
    zero_point: int = 0,
    qmin: int = INT32_MIN,
    qmax: int = INT32_MAX,
) -> np.ndarray:
    """`clamp(requant(acc − input_zero_point) + zero_point, qmin, qmax)`.

    `multiplier`/`shift` are (M, e) from `quantize_multiplier` for the TFLite modes; for `float_rne` `multiplier` is
    the float32 real multiplier and `shift` is unused. Both broadcast against `acc` (per-channel requantization)."""
    a = np.asarray(acc, dtype=np.int64) - input_zero_point
    if rounding == "float_rne":
        scaled = np.rint(a.astype(np.float32) * np.asarray(multiplier, dtype=np.float32))
        # Bounds are integers, so clamping the rounded float then converting equals MLAS's clamp-then-round.
        return np.clip(scaled + np.float32(zero_point), qmin, qmax).astype(np.int64)
    assert shift is not None
    scaled = multiply_by_quantized_multiplier(a, multiplier, shift, rounding)
    return np.clip(scaled + zero_point, qmin, qmax)


# --- accumulation ----------------------------------------------------------------------------------------------------


def _pair_sums(raw: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ over pairs of clamp_int16(raw[2p]·w[2p] + raw[2p+1]·w[2p+1]) (vpmaddubsw), K on the last axis of both.

    raw: (..., L, K) activations; weights: (O, K). Returns (..., L, O). An odd K gets a zero partner."""
    k = raw.shape[-1]
    if k % 2:
        raw = np.concatenate([raw, np.zeros((*raw.shape[:-1], 1), np.int64)], axis=-1)
        weights = np.concatenate([weights, np.zeros((weights.shape[0], 1), np.int64)], axis=-1)
    pairs_a = raw.reshape(*raw.shape[:-1], -1, 2)
    pairs_w = weights.reshape(weights.shape[0], -1, 2)
    sums = np.einsum("...lpt,opt->...lop", pairs_a, pairs_w)
    return np.clip(sums, INT16_MIN, INT16_MAX).sum(axis=-1)


def conv_pair_weights(weights: np.ndarray, group: int) -> np.ndarray:
    """Convolution weights (O, C/g, kh, kw) as the pairs a u8 × s8 kernel multiplies: (g, K/2, 2, O/g), K taken in
    (kh, kw, C/g) order and padded to even with a zero."""
    out_c, per_group, kh, kw = weights.shape
    k = kh * kw * per_group
    ordered = weights.astype(np.int64).reshape(group, out_c // group, per_group, kh, kw).transpose(0, 1, 3, 4, 2)
    ordered = ordered.reshape(group, out_c // group, k)
    ordered = np.concatenate([ordered, np.zeros((group, out_c // group, k % 2), np.int64)], axis=2)
    return ordered.reshape(group, out_c // group, -1, 2).transpose(0, 2, 3, 1)


def matmul_pair_weights(weights: np.ndarray) -> np.ndarray:
    """MatMul weights (K, N) as pairs along K: (K/2, 2, N), K padded to even with a zero row."""
    padded = np.concatenate([weights.astype(np.int64), np.zeros((weights.shape[0] % 2, weights.shape[1]), np.int64)])
    return padded.reshape(-1, 2, weights.shape[1])


def saturable_pairs(pair_weights: np.ndarray) -> np.ndarray:
    """Which (pair, output) combinations of pair weights (..., K/2, 2, O) can leave int16 with u8 activations:
    `255 · (|w_2p| + |w_2p+1|) > 32767` (never with 7-bit weights). Boolean (..., K/2, O)."""
    return 255 * np.abs(pair_weights).sum(axis=-2) > INT16_MAX


def conv_accumulate(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    *,
    x_zero_point: int,
    group: int,
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    accumulation: Accumulation = "int32",
) -> np.ndarray:
    """2-D convolution accumulator `Σ (x − zp_x)·w + bias` (NCHW, weights (O, C/group, kh, kw), zero point 0).

    Padding holds the input zero point, i.e. a real zero. `int16_pairs`: products of the raw (u8) activations and
    weights are summed in adjacent pairs along K taken in (kh, kw, C/group) order per group, each pair saturated to
    int16, then `zp_x · Σ w` is subtracted exactly (the u8×s8 kernels of x86 CPUs without VNNI)."""
    n, _, h, wd = x.shape
    out_c, c_g, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    top, left, bottom, right = pads
    centred = np.pad(x.astype(np.int64) - x_zero_point, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    taps = [
        centred[:, :, i * dh : i * dh + sh * (out_h - 1) + 1 : sh, j * dw : j * dw + sw * (out_w - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    # cols: (N, group, L, kh·kw, C/group) with L = out_h·out_w
    cols = np.stack(taps, axis=2).reshape(n, group, c_g, kh * kw, out_h * out_w).transpose(0, 1, 4, 3, 2)
    weights = w.astype(np.int64).reshape(group, out_c // group, c_g, kh * kw).transpose(0, 1, 3, 2)
    cols = cols.reshape(n, group, out_h * out_w, kh * kw * c_g)
    weights = weights.reshape(group, out_c // group, kh * kw * c_g)
    if accumulation == "int16_pairs":
        raw = cols + x_zero_point
        acc = np.stack([_pair_sums(raw[:, g], weights[g]) for g in range(group)], axis=1)
        acc = acc - x_zero_point * weights.sum(axis=-1)[None, :, None, :]
    else:
        acc = np.einsum("nglk,gok->nglo", cols, weights)
    acc = acc.transpose(0, 1, 3, 2).reshape(n, out_c, out_h, out_w)
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape(1, -1, 1, 1)
    return acc


def conv_transpose_accumulate(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    *,
    x_zero_point: int,
    strides: Sequence[int],
    pads: Sequence[int],
    output_padding: Sequence[int],
    dilations: Sequence[int],
) -> np.ndarray:
    """2-D transposed convolution accumulator `Σ (x − zp_x)·w + bias` (NCHW, weights (C_in, C_out, kh, kw), zero
    point 0, one group), as TFLite's reference_integer_ops::TransposeConv scatters it: each input pixel adds
    `(x − zp)·w[c, o, i, j]` at output `(y·s + i·d − top, x·s + j·d − left)`, contributions falling outside the
    output are dropped; ONNX's output size `s·(n − 1) + output_padding + d·(k − 1) + 1 − pads`."""
    n, _, h, wd = x.shape
    _, out_c, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    top, left, bottom, right = pads
    centred = x.astype(np.int64) - x_zero_point
    full_h = sh * (h - 1) + output_padding[0] + dh * (kh - 1) + 1
    full_w = sw * (wd - 1) + output_padding[1] + dw * (kw - 1) + 1
    full = np.zeros((n, out_c, full_h, full_w), np.int64)
    weights = w.astype(np.int64)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (h - 1) + 1, sh)
            columns = slice(j * dw, j * dw + sw * (wd - 1) + 1, sw)
            full[:, :, rows, columns] += np.einsum("nchw,co->nohw", centred, weights[:, :, i, j])
    acc = full[:, :, top : full_h - bottom, left : full_w - right]
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape(1, -1, 1, 1)
    return acc


def matmul_accumulate(
    a: np.ndarray,
    b: np.ndarray,
    bias: np.ndarray | None,
    *,
    a_zero_point: int,
    b_zero_point: int = 0,
    accumulation: Accumulation = "int32",
) -> np.ndarray:
    """`(a − zp_a) @ (b − zp_b) + bias` in exact integers (numpy matmul broadcasting).

    `int16_pairs` (b a 2-D constant with zero point 0): raw products summed in adjacent pairs along K, each pair
    saturated to int16, then `zp_a · Σ_k b` subtracted."""
    if accumulation == "int16_pairs":
        if b.ndim != 2 or b_zero_point != 0:
            raise ValueError("int16 pair accumulation needs 2-D weights with zero point 0")
        weights = b.astype(np.int64).T
        acc = _pair_sums(a.astype(np.int64), weights) - a_zero_point * weights.sum(axis=-1)
    else:
        acc = np.matmul(a.astype(np.int64) - a_zero_point, b.astype(np.int64) - b_zero_point)
    if bias is not None:
        acc = acc + bias.astype(np.int64)
    return acc


# --- elementwise -----------------------------------------------------------------------------------------------------


def add(
    a: np.ndarray,
    b: np.ndarray,
    *,
    rounding: Rounding,
    a_zero_point: int,
    b_zero_point: int,
    zero_point: int,
    qmin: int,
    qmax: int,
    subtract: bool = False,
    multipliers: Sequence[int] = (0, 0, 0),
    shifts: Sequence[int] = (0, 0, 0),
    scale_ratios: Sequence[float] = (0.0, 0.0),
) -> np.ndarray:
    """Quantized Add / Sub with broadcasting.

    TFLite (`multipliers`/`shifts` for input 1, input 2, output): both inputs shifted left by 20 bits, each brought
    to the common scale `2·max(s1, s2)`, summed, and requantized to the output. `float_rne` (MLAS QLinearAdd model,
    `scale_ratios` = float32 s1/s_out, s2/s_out): `round_half_even(r1·(q1 − zp1) ± r2·(q2 − zp2))` in float32."""
    da = np.asarray(a, dtype=np.int64) - a_zero_point
    db = np.asarray(b, dtype=np.int64) - b_zero_point
    if rounding == "float_rne":
        va = da.astype(np.float32) * np.float32(scale_ratios[0])
        vb = db.astype(np.float32) * np.float32(scale_ratios[1])
        total = np.rint(va - vb if subtract else va + vb)
        return np.clip(total + np.float32(zero_point), qmin, qmax).astype(np.int64)
    scaled_a = multiply_by_quantized_multiplier(da << ADD_LEFT_SHIFT, multipliers[0], shifts[0], rounding)
    scaled_b = multiply_by_quantized_multiplier(db << ADD_LEFT_SHIFT, multipliers[1], shifts[1], rounding)
    raw = scaled_a - scaled_b if subtract else scaled_a + scaled_b
    out = multiply_by_quantized_multiplier(raw, multipliers[2], shifts[2], rounding)
    return np.clip(out + zero_point, qmin, qmax)


def mul_accumulate(a: np.ndarray, b: np.ndarray, *, a_zero_point: int, b_zero_point: int) -> np.ndarray:
    """`(q1 − zp1)·(q2 − zp2)`, exact, broadcast: the accumulator of a quantized Mul (requantized afterwards)."""
    return (np.asarray(a, dtype=np.int64) - a_zero_point) * (np.asarray(b, dtype=np.int64) - b_zero_point)


def lookup(q: np.ndarray, table: np.ndarray) -> np.ndarray:
    """`table[q − min(dtype of q)]`: a 256-entry activation table indexed by the input's integer value."""
    low, _ = integer_range(q.dtype)
    return np.asarray(table, dtype=np.int64)[q.astype(np.int64) - low]


# --- pooling ---------------------------------------------------------------------------------------------------------


def _rounded_divide(total: np.ndarray, count: np.ndarray | int) -> np.ndarray:
    """TFLite's pooling division: `(t + n/2) / n` for t > 0, `(t − n/2) / n` otherwise, C division (half away)."""
    half = np.asarray(count) // 2
    return np.where(total > 0, _div_trunc(total + half, count), _div_trunc(total - half, count))


def average_pool(
    q: np.ndarray,
    *,
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    count_include_pad: bool,
    offset: int,
    zero_point: int,
    qmin: int,
    qmax: int,
) -> np.ndarray:
    """TFLite's int8 AveragePool on 2-D NCHW: a raw integer sum over the window, then the rounding division.

    `offset` (128 for uint8 storage, else 0) maps values to the int8 tensor a converter writes, whose raw values
    TFLite sums. The count is the window's valid elements, or the whole window with `count_include_pad` (padding
    then holds the zero point)."""
    kh, kw = kernel_shape
    sh, sw = strides
    top, left, bottom, right = pads
    values = np.pad(q.astype(np.int64) - offset, ((0, 0), (0, 0), (top, bottom), (left, right)))
    valid = np.pad(np.ones(q.shape[2:], np.int64), ((top, bottom), (left, right)))
    out_h = (q.shape[2] + top + bottom - kh) // sh + 1
    out_w = (q.shape[3] + left + right - kw) // sw + 1

    def window_sum(array: np.ndarray) -> np.ndarray:
        return sum(
            array[..., i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw]
            for i in range(kh)
            for j in range(kw)
        )

    total = window_sum(values)
    count = window_sum(valid)
    if count_include_pad:
        total = total + (zero_point - offset) * (kh * kw - count)
        count = np.full_like(count, kh * kw)
    return np.clip(_rounded_divide(total, count) + offset, qmin, qmax)


def mean(
    q: np.ndarray,
    *,
    axes: Sequence[int],
    rounding: Rounding,
    input_zero_point: int,
    zero_point: int,
    qmin: int,
    qmax: int,
    multiplier: int = 0,
    shift: int = 0,
    input_scale: float = 1.0,
    output_scale: float = 1.0,
) -> np.ndarray:
    """Quantized mean over `axes` (kept), e.g. GlobalAveragePool.

    TFLite (reference_integer_ops::Mean): `acc = Σ (q − zp_in)`, `MBQM(acc, M, e)` with (M, e) = `multiplier`,
    `shift` for `s_in / (s_out · n)` (the element count n folded into the multiplier by the kernel, one rounding;
    see ops.mean.fold_count). `float_rne` (MLAS
    QLinearGlobalAveragePool model): the integer sum times the float32 multiplier `s_in / (s_out · n)`, rounded half
    to even."""
    total = np.sum(np.asarray(q, dtype=np.int64) - input_zero_point, axis=tuple(axes), keepdims=True)
    count = math.prod(q.shape[a] for a in axes)
    if rounding == "float_rne":
        factor = np.float32(input_scale) / (np.float32(output_scale) * np.float32(count))
        scaled = np.rint(total.astype(np.float32) * factor)
        return np.clip(scaled + np.float32(zero_point), qmin, qmax).astype(np.int64)
    return np.clip(multiply_by_quantized_multiplier(total, multiplier, shift, rounding) + zero_point, qmin, qmax)


# --- boundaries and tables -------------------------------------------------------------------------------------------


def quantize(
    x: np.ndarray, *, scale: float, zero_point: int, dtype: np.dtype | type, rounding: InputRounding
) -> np.ndarray:
    """Real → integer: `clamp(round(float32(x) / float32(scale)) + zp)` in the given dtype.

    `half_away` is TFLite's QUANTIZE (float division, std::round); `half_even` is ONNX QuantizeLinear as
    onnxruntime computes it."""
    low, high = integer_range(dtype)
    scaled = np.asarray(x, dtype=np.float32) / np.float32(scale)
    rounded = round_half_away(scaled) if rounding == "half_away" else np.rint(scaled)
    return np.clip(rounded + np.float32(zero_point), low, high).astype(dtype)


def dequantize(q: np.ndarray, *, scale: float, zero_point: int) -> np.ndarray:
    """Integer → real as ONNX DequantizeLinear computes it: `float32(q − zp) · float32(scale)`."""
    return (np.asarray(q, dtype=np.int64) - zero_point).astype(np.float32) * np.float32(scale)


def activation_table(
    function: Callable[[np.ndarray], np.ndarray],
    *,
    input_scale: float,
    input_zero_point: int,
    input_dtype: np.dtype | type,
    output_scale: float,
    output_zero_point: int,
    output_dtype: np.dtype | type,
    rounding: Rounding,
) -> np.ndarray:
    """The 256-entry table of an activation: dequantize every input value, apply `function` in float32, quantize.

    TFLite (PopulateLookupTable): `round_half_away(f · (1 / s_out)) + zp` with the inverse scale in float32.
    onnxruntime (QlinearBuildLookupTable): QuantizeLinear, `round_half_even(f / s_out) + zp`."""
    low, high = integer_range(input_dtype)
    real = dequantize(np.arange(low, high + 1), scale=input_scale, zero_point=input_zero_point)
    transformed = np.asarray(function(real), dtype=np.float32)
    if rounding == "float_rne":
        return quantize(
            transformed, scale=output_scale, zero_point=output_zero_point, dtype=output_dtype, rounding="half_even"
        )
    out_low, out_high = integer_range(output_dtype)
    rescaled = round_half_away(transformed * (np.float32(1) / np.float32(output_scale)))
    return np.clip(rescaled + np.float32(output_zero_point), out_low, out_high).astype(output_dtype)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 logistic as TFLite writes it: `1 / (1 + exp(−x))`."""
    x = np.asarray(x, dtype=np.float32)
    # exp(-x) overflows to inf for x below about -88, and 1 / (1 + inf) is the exact 0 TFLite gives too.
    with np.errstate(over="ignore"):
        return np.float32(1) / (np.float32(1) + np.exp(-x))


def tanh(x: np.ndarray) -> np.ndarray:
    """float32 tanh."""
    return np.tanh(np.asarray(x, dtype=np.float32))
