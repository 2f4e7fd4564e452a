"""`autoptq batch`: a model zoo × targets on Dask distributed, one isolated, resumable job per (model, target).

The driver validates every input (nothing starts on bad input), hashes each job's inputs, skips the jobs whose
folder records a finished run with the same hash, runs the rest on a Dask cluster (an embedded LocalCluster by
default), and writes `out/index.json` and `out/index.md`. A job is `api.make_variants` for one target, run inside a
worker from paths (the worker reads the model and the data itself: no array travels over the wire), into a staging
folder inside `out/` that is renamed into place only when complete.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autoptq import api
from autoptq._version import __version__
from autoptq.decide.planner import UserGoals, load_tree
from autoptq.decide.tuning import Budget
from autoptq.devices.coverage import analyse
from autoptq.devices.profiles import load_profile
from autoptq.errors import AutoptqError, ModelLoadError, OutputError
from autoptq.evaluate.estimate import predict
from autoptq.evaluate.verify import DEFAULT_MIN_SQNR_DB
from autoptq.io.outputs import check_output_path, write_atomic
from autoptq.model.graph import read_model
from autoptq.pipeline.manifest import Variant
from autoptq.pipeline.produce import SearchMode
from autoptq.techniques.recipe import Recipe, TechniqueName

try:
    import dask
    from dask.system import CPU_COUNT
    from distributed import Client, LocalCluster, as_completed
    from distributed.worker_memory import parse_memory_limit
except ImportError as exc:  # the `batch` extra is optional; every other command works without it
    raise AutoptqError("autoptq batch needs Dask distributed: pip install 'autoptq[batch]'") from exc

INDEX_VERSION = 1
RECORD = "job.json"  # in each job folder: the input hash and the index entry of the finished job
STAGING_PREFIX = ".staging-"  # jobs in progress, inside out/; left over only by a killed worker, removed at start
JOB_FILE_SUFFIXES = (".yaml", ".yml", ".csv")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_CONNECT_TIMEOUT = "10s"


class JobOptions(BaseModel):
    """Per-model settings of a job file (the flags of `autoptq variants`, in plain units)."""

    model_config = ConfigDict(extra="forbid")

    technique: TechniqueName | None = Field(default=None, description="override the planned technique")
    max_drop: float | None = Field(default=None, ge=0, lt=1, description="accuracy budget, absolute (labels needed)")
    min_sqnr: float | None = Field(default=None, description="fidelity budget in dB (also the verification floor)")
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1)
    time_budget_s: float | None = Field(default=None, gt=0, description="accuracy-aware search time budget, s")
    max_trials: int = Field(default=40, ge=1)
    prefer: Literal["speed", "size", "accuracy"] = "speed"
    search: SearchMode = Field(default="measured", description="how the default choice is found (no budget)")
    synthetic_calibration: bool = False

    def quantize_options(self) -> api.QuantizeOptions:
        """The same QuantizeOptions `autoptq variants` builds from its flags."""
        budget = Budget(
            max_drop=self.max_drop,
            min_sqnr_db=self.min_sqnr,
            min_top1_agreement=self.min_top1_agreement,
            time_budget_s=self.time_budget_s,
            max_trials=self.max_trials,
        )
        return api.QuantizeOptions(
            technique=self.technique,
            min_sqnr_db=self.min_sqnr if self.min_sqnr is not None else DEFAULT_MIN_SQNR_DB,
            synthetic_calibration=self.synthetic_calibration,
            goals=UserGoals(max_drop=self.max_drop, prefer=self.prefer),
            budget=budget,
            search=self.search,
        )


class ModelEntry(BaseModel):
    """One model of the zoo: a line of a job file, or a bare model path (no data, default options)."""

    model_config = ConfigDict(extra="forbid")

    model: Path
    name: str | None = Field(default=None, description="job folder name (default: the model file's stem)")
    data: Path | None = None
    val: Path | None = None
    preprocess: str | None = None
    options: JobOptions = Field(default_factory=JobOptions)

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, value: object) -> object:
        """`- model.onnx` in a job file is short for `- model: model.onnx`."""
        return {"model": value} if isinstance(value, str) else value


class JobFile(BaseModel):
    """A YAML job file: `models: [{model, name, data, val, preprocess, options}, ...]`."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelEntry] = Field(min_length=1)


