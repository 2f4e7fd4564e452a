"""Static QDQ quantization, shared by full int8 and 16x8: calibrated activation ranges and every recipe knob, device
fixed output parameters through TensorQuantOverrides, and integer graph I/O where the device wants it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import ModelProto, TensorProto, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    create_calibrator,
    quantize_static,
)
from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

from autoptq.deadline import NO_DEADLINE, Deadline
from autoptq.model.calibration import Dataset
from autoptq.model.graph import PER_AXIS_OPSET, drop_unused_initializers, model_opset, remove_nodes
from autoptq.model.intio import write_integer_io
from autoptq.model.ops import QDQ_OPS
from autoptq.model.ortio import quiet, save_for_ort, scratch_dir
from autoptq.techniques.bias_correction import bias_corrected
from autoptq.techniques.common import (
    CALIBRATION_METHODS,
    QUANT_TYPES,
    AppliedRecipe,
    DatasetReader,
    IOQuantization,
    QuantizationError,
    QuantizationResult,
    calibration_samples,
    load_result,
)
from autoptq.techniques.entropy import entropy_threshold
from autoptq.techniques.output_joins import MixedOutputJoin, calibrated_ranges, mixed_output_joins
from autoptq.techniques.recipe import Recipe

_ZERO_POINT_DTYPES = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16}
_ONNX_INT_TYPES = {
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8",
    TensorProto.INT16: "int16",
    TensorProto.UINT16: "uint16",
}


def static_qdq(
    model: ModelProto,
    recipe: Recipe,
    calibration: Dataset | None,
    technique: str,
    calibration_cache: Path | None = None,
    nodes_to_quantize: list[str] | None = None,
    deadline: Deadline = NO_DEADLINE,
) -> QuantizationResult:
    """Static QDQ quantization with the recipe's activation dtype (8- or 16-bit) and int8 weights.

    `calibration_cache` (a JSON file of tensor ranges, written on first use) lets repeated trials on one model and
    calibration method skip calibration; `nodes_to_quantize` restricts quantization to those nodes (sensitivity);
    `deadline` is checked before each calibration sample.
    """
    samples = calibration_samples(calibration, recipe, technique)
    recipe, opset_notes = per_tensor_below_opset_13(model, recipe)
    if recipe.smooth_quant:
        model, recipe = smoothed(model, recipe, samples)
    overrides = fixed_output_overrides(model, recipe)
    extra_options: dict[str, object] = {
        "ActivationSymmetric": recipe.activation_symmetric,
        "WeightSymmetric": recipe.weight_symmetric,
        "TensorQuantOverrides": overrides,
    }
    if recipe.calibration_method == "percentile":
        extra_options["CalibPercentile"] = recipe.calibration_percentile
    if recipe.io_dtype != "float32":
        # Integer I/O: onnxruntime quantizes data movement (Slice, Reshape...) only after a quantized tensor, so a
        # graph input read by slices first (YOLOX's Focus) would stay float; the device needs it quantized.
        extra_options["ForceQuantizeNoInputCheck"] = True
    with scratch_dir() as folder, quiet():
        source = save_for_ort(model, folder)
        target = folder / "quantized.onnx"
        try:
            if not (calibration_cache and calibration_cache.is_file()):
                # A shared cache holds every float tensor's range, so any later op set finds the ones it needs.
                calibrated = recipe.model_copy(update={"op_types_to_quantize": []}) if calibration_cache else recipe
                calibration_cache = collect_ranges(source, samples, calibrated, folder, calibration_cache, deadline)
        except Exception as exc:  # onnxruntime raises bare Exceptions on graphs it cannot handle
            raise QuantizationError(f"onnxruntime calibration failed: {exc}") from exc
        recipe, joins = with_float_output_joins(model, recipe, calibration_cache)
        ranges = calibration_cache
        correction_notes: list[str] = []
        if recipe.bias_correction:
            # Measured on the QDQ spelling of the same recipe (QOperator ops hide the dequantized tensors), with the
            # same ranges file: the corrected model is quantized with the ranges the uncorrected one had.
            measured = recipe.model_copy(update={"quant_format": "qdq"})

            def quantize(float_model: ModelProto) -> ModelProto:
                path = save_for_ort(float_model, folder, "bias-correction-input.onnx")
                _quantize_static(path, target, measured, extra_options, ranges, nodes_to_quantize)
                return load_result(target)

            model, correction_notes = bias_corrected(model, quantize, samples, folder)
            source = save_for_ort(model, folder, "corrected.onnx")
        _quantize_static(source, target, recipe, extra_options, ranges, nodes_to_quantize)
        quantized = load_result(target)
    applied = AppliedRecipe(
        technique=technique,
        recipe=recipe,
        quantized_nodes=_quantized_node_count(quantized, set(recipe.nodes_to_exclude), recipe.quant_format),
        excluded={name: "excluded by the recipe" for name in recipe.nodes_to_exclude}
        | {name: "an output joining parts of very different ranges" for join in joins for name in join.nodes},
        notes=[f"calibrated on {len(samples)} samples ({recipe.calibration_method})", *opset_notes]
        + [join.note() for join in joins]
        + [f"fixed output quantization on {name}" for name in sorted(overrides)]
        + correction_notes,
    )
    if recipe.io_dtype != "float32":
        quantized, applied = make_integer_io(quantized, applied)
    return QuantizationResult(model=quantized, applied=applied)


def _quantize_static(
    source: Path,
    target: Path,
    recipe: Recipe,
    extra_options: dict[str, object],
    ranges: Path,
    nodes_to_quantize: list[str] | None,
) -> None:
    """onnxruntime's quantize_static from a calibrated ranges file (it never calibrates here)."""
    try:
        quantize_static(
            str(source),
            str(target),
            None,
            quant_format=QuantFormat.QOperator if recipe.quant_format == "qoperator" else QuantFormat.QDQ,
            op_types_to_quantize=recipe.op_types_to_quantize or None,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=QUANT_TYPES[recipe.activation_dtype],
            weight_type=QUANT_TYPES[recipe.weight_dtype],
            nodes_to_exclude=recipe.nodes_to_exclude or None,
            calibrate_method=CALIBRATION_METHODS[recipe.calibration_method],
            extra_options=extra_options,
            nodes_to_quantize=nodes_to_quantize,
            calibration_cache_path=str(ranges),
        )
    except Exception as exc:  # onnxruntime raises bare Exceptions on graphs it cannot handle
        raise QuantizationError(f"onnxruntime static quantization failed: {exc}") from exc


