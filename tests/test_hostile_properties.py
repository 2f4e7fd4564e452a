"""Property-based hostile input (issue 13): hypothesis mutates valid models, profiles and .npz files and runs the
command line in-process on each. Whatever the mutation, autoptq keeps its promises:

- it exits 0, 1 or 2, never 3 (an internal error is a bug: every bad input has a diagnosis);
- exit 2 is exactly one line on stderr and nothing on stdout;
- nothing is written outside -o, no input changes, and a refused run writes nothing at all.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from tests.hostile_corpus import alias_bomb, listing, profile_dict

Run = Callable[[list[object]], tuple[int, str, str]]

SETTINGS = settings(
    deadline=None,
    derandomize=True,  # the same cases on every CI run
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def base_model() -> onnx.ModelProto:
    """x[1,4] -> MatMul(w) -> Relu -> y[1,3]: two nodes, one initializer, a classifier's shape."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 12, "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), helper.make_node("Relu", ["m"], ["y"], name="r")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def check_promises(run_cli: Run, workspace: Path, args: list[object], output: Path) -> tuple[int, str, str]:
    """Run `args` and assert the promises; `output` is the one path the run may create."""
    inputs = {k: v for k, v in listing(workspace).items() if not k.startswith(str(output.relative_to(workspace)))}
    code, out, err = run_cli(args)
    assert code in (0, 1, 2), (code, err)
    if code == 2:
        assert out == "" and err.count("\n") == 1 and err.startswith("autoptq: error: "), err
        assert not output.exists(), "a refused run writes nothing"
    after = listing(workspace)
    produced = {k for k in after if k.startswith(str(output.relative_to(workspace)))}
    assert {k: v for k, v in after.items() if k not in produced} == inputs, "written outside -o or changed an input"
    return code, out, err


# --- models ---------------------------------------------------------------------------------------------------------

_TEXT = st.text(alphabet="ab./_-x\\ 0", max_size=6)
_STRINGS_OF_INTS = st.one_of(
    st.sampled_from(["0", "abc", "-8", "4096", "99999999999999999999", "", "1e3", " 4"]),
    st.integers(0, 1 << 33).map(str),
)
model_mutation = st.one_of(
    st.tuples(st.just("opset"), st.one_of(st.integers(-3, 40), st.sampled_from([999, 2**31 - 1, 2**62]))),
    st.tuples(
        st.just("dim"),
        st.sampled_from(["input", "output", "initializer"]),
        st.integers(0, 2),
        st.one_of(st.integers(-2, 6), st.sampled_from([2**31, 2**40, 2**62])),
    ),
    st.tuples(st.just("node_name"), st.integers(0, 1), st.one_of(st.sampled_from(["", "mm", "r"]), _TEXT)),
    st.tuples(
        st.just("op_type"),
        st.integers(0, 1),
        st.sampled_from(["Relu", "MatMul", "Conv", "Softmax", "Foo", "Loop", "If", "", "Gemm", "Identity"]),
    ),
    st.tuples(st.just("domain"), st.integers(0, 1), st.sampled_from(["", "com.microsoft", "com.evil", "ai.onnx.ml"])),
    st.tuples(st.just("drop_outputs")),
    st.tuples(st.just("elem_type"), st.sampled_from(["input", "output"]), st.integers(0, 25)),
    st.tuples(st.just("external"), st.one_of(st.none(), _STRINGS_OF_INTS), st.one_of(st.none(), _STRINGS_OF_INTS),
              st.sampled_from(["w.bin", "../w.bin", "/etc/passwd", "", "missing.bin"]), st.integers(0, 96)),
    st.tuples(st.just("input_name"), st.sampled_from(["w", "y", "m", ""])),
)  # fmt: skip
byte_mutation = st.one_of(
    st.none(),
    st.tuples(st.just("truncate"), st.integers(0, 200)),
    st.tuples(st.just("flip"), st.integers(0, 200), st.integers(0, 255)),
)


