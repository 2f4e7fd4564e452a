"""The recipe space of each technique: the knobs, the values each can take, and which devices allow each value.

The weight-only knobs are data (`WEIGHT_ONLY_KNOBS`, with why each value is or is not offered); the full-int8 knobs
(activation dtype, granularity, op set) are enumerated by `full_int8_space` from the device's rules. A value is
offered only where the device's own rules allow it (its dtypes and granularities, the op types it runs at int8) and
where the model has something for it to act on. The profile stays the hard limit: the space never proposes what the
device's rules forbid.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Iterable

from pydantic import BaseModel, Field

from autoptq.devices.profiles import HardwareProfile
from autoptq.model.graph import ModelGraph
from autoptq.model.ops import DENSE_OPS
from autoptq.techniques.recipe import Recipe

OP_GROUPS: dict[str, tuple[str, ...]] = {
    "dense": DENSE_OPS,
    "embeddings": ("Gather",),
    "recurrent": ("LSTM", "GRU"),
    "attention": ("Attention",),
    "conv": ("Conv",),
}
"""Op types the dynamic (weight-only) quantizer can act on, grouped as the choice is made: dense layers, embedding
tables, recurrent cells, fused attention, convolutions (ConvInteger: small, but slow on onnxruntime's CPU)."""

DEFAULT_WEIGHT_ONLY_GROUPS: tuple[str, ...] = ("dense", "embeddings", "recurrent", "attention")
"""The default op groups on a CPU: onnxruntime's `quantize_dynamic` with MatMul + Gather (+ Gemm, recurrent cells)
is the measured winner on transformer encoders (int8 per-channel weights, the embedding table in 8 bits)."""


class KnobValue(BaseModel):
    """One value of a knob on one device and model: offered or not, and why."""

    knob: str
    value: str
    allowed: bool
    why: str


class Knob(BaseModel):
    """A knob of the recipe space and the Recipe fields each of its values sets."""

    name: str
    technique: str
    values: dict[str, dict[str, object]] = Field(description="value label -> Recipe fields it sets")
    description: str


WEIGHT_ONLY_KNOBS: tuple[Knob, ...] = (
    Knob(
        name="granularity",
        technique="weight_only_int8",
        values={"per_channel": {"per_channel": True}, "per_tensor": {"per_channel": False}},
        description="one weight scale per output channel (finer, same speed) or one per tensor",
    ),
    Knob(
        name="weight_dtype",
        technique="weight_only_int8",
        values={"int8": {"weight_dtype": "int8"}, "uint8": {"weight_dtype": "uint8"}},
        description="signed or unsigned 8-bit weights (the kernel pairs them with u8 activations)",
    ),
    *(
        Knob(
            name=f"ops.{group}",
            technique="weight_only_int8",
            values={"on": {"op_types_to_quantize": list(ops)}, "off": {}},
            description=f"quantize the weights of {'/'.join(ops)} nodes",
        )
        for group, ops in OP_GROUPS.items()
    ),
)


def quantizable_nodes(graph: ModelGraph, op_type: str) -> list[str]:
    """Nodes of `op_type` whose weights the dynamic quantizer would quantize: a constant float weight (Gather: its
    table, input 0; others: any constant input)."""
    found = []
    for node in graph.compute_nodes():
        if node.op_type != op_type:
            continue
        if op_type == "Gather":
            table = node.inputs[0] if node.inputs else ""
            info = graph.tensors.get(table)
            if table in graph.constants and info is not None and info.dtype in ("float", "float32", "float16"):
                found.append(node.name)
        elif node.weight_inputs:
            found.append(node.name)
    return found


def weight_only_options(profile: HardwareProfile, graph: ModelGraph) -> list[KnobValue]:
    """Every value of every weight-only knob on this device and model, with whether it is offered and why."""
    rules = profile.quantization.weights
    options: list[KnobValue] = []
    for knob in WEIGHT_ONLY_KNOBS:
        for value in knob.values:
            options.append(_weight_only_value(knob, value, profile, graph, rules.granularity, rules.dtype))
    return options


def _weight_only_value(
    knob: Knob,
    value: str,
    profile: HardwareProfile,
    graph: ModelGraph,
    granularities: Iterable[str],
    dtypes: Iterable[str],
) -> KnobValue:
    def verdict(allowed: bool, why: str) -> KnobValue:
        return KnobValue(knob=knob.name, value=value, allowed=allowed, why=why)

    if profile.integer_only:
        return verdict(False, "integer-only device: dynamic (float) activations cannot run on it")
    if knob.name == "granularity":
        ok = value in granularities
        return verdict(ok, f"{'allowed' if ok else 'not allowed'} by the device's weight rules")
    if knob.name == "weight_dtype":
        ok = value in dtypes
        return verdict(ok, f"{'allowed' if ok else 'not allowed'} by the device's weight rules")
    if value == "off":
        return verdict(True, "leave these ops in float")
    ops = OP_GROUPS[knob.name.removeprefix("ops.")]
    present = [op for op in ops if quantizable_nodes(graph, op)]
    if not present:
        return verdict(False, f"no {'/'.join(ops)} node with constant float weights in the model")
    if "int8" not in profile.precisions:
        return verdict(False, "the device has no int8 arithmetic")
    # An op the profile lists must list int8; one it does not list runs wherever onnxruntime's CPU kernels run it.
    missing = [op for op in present if op in profile.ops and "int8" not in profile.ops[op]]
    if missing:
        return verdict(False, f"the device runs no int8 {'/'.join(missing)}")
    return verdict(True, f"{', '.join(present)} present with constant weights")


def _allowed(options: list[KnobValue], knob: str) -> list[str]:
    return [o.value for o in options if o.knob == knob and o.allowed]


def conform_weight_only(base: Recipe, profile: HardwareProfile, graph: ModelGraph) -> Recipe:
    """The weight-only recipe as this device and model allow it: the leaf's granularity and weight dtype where the
    device's weight rules allow them (else the first allowed), its op types (the default groups when it names none)
    kept where a node has constant weights to quantize and the device runs the op at int8."""
    options = weight_only_options(profile, graph)
    update: dict[str, object] = {}
    granularity = _allowed(options, "granularity")
    if granularity and ("per_channel" if base.per_channel else "per_tensor") not in granularity:
        update["per_channel"] = granularity[0] == "per_channel"
    dtypes = _allowed(options, "weight_dtype")
    if dtypes and base.weight_dtype not in dtypes:
        update["weight_dtype"] = dtypes[0]
    offered = {op for op in _group_ops(options, OP_GROUPS) if quantizable_nodes(graph, op)}
    wanted = base.op_types_to_quantize or _group_ops(options, DEFAULT_WEIGHT_ONLY_GROUPS)
    update["op_types_to_quantize"] = sorted(op for op in wanted if op in offered)
    return base.model_copy(update=update)


def _group_ops(options: list[KnobValue], groups: Iterable[str]) -> list[str]:
    on = {o.knob.removeprefix("ops.") for o in options if o.knob.startswith("ops.") and o.value == "on" and o.allowed}
    return [op for group in groups if group in on for op in OP_GROUPS[group]]


def weight_only_space(profile: HardwareProfile, graph: ModelGraph, base: Recipe) -> list[Recipe]:
    """Every weight-only recipe the device allows on this model: granularity x weight dtype x non-empty subsets of
    the op groups present (exclusions come later, from measured sensitivity). Deterministic order."""
    options = weight_only_options(profile, graph)
    groups = [
        o.knob.removeprefix("ops.") for o in options if o.knob.startswith("ops.") and o.value == "on" and o.allowed
    ]
    recipes: list[Recipe] = []
    for granularity in _allowed(options, "granularity"):
        for dtype in _allowed(options, "weight_dtype"):
            for size in range(1, len(groups) + 1):
                for chosen in itertools.combinations(groups, size):
                    recipes.append(
                        base.model_copy(
                            update={
                                "per_channel": granularity == "per_channel",
                                "weight_dtype": dtype,
                                "op_types_to_quantize": sorted(
                                    op for g in chosen for op in OP_GROUPS[g] if quantizable_nodes(graph, op)
                                ),
                            }
                        )
                    )
    return recipes


def device_int8_ops(profile: HardwareProfile, graph: ModelGraph) -> list[str]:
    """Op types of the model the device runs as int8 kernels (its profile's `ops` table: data, not code)."""
    present = {n.op_type for n in graph.compute_nodes()}
    return sorted(op for op in present if "int8" in profile.ops.get(op, {}))


def quant_formats(profile: HardwareProfile) -> list[str]:
    """The static formats a device reads: QDQ everywhere; QOperator (QLinear* ops) only where the model runs on
    onnxruntime's CPU execution provider (a CPU profile deployed as ONNX), since no converter or other runtime
    reads those contrib-style ops."""
    ort_cpu = profile.kind == "cpu" and profile.format == "onnx" and not profile.integer_only
    return ["qdq", "qoperator"] if ort_cpu else ["qdq"]


SMOOTH_QUANT_MATMUL_SHARE = 0.5
"""SmoothQuant is offered where MatMul/Gemm with constant weights carry at least this share of the MACs (transformer
encoders): it moves activation outliers into the weights of exactly those ops."""


def smooth_quant_installed() -> bool:
    """Whether onnxruntime's SmoothQuant can run: it imports neural-compressor 2.x's ONNX adaptor (extra
    `autoptq[smoothquant]`)."""
    try:
        return importlib.util.find_spec("neural_compressor.adaptor.ox_utils.smooth_quant") is not None
    except ModuleNotFoundError:
        return False


def smooth_quant_offered(profile: HardwareProfile, graph: ModelGraph) -> bool:
    """SmoothQuant on this device and model: a CPU that keeps float ops beside int8 ones (the inserted scaling Muls
    stay float), a MatMul-heavy model, and the extra installed."""
    if profile.integer_only or not smooth_quant_installed():
        return False
    nodes = graph.compute_nodes()
    total = sum(n.macs for n in nodes)
    dense = sum(n.macs for n in nodes if n.op_type in DENSE_OPS and n.weight_inputs)
    return bool(total) and dense / total >= SMOOTH_QUANT_MATMUL_SHARE


def full_int8_space(profile: HardwareProfile, graph: ModelGraph, base: Recipe) -> list[Recipe]:
    """Every full-int8 recipe the device's rules allow: activation dtype x granularity x op set x format. An
    integer-only device must quantize every op (a float op would run on the host), so it gets the `all` op set
    only."""
    rules = profile.quantization
    dtypes = [d for d in ("uint8", "int8") if d in rules.activations.dtype]
    granularities = [g for g in ("per_channel", "per_tensor") if g in rules.weights.granularity]
    op_sets: list[list[str]] = [[]]
    int8_ops = device_int8_ops(profile, graph)
    present = sorted({n.op_type for n in graph.compute_nodes()})
    if not profile.integer_only and int8_ops and int8_ops != present:
        # "all" spelled out: an empty list would be completed to the device's int8 ops by the planner.
        op_sets = [int8_ops, present]
    recipes = [
        base.model_copy(
            update={
                "activation_dtype": dtype,
                "per_channel": granularity == "per_channel",
                "op_types_to_quantize": ops,
                "quant_format": quant_format,
            }
        )
        for dtype in dtypes
        for granularity in granularities
        for ops in op_sets
        for quant_format in quant_formats(profile)
    ]
    if smooth_quant_offered(profile, graph):
        # Smoothing pays with per-channel weight scales (they absorb the migrated outliers) and the device's
        # preferred activation dtype: only those points get the knob, which keeps the space from doubling.
        recipes += [
            r.model_copy(update={"smooth_quant": True})
            for r in recipes
            if r.per_channel and r.activation_dtype == dtypes[0]
        ]
    return recipes