def with_float_output_joins(model: ModelProto, recipe: Recipe, ranges: Path) -> tuple[Recipe, list[MixedOutputJoin]]:
    """The recipe with the nodes of outputs that join parts of very different ranges excluded, where it asks for
    that and its activations are 8-bit (16 bits leave the narrow part enough levels)."""
    if not recipe.float_output_joins or recipe.activation_dtype not in ("int8", "uint8"):
        return recipe, []
    joins = mixed_output_joins(model, calibrated_ranges(ranges))
    added = [name for join in joins for name in join.nodes if name not in recipe.nodes_to_exclude]
    return recipe.model_copy(update={"nodes_to_exclude": [*recipe.nodes_to_exclude, *added]}), joins


def smoothed(model: ModelProto, recipe: Recipe, samples: Dataset) -> tuple[ModelProto, Recipe]:
    """SmoothQuant (onnxruntime's, from neural-compressor 2.x): per-channel scales move activation outliers of
    MatMul inputs into the weights, as Mul nodes before them. The Muls are kept float, as onnxruntime does."""
    try:
        from neural_compressor.adaptor.ox_utils.smooth_quant import ORTSmoothQuant
    except ImportError as exc:
        raise QuantizationError(
            f"SmoothQuant needs neural-compressor 2.x (pip install 'autoptq[smoothquant]'): {exc}"
        ) from exc
    before = {node.name for node in model.graph.node}
    feeds = [(sample, None) for sample in samples.samples]
    work = ModelProto()
    work.CopyFrom(model)  # the smoother rewrites the weights of the model it is given in place
    try:
        with quiet():
            # Folding the scales into preceding ops fails on scalar Mul constants (neural-compressor 2.6, MiniLM):
            # the scales stay explicit Muls instead.
            transformed = ORTSmoothQuant(work, feeds, recipe.reduce_range).transform(
                recipe.smooth_quant_alpha, folding=False, op_types=["MatMul", "Gemm"], calib_iter=len(feeds)
            )
    except Exception as exc:  # neural-compressor raises whatever its graph walk hits
        raise QuantizationError(f"SmoothQuant failed: {exc}") from exc
    smoothed_model = transformed.model
    added = [node.name for node in smoothed_model.graph.node if node.name not in before]
    return smoothed_model, recipe.model_copy(update={"nodes_to_exclude": [*recipe.nodes_to_exclude, *added]})