class BatchJob(BaseModel):
    """One (model, target): what travels to a worker. Paths and options only, never arrays."""

    name: str
    target: str = Field(description="profile name, or the absolute path of a profile YAML")
    target_name: str
    model: str
    data: str | None
    val: str | None
    preprocess: str | None
    rules: str | None
    options: JobOptions
    input_hash: str

    @property
    def folder(self) -> str:
        """The job's folder inside out/."""
        return f"{self.name}/{self.target_name}"


JobStatus = Literal["done", "failed", "skipped"]


class JobEntry(BaseModel):
    """One line of index.json. No timings, no absolute paths: reruns give the same bytes apart from `status`."""

    model: str
    target: str
    status: JobStatus
    planned_technique: TechniqueName | None = None
    technique: TechniqueName | None = None
    variant_failed: bool | None = Field(
        default=None, description="as in manifest.json: quantization planned and nothing beat float, or budget not met"
    )
    size_ratio: float | None = Field(default=None, description="produced / float file size")
    latency_ratio: float | None = Field(
        default=None, description="produced / float latency on the target, the emulator check's estimate"
    )
    metric: str | None = Field(default=None, description="accuracy (with labels) or min_sqnr_db over the outputs")
    metric_value: float | None = None
    path: str | None = Field(default=None, description="the produced model, relative to the output folder")
    sha256: str | None = None
    input_hash: str
    reason: str | None = Field(default=None, description="why the job failed, or the variant's verdict")


class JobRecord(BaseModel):
    """job.json in a finished job's folder: what a rerun compares against."""

    input_hash: str
    entry: JobEntry


class BatchIndex(BaseModel):
    """out/index.json."""

    index_version: int = INDEX_VERSION
    autoptq_version: str = __version__
    jobs: list[JobEntry]

    @property
    def failed(self) -> list[JobEntry]:
        """Jobs that failed, or produced a variant marked failed (exit code 1, as for `variants`)."""
        return [j for j in self.jobs if j.status == "failed" or j.variant_failed]


# ---------------------------------------------------------------- inputs


def read_entries(inputs: Sequence[str | Path]) -> list[ModelEntry]:
    """Model paths and job files → model entries, with paths resolved (job-file paths against the file's folder)."""
    if not inputs:
        raise AutoptqError("give at least one model or job file (.yaml, .yml, .csv)")
    entries: list[ModelEntry] = []
    for item in map(Path, inputs):
        if item.suffix.lower() in JOB_FILE_SUFFIXES:
            entries.extend(_read_job_file(item))
        else:
            entries.append(ModelEntry(model=item.resolve()))
    return entries


def _read_job_file(path: Path) -> list[ModelEntry]:
    if not path.is_file():
        raise AutoptqError(f"{path}: job file not found")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".csv":
            job_file = JobFile(models=[_csv_entry(row) for row in csv.DictReader(text.splitlines())])
        else:
            job_file = JobFile.model_validate(yaml.safe_load(text))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise AutoptqError(f"{path}: {where + ': ' if where else ''}{error['msg']}") from None
    except (yaml.YAMLError, csv.Error, UnicodeDecodeError) as exc:
        raise AutoptqError(f"{path}: not a valid job file ({' '.join(str(exc).split())})") from None
    base = path.resolve().parent
    return [
        entry.model_copy(
            update={key: base / value for key in ("model", "data", "val") if (value := getattr(entry, key))}
        )
        for entry in job_file.models
    ]


