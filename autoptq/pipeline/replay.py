"""Replay: reproduce a chosen variant from its recipe, without search.

A recipe comes from a variants manifest (`manifest.json#TARGET`: the recipe that variant was made with) or from a
recipe YAML (`autoptq plan --format yaml` writes one document per target, to edit and replay; `recipe.yaml#TARGET`
picks one). Replaying prepares the model and runs the technique's quantizer with exactly that recipe, as the
variant was made, so the same model and data give the same bytes; the result is verified and reported, never
searched or replaced by a fallback.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from autoptq.decide.job import Job
from autoptq.decide.planner import Plan
from autoptq.devices.canonical import float_model_for
from autoptq.errors import AutoptqError
from autoptq.evaluate.verify import verify
from autoptq.model.prepare import PREPARATION_SAMPLES, prepare
from autoptq.pipeline.manifest import Manifest
from autoptq.pipeline.produce import Attempt, Outcome, with_findings
from autoptq.techniques import KEEP_FLOAT, by_name
from autoptq.techniques.recipe import RecipeFile

RECIPE_FILE_HEADER = (
    "# autoptq recipe, one document per target: edit any field and replay with\n"
    "#   autoptq quantize MODEL --recipe THIS_FILE#TARGET --data CALIB.npz -o OUT.onnx\n"
    "# Fields: see `Recipe` in autoptq/techniques/recipe.py.\n"
    "# The device's rules are checked again when the result is verified.\n"
)


def split_spec(spec: str) -> tuple[Path, str | None]:
    """`file#TARGET` -> (file, TARGET); a file whose own name holds '#' is taken whole."""
    path = Path(spec)
    if path.is_file() or "#" not in spec:
        return path, None
    name, _, target = spec.rpartition("#")
    return Path(name), target or None


def load_recipe(spec: str) -> RecipeFile:
    """The recipe a `--recipe` argument names (see the module docstring); bad input raises AutoptqError."""
    path, target = split_spec(spec)
    if not path.is_file():
        raise AutoptqError(f"--recipe {spec!r}: {path} is not a file")
    text = path.read_text(encoding="utf-8")
    recipes = _from_manifest(text, path) if path.suffix == ".json" else _from_yaml(text, path)
    if target is None:
        if len(recipes) != 1:
            names = ", ".join(r.target for r in recipes)
            raise AutoptqError(f"--recipe {spec!r}: {path} holds recipes for {names}; pick one with {path}#TARGET")
        return recipes[0]
    found = [r for r in recipes if r.target == target]
    if not found:
        names = ", ".join(r.target for r in recipes) or "none"
        raise AutoptqError(f"--recipe {spec!r}: no recipe for target {target!r} in {path} (it has: {names})")
    return found[0]


def _from_manifest(text: str, path: Path) -> list[RecipeFile]:
    try:
        manifest = Manifest.model_validate_json(text)
    except ValidationError as exc:
        raise AutoptqError(f"{path}: not an autoptq variants manifest ({exc.error_count()} problems)") from exc
    recipes = []
    for variant in manifest.variants:
        if by_name(variant.technique).quantizes and variant.recipe is None:
            raise AutoptqError(f"{path}: variant {variant.target} records no recipe (made by an older autoptq)")
        recipes.append(RecipeFile(target=variant.target, technique=variant.technique, recipe=variant.recipe))
    return recipes


def _from_yaml(text: str, path: Path) -> list[RecipeFile]:
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise AutoptqError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    recipes = []
    for index, document in enumerate(documents):
        try:
            recipes.append(RecipeFile.model_validate(document))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise AutoptqError(f"{path}: document {index + 1}: {where}: {first['msg']}") from exc
    if not recipes:
        raise AutoptqError(f"{path}: holds no recipe")
    return recipes


def render_recipes(plans: list[Plan]) -> str:
    """`plan --format yaml`: one editable, replayable recipe document per plan."""
    documents = [
        RecipeFile(target=p.target, technique=p.technique, recipe=p.recipe if by_name(p.technique).quantizes else None)
        for p in plans
    ]
    body = yaml.safe_dump_all(
        [d.model_dump(mode="json") for d in documents], sort_keys=False, explicit_start=True, width=110
    )
    return RECIPE_FILE_HEADER + body


def replay(job: Job, chosen: RecipeFile, measure_latency: bool = True) -> Outcome:
    """Prepare and quantize with exactly `chosen`'s recipe, then verify; no search, no fallback."""
    graph, profile, calibration, validation = job.graph, job.profile, job.calibration, job.validation
    float_bytes = graph.original_bytes()
    if not by_name(chosen.technique).quantizes or chosen.recipe is None:
        return Outcome(
            target=profile.name,
            planned_technique=KEEP_FLOAT,
            technique=KEEP_FLOAT,
            kept_float=True,
            reason="the recipe keeps the float model",
            attempts=[],
            preparation=[],
            model_bytes=float_bytes,
        )
    float_model = float_model_for(graph, profile)
    prepared = prepare(float_model, validation.take(PREPARATION_SAMPLES))
    result = by_name(chosen.technique).quantize(prepared.model, chosen.recipe, calibration, profile)
    verification = verify(
        float_model,
        result.model,
        result.applied.integer_io,
        validation,
        profile,
        job.min_sqnr_db,
        measure_latency,
        float_size_bytes=len(float_bytes),
        metric=job.metric,
    )
    reason = with_findings(f"replayed the {chosen.technique} recipe for {chosen.target} (no search)", verification)
    return Outcome(
        target=profile.name,
        planned_technique=chosen.technique,
        technique=chosen.technique,
        kept_float=False,
        reason=reason,
        attempts=[
            Attempt(
                step="recipe",
                technique=chosen.technique,
                recipe=chosen.recipe,
                accepted=verification.passed,
                verification=verification,
                applied=result.applied,
            )
        ],
        preparation=prepared.steps,
        applied=result.applied,
        verification=verification,
        synthetic_data=bool(calibration is not None and calibration.synthetic),
        model_bytes=result.model.SerializeToString(deterministic=True),
    )