def per_tensor_below_opset_13(model: ModelProto, recipe: Recipe) -> tuple[Recipe, list[str]]:
    """Per-channel weights need per-axis DequantizeLinear (opset 13). Preparation upgrades older models; where the
    upgrade failed, the weights are quantized per tensor instead, and the recipe says so."""
    opset = model_opset(model)
    if not recipe.per_channel or opset >= PER_AXIS_OPSET:
        return recipe, []
    note = f"weights per tensor: the model stays at opset {opset} (the upgrade to 13 failed) and per-axis needs 13"
    return recipe.model_copy(update={"per_channel": False}), [note]


def ranges_file(recipe: Recipe) -> str:
    """The name of a calibration cache that recipes calibrating alike share: the method, its percentile, the
    activation width (entropy searches thresholds over the quantized levels) and the sample count."""
    levels = _levels(recipe.activation_dtype) if recipe.calibration_method == "entropy" else 0
    percentile = recipe.calibration_percentile if recipe.calibration_method == "percentile" else 0
    smooth = f"-smooth{recipe.smooth_quant_alpha}" if recipe.smooth_quant else ""  # a different float graph
    return f"ranges-{recipe.calibration_method}-{percentile}-{levels}-{recipe.calibration_samples}{smooth}.json"


ENTROPY_HISTOGRAM_BINS = 2048
"""KL-divergence calibration (TensorRT's): a 2048-bin histogram searched for the clipping range that loses least
when squeezed into the quantized levels (autoptq.techniques.entropy). onnxruntime's histogram is symmetric about
zero, so an 8-bit tensor has 256 levels across it. quantize_static fixes both at 128, which leaves one candidate
threshold: entropy = min/max."""


