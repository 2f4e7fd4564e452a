"""fp16: onnxruntime's float16 converter with the profile's block list and an overflow guard.

The guard keeps in fp32 every node whose weights or calibrated activations (inputs or outputs) exceed the fp16 range
(65504), and says which and why; the converter would otherwise clamp or overflow to inf silently.
"""

from __future__ import annotations

import heapq
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from autoptq.deadline import NO_DEADLINE, Deadline
from autoptq.devices.profiles import HardwareProfile
from autoptq.model.activations import absolute_maxima, session
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph, remove_nodes
from autoptq.model.ops import QDQ_OPS
from autoptq.model.ortio import quiet
from autoptq.techniques.base import SpacePoint, Technique, border_elements, precision_borders
from autoptq.techniques.common import AppliedRecipe, QuantizationError, QuantizationResult
from autoptq.techniques.recipe import Recipe

FP16_MAX = 65504.0
RANGE_SENSITIVE_OPS = frozenset(
    {"Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "ReduceSum", "ReduceMean", "Erf"}
)
"""Ops whose fp16 result loses most: exponentials and powers leave fp16's range or precision first, and long sums
(softmax denominators, LayerNorm's variance) accumulate its 11-bit rounding. The accuracy loop's second fp16 point
keeps them in fp32 (the fp16 block-list knob)."""
HEADROOM = 0.5
"""Activations above half the fp16 range are kept in fp32 too: calibration data rarely shows the true maximum."""


def convert(
    model: ModelProto,
    recipe: Recipe,
    calibration: Dataset | None,
    device_blocked: frozenset[str] | None = None,
    deadline: Deadline = NO_DEADLINE,
) -> QuantizationResult:
    """Convert to fp16 (float I/O kept), except blocked op types and nodes that would overflow. `device_blocked`: the
    block list's op types the device has no fp16 kernel for (the rest the recipe keeps for precision); None: all.
    `deadline`: checked before each calibration sample the overflow guard runs."""
    device_blocked = set(recipe.fp16_op_block_list) if device_blocked is None else device_blocked
    excluded = {name: "excluded by the recipe" for name in recipe.nodes_to_exclude}
    excluded.update(_weight_overflows(model))
    notes: list[str] = []
    if calibration is not None and len(calibration):
        excluded.update(_activation_overflows(model, calibration, deadline))
    else:
        notes.append("no data: the overflow guard checked weights only, not activations")
    # Always an explicit list: None would silently switch to the converter's own defaults instead.
    op_block_list = sorted(set(recipe.fp16_op_block_list) | set(DEFAULT_OP_BLOCK_LIST))
    converted, repaired = _convert_checked(model, op_block_list, excluded)
    excluded.update(repaired)
    blocked = set(recipe.fp16_op_block_list)
    for node in model.graph.node:
        if node.op_type in blocked and node.name not in excluded:
            excluded[node.name] = (
                "op type kept in fp32 by the recipe (precision-sensitive)"
                if node.op_type in RANGE_SENSITIVE_OPS and node.op_type not in device_blocked
                else "op type has no fp16 kernel on the device"
            )
    converter_kept = [n.name for n in model.graph.node if n.op_type in DEFAULT_OP_BLOCK_LIST and n.name not in excluded]
    excluded.update({name: "onnxruntime's fp16 converter keeps this op type in fp32" for name in converter_kept})
    return QuantizationResult(
        model=converted,
        applied=AppliedRecipe(
            technique="fp16",
            recipe=recipe,
            quantized_nodes=len(model.graph.node) - len(excluded),
            excluded=dict(sorted(excluded.items())),
            notes=notes,
        ),
    )


MAX_REPAIRS = 32
"""Nodes the converter's type errors may send back to fp32 before the conversion is given up."""


def _convert_checked(
    model: ModelProto, op_block_list: list[str], excluded: dict[str, str]
) -> tuple[ModelProto, dict[str, str]]:
    """Convert, then load the result in onnxruntime; a node that onnxruntime names in a type error (Resize scales,
    Cast targets, tensors whose declared type the converter left stale) is kept in fp32 and the conversion rerun,
    so one awkward node costs that node, not the whole model."""
    names = {node.name for node in model.graph.node}
    repaired: dict[str, str] = {}
    for _ in range(MAX_REPAIRS):
        problem = None
        try:
            with quiet():
                converted = convert_float_to_float16(
                    model,
                    keep_io_types=True,
                    op_block_list=op_block_list,
                    node_block_list=sorted({*excluded, *repaired}) or None,
                    disable_shape_infer=False,
                )
            # The converter leaves declared types that its own Casts contradict (a node kept in fp32 whose output
            # is still declared fp16): drop them all and let inference derive them from the nodes.
            del converted.graph.value_info[:]
            _sort_topologically(converted.graph)  # the converter appends its Casts after their consumers
            _drop_round_trip_casts(converted)
            session(converted)
        except Exception as exc:  # the converter and onnxruntime raise plain exceptions naming the node
            problem = " ".join(str(exc).split())
        if problem is None:
            return converted, repaired
        node = next((n for n in NODE_IN_MESSAGE.findall(problem) if n in names and n not in repaired), None)
        if node is None:
            raise QuantizationError(f"fp16 conversion failed: {problem[:300]}")
        repaired[node] = f"kept in fp32: the fp16 graph failed to load here ({problem[:160]})"
    raise QuantizationError(f"fp16 conversion failed: still rejected after keeping {len(repaired)} nodes in fp32")


NODE_IN_MESSAGE = re.compile(r"[Nn]ode \(([^()]+)\)")
"""How onnxruntime and onnx name the node in a load or type-inference error: `Node (Resize_12) Op (Resize)`."""


def _weight_overflows(model: ModelProto) -> dict[str, str]:
    large = {}
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if np.issubdtype(values.dtype, np.floating) and values.size and float(np.max(np.abs(values))) > FP16_MAX:
            large[init.name] = float(np.max(np.abs(values)))
    found = {}
    for node in model.graph.node:
        for name in node.input:
            if name in large:
                found[node.name] = f"weight {name!r} reaches {large[name]:.4g} > fp16 max {FP16_MAX:g}"
    return found


def _activation_overflows(model: ModelProto, calibration: Dataset, deadline: Deadline) -> dict[str, str]:
    maxima = absolute_maxima(model, calibration, deadline=deadline)
    for sample in calibration.take(32).samples:  # graph inputs: absolute_maxima covers node outputs only
        for name, value in sample.items():
            value = np.asarray(value)
            if np.issubdtype(value.dtype, np.floating) and value.size:
                maxima[name] = max(maxima.get(name, 0.0), float(np.max(np.abs(value.astype(np.float64)))))
    limit = FP16_MAX * HEADROOM
    found = {}
    for node in model.graph.node:
        # Its readers stay in fp32 too: converting one would cast the large tensor to fp16, i.e. to inf.
        for role, name in [*(("output", o) for o in node.output), *(("input", i) for i in node.input)]:
            if maxima.get(name, 0.0) > limit:
                found[node.name] = (
                    f"{role} {name!r} reaches {maxima[name]:.4g} on calibration data, above {limit:g} "
                    f"(half the fp16 max {FP16_MAX:g})"
                )
                break
    return found


def _drop_round_trip_casts(model: ModelProto) -> None:
    """Remove the converter's fp32 -> fp16 -> fp32 Cast pairs (it inserts them between two nodes kept in fp32, and
    between a float graph input and a node kept in fp32): they would overflow exactly the large values the guard
    keeps in fp32, and round the others."""
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    values = (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    producers = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    read_in_subgraphs = {name for node in graph.node for name in _reads(node)[len(node.input) :]}
    renamed: dict[str, str] = {}
    dropped: list[NodeProto] = []
    firsts: list[NodeProto] = []
    for node in graph.node:
        first = producers.get(node.input[0]) if node.op_type == "Cast" else None
        if (
            first is None
            or _cast_target(node) != TensorProto.FLOAT
            or first.op_type != "Cast"
            or _cast_target(first) != TensorProto.FLOAT16
            or types.get(first.input[0]) != TensorProto.FLOAT
        ):
            continue
        firsts.append(first)
        if node.output[0] in outputs or node.output[0] in read_in_subgraphs:
            node.CopyFrom(helper.make_node("Identity", [first.input[0]], [node.output[0]], name=node.name))
        else:
            renamed[node.output[0]] = first.input[0]
            dropped.append(node)
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    dropped_ids = {id(node) for node in dropped}
    still_read = {name for node in graph.node if id(node) not in dropped_ids for name in _reads(node)}
    unused = [node for node in firsts if node.output[0] not in still_read and node.output[0] not in outputs]
    remove_nodes(graph, [*dropped, *unused])


def _cast_target(node: NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _sort_topologically(graph: GraphProto) -> None:
    """Reorder nodes so every producer precedes its consumers (ONNX requires it), keeping the order otherwise."""
    producers = {out: index for index, node in enumerate(graph.node) for out in node.output if out}
    waiting_on = [{producers[n] for n in _reads(node) if n in producers} - {i} for i, node in enumerate(graph.node)]
    consumers: dict[int, list[int]] = {}
    for index, needs in enumerate(waiting_on):
        for producer in needs:
            consumers.setdefault(producer, []).append(index)
    ready = [index for index, needs in enumerate(waiting_on) if not needs]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for consumer in consumers.get(index, []):
            waiting_on[consumer].discard(index)
            if not waiting_on[consumer]:
                heapq.heappush(ready, consumer)
    placed = set(order)
    order += [index for index in range(len(graph.node)) if index not in placed]  # a cycle: leave those as they were
    nodes = [graph.node[index] for index in order]
    del graph.node[:]
    graph.node.extend(nodes)


def _reads(node: NodeProto) -> list[str]:
    """Tensors a node reads, including those its subgraphs read from the enclosing graph."""
    names = list(node.input)
    for attribute in node.attribute:
        for subgraph in [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs:
            for inner in subgraph.node:
                names += _reads(inner)
    return names


class Fp16(Technique):
    """fp16 weights and activations, float I/O kept, for devices with fp16 arithmetic (GPUs, NPUs)."""

    name: ClassVar[str] = "fp16"
    precision = "fp16"
    weight_bytes: ClassVar[int] = 2
    recipe_keys: ClassVar[tuple[str, ...]] = ("fp16_op_block_list", "nodes_to_exclude")

    def conform(self, base: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None) -> Recipe:
        del data
        blocked = [op for op in {n.op_type for n in graph.compute_nodes()} if "fp16" not in profile.precisions_for(op)]
        return base.model_copy(update={"fp16_op_block_list": sorted(set(base.fp16_op_block_list) | set(blocked))})

    def fallback_recipe(self, plan_recipe: Recipe, profile: HardwareProfile, data: Dataset | None) -> Recipe | None:
        del plan_recipe, data
        return Recipe() if "fp16" in profile.precisions else None

    def quantized_nodes(self, graph: ModelGraph, recipe: Recipe) -> set[str]:
        excluded, blocked = set(recipe.nodes_to_exclude), set(recipe.fp16_op_block_list)
        return {n.name for n in graph.compute_nodes() if n.name not in excluded and n.op_type not in blocked}

    def search_space(
        self, plan_recipe: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None
    ) -> list[SpacePoint]:
        del profile, data
        present = {n.op_type for n in graph.compute_nodes()}
        sensitive = sorted((present & RANGE_SENSITIVE_OPS) - set(plan_recipe.fp16_op_block_list))
        if not sensitive:
            return []
        kept = plan_recipe.model_copy(
            update={"fp16_op_block_list": sorted({*plan_recipe.fp16_op_block_list, *sensitive})}
        )
        return [(f"fp16, {', '.join(sensitive)} kept in fp32", kept)]

    def per_channel_weights(self, recipe: Recipe) -> bool:
        del recipe
        return False  # fp16 weights carry no scales

    def boundaries(self, graph: ModelGraph, converted: set[str], recipe: Recipe) -> tuple[int, int]:
        del recipe
        tensors = precision_borders(graph, converted, float_io=True)  # the converter keeps float I/O
        return len(tensors), border_elements(graph, tensors)

    def quantize(
        self,
        model: ModelProto,
        recipe: Recipe,
        calibration: Dataset | None,
        profile: HardwareProfile,
        calibration_cache: Path | None = None,
        deadline: Deadline = NO_DEADLINE,
    ) -> QuantizationResult:
        del calibration_cache  # the planner put the device's fp16 block list into the recipe
        device_blocked = frozenset(op for op in recipe.fp16_op_block_list if "fp16" not in profile.precisions_for(op))
        return convert(model, recipe, calibration, device_blocked, deadline)

    def recognises(self, model: ModelProto) -> bool:
        if QDQ_OPS & {node.op_type for node in model.graph.node}:
            return False  # a static model (whatever its float parts hold)
        return any(init.data_type == TensorProto.FLOAT16 for init in model.graph.initializer)
