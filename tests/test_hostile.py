"""Hostile input, class by class (issue 13): no hang, no write outside -o, no overwritten input, no partial output,
one stderr line on every exit 2, exit 3 for our own bugs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from autoptq import api
from autoptq.devices.profiles import load_profile
from autoptq.io import outputs
from autoptq.io.resources import data_dir
from tests.hostile_corpus import (
    bomb_profile,
    bomb_rules,
    deep_yaml,
    external_data_model,
    listing,
    npz_with_header,
    profile_dict,
    write_data,
    write_profile,
    write_tiny,
)

Run = Callable[[list[object]], tuple[int, str, str]]


def assert_bad_input(result: tuple[int, str, str], phrase: str = "") -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr (containing `phrase`)."""
    code, out, err = result
    assert code == 2, (code, out, err)
    assert out == "", out
    assert err.count("\n") == 1 and err.startswith("autoptq: error: "), err
    assert phrase in err, err
    return err


# --- 1. YAML: alias bombs, deep nesting, duplicate keys ------------------------------------------------------------

_MEASURE = """
import json, resource, sys, time
from autoptq.cli import main
model, profile_bomb, rules_bomb = sys.argv[1:]
main(["audit", model, "-t", "x86-vnni"])  # warm: every module a run imports is loaded before measuring
results = {}
for kind, args in (
    ("profile", ["audit", model, "-t", profile_bomb]),
    ("rules", ["plan", model, "-t", "x86-vnni", "--rules", rules_bomb]),
):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    code = main(args)
    seconds = time.perf_counter() - start
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    results[kind] = {"code": code, "seconds": seconds, "rss_growth_kib": growth}
print(json.dumps(results))
"""


def test_an_alias_bomb_is_refused_fast_and_small(tmp_path: Path) -> None:
    """In a profile's `ops.<Op>.int8.constraints[].in` (it hung `audit`) and in a rules file (46 s, 3.1 GB)."""
    model = write_tiny(tmp_path)
    profile_bomb = write_profile(tmp_path, bomb_profile(), "bomb.yaml")
    rules_bomb = tmp_path / "rules.yaml"
    rules_bomb.write_text(bomb_rules())
    # Peak RSS growth of a child process (the parent's memory would blur it); time is a generous sanity bound only.
    child = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(model), str(profile_bomb), str(rules_bomb)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    results = json.loads(child.stdout.splitlines()[-1])
    assert child.stderr.count("expands to more than") == 2 and child.stderr.count("\n") == 2, child.stderr
    for result in results.values():
        assert result["code"] == 2, child.stderr
        assert result["rss_growth_kib"] < 100 * 1024, results
        assert result["seconds"] < 10, results  # measured well under 1 s


@pytest.mark.parametrize("kind", ["profile", "rules"])
def test_yaml_nested_20000_deep_is_refused(run_cli: Run, tmp_path: Path, kind: str) -> None:
    model = write_tiny(tmp_path)
    deep = write_profile(tmp_path, deep_yaml(), "deep.yaml")
    args = ["audit", model, "-t", deep] if kind == "profile" else ["plan", model, "-t", "x86-vnni", "--rules", deep]
    assert_bad_input(run_cli(args), "nested more than")


def test_a_duplicate_key_in_a_profile_is_refused(run_cli: Run, tmp_path: Path) -> None:
    text = (data_dir("hardware_profiles") / "x86-vnni.yaml").read_text() + "\nname: again\n"
    assert_bad_input(run_cli(["audit", write_tiny(tmp_path), "-t", write_profile(tmp_path, text)]), "duplicate key")


def test_honest_aliases_still_load() -> None:
    assert load_profile("qualcomm-htp").ops["Conv"] == load_profile("qualcomm-htp").ops["Gemm"]  # shares an anchor


