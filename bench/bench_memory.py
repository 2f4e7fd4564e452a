"""Peak memory of quantization against the number of samples: autoptq vs plain onnxruntime, on real models.

For each variable-width recogniser of the real-model corpus (`bench/corpus.py`: PP-OCR rec, ddddocr's OCR model,
folders of one-sample `.npz` files of different widths), the same calibration and validation data at 8, 32 and 100
samples each:
- `autoptq quantize MODEL -t x86-vnni --technique full_int8 --data CALIB --val VAL` (calibration, quantization,
  verification and timing; full int8 is the path that calibrates), and
- onnxruntime's `quantize_static` with its defaults and a data reader over the same calibration samples,
each in a child process, whose peak RSS (`wait4` rusage, i.e. VmHWM) is reported. Issue 9's target: under 1.5 GB
at 100 samples for a 16 MB model, and growing with model size and tensor count, not with the sample count.

Run: python bench/bench_memory.py [--quick]   (--quick: 8 and 32 samples, PP-OCR rec only)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import corpus
import real_models
from benchlib import environment, markdown_table, parse_args, write_result

NAME = "memory"
MODELS = ("ppocr-rec", "ddddocr-ocr")
COUNTS = (8, 32, 100)
TIMEOUT_S = 1800.0


def data_folders(model: corpus.CorpusModel, count: int, root: Path) -> tuple[Path, Path]:
    """`count` calibration and `count` validation samples of the model's real inputs, as folders of `.npz`."""
    calib, val = root / f"calib-{count}", root / f"val-{count}"
    corpus.write_samples(corpus.build_samples(model, count, "calib"), calib)
    corpus.write_samples(corpus.build_samples(model, count, "val"), val)
    return calib, val


def measure(model: corpus.CorpusModel, count: int, root: Path) -> list[str]:
    """One table row: peak RSS of autoptq and of onnxruntime's static quantization at `count` samples."""
    path = corpus.fetch(model)
    calib, val = data_folders(model, count, root)
    autoptq = [*real_models.AUTOPTQ, "quantize", str(path), "-t", "x86-vnni", "--technique", "full_int8"]
    autoptq += ["--data", str(calib), "--val", str(val), "-o", str(root / f"autoptq-{count}.onnx")]
    ours, _ = real_models.run_child(autoptq, TIMEOUT_S, "quantize", "x86-vnni")
    ort_argv = [sys.executable, str(Path(real_models.__file__).resolve()), "--ort-baseline", "static", str(path)]
    ort, _ = real_models.run_child([*ort_argv, str(calib), str(root / f"ort-{count}.onnx")], TIMEOUT_S, "ort", None)
    size_mb = path.stat().st_size / 2**20

    def rss(run: real_models.CommandRun) -> str:
        return f"{run.peak_rss_mb:.0f}" if run.exit_code in (0, 1) else f"error: {run.error}"

    return [model.name, f"{size_mb:.1f}", str(count), rss(ours), f"{ours.seconds:.0f}", rss(ort), f"{ort.seconds:.0f}"]


def main() -> None:
    args = parse_args(__doc__ or "")
    models = [m for m in corpus.CORPUS if m.name in (MODELS[:1] if args.quick else MODELS)]
    counts = COUNTS[:2] if args.quick else COUNTS
    rows = []
    for model in models:
        with tempfile.TemporaryDirectory() as tmp:
            for count in counts:
                rows.append(measure(model, count, Path(tmp)))
                print(" | ".join(rows[-1]), flush=True)
    headers = ["model", "MB", "samples (calib = val)", "autoptq peak RSS MB", "autoptq s", "ORT static peak RSS MB"]
    text = "\n\n".join(
        [
            "# Peak memory of quantization against the sample count (bench_memory)",
            environment(),
            "autoptq: `quantize -t x86-vnni --technique full_int8 --data CALIB --val VAL` (calibration, quantization, "
            "verification, timing). ORT static: `quantize_static` defaults over the same calibration samples. Peak "
            "RSS of each child process (VmHWM). Seconds are wall times on a shared machine, for orientation only.",
            markdown_table([*headers, "ORT s"], rows),
        ]
    )
    print(f"wrote {write_result(NAME, text + chr(10))}")


if __name__ == "__main__":
    main()
