"""`autoptq batch` throughput: a zoo of 8 models x 3 targets with 1 vs 2 Dask workers, and the overhead per job.

Zoo: three classic CNNs that ship with the onnx package (`onnx/backend/test/data/light/light_*.onnx`: SqueezeNet,
ShuffleNet, Inception v1; opset 9), the shipped digits example, and four models of `autoptq.model.zoo`. The onnx "light"
files store every weight as a ConstantOfShape filled with 0.02 (which makes every output saturate); they are
materialized here into seeded random initializers with the same shapes (He-normal weights, small biases, unit
BatchNorm statistics), so the files are full size (5 to 28 MB) and the jobs do realistic work. Calibration data:
seeded uniform [0, 1) images made with numpy (the digits example brings its own data).

Throughput: the same batch (same inputs, fresh output folder) runs with an embedded LocalCluster of 1 worker, then
of 2 workers, in this one process; wall time includes starting and stopping the cluster. Overhead per job: (a) a
batch of trivial jobs (a model file that fails to parse: the worker's full job path, no quantization), (b) Dask's
bare round trip for a no-op task, submitted the way `autoptq batch` submits (one per free worker thread).

Run: python bench/bench_batch.py [--quick]
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from benchlib import REPO_DIR, environment, markdown_table, parse_args, seconds, write_result
from distributed import Client, as_completed, get_task_stream
from onnx import ModelProto, helper, numpy_helper

from autoptq import api
from autoptq.batch import BatchIndex, local_cluster
from autoptq.model import zoo

NAME = "batch"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = ("squeezenet", "shufflenet", "inception_v1")
TARGETS = ["edgetpu", "gpu-fp16", "x86-vnni"]
CALIBRATION_SAMPLES = 16
TRIVIAL_JOBS = 200
NOOP_TASKS = 1000


@dataclass(frozen=True)
class Run:
    """One batch run: wall time with and without the cluster's start and stop, and the workers' CPU time."""

    workers: int
    wall_s: float
    jobs_s: float
    worker_cpu_s: float
    job_seconds: float  # the jobs' compute intervals (Dask's task stream), summed
    index: BatchIndex


def materialize(path: Path, seed: int) -> ModelProto:
    """A light_*.onnx model with its ConstantOfShape weights replaced by random initializers of the same shape."""
    model = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consumers = {name: (n.op_type, i) for n in model.graph.node for i, name in enumerate(n.input)}
    nodes, weights = [], []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape":
            nodes.append(node)
            continue
        shape = tuple(int(d) for d in shapes[node.input[0]])
        op_type, index = consumers[node.output[0]]
        weights.append(numpy_helper.from_array(_weight(rng, shape, op_type, index), node.output[0]))
    used = {name for n in nodes for name in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    graph = helper.make_graph(
        nodes,
        model.graph.name,
        [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}],
        list(model.graph.output),
        [*kept, *weights],
    )
    result = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="bench_batch")
    result.ir_version = 7  # initializers need not be graph inputs from IR 4 on
    onnx.checker.check_model(result)
    return result


def _weight(rng: np.random.Generator, shape: tuple[int, ...], op_type: str, index: int) -> np.ndarray:
    if op_type == "BatchNormalization":  # inputs: X, scale, B, mean, var
        base = {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0}[index]
        return (base + 0.05 * np.abs(rng.standard_normal(shape))).astype(np.float32)
    if index == 1 and len(shape) > 1:  # a Conv or Gemm weight
        fan_in = int(np.prod(shape[1:])) if op_type == "Conv" else shape[0]
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return (0.05 * rng.standard_normal(shape)).astype(np.float32)


def build_zoo(folder: Path, quick: bool) -> Path:
    """The models, their data and a YAML job file; returns the job file."""
    rng = np.random.default_rng(0)
    models: dict[str, ModelProto] = {
        f"light_{name}": materialize(LIGHT / f"light_{name}.onnx", seed) for seed, name in enumerate(LIGHT_MODELS)
    }
    models |= {
        "mobilenet_style": zoo.mobilenet_style(size=112, width=32, blocks=8, classes=100),
        "small_convnet": zoo.small_convnet(size=64),
        "transformer_block": zoo.transformer_block(seq=64, dim=256, ffn=1024),
        "mlp": zoo.mlp(features=256, hidden=1024, layers=3),
    }
    if quick:
        models = {name: models[name] for name in ("light_squeezenet", "small_convnet")}
    lines = ["models:", f"  - model: {REPO_DIR / 'examples' / 'digits_cnn.onnx'}"]
    lines += [f"    data: {REPO_DIR / 'examples' / 'calib.npz'}", f"    val: {REPO_DIR / 'examples' / 'val.npz'}"]
    for name, model in models.items():
        onnx.save(model, str(folder / f"{name}.onnx"))
        graph = api.as_graph(folder / f"{name}.onnx")
        arrays = {i.name: rng.random((CALIBRATION_SAMPLES, *i.shape[1:]), dtype=np.float32) for i in graph.inputs}
        np.savez(folder / f"{name}.npz", **arrays)
        lines += [f"  - model: {name}.onnx", f"    data: {name}.npz"]
    (folder / "zoo.yaml").write_text("\n".join(lines) + "\n")
    return folder / "zoo.yaml"


def timed_batch(job_file: Path, targets: list[str], out: Path, workers: int) -> Run:
    """One batch on a fresh embedded cluster (as `autoptq batch --workers N` starts it), with the CPU time its
    workers got: on a shared machine that, not the worker count, bounds the throughput."""
    started = time.perf_counter()
    with local_cluster(workers) as cluster, Client(cluster) as client:
        ready = time.perf_counter()
        with get_task_stream(client) as stream:  # the scheduler's record of every task's compute interval
            index = api.batch([job_file], targets, out, scheduler=cluster.scheduler_address)
        ran = time.perf_counter() - ready
        cpu = sum(client.run(worker_cpu_seconds).values())
    busy = sum(s["stop"] - s["start"] for task in stream.data for s in task["startstops"] if s["action"] == "compute")
    return Run(workers, time.perf_counter() - started, ran, cpu, busy, index)


def worker_cpu_seconds() -> float:
    """User + system CPU seconds of this worker process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def trivial_jobs(folder: Path, workers: int) -> float:
    """Seconds per job of a batch whose jobs fail at once in the worker (a file that is not ONNX)."""
    broken = folder / "trivial"
    broken.mkdir()
    lines = ["models:"]
    for i in range(TRIVIAL_JOBS // 2):
        (broken / f"m{i}.onnx").write_bytes(b"not onnx")
        lines.append(f"  - model: m{i}.onnx")
    (broken / "jobs.yaml").write_text("\n".join(lines) + "\n")
    with local_cluster(workers) as cluster:
        started = time.perf_counter()
        index = api.batch(
            [broken / "jobs.yaml"], TARGETS[:2], folder / "out-trivial", scheduler=cluster.scheduler_address
        )
        elapsed = time.perf_counter() - started
    assert len(index.jobs) == TRIVIAL_JOBS and all(j.status == "failed" for j in index.jobs)
    return elapsed / TRIVIAL_JOBS


def noop() -> None:
    """A task that does nothing."""


def noop_round_trip(workers: int) -> float:
    """Seconds per no-op task, at most one in flight per worker thread (as `autoptq batch` submits)."""
    with local_cluster(workers) as cluster, Client(cluster) as client:
        client.submit(noop, pure=False).result()  # warm up the connection
        started = time.perf_counter()
        done = as_completed()
        for _ in range(workers):
            done.add(client.submit(noop, pure=False))
        submitted = workers
        for _ in done:
            if submitted < NOOP_TASKS:
                done.add(client.submit(noop, pure=False))
                submitted += 1
        return (time.perf_counter() - started) / NOOP_TASKS


def contention_note() -> str:
    """What bounds the speed-up on a shared machine."""
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    grouped = autogroup.is_file() and autogroup.read_text().strip() == "1"
    note = (
        "The machine is shared: other processes compete for its cores. 'cores obtained' is the workers' CPU time "
        "over the jobs' wall time: throughput can only scale with it. 'jobs in flight' is the jobs' compute time "
        "(Dask's task stream), summed, over the jobs' wall time: how many jobs the batch kept running at once."
    )
    if grouped:
        note += (
            " The kernel's autogroup scheduling is on (sched_autogroup_enabled = 1): the CPU is shared between "
            "sessions, not processes, so all workers of one batch (one session) share one session's slice, and "
            "under contention 2 workers obtain little more CPU than 1."
        )
    return note


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    targets = TARGETS[:2] if args.quick else TARGETS
    with tempfile.TemporaryDirectory(prefix="bench_batch-") as temp:
        folder = Path(temp)
        job_file = build_zoo(folder, args.quick)
        load_before = os.getloadavg()
        one = timed_batch(job_file, targets, folder / "out-1", workers=1)
        two = timed_batch(job_file, targets, folder / "out-2", workers=2)
        load_after = os.getloadavg()
        per_trivial = trivial_jobs(folder, workers=2)
        per_noop = noop_round_trip(workers=2)
        sizes = {p.stem: p.stat().st_size for p in folder.glob("*.onnx")}
    jobs = len(one.index.jobs)
    differ = [
        f"{a.model} x {a.target} ({a.technique} vs {b.technique})"
        for a, b in zip(one.index.jobs, two.index.jobs, strict=True)
        if (a.technique, a.sha256) != (b.technique, b.sha256)
    ]
    rows = [
        [
            f"{run.workers} worker{'s' if run.workers > 1 else ''}",
            str(jobs),
            seconds(run.wall_s),
            seconds(run.jobs_s),
            f"{jobs / run.wall_s * 60:.1f}",
            f"{one.wall_s / run.wall_s:.2f}x",
            f"{run.worker_cpu_s:.0f} s",
            f"{run.worker_cpu_s / run.jobs_s:.2f}",
            f"{run.job_seconds / run.jobs_s:.2f}",
        ]
        for run in (one, two)
    ]
    cells = [
        [e.model, e.target, e.status, e.technique or "-", f"{e.size_ratio:.2f}" if e.size_ratio else "-"]
        for e in two.index.jobs
    ]
    text = "\n".join(
        [
            f"# autoptq batch: 1 vs 2 workers (bench_batch{', quick' if args.quick else ''})",
            "",
            f"Measured {environment()}.",
            f"Load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; after: "
            f"{', '.join(f'{v:.2f}' for v in load_after)}. {contention_note()}",
            f"Zoo: {len(sizes) + 1} models (file sizes, bytes: digits_cnn example, "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(sizes.items()))
            + f") x {len(targets)} targets ({', '.join(targets)}) = {jobs} jobs. Wall time includes starting and "
            "stopping the embedded LocalCluster (one single-threaded worker process each).",
            "",
            markdown_table(
                [
                    "cluster",
                    "jobs",
                    "wall time",
                    "of which jobs",
                    "jobs per minute",
                    "throughput vs 1 worker",
                    "worker CPU time",
                    "cores obtained (CPU / jobs time)",
                    "jobs in flight (mean)",
                ],
                rows,
            ),
            "",
            "Jobs whose result differs between the two runs (technique or sha256; x86-vnni decisions rest on latency "
            f"measured on this machine): {', '.join(differ) or 'none'}.",
            "",
            "Overhead per job, 2 workers:",
            "",
            markdown_table(
                ["what", "per job"],
                [
                    [
                        f"`autoptq batch` of {TRIVIAL_JOBS} trivial jobs (unparseable model: the whole job path, "
                        "no quantization), wall / jobs",
                        f"{per_trivial * 1e3:.1f} ms",
                    ],
                    [
                        f"Dask no-op task, {NOOP_TASKS} submitted one per free worker thread, wall / tasks",
                        f"{per_noop * 1e3:.2f} ms",
                    ],
                ],
            ),
            "",
            "Results of the 2-worker run:",
            "",
            markdown_table(["model", "target", "status", "technique", "size vs float"], cells),
        ]
    )
    path = write_result(NAME + ("-quick" if args.quick else ""), text)
    print(text)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
