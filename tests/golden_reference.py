"""Golden reference for the integer emulator: a device graph run as is by `onnx.reference.ReferenceEvaluator`, each
device op a small `OpRun` class calling the numpy kernels of `autoptq.emulators.kernels`.

It shares nothing with the exact tier but the device graph itself: the lowering re-derives the same arithmetic from
standard ONNX ops, so agreement bit for bit is evidence that both compute what the formulas say.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from autoptq.emulators import kernels
from autoptq.emulators.intgraph import DEVICE_DOMAIN


def _dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


class _DeviceOp(OpRun):
    op_domain = DEVICE_DOMAIN


class Quantize(_DeviceOp):
    def _run(self, x, scale=None, zero_point=None, to=None, rounding=None):  # type: ignore[no-untyped-def]
        return (kernels.quantize(x, scale=scale, zero_point=zero_point, dtype=_dtype(to), rounding=rounding),)


class Dequantize(_DeviceOp):
    def _run(self, q, scale=None, zero_point=None):  # type: ignore[no-untyped-def]
        return (kernels.dequantize(q, scale=scale, zero_point=zero_point),)


class IntConv(_DeviceOp):
    def _run(  # type: ignore[no-untyped-def]
        self, x, w, bias=None, x_zero_point=None, group=None, strides=None, pads=None, dilations=None,
        accumulation=None,
    ):  # fmt: skip
        acc = kernels.conv_accumulate(x, w, bias, x_zero_point=x_zero_point, group=group, strides=strides, pads=pads,
                                      dilations=dilations, accumulation=accumulation)  # fmt: skip
        return (acc.astype(np.int32),)


class IntMatMul(_DeviceOp):
    def _run(self, a, b, bias=None, a_zero_point=None, b_zero_point=None, accumulation=None):  # type: ignore[no-untyped-def]
        acc = kernels.matmul_accumulate(a, b, bias, a_zero_point=a_zero_point, b_zero_point=b_zero_point,
                                        accumulation=accumulation)  # fmt: skip
        return (acc.astype(np.int32),)


class IntMul(_DeviceOp):
    def _run(self, a, b, a_zero_point=None, b_zero_point=None):  # type: ignore[no-untyped-def]
        return (kernels.mul_accumulate(a, b, a_zero_point=a_zero_point, b_zero_point=b_zero_point).astype(np.int32),)


class Requantize(_DeviceOp):
    def _run(  # type: ignore[no-untyped-def]
        self, acc, multiplier, shift=None, rounding=None, input_zero_point=None, zero_point=None, qmin=None,
        qmax=None, to=None,
    ):  # fmt: skip
        out = kernels.requantize(acc, multiplier, shift, rounding=rounding, input_zero_point=input_zero_point,
                                 zero_point=zero_point, qmin=qmin, qmax=qmax)  # fmt: skip
        return (out.astype(_dtype(to)),)


class IntAdd(_DeviceOp):
    def _run(  # type: ignore[no-untyped-def]
        self, a, b, rounding=None, a_zero_point=None, b_zero_point=None, zero_point=None, qmin=None, qmax=None,
        to=None, subtract=None, multipliers=None, shifts=None, scale_ratios=None,
    ):  # fmt: skip
        out = kernels.add(a, b, rounding=rounding, a_zero_point=a_zero_point, b_zero_point=b_zero_point,
                          zero_point=zero_point, qmin=qmin, qmax=qmax, subtract=bool(subtract),
                          multipliers=multipliers, shifts=shifts, scale_ratios=scale_ratios)  # fmt: skip
        return (out.astype(_dtype(to)),)


class Lut(_DeviceOp):
    def _run(self, q, table):  # type: ignore[no-untyped-def]
        return (kernels.lookup(q, table).astype(table.dtype),)


class IntAveragePool(_DeviceOp):
    def _run(  # type: ignore[no-untyped-def]
        self, q, kernel_shape=None, strides=None, pads=None, count_include_pad=None, offset=None, zero_point=None,
        qmin=None, qmax=None,
    ):  # fmt: skip
        out = kernels.average_pool(q, kernel_shape=kernel_shape, strides=strides, pads=pads,
                                   count_include_pad=bool(count_include_pad), offset=offset, zero_point=zero_point,
                                   qmin=qmin, qmax=qmax)  # fmt: skip
        return (out.astype(q.dtype),)


class IntMean(_DeviceOp):
    def _run(  # type: ignore[no-untyped-def]
        self, q, axes=None, rounding=None, input_zero_point=None, zero_point=None, qmin=None, qmax=None, to=None,
        multiplier=None, shift=None, input_scale=None, output_scale=None,
    ):  # fmt: skip
        out = kernels.mean(q, axes=axes, rounding=rounding, input_zero_point=input_zero_point, zero_point=zero_point,
                           qmin=qmin, qmax=qmax, multiplier=multiplier, shift=shift, input_scale=input_scale,
                           output_scale=output_scale)  # fmt: skip
        return (out.astype(_dtype(to)),)


class MaxPool(OpRun):
    """Standard MaxPool for integer tensors too (the reference implementation pads integers with NaN)."""

    def _run(  # type: ignore[no-untyped-def]
        self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None, pads=None, storage_order=None,
        strides=None,
    ):  # fmt: skip
        assert not ceil_mode and auto_pad in (None, "NOTSET"), "golden MaxPool: explicit pads only"
        rank = len(kernel_shape)
        strides = strides or [1] * rank
        dilations = dilations or [1] * rank
        pads = pads or [0] * 2 * rank
        padded = np.pad(x.astype(np.float64), [(0, 0), (0, 0), *zip(pads[:rank], pads[rank:], strict=True)],
                        constant_values=-np.inf)  # fmt: skip
        out_dims = [
            (x.shape[2 + i] + pads[i] + pads[rank + i] - dilations[i] * (kernel_shape[i] - 1) - 1) // strides[i] + 1
            for i in range(rank)
        ]
        result = np.full((*x.shape[:2], *out_dims), -np.inf)
        for offsets in np.ndindex(*kernel_shape):
            window = tuple(
                slice(o * d, o * d + s * (n - 1) + 1, s)
                for o, d, s, n in zip(offsets, dilations, strides, out_dims, strict=True)
            )
            result = np.maximum(result, padded[(slice(None), slice(None), *window)])
        return (result.astype(x.dtype),)


DEVICE_OPS = [Quantize, Dequantize, IntConv, IntMatMul, IntMul, Requantize, IntAdd, Lut, IntAveragePool, IntMean,
              MaxPool]  # fmt: skip


def run_golden(device: ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of a device graph, computed by the numpy kernels."""
    return list(ReferenceEvaluator(device, new_ops=DEVICE_OPS).run(None, feeds))