def collect_ranges(
    source: Path, samples: Dataset, recipe: Recipe, folder: Path, cache: Path | None, deadline: Deadline = NO_DEADLINE
) -> Path:
    """Calibrate one sample at a time with onnxruntime's own calibrators; write the ranges where quantize_static
    reads its calibration cache.

    onnxruntime's quantize_static keeps every intermediate output of every sample before computing a range:
    memory grows with samples x activations, and samples of different shapes (a recogniser's line widths) cannot
    be stacked for the histograms. Its calibrators merge ranges and histograms across `collect_data` calls, so
    feeding them one sample per call keeps one sample's activations in memory, whatever the sample count; `deadline`
    is checked before each sample (the cache is written only once every sample is in)."""
    method = CALIBRATION_METHODS[recipe.calibration_method]
    options: dict[str, object] = {}
    if recipe.calibration_method == "entropy":
        options = {"num_bins": ENTROPY_HISTOGRAM_BINS, "num_quantized_bins": _levels(recipe.activation_dtype)}
    elif recipe.calibration_method == "percentile":
        options = {"percentile": recipe.calibration_percentile}
    calibrator = create_calibrator(
        source,
        recipe.op_types_to_quantize or None,
        augmented_model_path=str(folder / "augmented.onnx"),
        calibrate_method=method,
        extra_options=options,
    )
    calibrator.infer_session = _session_without_memory_patterns(calibrator.augmented_model_path)
    progress = DatasetReader(samples, label=f"calibrating ({recipe.calibration_method})")
    try:
        while (sample := progress.get_next()) is not None:
            deadline.check()
            calibrator.collect_data(OneSample(sample))
    finally:
        progress.close()  # also when stopped part way: the bar must not stay on the terminal
    if recipe.calibration_method == "entropy":
        # The collector's own threshold search loops over bins in Python (seconds per tensor): use autoptq's, with
        # the deadline checked before each tensor.
        def threshold(histogram: tuple[np.ndarray, np.ndarray, object, object], levels: int) -> tuple[object, object]:
            deadline.check()
            return entropy_threshold(histogram, levels)

        calibrator.collector.get_entropy_threshold = threshold
    ranges = calibrator.compute_data() if method != CalibrationMethod.MinMax else calibrator.calibrate_tensors_range
    path = cache or folder / f"{recipe.calibration_method}-ranges.json"
    save_tensors_data(without_histograms(ranges), path)
    del calibrator
    return path


RANGE_FIELDS = frozenset({"lowest", "highest", "avg", "std"})


def without_histograms(ranges: TensorsData) -> TensorsData:
    """The ranges without the histograms they were computed from. The quantizers read only each tensor's range;
    entropy calibration's 2048-bin histogram per tensor made the cache JSON, which every quantize_static call
    parses, ~700x larger (digits CNN). Byte-identical models; the default choice on ppocr-det (x86-vnni) spent 7 of
    133 s writing and reading it."""
    kept = {
        name: TensorData(**{k: getattr(data, k) for k in sorted(RANGE_FIELDS) if hasattr(data, k)})
        for name, data in ranges.data.items()
    }
    return TensorsData(ranges.calibration_method, kept)


