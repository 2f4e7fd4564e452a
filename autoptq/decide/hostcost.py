"""A measured host cost model: `autoptq calibrate-host` times onnxruntime's fp32 and int8 kernels on this machine.

For the MatMul and Conv shapes of a model (or a default grid), one-node models are built, quantized the two ways a
CPU target uses (weight-only dynamic int8; static QDQ int8, u8 activations, per-channel s8 weights) and timed side
by side with fp32, interleaved in one process, one thread. The table is cached (under the user's cache folder, or
`--cache`) and read by the default choice to rank candidates by predicted latency ratio on this machine, in place of
the roofline's assumed constants.

The prediction of a candidate: sum over compute nodes of the roofline's fp32 time (plus the per-op overhead), each
quantized MatMul/Gemm/Conv scaled by the measured int8/fp32 ratio of the nearest timed shape (by MACs) of its kind,
divided by the fp32 sum.
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime
from onnx import ModelProto, TensorProto, helper, numpy_helper
from pydantic import BaseModel, Field

from autoptq.devices.cost import node_seconds
from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError
from autoptq.evaluate.runner import ModelRunner, measure_latency
from autoptq.io.outputs import write_atomic
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph, load_model
from autoptq.techniques import REGISTRY, by_name
from autoptq.techniques.recipe import Recipe, TechniqueName

Kernel = Literal["MatMul", "Conv"]
KERNEL_OF = {"MatMul": "MatMul", "Gemm": "MatMul", "Conv": "Conv"}
MAX_SHAPES = 12
DEFAULT_SHAPES: list[tuple[Kernel, tuple[int, ...]]] = [
    ("MatMul", (1, 256, 256)),
    ("MatMul", (64, 384, 384)),
    ("MatMul", (64, 384, 1536)),
    ("MatMul", (128, 768, 768)),
    ("Conv", (16, 16, 32, 32, 3)),
    ("Conv", (64, 64, 16, 16, 3)),
    ("Conv", (128, 128, 8, 8, 1)),
]
"""MatMul (M, K, N); Conv (C_in, C_out, H, W, kernel): common transformer and convnet layer sizes."""


class KernelTiming(BaseModel):
    """fp32 and int8 latency of one kernel shape on this machine (medians, interleaved runs)."""

    kernel: Kernel
    shape: list[int] = Field(description="MatMul: M, K, N; Conv: C_in, C_out, H, W, kernel")
    macs: int
    fp32_ms: float
    ratio: dict[str, float] = Field(description="technique -> int8 latency / fp32 latency")


class HostTable(BaseModel):
    """The measured kernel table of one machine and onnxruntime version."""

    machine: str
    onnxruntime_version: str
    threads: int = 1
    timings: list[KernelTiming]

    def ratio(self, kernel: Kernel, technique: str, macs: int) -> float | None:
        """The measured int8/fp32 ratio of the nearest timed shape (by log MACs) of this kernel and technique."""
        found = [t for t in self.timings if t.kernel == kernel and technique in t.ratio]
        if not found:
            return None
        nearest = min(found, key=lambda t: abs(math.log(max(t.macs, 1)) - math.log(max(macs, 1))))
        return nearest.ratio[technique]


def machine_id() -> str:
    """What a table is valid for: CPU architecture and onnxruntime version."""
    return f"{platform.machine()}-ort{onnxruntime.__version__}"


def default_cache() -> Path:
    """Where `calibrate-host` writes and the planner reads the table (XDG cache folder)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "autoptq" / f"host-{machine_id()}.json"


def load_table(path: Path | None = None) -> HostTable | None:
    """The cached table for this machine, or None when there is none (or it is for another machine)."""
    path = path or default_cache()
    if not path.is_file():
        return None
    table = HostTable.model_validate_json(path.read_text(encoding="utf-8"))
    return table if table.machine == machine_id() else None


def model_shapes(graph: ModelGraph) -> list[tuple[Kernel, tuple[int, ...]]]:
    """The MatMul/Gemm (constant weight) and ungrouped Conv shapes of a model, by MACs, at most MAX_SHAPES."""
    found: dict[tuple[Kernel, tuple[int, ...]], int] = {}
    for node in graph.compute_nodes():
        kernel = KERNEL_OF.get(node.op_type)
        if kernel is None or not node.weight_inputs or len(node.inputs) < 2:
            continue
        source, weight = graph.tensors.get(node.inputs[0]), graph.tensors.get(node.inputs[1])
        if source is None or weight is None or source.shape is None or weight.shape is None:
            continue
        dims = [d if isinstance(d, int) else 1 for d in source.shape]
        wdims = [d for d in weight.shape if isinstance(d, int)]
        if kernel == "MatMul" and len(wdims) == 2 and dims:
            rows = int(np.prod(dims[:-1])) if len(dims) > 1 else 1
            shape: tuple[int, ...] = (rows, wdims[0], wdims[1])
        elif kernel == "Conv" and len(dims) == 4 and len(wdims) == 4 and wdims[1] == dims[1]:
            shape = (dims[1], wdims[0], dims[2], dims[3], wdims[2])
        else:
            continue
        found[(kernel, shape)] = node.macs
    ranked = sorted(found, key=lambda key: -found[key])
    return ranked[:MAX_SHAPES]


