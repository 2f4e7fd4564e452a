"""User metrics: loading `module:function`, the shipped examples, and --metric through quantize, variants, check."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from autoptq import api
from autoptq.errors import AutoptqError
from autoptq.io.user_metric import load_metric
from autoptq.model import zoo
from tests.conftest import save

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "metrics"
EMBEDDING = f"{EXAMPLES / 'embedding_cosine.py'}:score"
RunCli = Callable[[list[str]], tuple[int, str, str]]


def load_example(name: str) -> object:
    metric = load_metric(f"{EXAMPLES / name}")
    assert metric is not None
    return metric.function


@pytest.fixture
def encoder_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A tiny text encoder with token data; validation labels are topics (tokens drawn from a topic's range)."""
    model = save(zoo.text_encoder(), tmp_path, "encoder.onnx")
    rng = np.random.default_rng(0)
    topics = np.repeat(np.arange(4), 6)
    ids = np.stack([rng.integers(t * 250, t * 250 + 250, (1, 16)) for t in topics]).astype(np.int64)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input_ids=rng.integers(0, 1000, (24, 1, 16)).astype(np.int64))
    val = tmp_path / "val.npz"
    np.savez(val, input_ids=ids, labels=topics.astype(np.int64))
    return model, calib, val


def test_load_from_a_file_and_from_an_importable_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "my_metrics.py"
    source.write_text("def first_mean(outputs, labels):\n    return float(next(iter(outputs.values()))[0].mean())\n")
    by_file = load_metric(f"{source}:first_mean")
    assert by_file is not None and by_file.source == source and by_file.name == "my_metrics.py:first_mean"
    assert by_file.score(["y"], [[np.array([1.0, 3.0])]], None) == 2.0
    assert not (tmp_path / "__pycache__").exists()  # nothing written next to the user's file
    monkeypatch.syspath_prepend(str(tmp_path))
    by_name = load_metric("my_metrics:first_mean")
    assert by_name is not None and by_name.source is None
    assert by_name.score(["y"], [[np.array([4.0])], [np.array([8.0])]], None) == 4.0
    sys.modules.pop("my_metrics", None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "expected module:function"),
        ("missing_file.py:f", "is not a file"),
        ("surely_not_a_module_xyz:f", "cannot import"),
        ("json:not_there", "has no function 'not_there'"),
    ],
)
def test_bad_specs_are_bad_input(spec: str, message: str) -> None:
    with pytest.raises(AutoptqError, match=message):
        load_metric(spec)


@pytest.mark.parametrize("returned", ["float('nan')", "'high'", "None"])
def test_a_metric_must_return_a_finite_number(tmp_path: Path, returned: str) -> None:
    source = tmp_path / "bad.py"
    source.write_text(f"def f(outputs, labels):\n    return {returned}\n")
    metric = load_metric(f"{source}:f")
    assert metric is not None
    with pytest.raises(AutoptqError, match="expected a finite number"):
        metric.score(["y"], [[np.zeros(2)]], None)


def test_embedding_example_scores_separation_and_recall() -> None:
    module_path = EXAMPLES / "embedding_cosine.py"
    separated = {"e": [np.array([[1.0, 0.0]]), np.array([[0.9, 0.1]]), np.array([[0.0, 1.0]]), np.array([[0.1, 1.0]])]}
    mixed = {"e": [np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.array([[0.9, 0.1]]), np.array([[0.1, 1.0]])]}
    labels = np.array([0, 0, 1, 1])
    score = load_metric(f"{module_path}:score")
    recall = load_metric(f"{module_path}:recall_at_1")
    assert score is not None and recall is not None
    assert score.score(["e"], [[v] for v in separated["e"]], labels) > 0.8
    assert score.score(["e"], [[v] for v in mixed["e"]], labels) < 0.0
    assert recall.score(["e"], [[v] for v in separated["e"]], labels) == 1.0
    assert recall.score(["e"], [[v] for v in mixed["e"]], labels) == 0.0


def test_detection_example_is_the_f1_of_matched_boxes() -> None:
    metric = load_metric(f"{EXAMPLES / 'detection_agreement.py'}:hmean")
    assert metric is not None
    reference = np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [-1, -1, -1, -1]]])
    exact = [
        [np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]]], np.float32), np.array([[0.9, 0.8, 0.1]])]
    ]
    assert metric.score(["boxes", "scores"], exact, reference) == 1.0
    # One box shifted off its reference (IoU < 0.5), one spurious confident box: precision 1/3, recall 1/2.
    off = [[np.array([[[0, 0, 10, 10], [26, 26, 36, 36], [50, 50, 60, 60]]], np.float32), np.array([[0.9, 0.8, 0.7]])]]
    assert metric.score(["boxes", "scores"], off, reference) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_quantize_reports_the_metric_and_budgets_its_drop(
    encoder_files: tuple[Path, Path, Path], tmp_path: Path, run_cli: RunCli
) -> None:
    model, calib, val = encoder_files
    out = tmp_path / "q.onnx"
    code, stdout, stderr = run_cli(
        ["quantize", model, "-t", "x86-vnni", "--data", calib, "--val", val, "-o", out, "--metric", EMBEDDING,
         "--format", "json"]
    )  # fmt: skip
    assert code == 0, stderr
    found = json.dumps(json.loads(stdout))
    assert '"name": "embedding_cosine.py:score"' in found
    # A drop budget on a non-classifier works with a metric: the search scores every trial with it.
    code, _, stderr = run_cli(
        ["quantize", model, "-t", "x86-vnni", "--data", calib, "--val", val, "-o", tmp_path / "t.onnx",
         "--metric", EMBEDDING, "--max-drop", "0.05", "--max-trials", "3"]
    )  # fmt: skip
    assert code in (0, 1) and "needs a --metric" not in stderr
    assert "trial 1" in stderr