def apply_model_mutation(model: onnx.ModelProto, mutation: tuple[Any, ...], folder: Path) -> None:
    kind = mutation[0]
    graph = model.graph
    if kind == "opset":
        model.opset_import[0].version = mutation[1]
    elif kind == "dim":
        _, where, index, value = mutation
        if where == "initializer":
            dims = list(graph.initializer[0].dims)
            if index < len(dims):
                dims[index] = value
                del graph.initializer[0].dims[:]
                graph.initializer[0].dims.extend(dims)
        else:
            tensors = graph.input if where == "input" else graph.output
            dims = tensors[0].type.tensor_type.shape.dim if tensors else []
            if index < len(dims) and value >= 0:
                dims[index].dim_value = value
    elif kind == "node_name":
        graph.node[mutation[1]].name = mutation[2]
    elif kind == "op_type":
        graph.node[mutation[1]].op_type = mutation[2]
    elif kind == "domain":
        graph.node[mutation[1]].domain = mutation[2]
        if mutation[2] and all(o.domain != mutation[2] for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(mutation[2], 1))
    elif kind == "drop_outputs":
        del graph.output[:]
    elif kind == "elem_type":
        for tensor in (graph.input if mutation[1] == "input" else graph.output)[:1]:
            tensor.type.tensor_type.elem_type = mutation[2]
    elif kind == "external":
        _, offset, length, location, size = mutation
        init = graph.initializer[0]
        (folder / "w.bin").write_bytes(init.raw_data[:size] if init.raw_data else bytes(size))
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.data_location = TensorProto.EXTERNAL
        init.external_data.add(key="location", value=location)
        for key, value in (("offset", offset), ("length", length)):
            if value is not None:
                init.external_data.add(key=key, value=value)
    elif kind == "input_name":
        graph.node[0].input[0] = mutation[1]


def write_model(folder: Path, mutations: list[tuple[Any, ...]], corruption: tuple[Any, ...] | None) -> Path:
    model = base_model()
    for mutation in mutations:
        apply_model_mutation(model, mutation, folder)
    data = bytearray(model.SerializeToString())
    if corruption is not None and corruption[0] == "truncate":
        data = data[: corruption[1]]
    elif corruption is not None and corruption[1] < len(data):
        data[corruption[1]] = corruption[2]
    path = folder / "model.onnx"
    path.write_bytes(bytes(data))
    return path


@settings(SETTINGS, max_examples=1500)  # ~15 ms each
@given(mutations=st.lists(model_mutation, min_size=1, max_size=3), corruption=byte_mutation)
def test_mutated_models_keep_the_promises(run_cli: Run, mutations: list[tuple[Any, ...]], corruption: Any) -> None:
    with tempfile.TemporaryDirectory() as name:
        workspace = Path(name)
        (workspace / "inputs").mkdir()
        model = write_model(workspace / "inputs", mutations, corruption)
        out = workspace / "out" / "report.json"
        out.parent.mkdir()
        check_promises(run_cli, workspace, ["audit", model, "-t", "x86-vnni,edgetpu", "-f", "json", "-o", out], out)


# --- profiles -------------------------------------------------------------------------------------------------------


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in _leaf_paths(value, (*prefix, key))] or [prefix]
    if isinstance(node, list) and node:
        return [p for i, value in enumerate(node) for p in _leaf_paths(value, (*prefix, i))]
    return [prefix]


PROFILES = {name: profile_dict(name) for name in ("x86-vnni", "edgetpu", "mcu-cortex-m")}
LEAVES = {name: _leaf_paths(profile) for name, profile in PROFILES.items()}
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 0.0, -0.0, 1e308, "", "..", "/tmp/x", "manifest.json", "int8", "fp32"]),
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.sampled_from(["int8", "fp32", "x", "constraints"]), st.integers(-1, 2), max_size=2),
)
profile_mutation = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10_000), _VALUES),
    st.tuples(st.just("delete"), st.integers(0, 10_000)),
    st.tuples(st.just("name"), st.one_of(_TEXT, st.sampled_from(["", "..", "manifest.json", "/abs", "ok-name"]))),
)
text_mutation = st.one_of(
    st.none(),
    st.tuples(st.just("append"), st.sampled_from(["\nname: again\n", f"\nbomb: {alias_bomb()}\n", "\n" + "[" * 500])),
    st.tuples(st.just("cut"), st.integers(0, 4000)),
)


def mutate_profile(base: str, mutations: list[tuple[Any, ...]], text_change: Any) -> str:
    profile = yaml.safe_load(yaml.safe_dump(PROFILES[base]))
    leaves = LEAVES[base]
    for mutation in mutations:
        if mutation[0] == "name":
            profile["name"] = mutation[1]
            continue
        path = leaves[mutation[1] % len(leaves)]
        parent = profile
        try:
            for key in path[:-1]:
                parent = parent[key]
            if mutation[0] == "set":
                parent[path[-1]] = mutation[2]
            else:
                del parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed the way there
    text = yaml.safe_dump(profile, sort_keys=False)
    if text_change is not None and text_change[0] == "append":
        text += text_change[1]
    elif text_change is not None:
        text = text[: text_change[1]]
    return text


