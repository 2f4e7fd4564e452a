"""What a technique is: one object that owns its recipe knobs, what the device dictates of them, its estimates for
the planner and the cost model, its fallback steps, and its quantizer.

The planner, the candidates, the search, the manifest and the report ask the technique object; none of them branches
on a technique's name. A new technique is a module with a `Technique` subclass and one line in
`autoptq.techniques.REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

from onnx import ModelProto

from autoptq.deadline import NO_DEADLINE, Deadline
from autoptq.devices.profiles import HardwareProfile, Precision
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph
from autoptq.techniques.common import QuantizationResult
from autoptq.techniques.recipe import Recipe

RecipeStep = Callable[[Recipe], Recipe | None]
"""A fallback step that changes a recipe's knobs (None: the step does not apply to that recipe)."""

SpacePoint = tuple[str, Recipe]
"""A labelled point of a technique's recipe space (the label is what the search and the report print)."""


def per_channel_step(recipe: Recipe) -> Recipe | None:
    """The fallback step to per-channel weights (None: the recipe already has them)."""
    return None if recipe.per_channel else recipe.model_copy(update={"per_channel": True})


class Technique:
    """A post-training quantization technique. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    """The name in recipes, rules files, manifests and on the command line."""
    quantizes: ClassVar[bool] = True
    """False only for keeping the float model."""
    calibrated: ClassVar[bool] = False
    """Whether it needs representative data to calibrate activation ranges (static quantization)."""
    range_steps: ClassVar[frozenset[str]] = frozenset()
    """Its fallback steps that move ranges, not kernels: they cannot change speed or size, only accuracy."""
    precision: ClassVar[Precision] = "int8"
    """The precision of the nodes it converts, as the device's coverage names it."""
    weight_bytes: ClassVar[int] = 1
    """Bytes per weight element it stores."""
    host_timed: ClassVar[bool] = False
    """Whether `autoptq calibrate-host` times its kernels (with `kernel_recipe`), so the host table predicts its
    latency."""
    recipe_keys: ClassVar[tuple[str, ...]] = ()
    """The recipe fields that matter to it, in the order a report shows them."""

    # --- the recipe ---------------------------------------------------------------------------------------------

    def conform(self, base: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None) -> Recipe:
        """`base` with what the device dictates filled in (dtypes, symmetry, granularity, I/O, ...)."""
        del profile, graph, data
        return base

    def applies(self, recipe: Recipe) -> bool:
        """Whether a conformant recipe has anything to quantize (a weight-only recipe with no op type has not)."""
        del recipe
        return True

    def nothing_to_quantize(self, base: Recipe, recipe: Recipe) -> tuple[Recipe, str]:
        """Where the conformant recipe does not apply: the recipe a plan keeps anyway, so that it names what it would
        quantize, and the warning that says why it changes nothing."""
        del base
        return recipe, f"{self.name} has nothing to quantize in this model"

    def fallback_recipe(self, plan_recipe: Recipe, profile: HardwareProfile, data: Dataset | None) -> Recipe | None:
        """The recipe it starts from when a plan names it as a fallback (None: not on this device or data)."""
        del plan_recipe, profile, data
        return None

    def steps(self) -> Mapping[str, RecipeStep]:
        """Its fallback steps that change knobs, not technique, by the names rules files use."""
        return {"per_channel": per_channel_step}

    def range_variants(self, recipe: Recipe) -> list[SpacePoint]:
        """The recipe with other ranges and the same kernels, labelled by what changed (none by default)."""
        del recipe
        return []

    def onnxruntime_default(self, profile: HardwareProfile, data: Dataset | None) -> SpacePoint | None:
        """onnxruntime's own default call for this technique, as a labelled recipe (None: none, or not here)."""
        del profile, data
        return None

    def choice_space(
        self, plan_recipe: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None
    ) -> list[SpacePoint]:
        """The points of its recipe space the default choice ranks with the cost model (none by default)."""
        del plan_recipe, profile, graph, data
        return []

    def search_space(
        self, plan_recipe: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None
    ) -> list[SpacePoint]:
        """The points of its recipe space the accuracy loop walks around `plan_recipe` (the plan's recipe, or this
        technique's first candidate when the plan chose another; none by default)."""
        del plan_recipe, profile, graph, data
        return []

    def known_slow(self, recipe: Recipe, profile: HardwareProfile, int8_ops: set[str]) -> int:
        """How many of the recipe's knobs the device's rules mark as the slow path (the cost model cannot see)."""
        del recipe, profile, int8_ops
        return 0

    # --- estimates ----------------------------------------------------------------------------------------------

    def quantized_nodes(self, graph: ModelGraph, recipe: Recipe) -> set[str]:
        """The compute nodes the recipe converts."""
        excluded = set(recipe.nodes_to_exclude)
        names = {n.name for n in graph.compute_nodes() if n.name not in excluded}
        if recipe.op_types_to_quantize:
            return {n for n in names if graph.node(n).op_type in set(recipe.op_types_to_quantize)}
        return names

    def per_channel_weights(self, recipe: Recipe) -> bool:
        """Whether the stored weights carry one scale per channel (their size counts the scales)."""
        return recipe.per_channel

    def boundaries(self, graph: ModelGraph, converted: set[str], recipe: Recipe) -> tuple[int, int]:
        """(tensors that get a quantize/dequantize or a cast, elements crossing them) once `converted` is."""
        del graph, converted, recipe
        return 0, 0

    def kernel_recipe(self, op_type: str, samples: int) -> Recipe:
        """The recipe `autoptq calibrate-host` times this technique's kernel of `op_type` with."""
        raise NotImplementedError(f"{self.name} is not timed on the host")

    # --- producing and recognising ------------------------------------------------------------------------------

    def quantize(
        self,
        model: ModelProto,
        recipe: Recipe,
        calibration: Dataset | None,
        profile: HardwareProfile,
        calibration_cache: Path | None = None,
        deadline: Deadline = NO_DEADLINE,
    ) -> QuantizationResult:
        """Run the quantizer. `calibration_cache` (static techniques) keeps tensor ranges across repeated runs;
        `deadline` is checked before each sample its data is run on (calibration, fp16's overflow guard)."""
        raise NotImplementedError(f"{self.name} has no quantizer")

    def recognises(self, model: ModelProto) -> bool:
        """Whether `model` looks like this technique's output (read from its operators and types)."""
        del model
        return False


def precision_borders(graph: ModelGraph, converted: set[str], float_io: bool) -> set[str]:
    """Activations read or written by both converted and unconverted nodes (and, with float I/O, by converted nodes
    at the graph's inputs and outputs): where a Q/DQ pair or a cast stays once the runtime fuses the rest."""
    io = (*graph.inputs, *graph.outputs) if float_io else ()
    sides: dict[str, set[bool]] = {t.name: {False} for t in io}
    for node in graph.compute_nodes():
        for tensor in (*node.inputs, *node.outputs):
            if tensor and tensor not in graph.constants:
                sides.setdefault(tensor, set()).add(node.name in converted)
    return {t for t, seen in sides.items() if len(seen) > 1}


def border_elements(graph: ModelGraph, tensors: set[str]) -> int:
    """Elements crossing a set of activations per inference."""
    return sum(graph.tensors[t].numel() or 0 for t in tensors if t in graph.tensors)
