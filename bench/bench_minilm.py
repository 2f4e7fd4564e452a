"""The transformer-encoder target: autoptq's default on the MiniLM-L6 sentence encoder vs onnxruntime by hand.

Model and sentences from bench/export_minilm.py (~/.cache/autoptq-corpus/minilm). Three models, each timed side by
side with fp32 (interleaved, one thread, 3 s per pair) and compared per sentence with the fp32 embedding:

- autoptq default: `autoptq.api.quantize(model, "x86-vnni", data=calib, validation=val)`, no options;
- ORT per-channel: `quantize_dynamic(per_channel=True, weight_type=QInt8, op_types_to_quantize=[MatMul, Gather])`,
  the hand recipe of issue 11;
- ORT defaults: `quantize_dynamic` with no options.

Target (issue 11): >= 2x faster at <= 0.30x size with min cosine >= 0.98 to fp32, by default.

Run: python bench/bench_minilm.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from benchlib import environment, markdown_table, write_result
from onnxruntime.quantization import QuantType, quantize_dynamic

from autoptq import api
from autoptq.api import load_data
from autoptq.evaluate.runner import ModelRunner, measure_latency
from autoptq.model.graph import load_model

MINILM = Path.home() / ".cache" / "autoptq-corpus" / "minilm"


def cosines(reference: ModelRunner, candidate: ModelRunner, samples: list[dict[str, np.ndarray]]) -> list[float]:
    found = []
    for sample in samples:
        a, b = reference.run(sample)[0].ravel(), candidate.run(sample)[0].ravel()
        found.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return found


def main() -> None:
    model = MINILM / "model.onnx"
    if not model.is_file():
        raise SystemExit(f"{model} missing: run bench/export_minilm.py first")
    graph = load_model(model)
    validation = load_data(MINILM / "val.npz", graph)
    float_size = model.stat().st_size
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        ours = Path(folder) / "autoptq.onnx"
        _, outcome = api.quantize(model, "x86-vnni", ours, data=MINILM / "calib.npz", validation=MINILM / "val.npz")
        seconds = time.perf_counter() - start
        step = next((a.step for a in outcome.attempts if a.verification is outcome.verification), "float")
        hand = Path(folder) / "ort_per_channel.onnx"
        quantize_dynamic(str(model), str(hand), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gather"])  # fmt: skip
        plain = Path(folder) / "ort_defaults.onnx"
        quantize_dynamic(str(model), str(plain))
        reference = ModelRunner(graph.model)
        for name, path in [
            (f"autoptq default ({outcome.technique}: {step}; {seconds:.0f} s)", ours),
            ("ORT quantize_dynamic per-channel MatMul+Gather", hand),
            ("ORT quantize_dynamic defaults", plain),
        ]:
            candidate = ModelRunner(onnx.load(str(path)))
            timing = measure_latency(reference, candidate, validation.samples[0], budget_s=3.0)
            found = cosines(reference, candidate, validation.samples)
            rows.append([
                name, f"{1 / timing.ratio:.2f}x", f"{path.stat().st_size / float_size:.2f}x",
                f"{min(found):.4f}", f"{np.mean(found):.4f}",
            ])  # fmt: skip
            print(rows[-1], flush=True)
    headers = ["model", "speed-up vs fp32", "size vs fp32", "min cosine", "mean cosine"]
    text = "\n".join([
        "# MiniLM-L6 sentence encoder on x86-vnni (this machine): autoptq default vs onnxruntime by hand", "",
        environment(), f"; {len(validation)} validation sentences", "", markdown_table(headers, rows),
    ])  # fmt: skip
    print(write_result("minilm", text))


if __name__ == "__main__":
    main()
