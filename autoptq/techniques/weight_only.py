"""Weight-only int8 (dynamic range): int8 weights offline, activations quantized at run time by onnxruntime."""

from __future__ import annotations

from onnx import ModelProto
from onnxruntime.quantization import quantize_dynamic

from autoptq.devices.profiles import HardwareProfile
from autoptq.model.calibration import Dataset
from autoptq.model.ortio import quiet, save_for_ort, scratch_dir
from autoptq.techniques.common import QUANT_TYPES, AppliedRecipe, QuantizationError, QuantizationResult, load_result
from autoptq.techniques.recipe import Recipe

INTEGER_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "QAttention"}


def quantize(
    model: ModelProto, recipe: Recipe, calibration: Dataset | None, profile: HardwareProfile
) -> QuantizationResult:
    """Quantize the weights of the op types the recipe names; the rest stays float. No data needed."""
    del calibration, profile  # dynamic range needs neither ranges nor device rules beyond the recipe
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
