"""`autoptq audit` and `autoptq targets`: formats, exit codes, atomic output, and bad input handled in one line."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import yaml
from conftest import save, tensor
from onnx import helper

from autoptq.devices.profiles import shipped_profile_names
from autoptq.model import zoo

Run = Callable[[list[str]], tuple[int, str, str]]

PER_TARGET_KEYS = {
    "target",
    "compatible",
    "device_mac_fraction",
    "device_op_fraction",
    "first_cut",
    "segments",
    "memory",
    "nodes",
}


MOBILENET = {"size": 64, "width": 16, "blocks": 6, "classes": 10}


@pytest.fixture
def mobilenet(tmp_path: Path) -> Path:
    return save(zoo.mobilenet_style(**MOBILENET), tmp_path, "mobilenet.onnx")


@pytest.fixture
def leaky(tmp_path: Path) -> Path:
    return save(zoo.mobilenet_style(**MOBILENET, leaky_after_first=True), tmp_path, "leaky.onnx")


@pytest.fixture
def dynamic(tmp_path: Path) -> Path:
    return save(zoo.mobilenet_style(**MOBILENET, batch="N"), tmp_path, "dynamic.onnx")


def audit_json(run_cli: Run, model: Path, *targets: str) -> tuple[int, dict]:
    args = ["audit", model, "--format", "json"]
    for target in targets:
        args += ["--target", target]
    code, out, err = run_cli(args)
    assert err == ""
    return code, json.loads(out)


# --- formats --------------------------------------------------------------------------------------


def test_table_of_a_compatible_model(run_cli: Run, mobilenet: Path) -> None:
    code, out, err = run_cli(["audit", mobilenet, "--target", "edgetpu"])
    assert (code, err) == (0, "")
    assert "Target: edgetpu" in out and "Compatible: yes" in out
    header = next(line for line in out.splitlines() if "Operator" in line)
    assert header.index("Operator") < header.index("Count") < header.index("Status")
    assert "Mapped to edgetpu" in out
    assert "First cut: none" in out
    assert "nodes not on the device" not in out


def test_table_of_a_model_cut_early(run_cli: Run, leaky: Path) -> None:
    code, out, _ = run_cli(["audit", leaky, "-t", "edgetpu"])
    assert code == 1
    assert "Compatible: no" in out
    assert "First cut: leakyrelu" in out and "(LeakyRelu)" in out
    assert "More than one subgraph is not supported" in out
    assert "Operation not supported" in out
    assert "nodes not on the device" in out


def test_json_document(run_cli: Run, leaky: Path) -> None:
    code, doc = audit_json(run_cli, leaky, "edgetpu")
    assert code == 1
    assert set(doc) == {"schema_version", "kind", "results"}
    assert doc["kind"] == "audit" and isinstance(doc["schema_version"], int)
    (result,) = doc["results"]
    assert set(result) >= PER_TARGET_KEYS
    assert result["target"] == "edgetpu" and result["compatible"] is False
    assert set(result["first_cut"]) == {"node", "op_type", "reason"}
    assert result["first_cut"]["op_type"] == "LeakyRelu"
    assert 0 < result["device_mac_fraction"] < 0.25
    assert all({"name", "op_type", "status", "reason"} <= set(node) for node in result["nodes"])
    statuses = [node["status"] for node in result["nodes"]]
    assert statuses[:2] == ["mapped", "unsupported_op"] and set(statuses[2:]) == {"after_cut"}
    assert {"peak_activation_bytes", "device_param_bytes", "streamed_param_bytes"} <= set(result["memory"])
    assert [s["on"] for s in result["segments"]] == ["device", "host"]


def test_json_first_cut_is_null_when_compatible(run_cli: Run, mobilenet: Path) -> None:
    code, doc = audit_json(run_cli, mobilenet, "edgetpu")
    assert code == 0
    assert doc["results"][0]["first_cut"] is None
    assert doc["results"][0]["device_mac_fraction"] == 1.0


def test_several_targets_in_order(run_cli: Run, leaky: Path) -> None:
    code, doc = audit_json(run_cli, leaky, "edgetpu", "x86-vnni")
    assert code == 1  # one incompatible target is enough
    edgetpu, x86 = doc["results"]
    assert (edgetpu["target"], x86["target"]) == ("edgetpu", "x86-vnni")
    assert edgetpu["compatible"] is False and x86["compatible"] is True


def test_open_batch_is_counted_at_one_and_maps(run_cli: Run, dynamic: Path) -> None:
    code, doc = audit_json(run_cli, dynamic, "edgetpu")
    assert code == 0
    (edgetpu,) = doc["results"]
    assert edgetpu["compatible"] is True and edgetpu["dynamic_dims"] == []
    assert "dim 0 = 1: an open batch axis" in edgetpu["shape_notes"][0]


def test_exit_0_when_every_target_is_compatible(run_cli: Run, mobilenet: Path) -> None:
    code, out, _ = run_cli(["audit", mobilenet, "-t", "edgetpu,x86-vnni", "-t", "qualcomm-htp"])
    assert code == 0
    assert out.count("Compatible: yes") == 3


def test_markdown(run_cli: Run, leaky: Path) -> None:
    code, out, _ = run_cli(["audit", leaky, "-t", "edgetpu", "--format", "markdown"])
    assert code == 1
    assert out.startswith("## Audit: edgetpu")
    assert "| Operator | Count | Status |" in out
    assert "| LeakyRelu | 1 | Operation not supported |" in out
    assert "| Node | Op | Status | Reason |" in out


def test_sarif_has_one_result_per_off_device_node(run_cli: Run, leaky: Path) -> None:
    _, doc = audit_json(run_cli, leaky, "edgetpu", "x86-vnni")
    off_device = [(r["target"], n["name"]) for r in doc["results"] for n in r["nodes"] if not n["on_device"]]
    code, out, _ = run_cli(["audit", leaky, "-t", "edgetpu", "-t", "x86-vnni", "-f", "sarif"])
    assert code == 1
    sarif = json.loads(out)
    assert sarif["version"] == "2.1.0"
    (sarif_run,) = sarif["runs"]
    results = sarif_run["results"]
    assert len(results) == len(off_device) == 29  # 30 edgetpu nodes but the stem; none on x86
    assert [(r["properties"]["target"], r["properties"]["node"]) for r in results] == off_device
    rules = {rule["id"] for rule in sarif_run["tool"]["driver"]["rules"]}
    assert {r["ruleId"] for r in results} == rules == {"unsupported_op", "after_cut"}
    assert all(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith("leaky.onnx") for r in results)


def test_sarif_of_a_compatible_model_has_no_results(run_cli: Run, mobilenet: Path) -> None:
    code, out, _ = run_cli(["audit", mobilenet, "-t", "edgetpu", "-f", "sarif"])
    assert code == 0
    assert json.loads(out)["runs"][0]["results"] == []


@pytest.mark.parametrize("fmt", ["table", "json", "markdown", "sarif"])
def test_output_file_is_the_same_text_and_runs_are_identical(
    run_cli: Run, leaky: Path, tmp_path: Path, fmt: str
) -> None:
    first, second = tmp_path / f"first.{fmt}", tmp_path / f"second.{fmt}"
    code1, out1, _ = run_cli(["audit", leaky, "-t", "edgetpu", "-f", fmt, "-o", first])
    code2, out2, _ = run_cli(["audit", leaky, "-t", "edgetpu", "-f", fmt, "-o", second])
    assert code1 == code2 == 1
    assert first.read_text() == out1
    assert first.read_bytes() == second.read_bytes()
    assert out1 == out2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


def test_output_file_is_replaced_and_gets_normal_permissions(run_cli: Run, mobilenet: Path, tmp_path: Path) -> None:
    reference = tmp_path / "plain.txt"
    reference.write_text("x")
    out = tmp_path / "report.json"
    out.write_text("old contents")
    run_cli(["audit", mobilenet, "-t", "edgetpu", "-f", "json", "-o", out])
    assert json.loads(out.read_text())["kind"] == "audit"
    fresh = tmp_path / "fresh.json"
    run_cli(["audit", mobilenet, "-t", "edgetpu", "-f", "json", "-o", fresh])
    assert fresh.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777  # not mkstemp's 0600


def test_the_model_file_is_never_modified(run_cli: Run, leaky: Path, tmp_path: Path) -> None:
    before, mtime = leaky.read_bytes(), leaky.stat().st_mtime_ns
    for fmt in ("table", "json", "markdown", "sarif"):
        run_cli(["audit", leaky, "-t", "edgetpu", "-t", "mcu-cortex-m", "-f", fmt, "-o", tmp_path / "out"])
    assert leaky.read_bytes() == before
    assert leaky.stat().st_mtime_ns == mtime


def test_user_profile_path(run_cli: Run, mobilenet: Path, tmp_path: Path) -> None:
    code, out, _ = run_cli(["targets", "show", "edgetpu"])
    profile = yaml.safe_load(out)
    profile["name"] = "my-edgetpu"
    del profile["ops"]["Clip"]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(profile))
    code, doc = audit_json(run_cli, mobilenet, str(path))
    assert code == 1
    (result,) = doc["results"]
    assert result["target"] == "my-edgetpu"
    assert result["first_cut"]["op_type"] == "Clip"


# --- bad input: exit 2, one line, nothing written -------------------------------------------------


def _checker_failure(tmp_path: Path) -> Path:
    node = helper.make_node("Relu", ["undefined"], ["y"])
    graph = helper.make_graph([node], "g", [tensor("x", [1, 4])], [tensor("y", [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return save(model, tmp_path, "unchecked.onnx")


def _external_outside(tmp_path: Path) -> Path:
    folder = tmp_path / "ext"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save(zoo.mlp(), str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    proto = onnx.load(str(path), load_external_data=False)
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    (tmp_path / "outside.bin").write_bytes((folder / "weights.bin").read_bytes())
    onnx.save(proto, str(path))
    return path


def _bytes(content: bytes) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        path = tmp_path / "bad.onnx"
        path.write_bytes(content)
        return path

    return make


def _truncated(tmp_path: Path) -> Path:
    raw = zoo.mobilenet_style().SerializeToString()
    return _bytes(raw[: len(raw) // 2])(tmp_path)


def _good(tmp_path: Path) -> Path:
    return save(zoo.small_convnet(), tmp_path, "good.onnx")


BAD_MODELS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing file": (lambda tmp: tmp / "missing.onnx", "no such file"),
    "directory": (lambda tmp: tmp, "not a file"),
    "garbage bytes": (_bytes(os.urandom(4096)), "not an ONNX model"),
    "empty file": (_bytes(b""), "not an ONNX model"),
    "truncated": (_truncated, "not an ONNX model"),
    "checker failure": (_checker_failure, "fails the ONNX checker"),
    "external data outside": (_external_outside, "outside the model's folder"),
}


def assert_one_line_error(code: int, out: str, err: str, phrase: str) -> None:
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("autoptq: error: ")
    assert phrase in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model(run_cli: Run, tmp_path: Path, case: str) -> None:
    make, phrase = BAD_MODELS[case]
    model = make(tmp_path)
    out_file = tmp_path / "report.json"
    snapshot = model.read_bytes() if model.is_file() else None
    code, out, err = run_cli(["audit", model, "-t", "edgetpu", "-f", "json", "-o", out_file])
    assert_one_line_error(code, out, err, phrase)
    assert not out_file.exists()
    if snapshot is not None:
        assert model.read_bytes() == snapshot


def _invalid_yaml(tmp_path: Path) -> str:
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nops: [\n")
    return str(path)


def _unknown_key(tmp_path: Path) -> str:
    path = tmp_path / "extra.yaml"
    profile = yaml.safe_load((Path(__file__).parents[1] / "hardware_profiles" / "edgetpu.yaml").read_text())
    profile["turbo"] = True
    path.write_text(yaml.safe_dump(profile))
    return str(path)


BAD_TARGETS: dict[str, tuple[Callable[[Path], str], str]] = {
    "unknown name": (lambda tmp: "nonexistent", "unknown target 'nonexistent'"),
    "missing YAML": (lambda tmp: str(tmp / "nope.yaml"), "profile file not found"),
    "invalid YAML": (_invalid_yaml, "not valid YAML"),
    "unknown key": (_unknown_key, "unknown key 'turbo'"),
}


@pytest.mark.parametrize("case", sorted(BAD_TARGETS))
def test_bad_target(run_cli: Run, tmp_path: Path, case: str) -> None:
    make, phrase = BAD_TARGETS[case]
    model = _good(tmp_path)
    before = model.read_bytes()
    out_file = tmp_path / "report.txt"
    code, out, err = run_cli(["audit", model, "-t", "x86-vnni", "-t", make(tmp_path), "-o", out_file])
    assert_one_line_error(code, out, err, phrase)
    assert not out_file.exists()
    assert model.read_bytes() == before


@pytest.mark.parametrize(
    ("output", "phrase"),
    [
        (lambda tmp, model: tmp, "is a directory"),
        (lambda tmp, model: tmp / "no" / "such" / "folder.json", "does not exist"),
        (lambda tmp, model: model, "refusing to overwrite the input model"),
    ],
    ids=["directory", "missing folder", "the input model"],
)
def test_bad_output_path(run_cli: Run, tmp_path: Path, output: Callable, phrase: str) -> None:
    model = _good(tmp_path)
    before, mtime = model.read_bytes(), model.stat().st_mtime_ns
    listing = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_cli(["audit", model, "-t", "edgetpu", "-o", output(tmp_path, model)])
    assert_one_line_error(code, out, err, phrase)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
    assert (model.read_bytes(), model.stat().st_mtime_ns) == (before, mtime)


@pytest.mark.parametrize(
    "args",
    [["--target", "edgetpu", "--format", "xml"], [], ["--target"]],
    ids=["unknown format", "no target", "target without value"],
)
def test_usage_errors(run_cli: Run, tmp_path: Path, args: list[str]) -> None:
    model = _good(tmp_path)
    code, out, err = run_cli(["audit", model, *args, "-o", tmp_path / "out.txt"])
    assert code == 2
    assert out == ""
    assert err.startswith("autoptq: error:") and err.count("\n") == 1 and "--help" in err, err
    assert not (tmp_path / "out.txt").exists()


def test_an_empty_target_list_is_a_usage_error(run_cli: Run, tmp_path: Path) -> None:
    code, _, err = run_cli(["audit", _good(tmp_path), "-t", ","])
    assert code == 2
    assert err.startswith("autoptq: error:")


# --- targets --------------------------------------------------------------------------------------


def test_targets_lists_every_shipped_profile(run_cli: Run) -> None:
    code, out, err = run_cli(["targets"])
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["TARGET", "KIND", "PRECISIONS", "DESCRIPTION"]
    names = [line.split()[0] for line in rows if line.strip() and not line.startswith(" ")]  # wrapped lines indent
    assert names == shipped_profile_names()
    assert max(len(line) for line in out.splitlines()) <= 100
    assert {"edgetpu", "x86-vnni", "mcu-cortex-m", "qualcomm-htp"} <= set(names)


def test_targets_show(run_cli: Run) -> None:
    code, out, _ = run_cli(["targets", "show", "edgetpu"])
    assert code == 0
    profile = yaml.safe_load(out)
    assert profile["name"] == "edgetpu"
    assert profile["partitioning"] == "first_cut"
    assert profile["memory"]["parameter_cache_bytes"] == 6_500_000
    assert profile["ops"]["Softmax"]["int8"]["constraints"][0]["max_elements"] == 16000


def test_targets_show_unknown(run_cli: Run) -> None:
    code, out, err = run_cli(["targets", "show", "nonexistent"])
    assert_one_line_error(code, out, err, "unknown target 'nonexistent'")


def test_targets_schema_is_json_schema(run_cli: Run) -> None:
    code, out, _ = run_cli(["targets", "schema"])
    assert code == 0
    schema = json.loads(out)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"name", "ops", "partitioning", "memory"} <= set(schema["properties"])
