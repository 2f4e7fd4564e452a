"""Host cost model: predicted vs measured latency ratio (int8 candidate / fp32) on this machine.

For each model, `autoptq calibrate-host` is run on its shapes (into a temporary table), then for the weight-only
and full-int8 recipes autoptq would consider on x86-vnni, the latency ratio is predicted three ways and measured:

- roofline: autoptq.planner.predict with the profile's assumed constants (what the planner used before);
- host table: autoptq.hostcost.predicted_ratio (fp32 roofline per node, quantized MatMul/Gemm/Conv scaled by the
  measured kernel ratio);
- measured: the quantized model against float, interleaved side by side in this process, one thread.

Ratio error = predicted / measured - 1. Models: the shipped digits CNN, zoo models (text encoder, MobileNet-style,
transformer block) and the MiniLM encoder if bench/export_minilm.py wrote it.

Run: python bench/bench_hostcost.py [--quick]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchlib import REPO_DIR, environment, markdown_table, parse_args, write_result

from autoptq import zoo
from autoptq.api import load_data, split_data
from autoptq.calibration import synthetic_dataset
from autoptq.coverage import analyse
from autoptq.graph import ModelGraph, load_model
from autoptq.hostcost import calibrate_host, predicted_ratio, write_table
from autoptq.planner import device_conformant_recipe, predict
from autoptq.prepare import PREPARATION_SAMPLES, prepare
from autoptq.profiles import load_profile
from autoptq.quantizers import QUANTIZERS
from autoptq.recipe import Recipe
from autoptq.verify import ModelRunner, measure_latency

MINILM = Path.home() / ".cache" / "autoptq-corpus" / "minilm"


def models(quick: bool) -> list[tuple[str, ModelGraph, object, object]]:
    examples = REPO_DIR / "examples"
    digits = load_model(examples / "digits_cnn.onnx")
    found = [("digits CNN", digits, load_data(examples / "calib.npz", digits), load_data(examples / "val.npz", digits))]
    if quick:
        return found
    for name, proto in [
        ("text encoder (zoo)", zoo.text_encoder()),
        ("MobileNet-style 64x64 (zoo)", zoo.mobilenet_style()),
        ("transformer block (zoo)", zoo.transformer_block()),
    ]:
        graph = load_model(proto)
        data = synthetic_dataset(graph, 24)
        found.append((name + ", synthetic data", graph, data, None))
    if (MINILM / "model.onnx").is_file():
        graph = load_model(MINILM / "model.onnx")
        found.append(
            ("MiniLM-L6 encoder", graph, load_data(MINILM / "calib.npz", graph), load_data(MINILM / "val.npz", graph))
        )
    return found


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    profile = load_profile("x86-vnni")
    rows = []
    errors: dict[str, list[float]] = {"roofline": [], "host table": []}
    with tempfile.TemporaryDirectory() as folder:
        for name, graph, data, val in models(args.quick):
            calibration, validation, _ = split_data(graph, data, val, False)
            table_path = Path(folder) / f"{len(rows)}.json"
            model_file = graph.path
            if model_file is None:
                model_file = Path(folder) / "model.onnx"
                model_file.write_bytes(graph.original_bytes())
            table = calibrate_host(profile, model_file)
            write_table(table, table_path)
            prepared = prepare(graph.model, validation.take(PREPARATION_SAMPLES)).model
            coverage = analyse(graph, profile)
            reference = ModelRunner(graph.model)
            for technique in ("weight_only_int8", "full_int8"):
                recipe = device_conformant_recipe(Recipe(), technique, profile, graph, calibration)
                if technique == "weight_only_int8" and not recipe.op_types_to_quantize:
                    continue
                quantized = QUANTIZERS[technique](prepared, recipe, calibration, profile).model
                measured = measure_latency(reference, ModelRunner(quantized), validation.samples[0], budget_s=2.0).ratio
                _, estimate, baseline = predict(graph, coverage, profile, technique, recipe)
                roofline = estimate.estimate_ms / baseline.estimate_ms
                hosted = predicted_ratio(graph, profile, technique, recipe, table)
                errors["roofline"].append(roofline / measured - 1)
                errors["host table"].append(hosted / measured - 1)
                rows.append([
                    name, technique, f"{measured:.2f}", f"{roofline:.2f} ({100 * (roofline / measured - 1):+.0f}%)",
                    f"{hosted:.2f} ({100 * (hosted / measured - 1):+.0f}%)",
                ])  # fmt: skip
                print(rows[-1], flush=True)
    summary = [
        f"- {kind}: median |error| {100 * sorted(abs(e) for e in found)[len(found) // 2]:.0f}%, "
        f"within +-25%: {sum(abs(e) <= 0.25 for e in found)}/{len(found)}"
        for kind, found in errors.items()
        if found
    ]
    headers = ["model", "technique", "measured ratio", "roofline prediction (error)", "host-table prediction (error)"]
    text = "\n".join(
        ["# Host cost model: predicted vs measured latency ratio (x86-vnni recipes, this machine)", "", environment(),
         "", markdown_table(headers, rows), "", *summary]
    )  # fmt: skip
    print(write_result("hostcost", text))


if __name__ == "__main__":
    main()
