"""Every autoptq command on the public real-model corpus, against fp32 and plain onnxruntime quantization.

For each corpus model (bench/corpus.py) and each shipped target, the CLI runs as a user would, each command in a child
process: `audit`, `plan`, `quantize` (into a temporary folder), `check` (the quantized model against the fp32 one on
the validation data), and `variants` once with all targets. Each run records its exit code, the last stderr line on
failure, wall time and the child's peak RSS (`os.wait4` rusage, i.e. VmHWM). Baselines on the same model and data:
fp32, onnxruntime `quantize_static` (QDQ defaults, a data reader over the calibration samples) and `quantize_dynamic`
(defaults), each also in a child process so that its peak RSS is comparable.

Latency ratios are measured for the host target (x86-vnni, this machine) side by side in one process: 1 intra-op
thread, the models interleaved in each repeat, the median of the repeats. The other targets are not this machine: their
models are scored (task metric), not timed.

    python bench/real_models.py [--models a,b] [--targets x,y] [--quick] [--timeout 1200]

Writes bench/results/real_models.json and docs/real-models.md. A failing command is a row with its error, never a
crash of the bench; each command has a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import corpus
import numpy as np
import onnx
from benchlib import REPO_DIR, RESULTS_DIR, environment, markdown_table
from pydantic import BaseModel

from autoptq.io.outputs import write_atomic

HOST_TARGET = "x86-vnni"
AUTOPTQ = [sys.executable, "-m", "autoptq.cli"]


class CommandRun(BaseModel):
    """One child process: what ran, how it ended, what it cost."""

    command: str
    target: str | None
    exit_code: int | None  # None: killed at the timeout
    seconds: float
    peak_rss_mb: float
    error: str | None = None
    stray_files: list[str] = []  # files the command left in its working folder (outside its output)


class TargetResult(BaseModel):
    target: str
    audit_mac_fraction: float | None = None
    planned_technique: str | None = None
    technique: str | None = None
    kept_float: bool | None = None
    reason: str | None = None
    size_ratio: float | None = None
    metric: float | None = None
    metric_note: str | None = None
    check_passed: bool | None = None
    check_tier: str | None = None
    latency_ratio: float | None = None
    runs: list[CommandRun] = []


class Baseline(BaseModel):
    name: str
    size_ratio: float | None = None
    metric: float | None = None
    latency_ratio: float | None = None
    run: CommandRun | None = None
    error: str | None = None


class ModelResult(BaseModel):
    name: str
    kind: str
    exporter: str
    metric_basis: str
    size_bytes: int
    calib_samples: int
    val_samples: int
    fp32_metric: float
    targets: list[TargetResult]
    baselines: list[Baseline]
    variants: CommandRun | None = None
    variants_summary: dict[str, str] = {}
    error: str | None = None


class BenchResult(BaseModel):
    environment: str
    command: str
    quick: bool
    models: list[ModelResult]


# ---------------------------------------------------------------- child processes


# Runs argv, waits for it with wait4 and writes its peak RSS (KB) to a file. This small launcher forks the command:
# on Linux a child's ru_maxrss starts from its parent's RSS at fork time, so forking the command straight from the
# bench (hundreds of MB of sessions) would floor every measurement there.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(
    argv: list[str], timeout: float, label: str, target: str | None, answers: tuple[int, ...] = (0, 1)
) -> tuple[CommandRun, str]:
    """Run argv in its own process group; kill the group at the timeout. Returns the run and its stdout. Exit codes
    in `answers` are results (autoptq: 1 = fails the device's rules, or nothing beat float); others are errors."""
    start = time.perf_counter()
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory() as tmp,
        tempfile.TemporaryDirectory() as cwd,
    ):
        rss_file = Path(tmp) / "maxrss"
        launcher = [sys.executable, "-S", "-c", _LAUNCHER, str(rss_file), *argv]
        # An empty working folder: whatever the command leaves there was written outside its output.
        process = subprocess.Popen(launcher, stdout=out, stderr=err, cwd=cwd, start_new_session=True)
        try:
            process.wait(timeout=timeout)
            exit_code: int | None = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            exit_code = None
        seconds = time.perf_counter() - start
        peak_kb = int(rss_file.read_text()) if rss_file.is_file() else 0
        stray = sorted(p.name for p in Path(cwd).iterdir())
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", errors="replace")
        stderr = err.read().decode("utf-8", errors="replace")
    error = None
    if exit_code is None:
        error = f"timed out after {timeout:.0f} s"
    elif exit_code not in answers:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        error = lines[-1][:400] if lines else f"exit {exit_code}, no stderr"
    run = CommandRun(
        command=label,
        target=target,
        exit_code=exit_code,
        seconds=round(seconds, 2),
        peak_rss_mb=round(peak_kb / 1024, 1),
        error=error,
        stray_files=stray,
    )
    return run, stdout