# --- 2. the profile name never becomes a path ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/tmp/autoptq-escape", "../../x", "manifest.json", "", "..", "a/b", "report.md"])
def test_a_profile_name_that_is_not_a_slug_is_refused_and_nothing_is_written(
    run_cli: Run, tmp_path: Path, name: str
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    model, data = write_tiny(inputs), write_data(inputs)
    profile = profile_dict()
    profile["name"] = name
    device = write_profile(inputs, profile)
    before = listing(tmp_path)
    err = assert_bad_input(
        run_cli(["variants", model, "--targets", device, "--data", data, "-o", tmp_path / "out" / "deep"]), "name"
    )
    assert "should match pattern" in err
    assert listing(tmp_path) == before
    assert not Path("/tmp/autoptq-escape").exists()


# --- 3. inputs are never outputs -----------------------------------------------------------------------------------


def _inputs(tmp_path: Path) -> dict[str, Path]:
    model = write_tiny(tmp_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text((data_dir("rules") / "post_training.yaml").read_text())
    images = tmp_path / "images"
    images.mkdir()
    (images / "a").write_bytes(b"an input file of the folder")
    return {
        "model": model,
        "data": write_data(tmp_path, labels=np.zeros(20, np.int64)),
        "val": write_data(tmp_path, "val.npz", labels=np.zeros(20, np.int64)),
        "profile": write_profile(tmp_path, profile_dict()),
        "rules": rules,
        "images": images,
    }


@pytest.mark.parametrize(
    ("command", "victim"),
    [
        (["quantize", "{model}", "-t", "{profile}", "--data", "{data}", "-o", "{profile}"], "profile"),
        (["quantize", "{model}", "-t", "x86-vnni", "--data", "{data}", "--val", "{val}", "-o", "{val}"], "val"),
        (["quantize", "{model}", "-t", "x86-vnni", "--rules", "{rules}", "--data", "{data}", "-o", "{rules}"], "rules"),
        (["plan", "{model}", "-t", "x86-vnni", "--rules", "{rules}", "-o", "{rules}"], "rules"),
        (["plan", "{model}", "-t", "{profile}", "-o", "{profile}"], "profile"),
        (["plan", "{model}", "-t", "x86-vnni", "--data", "{data}", "-o", "{data}"], "data"),
        (["audit", "{model}", "-t", "{profile}", "-o", "{profile}"], "profile"),
        (["audit", "{model}", "-t", "x86-vnni", "-o", "{model}"], "model"),
        (
            [
                "plan",
                "{model}",
                "-t",
                "x86-vnni",
                "--data",
                "{images}",
                "--preprocess",
                "size=2x2",
                "-o",
                "{images}/a",
            ],
            "images",
        ),
        (["check", "{model}", "-t", "{profile}", "-r", "{model}", "-d", "{data}", "-o", "{profile}"], "profile"),
        (["check", "{model}", "-t", "x86-vnni", "-r", "{model}", "-d", "{data}", "-o", "{data}"], "data"),
        (["matrix", "--rules", "{rules}", "-o", "{rules}"], "rules"),
        (["matrix", "-o", str(data_dir("hardware_profiles") / "edgetpu.yaml")], "shipped profile"),
    ],
)
def test_no_input_is_ever_overwritten(run_cli: Run, tmp_path: Path, command: list[str], victim: str) -> None:
    paths = _inputs(tmp_path)
    shipped = {p: p.read_bytes() for p in data_dir("hardware_profiles").glob("*.yaml")}
    before = listing(tmp_path)
    assert_bad_input(run_cli([part.format(**paths) for part in command]), "refusing to overwrite")
    assert listing(tmp_path) == before
    assert {p: p.read_bytes() for p in shipped} == shipped


def test_variants_into_a_folder_holding_an_input_does_not_touch_it(run_cli: Run, tmp_path: Path) -> None:
    paths = _inputs(tmp_path)
    (tmp_path / "x86-vnni").mkdir()
    (tmp_path / "x86-vnni" / "model.onnx").write_bytes(paths["model"].read_bytes())
    clash = tmp_path / "x86-vnni" / "model.onnx"
    before = listing(tmp_path)
    assert_bad_input(
        run_cli(["variants", clash, "--targets", "x86-vnni", "--data", paths["data"], "-o", tmp_path]),
        "refusing to overwrite the input model",
    )
    assert listing(tmp_path) == before


# --- 4. no partial output ------------------------------------------------------------------------------------------


def test_a_file_where_a_target_folder_must_go_is_refused_before_any_work(run_cli: Run, tmp_path: Path) -> None:
    model, data = write_tiny(tmp_path), write_data(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "gpu-fp16").write_text("a file, not a folder")
    before = listing(tmp_path)
    assert_bad_input(
        run_cli(["variants", model, "--targets", "x86-vnni,gpu-fp16", "--data", data, "-o", out]),
        "is a file where a folder must go",
    )
    assert listing(tmp_path) == before


def test_a_file_where_the_output_folder_must_go_is_refused(run_cli: Run, tmp_path: Path) -> None:
    model, data = write_tiny(tmp_path), write_data(tmp_path)
    (tmp_path / "blocker").write_text("x")
    before = listing(tmp_path)
    for out in (tmp_path / "blocker", tmp_path / "blocker" / "sub"):
        assert_bad_input(run_cli(["variants", model, "--targets", "x86-vnni", "--data", data, "-o", out]))
        assert_bad_input(run_cli(["plan", model, "-t", "x86-vnni", "-o", out / "plan.txt"]))
    assert listing(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_any_work(run_cli: Run, tmp_path: Path) -> None:
    model, data = write_tiny(tmp_path), write_data(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_bad_input(run_cli(["quantize", model, "-t", "x86-vnni", "--data", data, "-o", locked / "q.onnx"]))
        assert_bad_input(run_cli(["variants", model, "--targets", "x86-vnni", "--data", data, "-o", locked / "v"]))
    finally:
        locked.chmod(0o755)


def test_the_writability_probe_refuses_what_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs.tempfile, "TemporaryFile", read_only)  # as a read-only mount answers, even to root
    with pytest.raises(outputs.OutputError, match=r"cannot write into .*Permission denied"):
        outputs.check_output_path(tmp_path / "q.onnx")


class _Killed(BaseException):
    """Stands for kill -9 at one point of a run (BaseException: nothing of ours catches it)."""


def _variants(model: Path, data: Path, out: Path) -> None:
    options = api.QuantizeOptions(measure_latency=False)
    api.make_variants(model, ["x86-vnni", "gpu-fp16"], out, data=data, options=options)


def _consistent(out: Path) -> bool:
    """A manifest present describes the files beside it (sha256 of every model)."""
    manifest = out / "manifest.json"
    if not manifest.exists():
        return True
    import hashlib

    document = json.loads(manifest.read_text())
    return all(hashlib.sha256((out / v["path"]).read_bytes()).hexdigest() == v["sha256"] for v in document["variants"])


def test_a_run_killed_at_any_write_leaves_a_consistent_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rerun into a folder holding another model's variants, killed at each file move in turn (every write and the
    commit go through os.replace): the manifest never lists a sha256 that does not match the file beside it."""
    data = write_data(tmp_path)
    first, second = write_tiny(tmp_path, "a.onnx", weight=1.0), write_tiny(tmp_path, "b.onnx", weight=2.0)
    out = tmp_path / "out"
    real_replace = os.replace
    calls = {"n": 0}

    def counting(src: object, dst: object) -> None:
        calls["n"] += 1
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", counting)
    _variants(second, data, out)
    moves = calls["n"]
    assert moves >= 6  # 2 models + 3 files staged, then moved in
    for kill_at in range(1, moves + 1):
        monkeypatch.setattr(outputs.os, "replace", real_replace)
        _variants(first, data, out)  # the old set
        calls["n"] = 0

        def killing(src: object, dst: object, kill_at: int = kill_at) -> None:
            calls["n"] += 1
            if calls["n"] == kill_at:
                raise _Killed
            real_replace(src, dst)

        monkeypatch.setattr(outputs.os, "replace", killing)
        with pytest.raises(_Killed):
            _variants(second, data, out)
        assert _consistent(out), f"killed at move {kill_at} of {moves}"
    monkeypatch.setattr(outputs.os, "replace", real_replace)
    _variants(second, data, out)
    assert _consistent(out) and (out / "manifest.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".autoptq-staging-")], "staging removed"


# --- 5/8. one line per exit 2, exit 3 for our bugs -----------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["audit", "{model}", "-t", "x86-vnni", "--format", "bogus"],
        ["audit", "{model}"],
        ["audit", "{model}", "-t", "x86-vnni", "--no-such-flag"],
        ["quantize", "{model}", "-t", "x86-vnni", "-o", "{tmp}/q.onnx", "--max-trials", "abc"],
        ["quantize", "{model}", "-t", "x86-vnni", "-o", "{tmp}/q.onnx", "--max-trials", "0"],
        ["quantize", "{model}", "-t", "x86-vnni", "-o", "{tmp}/q.onnx", "--min-sqnr", "nan"],
        ["quantize", "{model}", "-t", "x86-vnni", "-o", "{tmp}/q.onnx", "--min-top1-agreement", "5"],
        ["quantize", "{model}", "-t", "x86-vnni", "-o", "{tmp}/q.onnx", "--time-budget", "9" * 400],
        ["quantize", "{model}", "-t", "x86-vnni", "-o", "{tmp}/q.onnx", "--search", "first", "--min-sqnr", "20"],
        ["quantize", "{model}", "-t", "x86-vnni", "-o", "{tmp}/q.onnx", "--search", "exhaustive"],
        ["check", "{model}", "-t", "x86-vnni", "-r", "{model}", "-d", "{data}", "--min-sqnr", "inf"],
        ["plan", "{model}", "-t", "x86-vnni", "--max-size", "9" * 400],
        ["plan", "{model}", "-t", "x86-vnni", "--max-drop", "2"],
        ["nonsense"],
        [],
    ],
)
def test_every_usage_error_is_one_line_and_exit_2(run_cli: Run, tmp_path: Path, args: list[str]) -> None:
    model, data = write_tiny(tmp_path), write_data(tmp_path)
    code, _, err = run_cli([a.format(model=model, data=data, tmp=tmp_path) for a in args])
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("autoptq: error: "), err
    assert not (tmp_path / "q.onnx").exists()


def test_debug_keeps_exit_2_for_bad_input_and_adds_the_traceback(run_cli: Run, tmp_path: Path) -> None:
    code, _, err = run_cli(["audit", tmp_path / "missing.onnx", "-t", "x86-vnni", "--debug"])
    assert code == 2
    assert "Traceback" in err and err.splitlines()[-1].startswith("autoptq: error: ")


def test_an_internal_error_is_exit_3_with_one_line(run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def bug(*_args: object, **_kwargs: object) -> None:
        raise ZeroDivisionError("a bug\nover two lines")

    monkeypatch.setattr(api, "audit", bug)  # test-only: forces a bug of ours
    code, out, err = run_cli(["audit", write_tiny(tmp_path), "-t", "x86-vnni"])
    assert (code, out) == (3, "")
    assert err == "autoptq: internal error: ZeroDivisionError: a bug over two lines (rerun with --debug for details)\n"
    code, _, err = run_cli(["audit", write_tiny(tmp_path), "-t", "x86-vnni", "--debug"])
    assert code == 3 and "Traceback" in err and "ZeroDivisionError" in err


# --- 6/7. a precise diagnosis before any heavy work ----------------------------------------------------------------


def _model_case(tmp_path: Path, case: str) -> Path:
    from onnx import TensorProto, helper

    from tests.hostile_corpus import tiny_model

    model = tiny_model()
    if case == "opset 999":
        model = tiny_model(opset=999)
    elif case == "duplicate node names":
        model.graph.node.append(helper.make_node("Relu", ["y"], ["z"], name="mm"))
        model.graph.output[0].name = "z"
    elif case == "dim 2^40":
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 2**40
    elif case == "no outputs":
        del model.graph.output[:]
    elif case == "offset abc":
        return external_data_model(tmp_path, offset="abc")
    elif case == "offset -8":
        return external_data_model(tmp_path, offset="-8")
    elif case == "over 2 GiB":
        path = external_data_model(tmp_path, length=str(3 * 2**30))
        with (tmp_path / "weights.bin").open("r+b") as handle:
            handle.truncate(3 * 2**30 + 64)  # sparse: no disk is used
        return path
    elif case == "past the end":
        return external_data_model(tmp_path, offset="4096")
    else:
        raise AssertionError(case)
    del TensorProto
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize(
    ("case", "phrase"),
    [
        ("opset 999", "support opsets 1 to"),
        ("duplicate node names", "node name 'mm' is used by 2 nodes"),
        ("dim 2^40", "more than this machine's memory"),
        ("no outputs", "declares no outputs"),
        ("offset abc", "offset of tensor 'w' is 'abc', not a byte count"),
        ("offset -8", "offset of tensor 'w' is '-8', not a byte count"),
        ("over 2 GiB", "up to 2 GiB"),
        ("past the end", "lies beyond the end"),
    ],
)
@pytest.mark.parametrize("command", ["audit", "quantize"])
def test_a_bad_model_gets_a_precise_line(run_cli: Run, tmp_path: Path, case: str, phrase: str, command: str) -> None:
    model = _model_case(tmp_path, case)
    args = ["audit", model, "-t", "x86-vnni"] if command == "audit" else ["quantize", model, "-t", "x86-vnni"]
    if command == "quantize":
        args += ["--synthetic-calibration", "-o", tmp_path / "q.onnx"]
    assert_bad_input(run_cli(args), phrase)
    assert not (tmp_path / "q.onnx").exists()


def test_an_op_of_an_unknown_domain_is_not_compatible_with_a_cpu(run_cli: Run, tmp_path: Path) -> None:
    from onnx import helper

    from tests.hostile_corpus import tiny_model

    model = tiny_model()
    model.graph.node[0].CopyFrom(helper.make_node("Mystery", ["x"], ["y"], name="m", domain="com.example"))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    code, out, _ = run_cli(["audit", path, "-t", "x86-vnni"])
    assert code == 1
    assert "Compatible: no" in out and "domain 'com.example' has no runtime kernels" in " ".join(out.split())


@pytest.mark.parametrize(
    ("arrays", "phrase"),
    [
        ({"labels": np.zeros((20, 3), np.int64)}, "'labels' of shape [20, 3] are per-sample reference data"),
        ({"labels": np.zeros((20, 3), np.bool_)}, "'labels' must hold numbers"),
        ({"labels": np.full(20, 99, np.int64)}, "class indices must be 0 to 3"),
        ({"labels": np.full(20, -1, np.int64)}, "class indices must be 0 to 3"),
    ],
)
def test_bad_labels_are_refused_and_no_temp_folder_is_left(
    run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arrays: dict[str, np.ndarray], phrase: str
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    model, data = write_tiny(tmp_path), write_data(tmp_path)
    val = write_data(tmp_path, "val.npz", **arrays)
    args = ["quantize", model, "-t", "x86-vnni", "--data", data, "--val", val, "-o", tmp_path / "q.onnx"]
    assert_bad_input(run_cli([*args, "--max-drop", "0.01"]), phrase)
    assert list(temp.iterdir()) == []


def test_an_npy_header_declaring_2_40_elements_is_refused(run_cli: Run, tmp_path: Path) -> None:
    data = npz_with_header(tmp_path / "huge.npz", (2**40, 1, 4))
    assert_bad_input(run_cli(["plan", write_tiny(tmp_path), "-t", "x86-vnni", "--data", data]), "declares shape")


@pytest.mark.parametrize(
    ("where", "value", "phrase"),
    [
        (("memory", "dram_bandwidth_bytes_per_s"), 0, "greater than 0"),
        (("memory", "ram_bytes"), -1, "greater than or equal to 0"),
        (("memory", "parameter_cache_bytes"), -1, "greater than or equal to 0"),
        (("cost", "per_op_overhead_s"), -1.0, "greater than or equal to 0"),
        (("cost", "fixed_overhead_s"), float("inf"), "finite"),
        (("cost", "uncertainty"), float("nan"), "finite"),
        (("precisions", "fp32", "peak_macs_per_s"), float("inf"), "finite"),
    ],
)
def test_bad_profile_numbers_are_refused(
    run_cli: Run, tmp_path: Path, where: tuple[str, ...], value: float, phrase: str
) -> None:
    profile = profile_dict()
    node = profile
    for key in where[:-1]:
        node = node.setdefault(key, {})
    node[where[-1]] = value
    err = assert_bad_input(run_cli(["audit", write_tiny(tmp_path), "-t", write_profile(tmp_path, profile)]), phrase)
    assert ".".join(where) in err


def test_an_error_message_with_newlines_is_folded(run_cli: Run, tmp_path: Path) -> None:
    profile = write_profile(tmp_path, "name: [unclosed\n  - x\n")
    assert_bad_input(run_cli(["audit", write_tiny(tmp_path), "-t", profile]), "not valid YAML")


# --- 9. numeric noise ----------------------------------------------------------------------------------------------


def test_nan_outputs_give_one_diagnosis_line_not_warnings(run_cli: Run, tmp_path: Path) -> None:
    from onnx import helper

    from tests.hostile_corpus import tiny_model

    model = tiny_model()
    model.graph.node[0].output[0] = "m"
    model.graph.node.append(helper.make_node("Log", ["m"], ["y"], name="log"))  # log of negatives: NaN
    path = tmp_path / "nan.onnx"
    path.write_bytes(model.SerializeToString())
    rng = np.random.default_rng(0)
    data = tmp_path / "neg.npz"
    np.savez(data, x=-rng.random((20, 1, 4), dtype=np.float32))
    code, _, err = run_cli(
        ["quantize", path, "-t", "x86-vnni", "--data", data, "-o", tmp_path / "q.onnx", "--min-sqnr", "20"]
    )
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("autoptq: warning:")]
    assert len(lines) == 1 and "NaN or inf" in lines[0], err
    assert "RuntimeWarning" not in err


def test_yaml_safe_loader_still_refuses_python_tags(tmp_path: Path) -> None:
    text = "!!python/object/apply:os.system ['true']\n"
    with pytest.raises(yaml.YAMLError):
        from autoptq.io import safeyaml

        safeyaml.load(text)
