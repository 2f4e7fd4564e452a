"""The Evaluator: float once, each candidate on the host or an emulator tier, one Evaluation with problems as codes;
and the policies (verify, the calibration fallbacks, check) deciding from the codes, not from the texts."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import ModelProto, helper

from autoptq.decide.candidates import Candidate
from autoptq.devices.profiles import load_profile
from autoptq.errors import AutoptqError
from autoptq.evaluate import evaluator as evaluator_module
from autoptq.evaluate.evaluation import DeviceQuery, Evaluation
from autoptq.evaluate.evaluator import Evaluator, match_outputs
from autoptq.evaluate.verify import verdict
from autoptq.io.user_metric import UserMetric
from autoptq.model import zoo
from autoptq.model.calibration import Dataset
from autoptq.model.graph import load_model
from autoptq.pipeline.produce import Attempt, _calibration_can_help
from autoptq.techniques.qdq import static_qdq
from autoptq.techniques.recipe import Recipe
from tests.conftest import build, const, tensor

EDGETPU = load_profile("edgetpu")
X86 = load_profile("x86-vnni")


def _sequence_model(weights: np.ndarray) -> ModelProto:
    """[1, seq, 8] → MatMul → [1, seq, 4]: the sequence length varies between samples."""
    return build(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        [tensor("x", [1, "seq", 8])],
        [tensor("y", [1, "seq", 4])],
        [const("w", weights)],
    )


def _sequences() -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset([{"x": rng.standard_normal((1, n, 8)).astype(np.float32)} for n in (3, 5, 9, 2)], None, "seq")


def _weights(noise: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((8, 4))
    return weights + noise * rng.standard_normal((8, 4))


@pytest.fixture(scope="module")
def classifier() -> tuple[ModelProto, Dataset]:
    """The small convnet with labels taken from its own predictions (float accuracy 1.0)."""
    model = zoo.small_convnet(size=16)
    rng = np.random.default_rng(2)
    samples = [{"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(12)]
    evaluator = Evaluator(model, EDGETPU, Dataset(samples, None, "images"))
    labels = np.array([int(np.argmax(outputs[0])) for outputs in evaluator.float_outputs])
    return model, Dataset(samples, labels, "images")


def test_samples_of_varying_shape_are_run_one_by_one() -> None:
    reference = _sequence_model(_weights())
    evaluator = Evaluator(reference, X86, _sequences(), min_sqnr_db=10.0, float_size_bytes=10**6)
    same = evaluator.evaluate(reference, measure=False)
    assert same.tier == "host" and same.samples == 4
    assert [f.sqnr_db for f in same.fidelity] == [200.0] and same.problems == []
    close = evaluator.evaluate(_sequence_model(_weights(0.01)), measure=False)
    assert 20 < close.lowest_sqnr_db < 200 and close.problems == []
    far = evaluator.evaluate(_sequence_model(_weights(3.0)), measure=False)
    assert far.codes == {"below_sqnr_floor"}
    assert far.problems[0].text == f"output 'y' SQNR {far.lowest_sqnr_db:.1f} dB is below the floor 10.0 dB"


def test_the_float_model_runs_once_for_every_candidate_and_tier(classifier: tuple[ModelProto, Dataset]) -> None:
    model, data = classifier
    evaluator = Evaluator(model, EDGETPU, data)
    float_outputs = evaluator.float_outputs
    quantized = static_qdq(model, Recipe(activation_dtype="int8"), data, "full_int8").model
    on_host = evaluator.evaluate(quantized)
    exact = evaluator.evaluate(quantized, tier="exact")
    assert evaluator.float_outputs is float_outputs
    assert (on_host.tier, exact.tier) == ("host", "exact")
    assert on_host.fidelity_statement.startswith("host tier:") and exact.fidelity_statement.startswith("exact tier:")
    assert on_host.accuracy_float == exact.accuracy_float == 1.0
    assert on_host.lowest_sqnr_db > 20 and exact.lowest_sqnr_db > 20
    # Nothing here stands in for an Edge TPU: not timed, and said so.
    assert on_host.latency.measured is None and on_host.latency.note.startswith("not measured")


def test_each_problem_has_its_code() -> None:
    reference = _sequence_model(_weights())
    data = _sequences()
    evaluator = Evaluator(reference, EDGETPU, data, min_sqnr_db=10.0)
    poisoned = build(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"], name="fc"),
            helper.make_node("Log", ["minus_one"], ["nan"], name="log"),
            helper.make_node("Add", ["mm", "nan"], ["y"], name="poison"),
        ],
        [tensor("x", [1, "seq", 8])],
        [tensor("y", [1, "seq", 4])],
        [const("w", _weights()), const("minus_one", -1.0)],
    )
    assert evaluator.evaluate(poisoned).codes == {"not_finite", "not_smaller"}
    broken = _sequence_model(_weights())
    broken.graph.node[0].op_type = "NoSuchOp"
    [problem] = evaluator.evaluate(broken).problems
    assert problem.code == "not_runnable" and problem.text.startswith("does not run in onnxruntime")
    with pytest.raises(AutoptqError, match="do not match the reference model's"):
        renamed = _sequence_model(_weights())
        renamed.graph.output.append(tensor("extra", [1]))
        evaluator.evaluate(renamed)


def test_a_failing_metric_is_a_problem_of_the_candidate_and_a_quick_look_leaves_it_out() -> None:
    def mean_or_fail(outputs: dict[str, list[np.ndarray]], labels: np.ndarray | None) -> float:
        values = np.concatenate([o.reshape(-1) for o in outputs["y"]])
        if np.abs(values).max() > 100:
            raise ValueError("out of range")
        return float(values.mean())

    data = _sequences()
    metric = UserMetric("mean", mean_or_fail)
    evaluator = Evaluator(_sequence_model(_weights()), X86, data, metric=metric, float_size_bytes=10**6)
    fine = evaluator.evaluate(_sequence_model(_weights(0.01)), measure=False)
    assert fine.metric is not None and fine.metric.float == round(evaluator.float_score or 0.0, 6)
    failing = evaluator.evaluate(_sequence_model(_weights() * 1000), measure=False)
    assert failing.metric is None and failing.codes == {"metric_failed"}
    assert "raised ValueError: out of range" in failing.problems[0].text
    quick = evaluator.evaluate(_sequence_model(_weights() * 1000), samples=2, measure=False)
    assert quick.samples == 2 and quick.metric is None and quick.codes == set()


def test_the_device_verdict_and_the_estimate(classifier: tuple[ModelProto, Dataset]) -> None:
    model, data = classifier
    evaluator = Evaluator(model, EDGETPU, data, max_drop=0.0, graph=load_model(model))
    conformant = static_qdq(model, Recipe(activation_dtype="int8"), data, "full_int8").model
    found = evaluator.evaluate(conformant, tier="fast", device=DeviceQuery(technique="full_int8"))
    assert found.device is not None and found.device.rules is not None and found.device.rules.passed
    assert found.device.coverage.device_mac_fraction == 1.0
    assert found.latency.estimate is not None and found.latency.measured is None
    on_float = evaluator.evaluate(model, tier="fast", device=DeviceQuery(technique="none"))
    assert "device_rules" in on_float.codes
    assert any(p.text.startswith("device rule integer_compute at") for p in on_float.problems)
    # The audit with the nodes computing in float moved to the host, or the graph's own (as `check` reports it).
    reaudited = on_float.device.coverage if on_float.device else None
    as_audited = evaluator.evaluate(model, tier="fast", device=DeviceQuery(technique="none", reaudit=False))
    assert reaudited is not None and reaudited.device_mac_fraction == 0.0
    assert as_audited.device is not None and as_audited.device.coverage.device_mac_fraction == 1.0


def test_an_accuracy_drop_beyond_the_allowed_is_a_problem(classifier: tuple[ModelProto, Dataset]) -> None:
    model, data = classifier
    lossy = static_qdq(
        model,
        Recipe(per_channel=False, calibration_method="percentile", calibration_percentile=50.0),
        data,
        "full_int8",
    ).model
    evaluation = Evaluator(model, EDGETPU, data, max_drop=0.0).evaluate(lossy)
    assert evaluation.accuracy_candidate is not None and evaluation.accuracy_candidate < 1.0
    drop = round(1.0 - evaluation.accuracy_candidate, 6)
    assert [p.text for p in evaluation.problems if p.code == "accuracy_drop"] == [
        f"accuracy drop {drop:.4f} exceeds --max-drop 0.0"
    ]


def test_labels_that_do_not_score_the_output_as_classes_give_no_accuracy(
    classifier: tuple[ModelProto, Dataset],
) -> None:
    model, data = classifier
    read = Evaluator(model, EDGETPU, data).evaluate_float()
    assert read.accuracy_float == 1.0 and read.accuracy_note is None
    # Labels that float never predicts (as an embedding's dimensions never match sentence topics): 0.0, below chance.
    wrong = (data.labels + 1) % 10  # small_convnet's 10 classes
    for labels, says in ((wrong, "not above chance"), (data.labels + 1000, "not class ids")):
        evaluation = Evaluator(model, EDGETPU, Dataset(data.samples, labels, "images")).evaluate_float()
        assert evaluation.accuracy_float is None and evaluation.accuracy_candidate is None
        assert evaluation.accuracy_note is not None and says in evaluation.accuracy_note


def test_problem_codes_drive_the_calibration_fallbacks(classifier: tuple[ModelProto, Dataset]) -> None:
    """A candidate rejected for being larger than float cannot be saved by another calibration; one rejected for
    its fidelity can. The verdicts come from real evaluations, and the decision reads their codes."""
    model, data = classifier
    quantized = static_qdq(model, Recipe(activation_dtype="int8"), data, "full_int8").model
    larger = Evaluator(model, EDGETPU, data, min_sqnr_db=10.0, float_size_bytes=100).evaluate(quantized)
    unfaithful = Evaluator(model, EDGETPU, data, min_sqnr_db=150.0, float_size_bytes=10**9).evaluate(quantized)
    assert larger.codes == {"not_smaller"} and unfaithful.codes == {"below_sqnr_floor"}
    percentile = Candidate(
        step="percentile_calibration", technique="full_int8", recipe=Recipe(calibration_method="percentile")
    )

    def attempted(evaluation: Evaluation) -> Attempt:
        verification = verdict(evaluation)
        assert not verification.passed
        return Attempt(step="plan", technique="full_int8", recipe=Recipe(), accepted=False, verification=verification)

    assert not _calibration_can_help(percentile, [attempted(larger)])
    assert _calibration_can_help(percentile, [attempted(unfaithful)])
    # Verification leaves out a slowness it was not asked to time: the same policy, another verdict.
    assert verdict(unfaithful, timed=False).problems == verdict(unfaithful).problems


def test_outputs_are_matched_by_name_then_by_position() -> None:
    assert match_outputs(["b", "a"], ["a", "b"]) == [1, 0]
    assert match_outputs(["renamed"], ["logits"]) == [0]
    with pytest.raises(AutoptqError, match="do not match"):
        match_outputs(["a", "b"], ["c"])


def test_float_judged_as_itself(classifier: tuple[ModelProto, Dataset]) -> None:
    model, data = classifier
    evaluator = Evaluator(model, EDGETPU, data, graph=load_model(model))
    itself = evaluator.evaluate_float(DeviceQuery(technique="none"))
    assert itself.fidelity[0].sqnr_db == 200.0 and itself.fidelity[0].top1_agreement == 1.0
    assert itself.accuracy_candidate == itself.accuracy_float == 1.0
    assert itself.device is not None and itself.device.rules is None  # no deployment to audit
    assert itself.latency.estimate is not None and itself.latency.measured is None
    assert itself.size_bytes == model.ByteSize()


def test_large_float_outputs_are_computed_again_beside_each_candidate(
    classifier: tuple[ModelProto, Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above FLOAT_KEPT_BYTES, float's outputs are not kept (memory holds one sample's), and the verdicts are the
    same as with them kept."""
    model, data = classifier
    quantized = static_qdq(model, Recipe(activation_dtype="int8"), data, "full_int8").model
    kept = Evaluator(model, EDGETPU, data).evaluate(quantized, measure=False)
    monkeypatch.setattr(evaluator_module, "FLOAT_KEPT_BYTES", 0)
    streaming = Evaluator(model, EDGETPU, data)
    again = streaming.evaluate(quantized, measure=False)
    assert not streaming.keeps_float_outputs and "float_outputs" not in vars(streaming)
    assert again.fidelity == kept.fidelity
    assert again.accuracy_float == kept.accuracy_float == 1.0
    assert again.accuracy_candidate == kept.accuracy_candidate


def test_float_does_not_keep_its_session_between_candidates(classifier: tuple[ModelProto, Dataset]) -> None:
    model, data = classifier
    quantized = static_qdq(model, Recipe(activation_dtype="int8"), data, "full_int8").model
    evaluator = Evaluator(model, EDGETPU, data)
    first = evaluator.evaluate(quantized, measure=False)
    assert "float_runner" not in vars(evaluator)  # closed until the next candidate needs it
    assert evaluator.evaluate(quantized, measure=False).fidelity == first.fidelity
