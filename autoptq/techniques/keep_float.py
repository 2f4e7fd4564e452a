"""Keeping the float model: the technique a plan chooses where quantizing cannot help, and every search's last
resort."""

from __future__ import annotations

from typing import ClassVar

from onnx import ModelProto

from autoptq.model.graph import ModelGraph
from autoptq.techniques.base import RecipeStep, Technique
from autoptq.techniques.recipe import Recipe


class KeepFloat(Technique):
    """The float model as it is."""

    name: ClassVar[str] = "none"
    quantizes: ClassVar[bool] = False
    precision = "fp32"
    weight_bytes: ClassVar[int] = 4

    def steps(self) -> dict[str, RecipeStep]:
        return {}

    def quantized_nodes(self, graph: ModelGraph, recipe: Recipe) -> set[str]:
        del graph, recipe
        return set()

    def recognises(self, model: ModelProto) -> bool:
        del model
        return True  # asked last: a model no quantizing technique recognises is float