def _session_without_memory_patterns(augmented_model_path: str) -> ort.InferenceSession:
    """The calibrator's session as onnxruntime builds it (no graph optimizations), but without memory patterns:
    onnxruntime caches one allocation plan per input shape, and the augmented model outputs every calibrated
    tensor, so samples of many widths (a recogniser's text lines) grew memory by ~6 MB per sample, ~400 MB over
    100 samples of a 10 MB model."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_mem_pattern = False
    return ort.InferenceSession(augmented_model_path, sess_options=options, providers=["CPUExecutionProvider"])


class OneSample(CalibrationDataReader):
    """A reader of a single sample: one `collect_data` call per sample."""

    def __init__(self, sample: dict[str, np.ndarray]) -> None:
        self._sample: dict[str, np.ndarray] | None = sample

    def get_next(self) -> dict[str, np.ndarray] | None:
        sample, self._sample = self._sample, None
        return sample


def _levels(dtype: str) -> int:
    # 16-bit tensors have more levels than the histogram has bins: the whole range is the only candidate then.
    return 256 if dtype in ("int8", "uint8") else ENTROPY_HISTOGRAM_BINS


def fixed_output_overrides(model: ModelProto, recipe: Recipe) -> dict[str, list[dict[str, object]]]:
    """TensorQuantOverrides pinning the outputs of ops whose quantization the device fixes (e.g. Softmax)."""
    dtype = recipe.activation_dtype
    if dtype not in ("int8", "uint8"):
        return {}
    overrides: dict[str, list[dict[str, object]]] = {}
    excluded = set(recipe.nodes_to_exclude)
    for node in model.graph.node:
        fixed = recipe.fixed_output_params.get(node.op_type)
        if fixed is None or node.name in excluded or not node.output:
            continue
        # The device's parameters are stated for int8; a uint8 tensor holds the same reals shifted by 128.
        zero_point = fixed.zero_point + (128 if dtype == "uint8" else 0)
        overrides[node.output[0]] = [
            {
                "scale": np.array(fixed.scale, dtype=np.float32),
                "zero_point": np.array(zero_point, dtype=_ZERO_POINT_DTYPES[dtype]),
            }
        ]
    return overrides


def _quantized_node_count(model: ModelProto, excluded: set[str], quant_format: str = "qdq") -> int:
    """Compute nodes fed by at least one DequantizeLinear (the ones that now run on quantized values); an excluded
    node reading a quantized activation still computes in float. QOperator: the QLinear*/QGemm-style ops."""
    if quant_format == "qoperator":
        return sum(1 for node in model.graph.node if node.op_type.startswith("Q") and node.op_type != "QuantizeLinear")
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return sum(
        1
        for node in model.graph.node
        if node.op_type not in QDQ_OPS and node.name not in excluded and dequantized.intersection(node.input)
    )


def make_integer_io(model: ModelProto, applied: AppliedRecipe) -> tuple[ModelProto, AppliedRecipe]:
    """Remove the QuantizeLinear at each graph input and the DequantizeLinear at each output, so the model takes and
    returns integers as the device does; record each boundary's scale and zero point."""
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    io: list[IOQuantization] = []
    notes = list(applied.notes)
    removed: list[onnx.NodeProto] = []
    for value in graph.input:
        users = consumers.get(value.name, [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear":
            notes.append(f"input {value.name!r} stays float: it is not consumed by a single QuantizeLinear")
            continue
        quant = users[0]
        params = _scale_zero_point(quant, constants)
        if params is None:
            notes.append(f"input {value.name!r} stays float: its quantization parameters are not constant")
            continue
        scale, zero_point, elem_type = params
        _rename_input(graph, quant.output[0], value.name)
        value.type.tensor_type.elem_type = elem_type
        removed.append(quant)
        io.append(IOQuantization(name=value.name, dtype=_ONNX_INT_TYPES[elem_type], scale=scale, zero_point=zero_point))
    producers = {out: node for node in graph.node for out in node.output}
    for value in graph.output:
        dequant = producers.get(value.name)
        if dequant is None or dequant.op_type != "DequantizeLinear":
            notes.append(f"output {value.name!r} stays float: it is not produced by a DequantizeLinear")
            continue
        if consumers.get(value.name):
            notes.append(f"output {value.name!r} stays float: it is also used inside the graph")
            continue
        params = _scale_zero_point(dequant, constants)
        if params is None:
            notes.append(f"output {value.name!r} stays float: its quantization parameters are not one constant pair")
            continue
        scale, zero_point, elem_type = params
        quantized_tensor = dequant.input[0]
        if len(consumers.get(quantized_tensor, [])) != 1:
            notes.append(f"output {value.name!r} stays float: its integer tensor is shared")
            continue
        for node in graph.node:
            node.output[:] = [value.name if o == quantized_tensor else o for o in node.output]
        value.type.tensor_type.elem_type = elem_type
        removed.append(dequant)
        io.append(IOQuantization(name=value.name, dtype=_ONNX_INT_TYPES[elem_type], scale=scale, zero_point=zero_point))
    remove_nodes(graph, removed)
    drop_unused_initializers(graph)
    write_integer_io(model, io)
    return model, applied.model_copy(update={"integer_io": io, "notes": notes})


def _scale_zero_point(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> tuple[float, int, int] | None:
    if len(node.input) < 3 or node.input[1] not in constants or node.input[2] not in constants:
        return None
    scale, zero_point = constants[node.input[1]], constants[node.input[2]]
    if scale.size != 1:
        return None
    elem_type = onnx.helper.np_dtype_to_tensor_dtype(zero_point.dtype)
    if elem_type not in _ONNX_INT_TYPES:
        return None
    return float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0]), elem_type


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
