"""`autoptq batch` on a real Dask LocalCluster of 2 worker processes: isolation, resumption, the index."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from distributed import Client, LocalCluster

from autoptq.batch import STAGING_PREFIX, local_cluster, read_entries
from autoptq.errors import AutoptqError
from autoptq.model.zoo import mobilenet_style, small_convnet

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TARGETS = "edgetpu,gpu-fp16"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """One embedded cluster for the module, configured exactly as `autoptq batch` configures its own."""
    with local_cluster(workers=2) as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as connected:
        yield connected


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three models (the shipped example with its data, two built here with numpy data) and a broken one."""
    folder = tmp_path_factory.mktemp("zoo")
    rng = np.random.default_rng(0)
    for name, model in (
        ("convnet", small_convnet(size=16)),
        ("mobilenet", mobilenet_style(size=32, width=32, blocks=4)),
    ):
        onnx.save(model, str(folder / f"{name}.onnx"))
        size = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
        np.savez(folder / f"{name}.npz", input=rng.random((12, 3, size, size), dtype=np.float32))
    (folder / "broken.onnx").write_bytes(b"this is not a protobuf")
    (folder / "zoo.yaml").write_text(
        f"""models:
  - model: {EXAMPLES / "digits_cnn.onnx"}
    data: {EXAMPLES / "calib.npz"}
    val: {EXAMPLES / "val.npz"}
  - model: convnet.onnx
    data: convnet.npz
  - model: mobilenet.onnx
    data: mobilenet.npz
  - model: broken.onnx
"""
    )
    return folder


def statuses(out: Path) -> dict[tuple[str, str], str]:
    return {(j["model"], j["target"]): j["status"] for j in json.loads((out / "index.json").read_text())["jobs"]}


def test_zoo_runs_jobs_in_isolation_and_a_rerun_skips_the_finished(run_cli, zoo, cluster, tmp_path) -> None:
    out = tmp_path / "out"
    args = ["batch", zoo / "zoo.yaml", "--targets", TARGETS, "-o", out, "--scheduler", cluster.scheduler_address]
    code, stdout, stderr = run_cli(args)
    assert code == 1, stderr  # the broken model's jobs failed
    assert "6 done, 0 skipped, 2 failed" in stdout
    assert stderr.count("] ") == 8  # one progress line per finished job
    index = json.loads((out / "index.json").read_text())
    jobs = index["jobs"]
    assert [(j["model"], j["target"]) for j in jobs] == [
        (m, t) for m in ("broken", "convnet", "digits_cnn", "mobilenet") for t in ("edgetpu", "gpu-fp16")
    ]
    for job in jobs:
        if job["model"] == "broken":
            assert job["status"] == "failed"
            assert job["reason"].startswith("ModelLoadError") and "not an ONNX model" in job["reason"]
            assert job["path"] is None and not (out / "broken").exists()
            continue
        assert job["status"] == "done", job
        produced = (out / job["path"]).read_bytes()
        assert hashlib.sha256(produced).hexdigest() == job["sha256"]
        assert job["technique"] == {"edgetpu": "full_int8", "gpu-fp16": "fp16"}[job["target"]]
        assert 0 < job["size_ratio"] < 1
        assert job["metric"] in ("accuracy", "min_sqnr_db") and job["metric_value"] is not None
        manifest = json.loads((out / job["model"] / job["target"] / "manifest.json").read_text())
        assert manifest["variants"][0]["sha256"] == job["sha256"]
    digits = next(j for j in jobs if j["model"] == "digits_cnn")
    assert digits["metric"] == "accuracy"  # the example's data has labels
    matrix = (out / "index.md").read_text()
    assert "| model | edgetpu | gpu-fp16 |" in matrix
    assert "| broken | FAILED | FAILED |" in matrix
    assert not list(out.glob(f"{STAGING_PREFIX}*"))

    first_json, first_md = (out / "index.json").read_text(), matrix
    record = out / "digits_cnn" / "edgetpu" / "job.json"
    written = record.stat().st_mtime_ns
    code, stdout, _ = run_cli(args)
    assert code == 1
    assert "0 done, 6 skipped, 2 failed" in stdout
    assert record.stat().st_mtime_ns == written  # finished jobs are not run again
    rerun_json = (out / "index.json").read_text()
    assert rerun_json.replace('"status": "skipped"', '"status": "done"') == first_json  # only statuses differ
    assert (out / "index.md").read_text() == first_md

    # A CSV job file with the same models; one option changed: only that model's jobs run again.
    (zoo / "zoo.csv").write_text(
        "model,data,val,min_sqnr\n"
        f"{EXAMPLES / 'digits_cnn.onnx'},{EXAMPLES / 'calib.npz'},{EXAMPLES / 'val.npz'},\n"
        "convnet.onnx,convnet.npz,,12\n"
        "mobilenet.onnx,mobilenet.npz,,\n"
    )
    csv_args = ["batch", zoo / "zoo.csv", "--targets", TARGETS, "-o", out, "--scheduler", cluster.scheduler_address]
    code, stdout, _ = run_cli(csv_args)
    assert code == 0, stdout
    assert statuses(out) == {
        **{("convnet", t): "done" for t in ("edgetpu", "gpu-fp16")},
        **{(m, t): "skipped" for m in ("digits_cnn", "mobilenet") for t in ("edgetpu", "gpu-fp16")},
    }


