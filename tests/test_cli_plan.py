"""`autoptq plan` and `autoptq matrix` from the command line: formats, goals, rules files, bad input, determinism."""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import save

from autoptq.cli import parse_size
from autoptq.decide.planner import FACTS
from autoptq.errors import AutoptqError
from autoptq.model import zoo

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "examples" / "digits_cnn.onnx"
CALIB = REPO / "examples" / "calib.npz"
MATRIX_DOC = REPO / "docs" / "decision-matrix.md"

Run = Callable[[list[Any]], tuple[int, str, str]]

PLAN_KEYS = {"target", "technique", "leaf", "summary", "recipe", "fallbacks", "trace", "facts", "predicted", "warnings"}


def _plan_json(run_cli: Run, args: list[Any]) -> list[dict[str, Any]]:
    code, out, err = run_cli(["plan", *args, "--format", "json"])
    assert code == 0, err
    document = json.loads(out)
    assert document["schema_version"] == 1 and document["kind"] == "plan"
    return document["results"]


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("autoptq: error: "), err
    return lines[0]


# --- plans ---


def test_plan_json_one_result_per_target(run_cli: Run) -> None:
    results = _plan_json(run_cli, [MODEL, "--target", "edgetpu", "--target", "x86-vnni", "--data", CALIB])
    assert [r["target"] for r in results] == ["edgetpu", "x86-vnni"]
    assert all(set(r) >= PLAN_KEYS for r in results)
    edgetpu, cpu = results
    assert (edgetpu["technique"], edgetpu["leaf"]) == ("full_int8", "full_int8_device")
    assert edgetpu["recipe"]["activation_dtype"] == "int8" and edgetpu["recipe"]["io_dtype"] == "int8"
    assert edgetpu["recipe"]["calibration_samples"] == 200
    assert (cpu["technique"], cpu["leaf"]) == ("none", "keep_float_too_small")
    for result in results:
        assert result["trace"] and all(set(step) == {"node", "question", "facts", "answer"} for step in result["trace"])
        assert all(isinstance(step["answer"], bool) for step in result["trace"])
        assert set(result["facts"]) == set(FACTS)
        assert result["facts"]["data.samples"] == 200
        predicted = result["predicted"]
        assert {"size_bytes", "float_size_bytes", "latency_ratio", "latency_ms", "basis"} <= set(predicted)
        assert predicted["float_size_bytes"] == MODEL.stat().st_size
        assert predicted["label"] == "estimate"


def test_comma_separated_targets(run_cli: Run) -> None:
    results = _plan_json(run_cli, [MODEL, "-t", "edgetpu,mcu-cortex-m", "-t", "gpu-fp16"])
    assert [r["target"] for r in results] == ["edgetpu", "mcu-cortex-m", "gpu-fp16"]
    assert [r["technique"] for r in results] == ["none", "none", "fp16"]
    assert results[1]["predicted"]["latency_ratio"] is None


def test_refusal_without_data_says_how_to_pass_it(run_cli: Run) -> None:
    (result,) = _plan_json(run_cli, [MODEL, "-t", "edgetpu"])
    assert result["technique"] == "none" and result["leaf"] == "refuse_without_data"
    assert "--data" in result["summary"] and "representative data" in result["summary"]
    code, out, _ = run_cli(["plan", MODEL, "-t", "edgetpu"])
    assert code == 0 and "--data" in out


def test_table_output_shows_the_decision_path(run_cli: Run) -> None:
    code, out, err = run_cli(["plan", MODEL, "-t", "edgetpu", "-t", "x86-vnni", "--data", CALIB])
    assert code == 0, err
    assert "Target: edgetpu" in out and "Target: x86-vnni" in out
    assert "Technique: full_int8  (leaf 'full_int8_device'" in out
    assert "Decision path:" in out and "-> yes  (data.samples=200)" in out
    assert "[worth_quantizing]" in out and "model.macs=63488" in out
    assert "Predicted (estimate)" in out


def test_markdown_output(run_cli: Run) -> None:
    code, out, err = run_cli(["plan", MODEL, "-t", "edgetpu", "-t", "x86-vnni", "--data", CALIB, "-f", "markdown"])
    assert code == 0, err
    assert "## Plan: edgetpu" in out and "## Plan: x86-vnni" in out


