"""Replay: `quantize --recipe manifest.json#TARGET` and `--recipe plan.yaml` reproduce a variant byte for byte."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from autoptq import api
from autoptq.errors import AutoptqError
from autoptq.pipeline.replay import load_recipe
from autoptq.techniques.recipe import RecipeFile

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL, CALIB, VAL = EXAMPLES / "digits_cnn.onnx", EXAMPLES / "calib.npz", EXAMPLES / "val.npz"
RunCli = Callable[[list[str]], tuple[int, str, str]]


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Variants of the example for an integer device (full int8), a CPU (weight-only for size) and one that keeps
    float, plus one searched under a budget."""
    out = tmp_path_factory.mktemp("variants")
    options = api.QuantizeOptions(goals=api.UserGoals(prefer="size"), measure_latency=False)
    api.make_variants(MODEL, ["edgetpu", "arm-a76", "x86-vnni"], out / "plain", data=CALIB, validation=VAL,
                      options=options)  # fmt: skip
    budget = api.QuantizeOptions(budget=api.Budget(min_sqnr_db=25, max_trials=4), measure_latency=False)
    api.make_variants(MODEL, ["edgetpu"], out / "tuned", data=CALIB, validation=VAL, options=budget)
    return out


@pytest.mark.parametrize(
    ("folder", "target"),
    [("plain", "edgetpu"), ("plain", "arm-a76"), ("plain", "x86-vnni"), ("tuned", "edgetpu")],
)
def test_manifest_recipe_replays_byte_for_byte(
    variants: Path, folder: str, target: str, tmp_path: Path, run_cli: RunCli
) -> None:
    manifest = json.loads((variants / folder / "manifest.json").read_text())
    variant = next(v for v in manifest["variants"] if v["target"] == target)
    out = tmp_path / "replayed.onnx"
    code, stdout, stderr = run_cli(
        ["quantize", MODEL, "--recipe", f"{variants / folder / 'manifest.json'}#{target}", "--data", CALIB,
         "--val", VAL, "-o", out]
    )  # fmt: skip
    # Exit 1 would only say the replayed model fails verification here (x86: slower than float when measured).
    assert code in (0, 1) and not stderr, stderr
    assert out.read_bytes() == (variants / folder / variant["path"]).read_bytes()
    assert variant["technique"] in stdout


def test_tuned_variants_record_the_recipe_they_were_made_with(variants: Path) -> None:
    manifest = json.loads((variants / "tuned" / "manifest.json").read_text())
    variant = manifest["variants"][0]
    assert variant["tuning"] is not None and variant["recipe"] is not None


def test_plan_yaml_is_an_editable_recipe_that_replays(tmp_path: Path, run_cli: RunCli) -> None:
    recipe = tmp_path / "recipe.yaml"
    code, stdout, _ = run_cli(["plan", MODEL, "-t", "edgetpu,arm-a76", "--data", CALIB, "-f", "yaml", "-o", recipe])
    assert code == 0 and stdout.startswith("# autoptq recipe")
    documents = list(yaml.safe_load_all(recipe.read_text()))
    assert [d["target"] for d in documents] == ["edgetpu", "arm-a76"]
    assert documents[0]["technique"] == "full_int8" and documents[1]["technique"] == "none"
    # Replaying the plan's recipe gives what quantize makes when the plan's own candidate passes.
    planned, replayed = tmp_path / "planned.onnx", tmp_path / "replayed.onnx"
    assert run_cli(["quantize", MODEL, "-t", "edgetpu", "--data", CALIB, "--val", VAL, "-o", planned])[0] == 0
    code, _, stderr = run_cli(["quantize", MODEL, "--recipe", f"{recipe}#edgetpu", "--data", CALIB, "--val", VAL,
                               "-o", replayed])  # fmt: skip
    assert code == 0, stderr
    assert replayed.read_bytes() == planned.read_bytes()
    # Edited: the calibration method changes the bytes, and the edit is what is applied.
    documents[0]["recipe"]["calibration_method"] = "percentile"
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(documents[0]))
    again = tmp_path / "edited.onnx"
    code, stdout, _ = run_cli(["quantize", MODEL, "--recipe", edited, "--data", CALIB, "--val", VAL, "-o", again,
                               "-f", "json"])  # fmt: skip
    assert code == 0 and again.read_bytes() != planned.read_bytes()
    assert '"calibration_method": "percentile"' in stdout


@pytest.mark.parametrize(
    ("content", "spec_suffix", "message"),
    [
        ("target: edgetpu\ntechnique: full_int8\n", "", "needs a recipe"),
        ("target: edgetpu\ntechnique: full_int8\nrecipe: {turbo: true}\n", "", "recipe.turbo"),
        ("target: edgetpu\ntechnique: none\n", "#x86-vnni", "no recipe for target 'x86-vnni'"),
        ("[unclosed", "", "not valid YAML"),
        ("---\ntarget: a\ntechnique: none\n---\ntarget: b\ntechnique: none\n", "", "pick one with"),
    ],
)
def test_bad_recipe_files_are_bad_input(tmp_path: Path, content: str, spec_suffix: str, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(content)
    with pytest.raises(AutoptqError, match=message):
        load_recipe(f"{path}{spec_suffix}")


def test_cli_refuses_search_options_and_a_mismatched_target(tmp_path: Path, run_cli: RunCli) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RecipeFile(target="edgetpu", technique="none").model_dump(mode="json")))
    out = tmp_path / "o.onnx"
    code, _, stderr = run_cli(["quantize", MODEL, "--recipe", recipe, "--max-drop", "0.01", "-o", out])
    assert code == 2 and "without search" in stderr and not out.exists()
    code, _, stderr = run_cli(["quantize", MODEL, "--recipe", recipe, "--search", "first", "-o", out])
    assert code == 2 and "drop --search" in stderr and not out.exists()
    code, _, stderr = run_cli(["quantize", MODEL, "--recipe", recipe, "-t", "x86-vnni", "-o", out])
    assert code == 2 and "chosen for edgetpu" in stderr and not out.exists()
    code, _, stderr = run_cli(["quantize", MODEL, "--recipe", recipe, "-o", recipe])
    assert code == 2 and not out.exists() and "edgetpu" in recipe.read_text()
    code, _, stderr = run_cli(["quantize", MODEL, "-o", out])
    assert code == 2 and "--target" in stderr


def test_a_replayed_tflite_target_gets_its_tflite_beside_the_model(tmp_path: Path, run_cli: RunCli) -> None:
    pytest.importorskip("tflite", reason="the tflite extra writes the .tflite")
    recipe = tmp_path / "edgetpu.yaml"
    code, out, err = run_cli(["plan", MODEL, "-t", "edgetpu", "--data", CALIB, "--format", "yaml"])
    assert code == 0, err
    recipe.write_text(out)
    default, replayed = tmp_path / "default.onnx", tmp_path / "replayed.onnx"
    common = [MODEL, "-t", "edgetpu", "--data", CALIB, "--val", VAL]
    assert run_cli(["quantize", *common, "-o", default])[0] == 0
    code, out, err = run_cli(["quantize", *common, "--recipe", recipe, "-o", replayed])
    assert code == 0, err
    assert "next step: `edgetpu_compiler replayed.tflite`" in out
    assert replayed.with_suffix(".tflite").read_bytes() == default.with_suffix(".tflite").read_bytes()