def _kernel_model(kernel: Kernel, shape: tuple[int, ...], seed: int = 0) -> tuple[ModelProto, Dataset, int]:
    rng = np.random.default_rng(seed)
    if kernel == "MatMul":
        m, k, n = shape
        weight = numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="kernel")
        x_shape, y_shape, macs = [1, m, k], [1, m, n], m * k * n
    else:
        c_in, c_out, h, w, size = shape
        weight = numpy_helper.from_array(
            (rng.standard_normal((c_out, c_in, size, size)) / np.sqrt(c_in * size * size)).astype(np.float32), "w"
        )
        node = helper.make_node("Conv", ["x", "w"], ["y"], name="kernel", pads=[size // 2] * 4)
        x_shape, y_shape, macs = [1, c_in, h, w], [1, c_out, h, w], c_in * c_out * h * w * size * size
    graph = helper.make_graph(
        [node],
        "kernel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    samples = [{"x": rng.standard_normal(x_shape).astype(np.float32)} for _ in range(4)]
    return model, Dataset(samples=samples, labels=None, source="calibrate-host"), macs


def time_kernel(kernel: Kernel, shape: tuple[int, ...], profile: HardwareProfile, budget_s: float) -> KernelTiming:
    """fp32 vs weight-only and static int8 for one shape, interleaved side by side."""
    model, data, macs = _kernel_model(kernel, shape)
    reference = ModelRunner(model)
    ratios: dict[str, float] = {}
    fp32_ms = 0.0
    for timed in (t for t in REGISTRY.values() if t.host_timed):
        recipe = timed.kernel_recipe(kernel, len(data))
        quantized = timed.quantize(model, recipe, data, profile).model
        timing = measure_latency(reference, ModelRunner(quantized), data.samples[0], budget_s=budget_s)
        ratios[timed.name] = timing.ratio
        fp32_ms = timing.float_ms
    return KernelTiming(kernel=kernel, shape=list(shape), macs=macs, fp32_ms=fp32_ms, ratio=ratios)


def calibrate_host(
    profile: HardwareProfile, model: str | Path | ModelGraph | None = None, budget_s: float = 0.5
) -> HostTable:
    """Time this machine's kernels for the model's shapes (or the default grid). A loaded graph may have its open
    input dims bound from data (api.bound), which a path cannot."""
    graph = model if isinstance(model, ModelGraph) or model is None else load_model(model)
    shapes = model_shapes(graph) if graph is not None else []
    shapes = shapes or DEFAULT_SHAPES
    return HostTable(
        machine=machine_id(),
        onnxruntime_version=onnxruntime.__version__,
        timings=[time_kernel(kernel, shape, profile, budget_s) for kernel, shape in shapes],
    )


def write_table(table: HostTable, path: Path | None = None) -> Path:
    """Cache the table (merging with the shapes already timed there)."""
    path = path or default_cache()
    path.parent.mkdir(parents=True, exist_ok=True)
    old = load_table(path)
    if old is not None:
        new_keys = {(t.kernel, tuple(t.shape)) for t in table.timings}
        kept = [t for t in old.timings if (t.kernel, tuple(t.shape)) not in new_keys]
        table = table.model_copy(update={"timings": [*kept, *table.timings]})
    write_atomic(path, table.model_dump_json(indent=2) + "\n")
    return path


def predicted_ratio(
    graph: ModelGraph, profile: HardwareProfile, technique: TechniqueName, recipe: Recipe, table: HostTable
) -> float:
    """Predicted latency / fp32 latency of a candidate on this machine (see the module docstring)."""
    if not by_name(technique).host_timed:
        raise AutoptqError(f"the host table has no {technique} timings")
    excluded = set(recipe.nodes_to_exclude)
    wanted = set(recipe.op_types_to_quantize)
    total = scaled = 0.0
    for node in graph.compute_nodes():
        seconds = node_seconds(node, "fp32", profile) + profile.cost.per_op_overhead_s
        total += seconds
        kernel = KERNEL_OF.get(node.op_type)
        quantized = kernel is not None and node.name not in excluded and (not wanted or node.op_type in wanted)
        ratio = table.ratio(kernel, technique, node.macs) if quantized and kernel else None
        scaled += seconds * (ratio if ratio is not None else 1.0)
    return scaled / total if total else 1.0