def _csv_entry(row: dict[str, str | None]) -> dict[str, object]:
    """A CSV row: columns model, name, data, val, preprocess and any JobOptions field; empty cells are defaults."""
    cells = {key.strip(): value.strip() for key, value in row.items() if key and value and value.strip()}
    entry_fields = set(ModelEntry.model_fields) - {"options"}
    return {
        **{k: v for k, v in cells.items() if k in entry_fields},
        "options": {k: v for k, v in cells.items() if k not in entry_fields},
    }


def plan_jobs(
    entries: Sequence[ModelEntry], targets: Sequence[str | Path], rules: str | Path | None = None
) -> list[BatchJob]:
    """Validate every path, target and name (before any cluster starts) and hash each job's inputs."""
    if not targets:
        raise AutoptqError("give at least one target (see `autoptq targets`)")
    profiles = [load_profile(t) for t in targets]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise AutoptqError(f"targets repeat: {names}")
    # A profile given as a path travels as an absolute path: workers may not share the driver's working folder.
    target_args = [str(Path(t).resolve()) if _is_path(t) else str(t) for t in targets]
    tree = load_tree(rules)
    # The shipped rules travel as None: a remote worker finds its own copy (the hash covers the client's content).
    rules_arg = str(Path(rules).resolve()) if rules else None
    common = _digest([("autoptq", __version__.encode()), ("rules", tree.source.read_bytes())])
    jobs, seen = [], set()
    for entry in entries:
        name = entry.name or entry.model.stem
        if not _NAME.fullmatch(name):
            raise AutoptqError(f"{entry.model}: job name {name!r} is not a plain folder name; set `name:` for it")
        if name in seen:
            raise AutoptqError(f"two models are named {name!r}: give one a `name:` in a job file")
        seen.add(name)
        for label, path in (("model", entry.model), ("data", entry.data), ("val", entry.val)):
            if path is not None and not path.exists():
                raise AutoptqError(f"{path}: {label} not found")
        if not entry.model.is_file():
            raise AutoptqError(f"{entry.model}: model is not a file")
        model_hash = _digest(
            [
                ("common", common.encode()),
                *_file_parts("model", entry.model.parent, _model_files(entry.model)),
                *_data_parts("data", entry.data),
                *_data_parts("val", entry.val),
                ("preprocess", (entry.preprocess or "").encode()),
                ("options", entry.options.model_dump_json().encode()),
            ]
        )
        for profile, target in zip(profiles, target_args, strict=True):
            jobs.append(
                BatchJob(
                    name=name,
                    target=target,
                    target_name=profile.name,
                    model=str(entry.model),
                    data=str(entry.data) if entry.data else None,
                    val=str(entry.val) if entry.val else None,
                    preprocess=entry.preprocess,
                    rules=rules_arg,
                    options=entry.options,
                    input_hash=_digest(
                        [("model", model_hash.encode()), ("profile", profile.model_dump_json().encode())]
                    ),
                )
            )
    return jobs


def _is_path(target: str | Path) -> bool:
    text = str(target)
    return isinstance(target, Path) or text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text


def _model_files(model: Path) -> list[Path]:
    """The model file and its external data files. A model that does not parse hashes as its bytes alone: its job
    fails in the worker with the loader's message."""
    try:
        _, data_files = read_model(model)
    except ModelLoadError:
        return [model]
    return [model, *data_files]


def _data_parts(label: str, path: Path | None) -> list[tuple[str, bytes]]:
    """A data file, or every file in a data folder (sorted, so the hash does not depend on listing order)."""
    if path is None:
        return [(label, b"")]
    if path.is_dir():
        return _file_parts(label, path, sorted(p for p in path.rglob("*") if p.is_file()))
    return _file_parts(label, path.parent, [path])


