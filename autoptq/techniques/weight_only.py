"""Weight-only int8 (dynamic range): int8 weights offline, activations quantized at run time by onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from onnx import ModelProto
from onnxruntime.quantization import quantize_dynamic

from autoptq.deadline import NO_DEADLINE, Deadline
from autoptq.devices.profiles import HardwareProfile
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph
from autoptq.model.ortio import quiet, save_for_ort, scratch_dir
from autoptq.techniques.base import SpacePoint, Technique
from autoptq.techniques.common import QUANT_TYPES, AppliedRecipe, QuantizationError, QuantizationResult, load_result
from autoptq.techniques.recipe import Recipe
from autoptq.techniques.space import OP_GROUPS, conform_weight_only, weight_only_space

INTEGER_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "QAttention"}
DYNAMIC_QUANT_OPS = ("MatMul", "Gemm", "LSTM", "GRU", "Attention")
"""Op types onnxruntime's dynamic quantizer speeds up on a CPU (Conv becomes ConvInteger, which is slow)."""
DYNAMIC_OPS = frozenset({"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM"})
"""Operators only a dynamically quantized model has: they tell its models apart."""


def quantize_weights(model: ModelProto, recipe: Recipe) -> QuantizationResult:
    """Quantize the weights of the op types the recipe names; the rest stays float. No data needed."""
    op_types = recipe.op_types_to_quantize or None
    present = {node.op_type for node in model.graph.node}
    if op_types is not None and not present & set(op_types):
        raise QuantizationError(f"none of the op types {op_types} occurs in the model: nothing to quantize")
    notes: list[str] = []
    if op_types is not None and "Gemm" in op_types and "MatMul" not in op_types:
        # onnxruntime's dynamic quantizer first rewrites Gemm into MatMul + Add, then quantizes only the listed
        # types: without MatMul, a Gemm-only recipe would quantize nothing.
        op_types = [*op_types, "MatMul"]
        if "MatMul" in present:
            notes.append("MatMul added to the op types (onnxruntime rewrites Gemm as MatMul + Add): MatMul nodes too")
    with scratch_dir() as folder, quiet():
        source = save_for_ort(model, folder)
        target = folder / "quantized.onnx"
        try:
            quantize_dynamic(
                str(source),
                str(target),
                op_types_to_quantize=op_types,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                weight_type=QUANT_TYPES[recipe.weight_dtype],
                nodes_to_exclude=recipe.nodes_to_exclude or None,
                extra_options={"MatMulConstBOnly": True},
            )
        except Exception as exc:  # onnxruntime raises bare Exceptions on model shapes it cannot handle
            raise QuantizationError(f"onnxruntime dynamic quantization failed: {exc}") from exc
        quantized = load_result(target)
    converted = sum(1 for node in quantized.graph.node if node.op_type in INTEGER_OPS)
    applied = AppliedRecipe(
        technique="weight_only_int8",
        recipe=recipe,
        quantized_nodes=converted,
        excluded={name: "excluded by the recipe" for name in recipe.nodes_to_exclude},
        notes=notes,
    )
    if converted == 0:
        applied.notes.append("onnxruntime quantized no node (weights may not be constant initializers)")
    return QuantizationResult(model=quantized, applied=applied)


def label(recipe: Recipe) -> str:
    """How the search and the report name a weight-only point of the recipe space."""
    granularity = "per-channel" if recipe.per_channel else "per-tensor"
    return f"weight-only {granularity} {recipe.weight_dtype} {'+'.join(recipe.op_types_to_quantize)}"


