"""Host cost model: predicted vs measured latency ratio (int8 candidate / fp32) on this machine.

For each model, `autoptq calibrate-host` is run on its shapes (into a temporary table), then for the weight-only
and full-int8 recipes autoptq would consider on x86-vnni, the latency ratio is predicted three ways and measured:

- roofline: autoptq.evaluate.estimate.predict with the profile's assumed constants (what the planner used before);
- host table: autoptq.decide.hostcost.predicted_ratio (fp32 roofline per node, quantized MatMul/Gemm/Conv scaled by the
  measured kernel ratio);
- measured: the quantized model against float, interleaved side by side in this process, one thread.

Ratio error = predicted / measured - 1. Models: the shipped digits CNN, zoo models (text encoder, MobileNet-style,
transformer block), the MiniLM encoder if bench/export_minilm.py wrote it, and the corpus of bench/corpus.py with its
quick data (open input dims bound from the data, as `autoptq quantize` does).

Run: python bench/bench_hostcost.py [--quick] [--corpus-only]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchlib import REPO_DIR, environment, markdown_table, write_result

from autoptq.api import bound, load_data, split_data
from autoptq.decide.hostcost import calibrate_host, predicted_ratio, write_table
from autoptq.decide.planner import device_conformant_recipe
from autoptq.devices.canonical import float_model_for
from autoptq.devices.coverage import analyse
from autoptq.devices.profiles import load_profile
from autoptq.evaluate.estimate import predict
from autoptq.evaluate.runner import ModelRunner, measure_latency
from autoptq.model import zoo
from autoptq.model.calibration import synthetic_dataset
from autoptq.model.graph import ModelGraph, load_model
from autoptq.model.prepare import PREPARATION_SAMPLES, prepare
from autoptq.techniques import REGISTRY
from autoptq.techniques.recipe import Recipe

RECIPES = (("weight_only_int8", "qdq"), ("full_int8", "qdq"), ("full_int8", "qoperator"))
CORPUS = Path.home() / ".cache" / "autoptq-corpus"
MINILM = CORPUS / "minilm"


def corpus_models() -> list[tuple[str, ModelGraph, object, object]]:
    """The corpus models with stacked quick data (models/<name>/*.onnx, data/<name>/quick/{calib,val}.npz)."""
    found = []
    for model in sorted(CORPUS.glob("models/*/*.onnx")):
        data = CORPUS / "data" / model.parent.name / "quick"
        if (data / "calib.npz").is_file() and (data / "val.npz").is_file():
            graph = load_model(model)
            calib, val = load_data(data / "calib.npz", graph), load_data(data / "val.npz", graph)
            found.append((model.parent.name, bound(graph, calib, val), calib, val))
    return found


def models(quick: bool, corpus_only: bool) -> list[tuple[str, ModelGraph, object, object]]:
    if corpus_only:
        return corpus_models()
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
    return found + corpus_models()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the digits CNN only")
    parser.add_argument("--corpus-only", action="store_true", help="the corpus models only")
    args = parser.parse_args()
    profile = load_profile("x86-vnni")
    rows = []
    errors: dict[str, list[float]] = {"roofline": [], "host table": []}
    with tempfile.TemporaryDirectory() as folder:
        for name, graph, data, val in models(args.quick, args.corpus_only):
            calibration, validation, _ = split_data(graph, data, val, False)
            table_path = Path(folder) / f"{len(rows)}.json"
            table = calibrate_host(profile, graph)
            write_table(table, table_path)
            float_model = float_model_for(graph, profile)
            prepared = prepare(float_model, validation.take(PREPARATION_SAMPLES)).model
            coverage = analyse(graph, profile)
            reference = ModelRunner(float_model)
            for technique, quant_format in RECIPES:
                base = Recipe(quant_format=quant_format)
                recipe = device_conformant_recipe(base, technique, profile, graph, calibration)
                if technique == "weight_only_int8" and not recipe.op_types_to_quantize:
                    continue
                quantized = REGISTRY[technique].quantize(prepared, recipe, calibration, profile).model
                measured = measure_latency(reference, ModelRunner(quantized), validation.samples[0], budget_s=2.0).ratio
                _, estimate, baseline = predict(graph, coverage, profile, technique, recipe)
                roofline = estimate.estimate_ms / baseline.estimate_ms
                hosted = predicted_ratio(graph, profile, technique, recipe, table)
                errors["roofline"].append(roofline / measured - 1)
                errors["host table"].append(hosted / measured - 1)
                label = technique + (" QOperator" if quant_format == "qoperator" else "")
                rows.append([
                    name, label, f"{measured:.2f}", f"{roofline:.2f} ({100 * (roofline / measured - 1):+.0f}%)",
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
    print(write_result("hostcost_corpus" if args.corpus_only else "hostcost", text))


if __name__ == "__main__":
    main()