def test_variants_and_check_carry_the_metric(encoder_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, calib, val = encoder_files
    manifest, _ = api.make_variants(model, ["x86-vnni"], tmp_path / "out", data=calib, validation=val, metric=EMBEDDING)
    variant = manifest.variants[0]
    assert variant.verification is not None and variant.verification.metric is not None
    assert variant.verification.metric.float > 0.0  # topics are separable in the float embeddings
    assert variant.check is not None and variant.check["metric"] is not None
    assert "Metric embedding_cosine.py:score on x86-vnni" in (tmp_path / "out" / "report.md").read_text()
    report = api.check(tmp_path / "out" / variant.path, "x86-vnni", model, val, metric=EMBEDDING, max_drop=0.5)
    assert report.metric is not None and report.passed
    strict = api.check(tmp_path / "out" / variant.path, "x86-vnni", model, val, metric=EMBEDDING, max_drop=-1.0)
    assert not strict.passed and any("metric embedding_cosine.py:score drop" in f for f in strict.failures)


def test_the_metric_file_is_never_an_output(
    encoder_files: tuple[Path, Path, Path], tmp_path: Path, run_cli: RunCli
) -> None:
    model, calib, _ = encoder_files
    source = tmp_path / "m.py"
    source.write_text("def f(outputs, labels):\n    return 1.0\n")
    before = source.read_bytes()
    code, _, stderr = run_cli(
        ["quantize", model, "-t", "x86-vnni", "--data", calib, "-o", source, "--metric", f"{source}:f"]
    )
    assert code == 2 and stderr.count("\n") == 1 and source.read_bytes() == before


def test_the_detection_example_reads_reference_boxes_from_the_data(tmp_path: Path, run_cli: RunCli) -> None:
    """`labels` [samples, M, 4] (reference boxes, -1 rows as padding) travel from the .npz to the metric; top-1
    accuracy is not computed from them, and --max-drop without the metric says the metric is needed. (arm-a53: not
    timed on this machine, so the choice does not hang on latency noise.)"""
    from onnx import helper

    from tests.conftest import build, const, tensor

    rng = np.random.default_rng(0)
    # Boxes pass through a wide hidden layer (W2 = pinv(W1)), so that int8 weights make the file smaller.
    hidden = rng.normal(0, 1, (4, 1024))
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="expand"),
        helper.make_node("MatMul", ["h", "w2"], ["boxes"], name="boxes"),
        helper.make_node("MatMul", ["x", "w"], ["logit"], name="logit"),
        helper.make_node("Reshape", ["logit", "flat"], ["flat_logit"], name="flatten"),
        helper.make_node("Sigmoid", ["flat_logit"], ["scores"], name="scores"),
    ]
    inits = [
        const("w1", hidden),
        const("w2", np.linalg.pinv(hidden)),
        const("w", [[0.02], [0.02], [-0.01], [-0.01]]),
        const("flat", [1, 8], np.int64),
    ]
    outputs = [tensor("boxes", [1, 8, 4]), tensor("scores", [1, 8])]
    model = save(build(nodes, [tensor("x", [1, 8, 4])], outputs, inits), tmp_path)
    corners = rng.uniform(0, 60, (40, 1, 8, 2))
    x = np.concatenate([corners, corners + rng.uniform(5, 40, (40, 1, 8, 2))], axis=-1).astype(np.float32)
    reference = np.full((20, 8, 4), -1.0)
    for i, sample in enumerate(x[20:, 0]):
        confident = sample[0.02 * sample[:, :2].sum(1) - 0.01 * sample[:, 2:].sum(1) > 0]  # sigmoid(logit) > 0.5
        reference[i, : len(confident)] = confident
    calib, val = tmp_path / "calib.npz", tmp_path / "val.npz"
    np.savez(calib, x=x[:20])
    np.savez(val, x=x[20:], labels=reference)
    hmean = f"{EXAMPLES / 'detection_agreement.py'}:hmean"
    out = tmp_path / "q.onnx"
    code, stdout, stderr = run_cli(
        ["quantize", model, "-t", "arm-a53", "--data", calib, "--val", val, "-o", out, "--metric", hmean,
         "--technique", "full_int8", "--max-drop", "0.05", "--max-trials", "3", "--prefer", "size", "--format", "json"]
    )  # fmt: skip
    assert code in (0, 1), stderr
    found = json.loads(stdout)
    assert '"name": "detection_agreement.py:hmean"' in json.dumps(found), stderr
    assert '"float": 1.0' in json.dumps(found)  # the reference boxes are float's own
    assert 20 < int((reference[:, :, 0] >= 0).sum()) < 140  # some boxes confident, some not
    assert found["results"][0]["technique"] == "full_int8"
    code, _, stderr = run_cli(
        ["quantize", model, "-t", "arm-a53", "--data", calib, "--val", val, "-o", out, "--max-drop", "0.05"]
    )
    assert code == 2 and "only a --metric reads" in stderr