def _file_parts(label: str, root: Path, files: list[Path]) -> list[tuple[str, bytes]]:
    """(label:relative name, SHA-256) per file: renaming or moving a file inside its folder changes the hash."""
    names = [f.relative_to(root).as_posix() if f.is_relative_to(root) else f.name for f in files]
    return [(f"{label}:{name}", _file_digest(f)) for name, f in zip(names, files, strict=True)]


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def _digest(parts: list[tuple[str, bytes]]) -> str:
    """SHA-256 over labelled parts, length-prefixed so that no two different lists collide by concatenation."""
    digest = hashlib.sha256()
    for label, payload in parts:
        for chunk in (label.encode(), payload):
            digest.update(len(chunk).to_bytes(8, "big") + chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- one job, in a worker


def run_job(job: BatchJob, out_dir: str) -> JobEntry:
    """Run one job in a worker: `make_variants` for one target into a staging folder, then rename it into place.

    Any error of the job (a bad model, bad data, a quantizer crash) becomes a failed entry with its reason; only the
    death of the worker itself escapes, and the driver records that.
    """
    out = Path(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        manifest, _ = api.make_variants(
            job.model,
            [job.target],
            staging,
            data=job.data,
            validation=job.val,
            options=job.options.quantize_options(),
            rules=job.rules,
            preprocess=job.preprocess,
        )
        entry = _entry_from(job, manifest.variants[0])
        record = JobRecord(input_hash=job.input_hash, entry=entry)
        write_atomic(staging / RECORD, record.model_dump_json(indent=2) + "\n")
        _publish(staging, out / job.folder)
        return entry
    except Exception as exc:  # the job fails, the worker lives on
        return failed_entry(job, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _entry_from(job: BatchJob, variant: Variant) -> JobEntry:
    verification = variant.verification
    metric, value = None, None
    if verification is not None and verification.accuracy_candidate is not None:
        metric, value = "accuracy", verification.accuracy_candidate
    elif verification is not None and verification.fidelity:
        metric, value = "min_sqnr_db", min(f.sqnr_db for f in verification.fidelity)
    return JobEntry(
        model=job.name,
        target=job.target_name,
        status="done",
        planned_technique=variant.planned_technique,
        technique=variant.technique,
        variant_failed=variant.failed,
        size_ratio=1.0 if variant.kept_float else verification.size_ratio if verification else None,
        latency_ratio=_estimated_latency_ratio(job, variant),
        metric=metric,
        metric_value=value,
        path=f"{job.folder}/{variant.path}",
        sha256=variant.sha256,
        input_hash=job.input_hash,
        reason=variant.reason,
    )


def _estimated_latency_ratio(job: BatchJob, variant: Variant) -> float | None:
    """The cost model's latency of the produced variant over float's on the target (an estimate, as the plan's;
    measured timings vary run to run and stay in the job's measurements.json). None when the target cannot run
    float at all."""
    graph = api.as_graph(job.model)
    profile = api.as_profile(job.target)
    recipe = variant.recipe or Recipe()
    _, latency, baseline = predict(graph, analyse(graph, profile), profile, variant.technique, recipe)
    return round(latency.estimate_ms / baseline.estimate_ms, 3) if baseline and baseline.estimate_ms else None


def failed_entry(job: BatchJob, reason: str) -> JobEntry:
    """The index entry of a job that produced nothing."""
    return JobEntry(model=job.name, target=job.target_name, status="failed", input_hash=job.input_hash, reason=reason)


def _publish(staging: Path, final: Path) -> None:
    """Rename a complete job folder into place; an older folder of the same job is moved aside first, then removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it 0700
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=staging.parent))
        os.replace(final, old / "old")
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


# ---------------------------------------------------------------- the driver


def finished(job: BatchJob, out: Path) -> JobEntry | None:
    """The recorded entry when this job already finished with the same inputs and its model is still there."""
    record_path = out / job.folder / RECORD
    try:
        record = JobRecord.model_validate_json(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = record.entry
    if record.input_hash != job.input_hash or entry.path is None or not (out / entry.path).is_file():
        return None
    return entry.model_copy(update={"status": "skipped"})


@contextmanager
def local_cluster(workers: int | None = None, memory_limit: str | None = None) -> Iterator[LocalCluster]:
    """The embedded cluster: one single-threaded worker process per core.

    A worker runs one job at a time (worker-saturation 1.0: no job waits queued on a worker), and a job whose worker
    dies fails at once (allowed-failures 0) instead of being retried on, and killing, the next worker: an
    out-of-memory model fails alone and its record says so.
    """
    limit = check_memory_limit(memory_limit)
    settings = {"distributed.scheduler.worker-saturation": 1.0, "distributed.scheduler.allowed-failures": 0}
    with (
        dask.config.set(settings),
        LocalCluster(
            n_workers=workers or CPU_COUNT,
            threads_per_worker=1,
            processes=True,
            memory_limit=limit,
            dashboard_address=":0",
            silence_logs=logging.ERROR,  # the index records worker deaths
        ) as cluster,
    ):
        yield cluster


def check_memory_limit(memory_limit: str | None) -> str:
    """Dask's per-worker limit ("4GB", "auto", "0" for none), validated the way Dask will read it."""
    limit = "auto" if memory_limit is None else memory_limit
    try:
        parse_memory_limit(limit, 1, logger=logging.getLogger(__name__))
    except (ValueError, TypeError):
        raise AutoptqError(f"--memory-limit {memory_limit!r}: expected bytes such as 4GB, 'auto', or 0") from None
    return limit


@contextmanager
def connect(scheduler: str | None, workers: int | None, memory_limit: str | None) -> Iterator[Client]:
    """A client of the given scheduler, or of an embedded LocalCluster."""
    if scheduler is None:
        with local_cluster(workers, memory_limit) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout=_CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise AutoptqError(f"--scheduler {scheduler}: cannot connect ({' '.join(str(exc).split())})") from None
    with client:
        yield client


def dashboard_link(client: Client) -> str | None:
    """The Dask dashboard's address, when the scheduler serves one (it needs bokeh)."""
    if "dashboard" not in client.scheduler_info().get("services", {}):
        return None
    return client.dashboard_link


def run_jobs(
    jobs: Sequence[BatchJob], out: Path, client: Client, progress: Callable[[str], None] = lambda _line: None
) -> list[JobEntry]:
    """Run every job, at most one per worker thread at a time, and collect one entry per job as they finish.

    Jobs are handed out as threads free up rather than all at once: the scheduler would otherwise assign the whole
    batch to the workers up front (independent tasks of a small batch are not queued on the scheduler), and a dying
    worker would take every job assigned to it down with the one it was running.
    """
    started = time.perf_counter()
    waiting = list(reversed(jobs))
    running: dict[object, BatchJob] = {}
    finished_jobs = as_completed()

    def fill() -> None:
        slots = max(1, sum(client.nthreads().values()))  # re-read: a cluster may grow, shrink or restart workers
        while waiting and len(running) < slots:
            job = waiting.pop()
            future = client.submit(run_job, job, str(out), key=f"autoptq-{job.folder}-{job.input_hash[:12]}")
            running[future] = job
            finished_jobs.add(future)

    fill()
    entries = []
    for count, future in enumerate(finished_jobs, start=1):
        job = running.pop(future)
        error = future.exception()
        entry = run_failure(job, error) if error is not None else future.result()
        entries.append(entry)
        what = entry.technique if entry.status == "done" else entry.reason
        progress(f"[{count}/{len(jobs)}] {job.name} x {job.target_name}: {entry.status} ({what}) "
                 f"at {time.perf_counter() - started:.1f} s")  # fmt: skip
        fill()
    return entries


def run_failure(job: BatchJob, error: BaseException) -> JobEntry:
    """A job that raised outside its own error handling: its worker died (KilledWorker), or Dask failed it."""
    if type(error).__name__ == "KilledWorker":
        return failed_entry(job, "worker died while running the job (out of memory or a crash); rerun to retry")
    return failed_entry(job, f"{type(error).__name__}: {' '.join(str(error).split())}")


def run(
    inputs: Sequence[str | Path],
    targets: Sequence[str | Path],
    output_dir: str | Path,
    scheduler: str | None = None,
    workers: int | None = None,
    memory_limit: str | None = None,
    rules: str | Path | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> BatchIndex:
    """Plan, skip what is finished, run the rest, write the index. Bad input raises before any cluster starts."""
    if scheduler is not None and (workers is not None or memory_limit is not None):
        raise AutoptqError("--workers and --memory-limit configure the embedded cluster; not with --scheduler")
    if workers is not None and workers < 1:
        raise AutoptqError(f"--workers {workers}: must be at least 1")
    check_memory_limit(memory_limit)
    entries = read_entries(inputs)
    jobs = plan_jobs(entries, targets, rules)
    out = Path(output_dir).resolve()
    inputs_used = [Path(p) for job in jobs for p in (job.model, job.data, job.val) if p]
    for name in ("index.json", "index.md"):
        check_output_path(out / name, protected=inputs_used, must_exist_parent=False)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{output_dir}: exists and is not a directory")
    if any(p.resolve().is_relative_to(out) for p in inputs_used):
        raise OutputError(f"{output_dir}: holds inputs of the batch; give an output folder of its own")
    done = {job.folder: entry for job in jobs if (entry := finished(job, out)) is not None}
    todo = [job for job in jobs if job.folder not in done]
    progress(f"{len(jobs)} jobs: {len(done)} finished earlier with the same inputs, {len(todo)} to run")
    results = list(done.values())
    if todo:
        with connect(scheduler, workers, memory_limit) as client:  # an unreachable scheduler: nothing written
            link = dashboard_link(client)
            if link:
                progress(f"Dask dashboard: {link}")
            out.mkdir(parents=True, exist_ok=True)
            for stale in out.glob(f"{STAGING_PREFIX}*"):  # left by a killed worker of an earlier run
                shutil.rmtree(stale, ignore_errors=True)
            results.extend(run_jobs(todo, out, client, progress))
    index = BatchIndex(jobs=sorted(results, key=lambda e: (e.model, e.target)))
    write_atomic(out / "index.json", index.model_dump_json(indent=2) + "\n")
    write_atomic(out / "index.md", render_index(index))
    return index


def render_index(index: BatchIndex) -> str:
    """index.md: the zoo-by-target matrix (technique and size ratio per cell), then the failures with reasons.

    Statuses (done or skipped) are left out so that a rerun with the same inputs writes the same bytes."""
    models = sorted({e.model for e in index.jobs})
    targets = sorted({e.target for e in index.jobs})
    cells = {(e.model, e.target): e for e in index.jobs}
    lines = [
        f"# autoptq batch: {len(models)} models x {len(targets)} targets",
        "",
        "Each cell: the technique produced, its file size relative to float, and its latency relative to float on "
        "the target (`~`: an estimate of the cost model). `FAILED`: the job produced nothing; `!`: the variant is "
        "marked failed (quantization planned and nothing beat float, or the budget was not met).",
        "",
        "| model | " + " | ".join(targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for model in models:
        row = [_cell(cells.get((model, target))) for target in targets]
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    problems = [e for e in index.jobs if e.status == "failed" or e.variant_failed]
    if problems:
        lines += ["", "## Failures", ""]
        lines += [f"- {e.model} x {e.target}: {e.reason}" for e in problems]
    return "\n".join(lines) + "\n"


def _cell(entry: JobEntry | None) -> str:
    if entry is None:
        return ""
    if entry.status == "failed":
        return "FAILED"
    parts = [entry.technique or "none"]
    if entry.size_ratio is not None:
        parts.append(f"size {entry.size_ratio:.2f}x")
    if entry.latency_ratio is not None:
        parts.append(f"latency ~{entry.latency_ratio:.2f}x")
    return ("! " if entry.variant_failed else "") + ", ".join(parts)