def test_killing_a_worker_loses_only_its_in_flight_job_which_reruns_on_resume(zoo, cluster, client, tmp_path) -> None:
    from autoptq import api

    # One job searches for an unreachable fidelity budget for 5 s: the worker running it is killed meanwhile.
    (zoo / "slow.yaml").write_text(
        f"""models:
  - model: {EXAMPLES / "digits_cnn.onnx"}
    name: slow
    data: {EXAMPLES / "calib.npz"}
    options: {{min_sqnr: 200, time_budget_s: 5, max_trials: 1000}}
  - model: convnet.onnx
    data: convnet.npz
  - model: mobilenet.onnx
    data: mobilenet.npz
"""
    )
    out = tmp_path / "out"
    pids = client.run(os.getpid)
    killed: list[str] = []

    def kill_the_slow_jobs_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            processing = client.processing()
            in_flight = sum(len(keys) for keys in processing.values())
            # Wait until every job in flight has made its staging folder (on a loaded machine a job can be
            # assigned well before it starts): then the slow job is inside its 5 s search when killed.
            started = len(list(out.glob(f"{STAGING_PREFIX}*"))) >= in_flight
            for worker, keys in processing.items():
                if started and any("slow/edgetpu" in str(key) for key in keys):
                    time.sleep(0.2)
                    os.kill(pids[worker], signal.SIGKILL)
                    killed.append(worker)
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_slow_jobs_worker)
    killer.start()
    index = api.batch([zoo / "slow.yaml"], ["edgetpu", "gpu-fp16"], out, scheduler=cluster.scheduler_address)
    killer.join()
    assert killed
    failed = [(j.model, j.target) for j in index.jobs if j.status == "failed"]
    assert failed == [("slow", "edgetpu")]
    assert "worker died" in index.jobs[[(j.model, j.target) for j in index.jobs].index(failed[0])].reason
    assert sum(j.status == "done" for j in index.jobs) == 5
    assert list(out.glob(f"{STAGING_PREFIX}*"))  # the killed job's staging folder, never renamed into place
    assert not (out / "slow" / "edgetpu").exists()

    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker
    resumed = api.batch([zoo / "slow.yaml"], ["edgetpu", "gpu-fp16"], out, scheduler=cluster.scheduler_address)
    assert {(j.model, j.target): j.status for j in resumed.jobs} == {
        **{(m, t): "skipped" for m in ("convnet", "mobilenet", "slow") for t in ("edgetpu", "gpu-fp16")},
        ("slow", "edgetpu"): "done",
    }
    assert not list(out.glob(f"{STAGING_PREFIX}*"))
    slow = next(j for j in resumed.jobs if (j.model, j.target) == ("slow", "edgetpu"))
    assert slow.variant_failed  # 200 dB is out of reach: the closest candidate, marked
    assert (out / slow.path).is_file()


def test_embedded_cluster_memory_limit_fails_only_the_model_that_exceeds_it(run_cli, tmp_path) -> None:
    """A real out-of-memory kill: Dask's nanny terminates the worker at 95% of --memory-limit."""
    onnx.save(small_convnet(size=2048), str(tmp_path / "huge.onnx"))  # ~0.5 GB per activation, 0.4 GB of inputs
    shutil.copy(EXAMPLES / "digits_cnn.onnx", tmp_path / "digits_cnn.onnx")
    out = tmp_path / "out"
    models = [tmp_path / "huge.onnx", tmp_path / "digits_cnn.onnx"]
    args = ["batch", *models, "-t", "gpu-fp16", "-o", out, "--workers", "1", "--memory-limit", "1GB"]
    code, stdout, stderr = run_cli(args)
    assert code == 1, stderr
    assert "1 done, 0 skipped, 1 failed" in stdout
    jobs = {j["model"]: j for j in json.loads((out / "index.json").read_text())["jobs"]}
    assert jobs["huge"]["status"] == "failed" and "worker died" in jobs["huge"]["reason"]
    assert jobs["digits_cnn"]["status"] == "done"  # on the worker the nanny restarted


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.onnx", "-t", "edgetpu"], "model not found"),
        (["{zoo}/convnet.onnx", "-t", "no-such-device"], "unknown target"),
        (["{zoo}/convnet.onnx", "{zoo}/convnet.onnx", "-t", "edgetpu"], "two models are named 'convnet'"),
        (["{zoo}/bad.yaml", "-t", "edgetpu"], "models.0.options.max_dorp: Extra inputs are not permitted"),
        (["{zoo}/convnet.onnx", "-t", "edgetpu", "--scheduler", "tcp://x:1", "--workers", "2"], "not with --scheduler"),
        (["{zoo}/convnet.onnx", "-t", "edgetpu", "--memory-limit", "lots"], "--memory-limit 'lots'"),
    ],
)
def test_bad_input_exits_2_before_any_cluster_and_writes_nothing(run_cli, zoo, tmp_path, args, message) -> None:
    (zoo / "bad.yaml").write_text("models:\n  - model: convnet.onnx\n    options: {max_dorp: 0.01}\n")
    out = tmp_path / "out"
    code, _, stderr = run_cli(["batch", *[a.format(zoo=zoo) for a in args], "-o", out])
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_job_file_paths_resolve_against_the_file(zoo) -> None:
    entries = read_entries([zoo / "zoo.yaml", zoo / "convnet.onnx"])
    assert entries[1].model == zoo / "convnet.onnx" and entries[1].data == zoo / "convnet.npz"
    assert entries[-1].data is None
    with pytest.raises(AutoptqError, match="job file not found"):
        read_entries([zoo / "absent.csv"])
