"""Golden reference for the integer emulator: a device graph run as is by `onnx.reference.ReferenceEvaluator`, each
device op an `OpRun` class that hands its inputs and attributes to a numpy kernel of `autoptq.deploy.kernels`
(device-op attribute names are the kernels' parameter names).

It shares nothing with the exact tier but the device graph: the lowering re-derives the same arithmetic from
standard ONNX ops, so bit-for-bit agreement is evidence that both compute what the formulas say.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import ModelProto, helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from autoptq.deploy import kernels
from autoptq.deploy.intgraph import DEVICE_DOMAIN


def _dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


class _DeviceOp(OpRun):
    op_domain = DEVICE_DOMAIN


class Quantize(_DeviceOp):
    def _run(self, x: np.ndarray, to: int, **attributes: Any) -> tuple[np.ndarray]:
        return (kernels.quantize(x, dtype=_dtype(to), **attributes),)


class Dequantize(_DeviceOp):
    def _run(self, q: np.ndarray, **attributes: Any) -> tuple[np.ndarray]:
        return (kernels.dequantize(q, **attributes),)


class IntConv(_DeviceOp):
    def _run(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, **attributes: Any) -> tuple:
        return (kernels.conv_accumulate(x, w, bias, **attributes).astype(np.int32),)


class IntConvTranspose(_DeviceOp):
    def _run(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, **attributes: Any) -> tuple:
        return (kernels.conv_transpose_accumulate(x, w, bias, **attributes).astype(np.int32),)


class IntMatMul(_DeviceOp):
    def _run(self, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None, **attributes: Any) -> tuple:
        return (kernels.matmul_accumulate(a, b, bias, **attributes).astype(np.int32),)


class IntMul(_DeviceOp):
    def _run(self, a: np.ndarray, b: np.ndarray, **attributes: Any) -> tuple[np.ndarray]:
        return (kernels.mul_accumulate(a, b, **attributes).astype(np.int32),)


class Requantize(_DeviceOp):
    def _run(
        self, acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray | None = None, *, to: int, **attributes: Any
    ) -> tuple[np.ndarray]:
        return (kernels.requantize(acc, multiplier, shift, **attributes).astype(_dtype(to)),)


class IntAdd(_DeviceOp):
    def _run(self, a: np.ndarray, b: np.ndarray, to: int, subtract: int, **attributes: Any) -> tuple[np.ndarray]:
        return (kernels.add(a, b, subtract=bool(subtract), **attributes).astype(_dtype(to)),)


class Lut(_DeviceOp):
    def _run(self, q: np.ndarray, table: np.ndarray) -> tuple[np.ndarray]:
        return (kernels.lookup(q, table).astype(table.dtype),)


class IntAveragePool(_DeviceOp):
    def _run(self, q: np.ndarray, count_include_pad: int, **attributes: Any) -> tuple[np.ndarray]:
        return (kernels.average_pool(q, count_include_pad=bool(count_include_pad), **attributes).astype(q.dtype),)


class IntMean(_DeviceOp):
    def _run(self, q: np.ndarray, to: int, **attributes: Any) -> tuple[np.ndarray]:
        return (kernels.mean(q, **attributes).astype(_dtype(to)),)


class MaxPool(OpRun):
    """Standard MaxPool for integer tensors too (the reference implementation pads integers with NaN)."""

    def _run(
        self,
        x: np.ndarray,
        auto_pad: str | None = None,
        ceil_mode: int | None = None,
        dilations: list[int] | None = None,
        kernel_shape: list[int] | None = None,
        pads: list[int] | None = None,
        storage_order: int | None = None,
        strides: list[int] | None = None,
    ) -> tuple[np.ndarray]:
        assert kernel_shape and not ceil_mode and auto_pad in (None, "NOTSET"), "golden MaxPool: explicit pads only"
        rank = len(kernel_shape)
        strides, dilations, pads = strides or [1] * rank, dilations or [1] * rank, pads or [0] * 2 * rank
        widths = [(0, 0), (0, 0), *zip(pads[:rank], pads[rank:], strict=True)]
        padded = np.pad(x.astype(np.float64), widths, constant_values=-np.inf)
        sizes = [
            (x.shape[2 + i] + pads[i] + pads[rank + i] - dilations[i] * (kernel_shape[i] - 1) - 1) // strides[i] + 1
            for i in range(rank)
        ]
        result = np.full((*x.shape[:2], *sizes), -np.inf)
        for offsets in np.ndindex(*kernel_shape):
            window = tuple(
                slice(o * d, o * d + s * (n - 1) + 1, s)
                for o, d, s, n in zip(offsets, dilations, strides, sizes, strict=True)
            )
            result = np.maximum(result, padded[(slice(None), slice(None), *window)])
        return (result.astype(x.dtype),)


DEVICE_OPS = [
    Quantize,
    Dequantize,
    IntConv,
    IntConvTranspose,
    IntMatMul,
    IntMul,
    Requantize,
    IntAdd,
    Lut,
    IntAveragePool,
    IntMean,
]


def run_golden(device: ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of a device graph, computed by the numpy kernels."""
    return list(ReferenceEvaluator(device, new_ops=[*DEVICE_OPS, MaxPool]).run(None, feeds))