def test_output_file_matches_stdout_and_is_deterministic(run_cli: Run, tmp_path: Path) -> None:
    args = ["plan", MODEL, "-t", "edgetpu", "-t", "x86-avx2", "-t", "mcu-cortex-m", "--data", CALIB, "-f", "json"]
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    code, out_first, _ = run_cli([*args, "-o", first])
    assert code == 0
    code, out_second, _ = run_cli([*args, "-o", second])
    assert code == 0
    assert first.read_bytes() == second.read_bytes() == out_first.encode()
    assert out_first == out_second


@pytest.mark.parametrize(("text", "value"), [("0.01", 0.01), ("1%", 0.01), ("0", 0.0), ("2.5e-3", 0.0025)])
def test_max_drop(run_cli: Run, text: str, value: float) -> None:
    (result,) = _plan_json(run_cli, [MODEL, "-t", "x86-vnni", "--max-drop", text])
    assert result["facts"]["user.max_drop"] == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "1", "150%", "-0.1", "nan", "inf", "%", "0.01.0"])
def test_max_drop_parse_errors(run_cli: Run, tmp_path: Path, text: str) -> None:
    output = tmp_path / "plan.json"
    line = _one_line_error(*run_cli(["plan", MODEL, "-t", "x86-vnni", "--max-drop", text, "-o", output]))
    assert "--max-drop" in line
    assert not output.exists()


@pytest.mark.parametrize(
    ("text", "value"), [("5MB", 5_000_000), ("500KiB", 512_000), ("123456", 123_456), ("1.5 mb", 1_500_000)]
)
def test_max_size(run_cli: Run, text: str, value: int) -> None:
    (result,) = _plan_json(run_cli, [MODEL, "-t", "x86-vnni", "--max-size", text])
    assert result["facts"]["user.max_size_bytes"] == value


@pytest.mark.parametrize("text", ["5XB", "-1MB", "five", "5 M B", ""])
def test_max_size_parse_errors(run_cli: Run, text: str) -> None:
    line = _one_line_error(*run_cli(["plan", MODEL, "-t", "x86-vnni", "--max-size", text]))
    assert "--max-size" in line


@pytest.mark.parametrize(
    ("text", "value"),
    [("10MB", 10**7), ("2 GB", 2 * 10**9), ("1GiB", 2**30), (" 3 kib ", 3072), ("7b", 7), (".5MiB", 2**19)],
)
def test_size_units_keep_their_meaning(text: str, value: int) -> None:
    # KB, MB, GB are powers of 1000 and KiB, MiB, GiB powers of 1024, as docs/planning.md says.
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["5M", "1TB", "8kbit", "5MB x", "1_000", "1e3", "9" * 400 + "MB"])
def test_sizes_the_flag_refuses_though_byte_size_reads_some(text: str) -> None:
    with pytest.raises(AutoptqError, match="--max-size"):
        parse_size(text)


def test_size_budget_exceeded_is_a_warning(run_cli: Run) -> None:
    (result,) = _plan_json(run_cli, [MODEL, "-t", "x86-vnni", "--max-size", "1KB"])
    assert any("exceeds the budget of 1000 B" in w for w in result["warnings"])


def test_prefer_size_on_a_small_model(run_cli: Run) -> None:
    (result,) = _plan_json(run_cli, [MODEL, "-t", "x86-vnni", "--prefer", "size"])
    assert result["leaf"] == "weight_only_for_size" and result["technique"] == "weight_only_int8"
    assert result["facts"]["user.prefer"] == "size"
    assert result["predicted"]["size_bytes"] < result["predicted"]["float_size_bytes"]


def test_bad_prefer_and_unknown_target(run_cli: Run) -> None:
    code, out, err = run_cli(["plan", MODEL, "-t", "x86-vnni", "--prefer", "cheap"])
    assert code == 2 and out == "" and "--prefer" in err
    line = _one_line_error(*run_cli(["plan", MODEL, "-t", "tpu-v9"]))
    assert "unknown target 'tpu-v9'" in line


def test_refuses_to_overwrite_the_model(run_cli: Run, tmp_path: Path) -> None:
    model = save(onnx.load(MODEL), tmp_path)
    before = model.read_bytes()
    line = _one_line_error(*run_cli(["plan", model, "-t", "x86-vnni", "-o", model]))
    assert "refusing to overwrite the input model" in line
    assert model.read_bytes() == before


def test_synthetic_calibration_is_flagged(run_cli: Run) -> None:
    (result,) = _plan_json(run_cli, [MODEL, "-t", "edgetpu", "--synthetic-calibration"])
    assert result["technique"] == "full_int8"
    assert result["facts"]["data.synthetic"] is True
    assert any(w.startswith("SYNTHETIC calibration data") for w in result["warnings"])