@settings(SETTINGS, max_examples=500)  # ~60 ms each (a profile is parsed by a pure-Python YAML loader)
@given(
    base=st.sampled_from(sorted(PROFILES)),
    mutations=st.lists(profile_mutation, min_size=1, max_size=3),
    text_change=text_mutation,
)
def test_mutated_profiles_keep_the_promises(
    run_cli: Run, base: str, mutations: list[tuple[Any, ...]], text_change: Any
) -> None:
    with tempfile.TemporaryDirectory() as name:
        workspace = Path(name)
        (workspace / "inputs").mkdir()
        model = workspace / "inputs" / "model.onnx"
        model.write_bytes(base_model().SerializeToString())
        profile = workspace / "inputs" / "device.yaml"
        profile.write_text(mutate_profile(base, mutations, text_change))
        out = workspace / "out" / "audit.md"
        out.parent.mkdir()
        check_promises(run_cli, workspace, ["audit", model, "-t", profile, "-f", "markdown", "-o", out], out)


# --- .npz data ------------------------------------------------------------------------------------------------------

_DTYPES = st.sampled_from(["float32", "float64", "float16", "int64", "uint8", "bool"])
array_spec = st.tuples(
    st.lists(st.integers(0, 5), min_size=0, max_size=4),  # shape
    _DTYPES,
    st.sampled_from(["ok", "nan", "inf", "big"]),
)
npz_spec = st.fixed_dictionaries(
    {
        "x": st.one_of(st.none(), array_spec),
        "labels": st.one_of(st.none(), array_spec, st.lists(st.integers(-2, 5), min_size=1, max_size=8)),
        "extra": st.one_of(st.none(), st.sampled_from(["y", "x.npy", "labels2", "../evil"])),
        "corrupt": st.one_of(
            st.none(),
            st.tuples(st.just("truncate"), st.integers(0, 400)),
            st.tuples(st.just("header"), st.lists(st.sampled_from([0, 1, 4, 2**40, 2**62]), min_size=1, max_size=3)),
        ),
    }
)


def _array(spec: tuple[list[int], str, str]) -> np.ndarray:
    shape, dtype, fill = spec
    array = np.ones(shape, dtype=dtype)
    if fill != "ok" and np.issubdtype(array.dtype, np.floating) and array.size:
        array.flat[0] = {"nan": np.nan, "inf": np.inf, "big": 6e4}[fill]
    return array


def write_npz(path: Path, spec: dict[str, Any]) -> Path:
    arrays: dict[str, np.ndarray] = {}
    if spec["x"] is not None:
        arrays["x"] = _array(spec["x"])
    if isinstance(spec["labels"], list):
        arrays["labels"] = np.asarray(spec["labels"], np.int64)
    elif spec["labels"] is not None:
        arrays["labels"] = _array(spec["labels"])
    if spec["extra"] is not None:
        arrays[spec["extra"]] = np.zeros(2, np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    corrupt = spec["corrupt"]
    if corrupt is not None and corrupt[0] == "truncate":
        data = data[: corrupt[1]]
    elif corrupt is not None:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f4", "fortran_order": False, "shape": tuple(corrupt[1])}
        )
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            archive.writestr("x.npy", header.getvalue() + b"\0" * 48)
        data = out.getvalue()
    path.write_bytes(data)
    return path


@settings(SETTINGS, max_examples=350)  # ~85 ms each (plan reads the rules; check runs the emulator)
@given(spec=npz_spec, command=st.sampled_from(["plan", "plan", "plan", "check"]))
def test_mutated_npz_files_keep_the_promises(run_cli: Run, spec: dict[str, Any], command: str) -> None:
    with tempfile.TemporaryDirectory() as name:
        workspace = Path(name)
        (workspace / "inputs").mkdir()
        model = workspace / "inputs" / "model.onnx"
        model.write_bytes(base_model().SerializeToString())
        data = write_npz(workspace / "inputs" / "data.npz", spec)
        out = workspace / "out" / "report.json"
        out.parent.mkdir()
        if command == "plan":
            args = ["plan", model, "-t", "edgetpu", "--data", data, "-f", "json", "-o", out]
        else:
            args = ["check", model, "-t", "x86-vnni", "-r", model, "-d", data, "-f", "json", "-o", out]
        check_promises(run_cli, workspace, args, out)
