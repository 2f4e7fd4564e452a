"""Techniques are objects in one registry: the planner, the candidates, the estimates, production and the report ask
the object, so a technique added in one place (here, a fixture) works through every command."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import ModelProto

from autoptq import api
from autoptq.decide.candidates import fallback_candidate
from autoptq.decide.job import Job
from autoptq.decide.planner import load_tree, plan_model
from autoptq.devices.coverage import analyse
from autoptq.devices.profiles import HardwareProfile, load_profile
from autoptq.errors import AutoptqError
from autoptq.evaluate.estimate import predict
from autoptq.model import zoo
from autoptq.model.calibration import Dataset, synthetic_dataset
from autoptq.model.graph import ModelGraph, load_model
from autoptq.report.text import recipe_fields
from autoptq.techniques import KEEP_FLOAT, REGISTRY, Technique, by_name, fallback_steps, recognise
from autoptq.techniques.common import QuantizationResult
from autoptq.techniques.recipe import Recipe, RecipeFile
from autoptq.techniques.weight_only import quantize_weights

TOY = "toy_gemm_int8"


class GemmOnlyInt8(Technique):
    """A toy technique: per-tensor int8 weights of Gemm nodes only, whatever the device allows."""

    name: ClassVar[str] = TOY
    recipe_keys: ClassVar[tuple[str, ...]] = ("per_channel", "op_types_to_quantize")

    def conform(self, base: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None) -> Recipe:
        del profile, data
        gemms = ["Gemm"] if any(n.op_type == "Gemm" for n in graph.compute_nodes()) else []
        return base.model_copy(update={"per_channel": False, "op_types_to_quantize": gemms})

    def applies(self, recipe: Recipe) -> bool:
        return recipe.op_types_to_quantize == ["Gemm"]

    def fallback_recipe(self, plan_recipe: Recipe, profile: HardwareProfile, data: Dataset | None) -> Recipe | None:
        del plan_recipe, profile, data
        return Recipe()

    def quantize(
        self,
        model: ModelProto,
        recipe: Recipe,
        calibration: Dataset | None,
        profile: HardwareProfile,
        calibration_cache: Path | None = None,
    ) -> QuantizationResult:
        del calibration, profile, calibration_cache
        result = quantize_weights(model, recipe)
        result.applied.technique = TOY
        return result


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Technique]:
    """The toy registered, before keeping float (the registry's order is the order models are recognised in)."""
    registered = {**{k: v for k, v in REGISTRY.items() if k != KEEP_FLOAT}, TOY: GemmOnlyInt8()}
    registered[KEEP_FLOAT] = REGISTRY[KEEP_FLOAT]
    monkeypatch.setattr("autoptq.techniques.REGISTRY", registered)
    yield registered[TOY]


@pytest.fixture(scope="module")
def mlp() -> ModelGraph:
    return load_model(zoo.mlp(features=64, hidden=128, layers=2))


def test_every_name_finds_its_object_and_an_unknown_name_is_refused() -> None:
    assert [t.name for t in REGISTRY.values()] == list(REGISTRY)
    assert by_name("full_int8") is REGISTRY["full_int8"]
    with pytest.raises(AutoptqError, match="unknown technique 'int4'"):
        by_name("int4")
    with pytest.raises(ValueError, match="unknown technique"):
        RecipeFile(target="x86-vnni", technique="int4", recipe=Recipe())


def test_fallback_names_are_the_techniques_and_their_steps() -> None:
    assert {"per_channel", "bias_correction", "percentile_calibration", "entropy_calibration", *REGISTRY} == (
        fallback_steps()
    )


@pytest.mark.parametrize(
    ("name", "target"),
    [("weight_only_int8", "x86-vnni"), ("full_int8", "x86-vnni"), ("fp16", "gpu-fp16"), ("int16x8", "qualcomm-htp")],
)
def test_each_technique_recognises_its_own_models(name: str, target: str) -> None:
    graph = load_model(zoo.small_convnet())
    profile = load_profile(target)
    data = synthetic_dataset(graph, 8)
    recipe = by_name(name).conform(Recipe(op_types_to_quantize=["Conv", "Gemm", "MatMul"]), profile, graph, data)
    quantized = by_name(name).quantize(graph.model, recipe, data, profile).model
    assert recognise(quantized).name == name
    assert recognise(graph.model).name == KEEP_FLOAT


def test_a_registered_technique_is_planned_estimated_and_rendered(
    toy: Technique, mlp: ModelGraph, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nstart: only\nnodes: []\nleaves:\n"
        f"  - {{id: only, technique: {TOY}, summary: The toy for every model., fallbacks: [weight_only_int8, none]}}\n"
    )
    profile = load_profile("x86-vnni")
    plan = plan_model(mlp, profile, load_tree(rules))
    assert plan.technique == TOY
    assert plan.recipe.op_types_to_quantize == ["Gemm"] and not plan.recipe.per_channel
    size, _, _ = predict(mlp, analyse(mlp, profile), profile, TOY, plan.recipe)
    assert size.size_bytes < size.float_size_bytes  # the toy's Gemm weights counted at one byte
    assert recipe_fields(TOY, plan.recipe) == {"per_channel": "no", "op_types_to_quantize": "['Gemm']"}
    other = fallback_candidate("weight_only_int8", Job(mlp, profile, None, synthetic_dataset(mlp, 1)), plan)
    assert other is not None and other.technique == "weight_only_int8"


def test_a_registered_technique_produces_and_is_verified_through_the_api(
    toy: Technique, mlp: ModelGraph, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    name = mlp.inputs[0].name
    samples = [{name: rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(16)]
    data = Dataset(samples=samples, labels=None, source="test")
    plan, outcome = api.quantize(
        mlp, "gpu-fp16", tmp_path / "toy.onnx", data, options=api.QuantizeOptions(technique=TOY)
    )
    assert plan.technique == TOY
    assert outcome.technique == TOY, outcome.reason
    written = onnx.load(str(tmp_path / "toy.onnx"))
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= {n.op_type for n in written.graph.node}
    assert sum(1 for n in written.graph.node if n.op_type == "MatMulInteger") == 3
