"""The .tflite writer on real models: what it writes, how big, how close LiteRT and TFLite Micro come to the exact tier,
TFLM's arena against autoptq's estimate, and the task metric on LiteRT against float.

    python bench/bench_tflite.py [--quick]

Models: the shipped example (examples/digits_cnn.onnx, labelled) and the CNNs of the real-model corpus under
~/.cache/autoptq-corpus when present (onnx's `light_*` models are left out: their weights are ConstantOfShape fills
fed by IR-3 graph inputs, which the device graph does not keep constant). Each is prepared and quantized to full
int8 for the `tflite-int8` profile with its device-conformant recipe, every op onnxruntime can quantize included,
whatever the planner would pick (the writer is measured here, not the planner), then written, run in LiteRT
(BUILTIN_REF) over the validation samples and compared with the exact tier element by element; TFLM runs models up
to 60 MMACs (its Python interpreter takes seconds per inference beyond). Writes bench/results/tflite.md.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from benchlib import REPO_DIR, RESULTS_DIR, environment, markdown_table, parse_args

from autoptq.calibration import Dataset, load_dataset
from autoptq.coverage import analyse
from autoptq.emulators.integer import emulate as emulate_integer
from autoptq.emulators.tflite_runtime import agreement, measure_tflm_arena, run_litert, run_tflm, sample_shapes
from autoptq.errors import AutoptqError
from autoptq.graph import ModelGraph, load_model
from autoptq.outputs import write_atomic
from autoptq.planner import device_conformant_recipe
from autoptq.prepare import PREPARATION_SAMPLES, prepare
from autoptq.profiles import load_profile
from autoptq.quantizers import QUANTIZERS
from autoptq.recipe import Recipe
from autoptq.tflite_writer import export_tflite
from autoptq.verify import ModelRunner

PROFILE = load_profile("tflite-int8")
CORPUS = Path.home() / ".cache" / "autoptq-corpus"
TFLM_MAX_MACS = 60e6


@dataclass
class Case:
    name: str
    model: Path
    calib: Path | None
    val: Path | None


def cases(quick: bool) -> list[Case]:
    found = [Case("digits_cnn (example)", REPO_DIR / "examples" / "digits_cnn.onnx", *_example_data())]
    if quick:
        return found
    for folder in sorted((CORPUS / "models").glob("*")) if (CORPUS / "models").is_dir() else []:
        models = sorted(folder.glob("*.onnx"))
        data = CORPUS / "data" / folder.name / "quick"
        if models and (data / "calib.npz").is_file() and not folder.name.startswith("light-"):
            found.append(Case(f"corpus {folder.name}", models[0], data / "calib.npz", data / "val.npz"))
    return found


def _example_data() -> tuple[Path, Path]:
    return REPO_DIR / "examples" / "calib.npz", REPO_DIR / "examples" / "val.npz"


def random_data(model: onnx.ModelProto, count: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        sample = {}
        for value in model.graph.input:
            if value.name in {i.name for i in model.graph.initializer}:
                continue
            shape = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
            sample[value.name] = rng.standard_normal(shape).astype(np.float32)
        samples.append(sample)
    return Dataset(samples, None, "random N(0, 1)", synthetic=True)


def full_int8(graph: ModelGraph, calib: Dataset) -> onnx.ModelProto:
    """The device-conformant full int8 model for the profile, whatever the plan would say (the writer is measured,
    not the planner): prepared (constant paths and BatchNorm folded, shapes inferred), then static QDQ."""
    prepared = prepare(graph.model, calib.take(PREPARATION_SAMPLES)).model
    recipe = device_conformant_recipe(Recipe(), "full_int8", PROFILE, graph, calib)
    # Quantize every op onnxruntime can (also those it leaves in float by default): a device file is all int8.
    recipe = recipe.model_copy(update={"op_types_to_quantize": sorted({n.op_type for n in prepared.graph.node})})
    return QUANTIZERS["full_int8"](prepared, recipe, calib, PROFILE).model


def run_case(case: Case, folder: Path, max_val: int) -> list[str]:
    graph = load_model(case.model)
    if case.calib is None:
        calib, val = random_data(graph.model, 32, 0), random_data(graph.model, 8, 1)
    else:
        calib = load_dataset(case.calib, graph)
        val = load_dataset(case.val, graph)
    val = val.take(max_val)
    output = folder / f"{case.name.replace(' ', '_')}.onnx"
    started = time.perf_counter()
    try:
        qdq = full_int8(graph, calib)
    except AutoptqError as exc:
        return [case.name, f"quantize failed: {exc}"] + ["—"] * 5
    onnx.save(qdq, str(output))
    try:
        exported = export_tflite(qdq, PROFILE, sample_shapes(val.samples))
    except AutoptqError as exc:
        return [case.name, f"not written: {exc}"] + ["—"] * 5
    ops = ", ".join(f"{op} ×{n}" for op, n in exported.op_counts.items())
    size = (
        f"{len(exported.content):,} / {output.stat().st_size:,} ({len(exported.content) / output.stat().st_size:.2f}x)"
    )
    samples = list(val.samples)
    device = run_litert(exported, samples)
    exact = emulate_integer(qdq, PROFILE, samples, "exact")
    real = [
        [
            np.asarray(v, np.float64) if io.scale is None else (v.astype(np.float64) - io.zero_point) * io.scale
            for v, io in zip(s, exported.outputs, strict=True)
        ]
        for s in device
    ]
    agreed = agreement(qdq, exported, exact.outputs, real, "litert")
    lsb = "; ".join(f"{a.max_abs_lsb:g} LSB, {a.bit_exact_fraction:.2%} exact" for a in agreed[:3])
    arena = "—"
    if analyse(graph, PROFILE).total_macs <= TFLM_MAX_MACS:
        run_tflm(exported, samples[:1])
        measured = measure_tflm_arena(exported)
        estimate = exported.arena_estimate.total_bytes
        arena = f"{measured.needed_bytes:,} / {estimate:,} ({estimate / measured.needed_bytes:.2f}x)"
    metric = task_metric(graph.model, samples, real, val.labels)
    seconds = time.perf_counter() - started
    print(f"{case.name}: {seconds:.0f} s", file=sys.stderr)
    return [case.name, ops, size, lsb, arena, metric, f"{seconds:.0f}"]


def task_metric(
    model: onnx.ModelProto, samples: list[dict[str, np.ndarray]], device: list[list[np.ndarray]], labels: object
) -> str:
    """Top-1 accuracy (labels) or top-1 agreement with float (no labels) of the first output, LiteRT vs float."""
    runner = ModelRunner(model)
    floats = [runner.run(s)[0] for s in samples]
    first = [d[0] for d in device]
    if np.asarray(floats[0]).ndim != 2:
        cosine = np.mean(
            [
                float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
                for a, b in zip(floats, first, strict=True)
            ]
        )
        return f"cosine to float {cosine:.4f}"
    top_float = np.array([int(np.argmax(f)) for f in floats])
    top_device = np.array([int(np.argmax(d)) for d in first])
    if labels is not None:
        truth = np.asarray(labels).reshape(-1)[: len(samples)]
        return f"top-1 {np.mean(top_device == truth):.4f} vs float {np.mean(top_float == truth):.4f}"
    return f"top-1 agreement with float {np.mean(top_device == top_float):.3f}"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    max_val = 50 if args.quick else 360
    rows = []
    with tempfile.TemporaryDirectory(prefix="autoptq-bench-tflite-") as folder:
        # onnxruntime's calibration leaves temporary files in the working directory: keep them out of the repository
        os.chdir(folder)
        for case in cases(args.quick):
            try:
                rows.append(run_case(case, Path(folder), max_val if case.name.startswith("digits") else 16))
            except Exception as exc:  # a bench reports every model, whatever happens to one of them
                rows.append([case.name, f"error: {type(exc).__name__}: {str(exc)[:200]}"] + ["—"] * 5)
    headers = [
        "model",
        "ops written",
        "bytes .tflite / QDQ ONNX",
        "LiteRT vs exact tier (per output)",
        "TFLM arena needed / autoptq estimate",
        "task metric, LiteRT",
        "s",
    ]
    text = "\n".join(
        [
            "# .tflite writer on real models",
            "",
            f"`python bench/bench_tflite.py{' --quick' if args.quick else ''}` — {environment()}",
            "",
            markdown_table(headers, rows),
            "",
        ]
    )
    write_atomic(RESULTS_DIR / "tflite.md", text)
    print(text)


if __name__ == "__main__":
    main()