def json_of(stdout: str) -> dict | None:
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        return None


def ort_baseline_child(kind: str, model: Path, calib: Path, output: Path) -> None:
    """In a child process: plain onnxruntime quantization with its defaults."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

    if kind == "dynamic":
        quantize_dynamic(str(model), str(output))
        return
    feeds = corpus.load_samples(calib)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(str(model), str(output), Reader())


# ---------------------------------------------------------------- scoring and timing


def integer_io_adapter(path: Path) -> tuple[dict[str, tuple[float, int, np.dtype]], dict[str, tuple[float, int]]]:
    """Scale and zero point of each integer model input (from the DequantizeLinear it feeds) and integer output
    (from the QuantizeLinear that makes it), so float data can be fed and float outputs scored."""
    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            inits[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    integer = {
        onnx.TensorProto.INT8: np.int8,
        onnx.TensorProto.UINT8: np.uint8,
        onnx.TensorProto.INT16: np.int16,
        onnx.TensorProto.UINT16: np.uint16,
    }
    inputs, outputs = {}, {}
    for value in model.graph.input:
        dtype = integer.get(value.type.tensor_type.elem_type)
        if dtype is None:
            continue
        for node in model.graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] == value.name:
                zero = int(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else 0
                inputs[value.name] = (float(inits[node.input[1]]), zero, np.dtype(dtype))
    for value in model.graph.output:
        if value.type.tensor_type.elem_type not in integer:
            continue
        for node in model.graph.node:
            if node.op_type == "QuantizeLinear" and node.output[0] == value.name:
                zero = int(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else 0
                outputs[value.name] = (float(inits[node.input[1]]), zero)
    return inputs, outputs


def model_outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Float outputs of any variant on the val feeds: integer I/O is quantized / dequantized at the boundary."""
    import onnxruntime as ort

    q_in, q_out = integer_io_adapter(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_types = {i.name: i.type for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    results = []
    for feed in feeds:
        adapted = {}
        for name, array in feed.items():
            if name in q_in:
                scale, zero, dtype = q_in[name]
                info = np.iinfo(dtype)
                adapted[name] = np.clip(np.round(array / scale) + zero, info.min, info.max).astype(dtype)
            elif input_types.get(name) == "tensor(float16)":
                adapted[name] = array.astype(np.float16)
            else:
                adapted[name] = array
        outs = session.run(None, adapted)
        floats = []
        for name, out in zip(names, outs, strict=True):
            if name in q_out:
                scale, zero = q_out[name]
                out = (out.astype(np.float32) - zero) * scale
            floats.append(np.asarray(out, dtype=np.float32) if np.issubdtype(out.dtype, np.floating) else out)
        results.append(floats)
    return results


def score(
    model: corpus.CorpusModel, path: Path, feeds: list, truth: corpus.Truth, reference: list
) -> tuple[float | None, str | None]:
    try:
        return round(corpus.task_metric(model, model_outputs(path, feeds), truth, reference), 4), None
    except Exception as exc:  # a variant that does not run is a result, not a crash of the bench
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def latency_ratios(fp32: Path, others: dict[str, Path], feeds: list, repeats: int) -> dict[str, float]:
    """Median time over the val feeds of each model / fp32's, interleaved in one process, 1 intra-op thread."""
    import onnxruntime as ort

    sessions = {}
    for name, path in {"fp32": fp32, **others}.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception:
            continue
    runnable = {}
    for name, session in sessions.items():
        types = {i.name: i.type for i in session.get_inputs()}
        if any(t not in ("tensor(float)",) for t in types.values()):
            continue  # integer or fp16 I/O: not a host CPU variant
        try:
            session.run(None, feeds[0])  # warm-up
            runnable[name] = session
        except Exception:
            continue
    times: dict[str, list[float]] = {name: [] for name in runnable}
    for _ in range(repeats):
        for name, session in runnable.items():
            start = time.perf_counter()
            for feed in feeds:
                session.run(None, feed)
            times[name].append(time.perf_counter() - start)
    if "fp32" not in times:
        return {}
    base = statistics.median(times["fp32"])
    return {name: round(statistics.median(t) / base, 3) for name, t in times.items() if name != "fp32"}


# ---------------------------------------------------------------- one model


def bench_model(model: corpus.CorpusModel, targets: list[str], quick: bool, timeout: float, work: Path) -> ModelResult:
    path = corpus.fetch(model)
    data = corpus.build_data(model, quick)
    val_feeds = corpus.load_samples(data.val)
    truth = corpus.load_truth(data.truth)
    reference = corpus.run_model(path, val_feeds)
    fp32_metric = corpus.task_metric(model, reference, truth, reference)
    size = path.stat().st_size
    n_calib, n_val = corpus.sample_counts(quick)
    result = ModelResult(
        name=model.name,
        kind=model.kind,
        exporter=model.exporter,
        metric_basis=model.metric_basis,
        size_bytes=size,
        calib_samples=n_calib,
        val_samples=n_val,
        fp32_metric=round(fp32_metric, 4),
        targets=[],
        baselines=[],
    )
    folder = work / model.name
    folder.mkdir(parents=True, exist_ok=True)
    data_args = ["--data", str(data.calib)]
    quantized: dict[str, Path] = {}
    for target in targets:
        row = TargetResult(target=target)
        # The audit binds open dims (batch, H, W) from the data, as a user passing --data gets.
        audit_args = [*AUTOPTQ, "audit", str(path), "--target", target, "-f", "json", *data_args]
        run, out = run_child(audit_args, timeout, "audit", target)
        row.runs.append(run)
        audit = json_of(out)
        if audit and audit.get("results"):
            row.audit_mac_fraction = audit["results"][0].get("device_mac_fraction")
        argv = [*AUTOPTQ, "plan", str(path), "--target", target, *data_args, "-f", "json"]
        run, out = run_child(argv, timeout, "plan", target)
        row.runs.append(run)
        plan = json_of(out)
        if plan and plan.get("results"):
            row.planned_technique = plan["results"][0].get("technique")
        output = folder / target / "model.onnx"
        output.parent.mkdir(parents=True, exist_ok=True)
        argv = [*AUTOPTQ, "quantize", str(path), "--target", target, *data_args, "--val", str(data.val)]
        run, out = run_child([*argv, "-o", str(output), "-f", "json"], timeout, "quantize", target)
        row.runs.append(run)
        report = json_of(out)
        if report and report.get("results"):
            first = report["results"][0]
            row.technique, row.kept_float, row.reason = (
                first.get("technique"),
                first.get("kept_float"),
                first.get("reason"),
            )
        if output.is_file():
            quantized[target] = output
            row.size_ratio = round(output.stat().st_size / size, 3)
            row.metric, row.metric_note = score(model, output, val_feeds, truth, reference)
            argv = [*AUTOPTQ, "check", str(output), "--target", target, "--reference", str(path)]
            run, out = run_child([*argv, "--data", str(data.val), "-f", "json"], timeout, "check", target)
            row.runs.append(run)
            check = json_of(out)
            if check and check.get("results"):
                row.check_passed, row.check_tier = check["results"][0].get("passed"), check["results"][0].get("tier")
        result.targets.append(row)
    # variants: all targets in one call
    argv = [*AUTOPTQ, "variants", str(path), "--targets", ",".join(targets), *data_args, "--val", str(data.val)]
    run, _ = run_child([*argv, "-o", str(folder / "variants")], timeout, "variants", None)
    result.variants = run
    manifest = folder / "variants" / "manifest.json"
    if manifest.is_file():
        for variant in json.loads(manifest.read_text(encoding="utf-8")).get("variants", []):
            state = "failed" if variant.get("failed") else ("float" if variant.get("kept_float") else "quantized")
            result.variants_summary[variant["target"]] = f"{variant.get('technique')} ({state})"
    # baselines: plain onnxruntime, in child processes for a comparable peak RSS
    baseline_paths: dict[str, Path] = {}
    for kind in ("static", "dynamic"):
        output = folder / f"ort-{kind}.onnx"
        argv = [sys.executable, str(Path(__file__).resolve()), "--ort-baseline", kind, str(path), str(data.calib)]
        run, _ = run_child([*argv, str(output)], timeout, f"ort quantize_{kind}", None, answers=(0,))
        baseline = Baseline(name=f"ort-{kind}", run=run, error=run.error)
        if run.exit_code == 0 and output.is_file():
            baseline_paths[kind] = output
            baseline.size_ratio = round(output.stat().st_size / size, 3)
            baseline.metric, note = score(model, output, val_feeds, truth, reference)
            baseline.error = note
        result.baselines.append(baseline)
    # latency, host target only, side by side
    timed = {f"ort-{k}": p for k, p in baseline_paths.items()}
    if HOST_TARGET in quantized:
        timed[HOST_TARGET] = quantized[HOST_TARGET]
    ratios = latency_ratios(path, timed, val_feeds[: 4 if quick else 8], repeats=5 if quick else 9)
    for row in result.targets:
        if row.target == HOST_TARGET:
            row.latency_ratio = ratios.get(HOST_TARGET)
    for baseline in result.baselines:
        baseline.latency_ratio = ratios.get(baseline.name)
    return result


# ---------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


INTRO = """\
Trained models that nobody here wrote, shipped inside PyPI packages, run through every autoptq command as a
user would (each command a child process), against fp32 and plain onnxruntime quantization (`quantize_static`
QDQ defaults with a data reader over the same calibration samples, `quantize_dynamic` defaults). Models, data
and metrics are declared in `bench/corpus.py`; the harness is `bench/real_models.py`; raw results in
`bench/results/real_models.json`."""
HOST_COLUMNS = """\
Columns: `fp32` the float model's metric; `technique` what `autoptq quantize --target x86-vnni` produced
(`(float)`: it kept float); `autoptq` / `ORT static` / `ORT dynamic` the task metric of each quantized model;
`size` file size / fp32; `latency` time over the val samples / fp32's, measured side by side in one process
(1 intra-op thread, models interleaved, median of repeats; — where the model did not run on the CPU EP);
`RSS` peak resident memory of the child process (MB): autoptq quantize vs a child running ORT
`quantize_static` on the same data."""
TARGET_COLUMNS = """\
`MACs on device` from `autoptq audit --format json` (`device_mac_fraction`); `planned` from `plan`; `result`
from `quantize`; `metric` the task metric of the produced model run with onnxruntime on this CPU (integer I/O
quantized/dequantized at the boundary with the model's own parameters; fp16 models run as fp16); `check`
whether `autoptq check` passed, and its tier; `exits` the exit code of a(udit), p(lan), q(uantize), c(heck)
(T: timed out); `q s` / `q RSS` wall time and peak RSS of quantize."""


def done_when(bench: BenchResult) -> list[str]:
    """The issue's acceptance criteria, counted from the results."""
    exit2 = sorted(
        {m.name for m in bench.models for t in m.targets for r in t.runs if r.exit_code not in (0, 1)}
        | {m.name for m in bench.models if m.variants and m.variants.exit_code not in (0, 1)}
    )
    wins, edgetpu = [], []
    for m in bench.models:
        for t in m.targets:
            quantized = t.technique not in (None, "none") and not t.kept_float
            within = t.metric is not None and t.metric >= m.fp32_metric - 0.01 * max(abs(m.fp32_metric), 1e-9)
            smaller_not_slower = (t.size_ratio or 1) < 1 and (t.latency_ratio or 2) <= 1.05
            if t.target == HOST_TARGET and quantized and within and smaller_not_slower:
                wins.append(m.name)
            if t.target == "edgetpu" and t.technique == "full_int8" and (t.audit_mac_fraction or 0) >= 0.9:
                edgetpu.append(m.name)
    n = len(bench.models)
    # The corpus is trained models; structure-only ones (constant weights) count for exits, not for quality.
    structure = [m.name for m in bench.models if m.kind == "structure"]
    trained = n - len(structure)
    apart = f"; not counted: {', '.join(structure)}, structure only" if structure else ""
    return [
        f"- Valid model + data exits 2 / times out on some command: {len(exit2)} of {n} models"
        + (f" ({', '.join(exit2)})" if exit2 else "")
        + " (target: none).",
        f"- {HOST_TARGET}: a quantized variant smaller and not slower (ratio <= 1.05) with the metric within 1%: "
        f"{len(_trained(wins, structure))} of {trained} trained models"
        + (f" ({', '.join(wins)})" if wins else "")
        + f" (target: two thirds{apart}).",
        f"- edgetpu full_int8 with >= 90% of MACs on the device: {len(_trained(edgetpu, structure))} of {trained} "
        "trained models"
        + (f" ({', '.join(edgetpu)})" if edgetpu else "")
        + f" (target: every CNN a device toolchain would map{apart}).",
    ]


def _trained(names: list[str], structure: list[str]) -> list[str]:
    return [name for name in names if name not in structure]


def render(bench: BenchResult) -> str:
    summary_rows, target_rows, failure_rows = [], [], []
    for m in bench.models:
        host = next((t for t in m.targets if t.target == HOST_TARGET), None)
        static = next((b for b in m.baselines if b.name == "ort-static"), None)
        dynamic = next((b for b in m.baselines if b.name == "ort-dynamic"), None)
        quantize_rss = next((r.peak_rss_mb for r in host.runs if r.command == "quantize"), None) if host else None
        summary_rows.append(
            [
                m.name,
                m.kind,
                f"{m.size_bytes / 1e6:.1f} MB" if m.size_bytes >= 1e5 else f"{m.size_bytes / 1e3:.0f} kB",
                fmt(m.fp32_metric),
                f"{host.technique} {'(float)' if host.kept_float else ''}".strip() if host and host.technique else "—",
                fmt(host.metric) if host else "—",
                fmt(static.metric) if static else "—",
                fmt(dynamic.metric) if dynamic else "—",
                fmt(host.size_ratio, 2) if host else "—",
                fmt(static.size_ratio, 2) if static else "—",
                fmt(dynamic.size_ratio, 2) if dynamic else "—",
                fmt(host.latency_ratio, 2) if host else "—",
                fmt(static.latency_ratio, 2) if static else "—",
                fmt(dynamic.latency_ratio, 2) if dynamic else "—",
                fmt(quantize_rss, 0),
                fmt(static.run.peak_rss_mb if static and static.run else None, 0),
            ]
        )
        for t in m.targets:
            quantize = next((r for r in t.runs if r.command == "quantize"), None)
            exits = " ".join(f"{r.command[0]}{'T' if r.exit_code is None else r.exit_code}" for r in t.runs)
            target_rows.append(
                [
                    m.name,
                    t.target,
                    fmt(t.audit_mac_fraction, 2),
                    t.planned_technique or "—",
                    (t.technique or "—") + (" (float)" if t.kept_float else ""),
                    fmt(t.size_ratio, 2),
                    fmt(t.metric),
                    "—" if t.check_passed is None else f"{t.check_passed} ({t.check_tier})",
                    exits,
                    fmt(quantize.seconds if quantize else None, 1),
                    fmt(quantize.peak_rss_mb if quantize else None, 0),
                ]
            )
            for r in t.runs:
                if r.exit_code not in (0, 1):
                    failure_rows.append([m.name, t.target, r.command, str(r.exit_code), r.error or ""])
        runs = [r for t in m.targets for r in t.runs] + ([m.variants] if m.variants else [])
        for r in runs:
            if r.stray_files:
                note = f"wrote into its working folder: {', '.join(r.stray_files[:3])}"
                failure_rows.append([m.name, r.target or "all", r.command, str(r.exit_code), note])
        if m.variants and m.variants.exit_code not in (0, 1):
            failure_rows.append([m.name, "all", "variants", str(m.variants.exit_code), m.variants.error or ""])
        for b in m.baselines:
            if b.error:
                failure_rows.append([m.name, "—", b.name, str(b.run.exit_code if b.run else "—"), b.error])
        for b in m.baselines:
            if not b.error and b.run and b.run.exit_code != 0:
                failure_rows.append([m.name, "—", b.name, str(b.run.exit_code), "(stderr not recorded)"])
    basis_rows = [[m.name, m.exporter, m.metric_basis, f"{m.calib_samples} / {m.val_samples}"] for m in bench.models]
    variants_rows = [
        [
            m.name,
            f"{m.variants.exit_code}" if m.variants else "—",
            fmt(m.variants.seconds if m.variants else None, 1),
            "; ".join(f"{k}: {v}" for k, v in m.variants_summary.items())
            or (m.variants.error or "—" if m.variants else "—"),
        ]
        for m in bench.models
    ]
    return "\n".join(
        [
            "# Real exported models: autoptq on a public corpus",
            "",
            INTRO,
            "",
            f"Machine: {bench.environment}. Command: `{bench.command}`"
            + (" (quick: few samples, so metrics are coarse)." if bench.quick else "."),
            "",
            '## Against the issue\'s "done when"',
            "",
            *done_when(bench),
            "",
            "## Corpus and metric basis",
            "",
            markdown_table(
                ["model", "exporter / shape facts", "metric (higher is better)", "calib / val samples"], basis_rows
            ),
            "",
            f"## Host target ({HOST_TARGET}) against fp32 and plain onnxruntime",
            "",
            HOST_COLUMNS,
            "",
            markdown_table(
                [
                    "model",
                    "kind",
                    "fp32 size",
                    "fp32",
                    "technique",
                    "autoptq",
                    "ORT static",
                    "ORT dynamic",
                    "size autoptq",
                    "size static",
                    "size dynamic",
                    "latency autoptq",
                    "latency static",
                    "latency dynamic",
                    "RSS autoptq",
                    "RSS ORT static",
                ],
                summary_rows,
            ),
            "",
            "## Every target",
            "",
            TARGET_COLUMNS,
            "",
            markdown_table(
                [
                    "model",
                    "target",
                    "MACs on device",
                    "planned",
                    "result",
                    "size",
                    "metric",
                    "check",
                    "exits",
                    "q s",
                    "q RSS MB",
                ],
                target_rows,
            ),
            "",
            "## variants (all targets in one call)",
            "",
            markdown_table(["model", "exit", "seconds", "per target"], variants_rows),
            "",
            "## Failures (exit code other than 0 or 1, or a baseline that failed)",
            "",
            "What each failure means, by the issue's failure classes: `bench/results/real_models_failures.md`.",
            "",
            markdown_table(["model", "target", "command", "exit", "last stderr line"], failure_rows)
            if failure_rows
            else "None.",
            "",
        ]
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--ort-baseline":
        ort_baseline_child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(m.name for m in corpus.CORPUS))
    parser.add_argument("--targets", default=None, help="default: every shipped target")
    parser.add_argument("--quick", action="store_true", help="8 calibration and 8 validation samples per model")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per command (default 20 min)")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "real_models.json")
    parser.add_argument("--markdown", type=Path, default=REPO_DIR / "docs" / "real-models.md")
    parser.add_argument("--render-only", action="store_true", help="rewrite the Markdown from the JSON results")
    args = parser.parse_args()
    if args.render_only:
        bench = BenchResult.model_validate_json(args.json.read_text(encoding="utf-8"))
        write_atomic(args.markdown, render(bench))
        return
    from autoptq.devices.profiles import shipped_profile_names

    targets = args.targets.split(",") if args.targets else shipped_profile_names()
    models = []
    with tempfile.TemporaryDirectory(prefix="autoptq-real-") as work:
        for name in args.models.split(","):
            model = corpus.BY_NAME[name]
            print(f"{name} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            result = bench_model(model, targets, args.quick, args.timeout, Path(work))
            print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
            models.append(result)
            command = "python bench/real_models.py" + (" --quick" if args.quick else "")
            if args.models != parser.get_default("models"):
                command += f" --models {args.models}"
            if args.targets:
                command += f" --targets {args.targets}"
            bench = BenchResult(environment=environment(), command=command, quick=args.quick, models=models)
            # Written after each model so that a long run leaves partial results.
            args.json.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(args.json, bench.model_dump_json(indent=1) + "\n")
            write_atomic(args.markdown, render(bench))


if __name__ == "__main__":
    main()
