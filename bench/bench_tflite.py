"""The .tflite writer on real models: what it writes, how big, how close LiteRT and TFLite Micro come to the exact tier,
TFLM's arena against autoptq's estimate, and the task metric on LiteRT against the exact tier and float.

    python bench/bench_tflite.py [--quick] [--target tflite-int8|edgetpu|mcu-cortex-m] [--max-drop 0.01]

Models: the shipped example (examples/digits_cnn.onnx, labelled) and the corpus models of bench/corpus.py whose quick
data is in ~/.cache/autoptq-corpus (onnx's `light_*` models are left out: their weights are ConstantOfShape fills fed
by IR-3 graph inputs, which the device graph does not keep constant). Each is loaded and its open input dims bound
from the data as the CLI does; a model whose input size varies in the data is reported as not mapped, with the ops
the audit refuses. The others are prepared and quantized to full int8 for the target (default `tflite-int8`) with its
device-conformant recipe, every op onnxruntime can quantize included, whatever the planner would pick (the writer is
measured here, not the planner), then written, run in LiteRT (BUILTIN_REF) over the validation samples and compared
with the exact tier element by element; the task metric is the corpus's own (bench/corpus.py). TFLM runs models up
to 60 MMACs (its Python interpreter takes seconds per inference beyond). Writes bench/results/tflite.md (another
target: tflite-TARGET.md). On edgetpu, whose host runs what follows the device, an output joining parts of very
different ranges stays float after a DEQUANTIZE; on a host-less target the file returns its int8 parts, which the
application joins (autoptq.techniques.output_joins).

`--max-drop D`: the model is instead what a user with a task metric gets, `autoptq quantize --metric ... --max-drop D`
(autoptq.api.quantize: the plan, then the accuracy loop's fallbacks, bias correction first, held to the corpus task
metric on the same validation samples the table scores), and the row says which trial it chose. Writes
tflite-TARGET-max-drop.md.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import corpus
import numpy as np
import onnx
from benchlib import REPO_DIR, RESULTS_DIR, environment, markdown_table, parse_args

from autoptq.api import QuantizeOptions, bound, load_data, quantize
from autoptq.decide.planner import device_conformant_recipe
from autoptq.decide.tuning import Budget
from autoptq.deploy.tflite_writer import export_tflite
from autoptq.devices.canonical import device_graph, float_model_for
from autoptq.devices.coverage import analyse
from autoptq.devices.profiles import HardwareProfile, load_profile
from autoptq.errors import AutoptqError
from autoptq.evaluate.emulators.integer import build_exact_model
from autoptq.evaluate.emulators.integer import emulate as emulate_integer
from autoptq.evaluate.emulators.tflite_runtime import (
    agreement,
    measure_tflm_arena,
    model_outputs,
    run_litert_per_op,
    run_tflm,
    sample_shapes,
)
from autoptq.evaluate.runner import ModelRunner
from autoptq.io.outputs import write_atomic
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph, load_model
from autoptq.model.prepare import PREPARATION_SAMPLES, prepare
from autoptq.techniques import REGISTRY
from autoptq.techniques.recipe import Recipe

DEFAULT_TARGET = "tflite-int8"
CORPUS = Path.home() / ".cache" / "autoptq-corpus"
TFLM_MAX_MACS = 60e6


@dataclass
class Case:
    name: str
    model: Path
    calib: Path
    val: Path
    entry: corpus.CorpusModel | None = None


def cases(quick: bool, only: str | None = None) -> list[Case]:
    found = [Case("digits_cnn (example)", REPO_DIR / "examples" / "digits_cnn.onnx", *_example_data())]
    if not quick:
        for entry in corpus.CORPUS:
            paths, path = corpus.data_paths(entry, quick=True), corpus.model_path(entry)
            if path.is_file() and paths.truth.is_file() and not entry.name.startswith("light-"):
                found.append(Case(f"corpus {entry.name}", path, paths.calib, paths.val, entry))
    return [c for c in found if only is None or only in c.name]


def _example_data() -> tuple[Path, Path]:
    return REPO_DIR / "examples" / "calib.npz", REPO_DIR / "examples" / "val.npz"


def full_int8(graph: ModelGraph, calib: Dataset, profile: HardwareProfile) -> onnx.ModelProto:
    """The device-conformant full int8 model for the profile, whatever the plan would say (the writer is measured,
    not the planner): the float model as the device compiles it (shapes bound from the data, converter rewrites),
    prepared (constant paths and BatchNorm folded, shapes inferred), then static QDQ."""
    prepared = prepare(float_model_for(graph, profile), calib.take(PREPARATION_SAMPLES)).model
    recipe = device_conformant_recipe(Recipe(), "full_int8", profile, graph, calib)
    # Quantize every op onnxruntime can (also those it leaves in float by default): a device file is all int8.
    recipe = recipe.model_copy(update={"op_types_to_quantize": sorted({n.op_type for n in prepared.graph.node})})
    return REGISTRY["full_int8"].quantize(prepared, recipe, calib, profile).model


def chosen_by_loop(
    case: Case, graph: ModelGraph, calib: Dataset, val: Dataset, profile: HardwareProfile, max_drop: float, folder: Path
) -> tuple[onnx.ModelProto, str]:
    """The QDQ model `autoptq quantize --metric <the corpus task metric> --max-drop` writes, and which trial it is."""
    reference = [ModelRunner(graph.model).run(s) for s in val.samples]
    names = [o.name for o in graph.model.graph.output]

    def metric(outputs: dict[str, list[np.ndarray]], labels: np.ndarray | None) -> float:
        samples = [[outputs[name][i] for name in names] for i in range(len(reference))]
        return task_metric(case, samples, reference, labels)

    out = folder / case.name.replace(" ", "_") / "model.onnx"
    out.parent.mkdir()
    options = QuantizeOptions(budget=Budget(max_drop=max_drop))
    _, outcome = quantize(graph, profile, out, data=calib, validation=val, options=options, metric=metric)
    if outcome.kept_float or outcome.tuning is None:
        raise AutoptqError(f"kept float: {outcome.reason}")
    trial = outcome.tuning.trials[outcome.tuning.chosen]
    corrected = trial.recipe is not None and trial.recipe.bias_correction
    chose = f"loop: trial {trial.index + 1} of {len(outcome.tuning.trials)}, {trial.step}"
    return onnx.load(str(out)), chose + (" + bias correction" if corrected and "bias" not in trial.step else "")


def run_case(
    case: Case, folder: Path, max_val: int, profile: HardwareProfile, max_drop: float | None = None
) -> list[str]:
    graph = load_model(case.model)
    # As the CLI and the API do: open dims (-1, symbolic) are bound from the data before anything else.
    calib, val = load_data(case.calib, graph), load_data(case.val, graph)
    assert calib is not None and val is not None  # paths were given
    graph = bound(graph, calib, val)
    unmapped = not_mapped(graph, profile)
    if unmapped is not None:
        return [case.name, f"not mapped (audit): {unmapped}"] + ["—"] * 5
    val = val.take(max_val)
    output = folder / f"{case.name.replace(' ', '_')}.onnx"
    started = time.perf_counter()
    chose = ""
    try:
        if max_drop is None:
            qdq = full_int8(graph, calib, profile)
        else:
            qdq, chose = chosen_by_loop(case, graph, calib, val, profile, max_drop, folder)
    except AutoptqError as exc:
        return [case.name, f"quantize failed: {exc}"] + ["—"] * 5
    onnx.save(qdq, str(output))
    try:
        exported = export_tflite(qdq, profile, sample_shapes(val.samples))
    except AutoptqError as exc:
        return [case.name, f"not written: {exc}"] + ["—"] * 5
    ops = ", ".join(f"{op} ×{n}" for op, n in exported.op_counts.items())
    size = (
        f"{len(exported.content):,} / {output.stat().st_size:,} ({len(exported.content) / output.stat().st_size:.2f}x)"
    )
    samples = list(val.samples)
    device, per_op = run_litert_per_op(exported, build_exact_model(qdq, profile), qdq, samples)
    exact = emulate_integer(qdq, profile, samples, "exact")
    real = model_outputs(exported, device)
    agreed = agreement(qdq, exported, exact.outputs, real, "litert")
    lsb = "; ".join(f"{a.max_abs_lsb:g} LSB, {a.bit_exact_fraction:.2%} exact" for a in agreed[:3])
    differing = [f"{a.op} {a.max_abs_lsb:g} LSB (tolerance {a.tolerance_lsb})" for a in per_op if a.max_abs_lsb > 0]
    op_verdict = "; ".join(differing) if differing else "bit for bit"
    within = "all" if all(a.within_tolerance for a in per_op) else "NOT all"
    lsb = f"{lsb}; per op: {op_verdict} ({len(per_op)} op types, {within} within tolerance)"
    arena = "—"
    if analyse(graph, profile).total_macs <= TFLM_MAX_MACS:
        run_tflm(exported, samples[:1])
        measured = measure_tflm_arena(exported)
        estimate = exported.arena_estimate.total_bytes
        arena = f"{measured.needed_bytes:,} / {estimate:,} ({estimate / measured.needed_bytes:.2f}x)"
    reference = [ModelRunner(graph.model).run(s) for s in samples]
    name = case.entry.metric if case.entry is not None else "top1"
    metric = " / ".join(
        f"{task_metric(case, outputs, reference, val.labels):.4f}"
        for outputs in (real, [list(o) for o in exact.outputs], reference)
    )
    metric = f"{name} {metric}" + (f" ({chose})" if chose else "")
    seconds = time.perf_counter() - started
    print(f"{case.name}: {seconds:.0f} s", file=sys.stderr)
    return [case.name, ops, size, lsb, arena, metric, f"{seconds:.0f}"]


def not_mapped(graph: ModelGraph, profile: HardwareProfile) -> str | None:
    """Why the device cannot take the model as one static int8 file, from the audit: input sizes that vary in the
    data (a static file has one), and the ops the profile has no int8 kernel for. None when neither applies."""
    varying = [
        f"{i.name}[{a.axis}] {min(a.seen)}..{max(a.seen)}"
        for i in (graph.binding.inputs if graph.binding else [])
        for a in i.axes
        if a.source == "data-max"
    ]
    if not varying:
        return None
    report = analyse(device_graph(graph, profile), profile)
    # Shape-dependent ops are judged on the varying size too: list the ops refused whatever the size.
    missing = Counter(n.op_type for n in report.nodes if n.status in ("unsupported_op", "unsupported_shape"))
    ops = ", ".join(f"{op} ×{n}" for op, n in sorted(missing.items()))
    return f"input size varies in the data ({'; '.join(varying)}): a static file has one size; no int8 kernel: {ops}"


def task_metric(
    case: Case, outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]], labels: object
) -> float:
    """The corpus model's own task metric (bench/corpus.py; `reference` are float's outputs); for the example,
    top-1 accuracy of the first output against its labels."""
    if case.entry is not None:
        truth = corpus.load_truth(corpus.data_paths(case.entry, quick=True).truth)
        count = len(outputs)
        truth = truth.model_copy(
            update={
                "labels": None if truth.labels is None else truth.labels[:count],
                "texts": None if truth.texts is None else truth.texts[:count],
            }
        )
        return corpus.task_metric(case.entry, outputs, truth, reference)
    truth = np.asarray(labels).reshape(-1)[: len(outputs)]
    return float(np.mean(np.array([int(np.argmax(o[0])) for o in outputs]) == truth))


def main() -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        target=DEFAULT_TARGET,
        extra=[("--max-drop", float, "pick the recipe with the accuracy loop under this task-metric drop")],
    )
    profile = load_profile(args.target)
    max_val = 50 if args.quick else 360
    rows = []
    with tempfile.TemporaryDirectory(prefix="autoptq-bench-tflite-") as folder:
        # onnxruntime's calibration leaves temporary files in the working directory: keep them out of the repository
        os.chdir(folder)
        for case in cases(args.quick):
            try:
                count = max_val if case.name.startswith("digits") else 16
                rows.append(run_case(case, Path(folder), count, profile, args.max_drop))
            except Exception as exc:  # a bench reports every model, whatever happens to one of them
                rows.append([case.name, f"error: {type(exc).__name__}: {str(exc)[:200]}"] + ["—"] * 5)
    headers = [
        "model",
        "ops written",
        "bytes .tflite / QDQ ONNX",
        "LiteRT vs exact tier (per output; per op on LiteRT's own inputs)",
        "TFLM arena needed / autoptq estimate",
        "task metric: LiteRT / exact tier / float",
        "s",
    ]
    text = "\n".join(
        [
            "# .tflite writer on real models",
            "",
            f"`python bench/bench_tflite.py{' --quick' if args.quick else ''} --target {args.target}"
            f"{f' --max-drop {args.max_drop}' if args.max_drop is not None else ''}` "
            f"— {environment()}",
            "",
            markdown_table(headers, rows),
            "",
        ]
    )
    suffix = ("" if args.target == DEFAULT_TARGET else f"-{args.target}") + (
        "-max-drop" if args.max_drop is not None else ""
    )
    write_atomic(RESULTS_DIR / f"tflite{suffix}.md", text)
    print(text)


if __name__ == "__main__":
    main()