class WeightOnlyInt8(Technique):
    """Weight-only int8 (dynamic range quantization): onnxruntime's integer kernels on CPUs, no data needed."""

    name: ClassVar[str] = "weight_only_int8"
    host_timed: ClassVar[bool] = True
    recipe_keys: ClassVar[tuple[str, ...]] = (
        "weight_dtype",
        "per_channel",
        "reduce_range",
        "op_types_to_quantize",
        "nodes_to_exclude",
    )

    def conform(self, base: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None) -> Recipe:
        del data
        recipe = conform_weight_only(base, profile, graph)
        if profile.quantization.int8_dot_product == "int16_pair_saturating":
            recipe = recipe.model_copy(update={"reduce_range": True})  # 7-bit weights: pair sums then fit int16
        return recipe

    def applies(self, recipe: Recipe) -> bool:
        return bool(recipe.op_types_to_quantize)  # no op of the types where dynamic quantization pays

    def nothing_to_quantize(self, base: Recipe, recipe: Recipe) -> tuple[Recipe, str]:
        # An empty list means "every op type" to the quantizers (Conv included): keep the leaf's own list instead.
        wanted = sorted(base.op_types_to_quantize or DYNAMIC_QUANT_OPS)
        return (
            recipe.model_copy(update={"op_types_to_quantize": wanted}),
            f"the model has no {'/'.join(wanted)} node: weight-only int8 would change nothing",
        )

    def fallback_recipe(self, plan_recipe: Recipe, profile: HardwareProfile, data: Dataset | None) -> Recipe | None:
        del data
        # Activations are quantized at run time in float code: not on an integer-only device.
        return None if profile.integer_only else Recipe(reduce_range=plan_recipe.reduce_range)

    def onnxruntime_default(self, profile: HardwareProfile, data: Dataset | None) -> SpacePoint | None:
        # `quantize_dynamic`'s defaults: per-tensor int8 weights, every op type it handles.
        del data
        if profile.integer_only:
            return None
        every_op = sorted({op for ops in OP_GROUPS.values() for op in ops})
        return "onnxruntime quantize_dynamic defaults", Recipe(per_channel=False, op_types_to_quantize=every_op)

    def choice_space(
        self, plan_recipe: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None
    ) -> list[SpacePoint]:
        del data
        return [(label(r), r) for r in weight_only_space(profile, graph, Recipe(reduce_range=plan_recipe.reduce_range))]

    def search_space(
        self, plan_recipe: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None
    ) -> list[SpacePoint]:
        return self.choice_space(plan_recipe, profile, graph, data)

    def known_slow(self, recipe: Recipe, profile: HardwareProfile, int8_ops: set[str]) -> int:
        del profile, int8_ops
        return int("Conv" in recipe.op_types_to_quantize)  # ConvInteger: measured 3-5x float on x86-vnni

    def quantized_nodes(self, graph: ModelGraph, recipe: Recipe) -> set[str]:
        excluded, wanted = set(recipe.nodes_to_exclude), set(recipe.op_types_to_quantize)
        return {n.name for n in graph.compute_nodes() if n.name not in excluded and n.op_type in wanted}

    def boundaries(self, graph: ModelGraph, converted: set[str], recipe: Recipe) -> tuple[int, int]:
        # Dynamic quantization re-quantizes each converted node's input at run time, scanning it for its range
        # first.
        del recipe
        tensors = {t for n in converted for t in graph.node(n).inputs[:1] if t and t not in graph.constants}
        elements = sum(graph.tensors[t].numel() or 0 for t in tensors if t in graph.tensors)
        return len(tensors), elements * 3 // 2

    def kernel_recipe(self, op_type: str, samples: int) -> Recipe:
        del samples
        return Recipe(op_types_to_quantize=[op_type])

    def quantize(
        self,
        model: ModelProto,
        recipe: Recipe,
        calibration: Dataset | None,
        profile: HardwareProfile,
        calibration_cache: Path | None = None,
        deadline: Deadline = NO_DEADLINE,
    ) -> QuantizationResult:
        # Dynamic range needs neither ranges nor device rules; it runs no data, so it has no loop to stop.
        del calibration, profile, calibration_cache, deadline
        return quantize_weights(model, recipe)

    def recognises(self, model: ModelProto) -> bool:
        return bool(DYNAMIC_OPS & {node.op_type for node in model.graph.node})
