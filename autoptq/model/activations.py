"""Intermediate activations of a float model: every float tensor exposed as an output and run in onnxruntime.

Used by the fp16 overflow guard (per-tensor magnitude) and by accuracy diagnostics (per-tensor comparison).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import ModelProto, TensorProto

from autoptq.deadline import NO_DEADLINE, Deadline
from autoptq.model.calibration import Dataset

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}


def float_tensors(model: ModelProto) -> list[str]:
    """Names of the float activations of the main graph (node outputs whose inferred type is float)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    outputs = [out for node in model.graph.node if node.op_type != "Constant" for out in node.output if out]
    return [name for name in outputs if types.get(name) in _FLOAT_TYPES]


def expose(model: ModelProto, names: Iterable[str]) -> ModelProto:
    """A copy of `model` whose graph outputs also include `names`."""
    exposed = ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return exposed


def session(model: ModelProto, optimize: bool = True, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with pinned settings: deterministic thread count, and optimizations on or off."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def absolute_maxima(
    model: ModelProto, data: Dataset, samples: int = 32, deadline: Deadline = NO_DEADLINE
) -> dict[str, float]:
    """Largest magnitude each float activation reaches over the first `samples` samples (inf if it overflows);
    `deadline` is checked before each sample."""
    names = float_tensors(model)
    runner = session(expose(model, names), optimize=False)
    maxima = dict.fromkeys(names, 0.0)
    for feed in deadline.each(data.take(samples).samples):
        for name, value in zip(names, runner.run(names, feed), strict=True):
            value = np.asarray(value)
            if value.size:
                with np.errstate(invalid="ignore"):
                    maxima[name] = max(maxima[name], float(np.max(np.abs(value.astype(np.float64)))))
    return maxima