def test_plan_leaves_from_the_cli(run_cli: Run, tmp_path: Path) -> None:
    """The none-with-a-reason leaves and the CPU/GPU leaves through the command line."""
    transformer = save(zoo.transformer_block(), tmp_path, "transformer.onnx")
    loop = save(zoo.loop_model(trips=64, dim=256), tmp_path, "loop.onnx")
    np.savez(tmp_path / "t.npz", input=np.zeros((4, 32, 64), np.float32))
    results = _plan_json(
        run_cli, [transformer, "-t", "edgetpu,x86-vnni,x86-avx2,gpu-fp16", "--data", tmp_path / "t.npz"]
    )
    assert [r["leaf"] for r in results] == [
        "keep_float_falls_back",
        "weight_only",
        "weight_only_reduce_range",
        "fp16_gpu",
    ]
    assert "Conv" not in results[1]["recipe"]["op_types_to_quantize"]
    assert results[2]["recipe"]["reduce_range"] is True
    (looped,) = _plan_json(run_cli, [loop, "-t", "x86-vnni"])
    assert looped["leaf"] == "keep_float_control_flow" and "If/Loop/Scan" in looped["summary"]


# --- rules files ---

VALID_RULES = """\
version: 1
start: first
nodes:
  - id: first
    question: Integer only?
    when: {fact: device.integer_only, op: "==", value: true}
    yes: int8_leaf
    no: float_leaf
leaves:
  - id: int8_leaf
    technique: full_int8
    summary: Full int8.
    recipe: {activation_dtype: int8}
    fallbacks: [percentile_calibration]
  - id: float_leaf
    technique: none
    summary: Keep float.
"""

CYCLE = """\
version: 1
start: a
nodes:
  - id: a
    question: A?
    when: {fact: device.integer_only, op: "==", value: true}
    yes: b
    no: float_leaf
  - id: b
    question: B?
    when: {fact: data.samples, op: ">=", value: 1}
    yes: a
    no: float_leaf
leaves:
  - id: float_leaf
    technique: none
    summary: Keep float.
"""

UNREACHABLE = VALID_RULES.replace(
    "leaves:\n",
    """\
  - id: orphan
    question: Orphan?
    when: {fact: data.samples, op: ">=", value: 1}
    yes: int8_leaf
    no: float_leaf
leaves:
""",
)


def test_custom_rules_file(run_cli: Run, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(VALID_RULES)
    results = _plan_json(run_cli, [MODEL, "-t", "edgetpu,x86-vnni", "--data", CALIB, "--rules", rules])
    assert [(r["leaf"], r["technique"]) for r in results] == [("int8_leaf", "full_int8"), ("float_leaf", "none")]
    assert results[0]["fallbacks"] == ["percentile_calibration"]
    assert results[0]["trace"] == [
        {
            "node": "first",
            "question": "Integer only?",
            "facts": {"device.integer_only": True},
            "answer": True,
        }
    ]
    assert all(r["rules"].endswith("rules.yaml") for r in results)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (VALID_RULES.replace("device.integer_only", "device.is_magic"), "unknown fact 'device.is_magic'"),
        (CYCLE, "node 'a': cycle a -> b -> a"),
        (UNREACHABLE, "node 'orphan' is unreachable from start 'first'"),
        (VALID_RULES.replace("technique: full_int8", "technique: int4"), "leaf 'int8_leaf': unknown technique 'int4'"),
        (VALID_RULES.replace("[percentile_calibration]", "[pray]"), "unknown fallback 'pray'"),
        ("- just\n- a list\n", "a rules file is a YAML mapping"),
        ("version: 1\nstart: [unclosed\n", "invalid YAML"),
    ],
    ids=["unknown_fact", "cycle", "unreachable", "unknown_technique", "unknown_fallback", "not_mapping", "bad_yaml"],
)
def test_invalid_rules_file(run_cli: Run, tmp_path: Path, text: str, fragment: str) -> None:
    rules = tmp_path / "bad_rules.yaml"
    rules.write_text(text)
    output = tmp_path / "plan.json"
    line = _one_line_error(*run_cli(["plan", MODEL, "-t", "x86-vnni", "--rules", rules, "-o", output]))
    assert "bad_rules.yaml" in line and fragment in line
    assert not output.exists()


def test_missing_rules_file(run_cli: Run, tmp_path: Path) -> None:
    line = _one_line_error(*run_cli(["plan", MODEL, "-t", "x86-vnni", "--rules", tmp_path / "absent.yaml"]))
    assert "absent.yaml" in line and "cannot read the rules file" in line


# --- bad data ---


def _raw_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("input", b"raw bytes")


def _bad_data_cases() -> list[tuple[str, Callable[[Path], None], str]]:
    ok = np.zeros((5, 1, 8, 8), np.float32)
    nan = ok.copy()
    nan[1, 0, 0, 0] = np.nan

    def npz(**arrays: np.ndarray) -> Callable[[Path], None]:
        return lambda path: np.savez(path, **arrays)

    return [
        ("wrong_name", npz(pixels=ok), "no array for model input 'input'"),
        ("extra_array", npz(input=ok, extra=ok), "unexpected array 'extra'"),
        ("wrong_shape", npz(input=np.zeros((5, 1, 8, 9), np.float32)), "array 'input' has shape [5, 1, 8, 9]"),
        ("float64", npz(input=ok.astype(np.float64)), "array 'input' is float64, the model input is float32"),
        ("non_finite", npz(input=nan), "array 'input' holds non-finite values"),
        ("empty", npz(input=np.zeros((0, 1, 8, 8), np.float32)), "holds no samples"),
        ("labels_length", npz(input=ok, labels=np.arange(4)), "'labels': 4"),
        ("labels_float", npz(input=ok, labels=np.zeros(5)), "'labels' must be integer"),
        ("object_array", npz(input=np.array([object()], dtype=object)), "holds object arrays"),
        ("pickle", lambda path: path.write_bytes(pickle.dumps({"input": ok})), "not an .npz file"),
        ("text", lambda path: path.write_text("1,2,3\n"), "not an .npz file"),
        ("raw_zip_member", _raw_zip, "member 'input' is not a .npy array"),
    ]


@pytest.mark.parametrize(
    ("write", "fragment"), [c[1:] for c in _bad_data_cases()], ids=[c[0] for c in _bad_data_cases()]
)
def test_bad_data(run_cli: Run, tmp_path: Path, write: Callable[[Path], None], fragment: str) -> None:
    data = tmp_path / "calib.npz"
    write(data)
    output = tmp_path / "plan.json"
    line = _one_line_error(*run_cli(["plan", MODEL, "-t", "edgetpu", "--data", data, "-o", output, "-f", "json"]))
    assert str(data) in line and fragment in line
    assert not output.exists()


def test_missing_data_path(run_cli: Run, tmp_path: Path) -> None:
    line = _one_line_error(*run_cli(["plan", MODEL, "-t", "edgetpu", "--data", tmp_path / "nope.npz"]))
    assert "no such file or folder" in line


def test_folder_of_samples(run_cli: Run, tmp_path: Path) -> None:
    for index in range(3):
        np.savez(tmp_path / f"{index}.npz", input=np.zeros((1, 8, 8), np.float32), labels=np.array(index))
    (result,) = _plan_json(run_cli, [MODEL, "-t", "edgetpu", "--data", tmp_path])
    assert result["facts"]["data.samples"] == 3 and result["facts"]["data.labels"] is True
    assert result["recipe"]["calibration_samples"] == 3


# --- the decision matrix document ---


def test_committed_decision_matrix_is_up_to_date(run_cli: Run, tmp_path: Path) -> None:
    output = tmp_path / "decision-matrix.md"
    code, out, err = run_cli(["matrix", "-o", output])
    assert code == 0, err
    assert output.read_text(encoding="utf-8") == out
    assert out == MATRIX_DOC.read_text(encoding="utf-8"), (
        "docs/decision-matrix.md is stale: regenerate it with `autoptq matrix -o docs/decision-matrix.md`"
    )


def test_planning_doc_shows_the_current_decision_paths(run_cli: Run) -> None:
    """docs/planning.md pastes the output of the digits example; its decisions must still be today's."""
    code, out, err = run_cli(["plan", MODEL, "--target", "edgetpu", "--target", "x86-vnni", "--data", CALIB])
    assert code == 0, err
    doc = (REPO / "docs" / "planning.md").read_text(encoding="utf-8").replace(str(REPO), "/work/main")
    out = out.replace(str(REPO), "/work/main")
    decisive = [line for line in out.splitlines() if line.startswith(("Target:", "Technique:", "  1.", "  2.", "  3."))]
    decisive += [line for line in out.splitlines() if line.startswith(("  4.", "  5.", "Fallbacks", "  activation"))]
    assert len(decisive) >= 12
    assert [line for line in decisive if line not in doc] == []
