"""Fidelity metrics on arrays whose answers are known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoptq.evaluate.metrics import SQNR_CAP_DB, accuracy, compare, cosine, looks_like_classifier, sqnr_db, top1


@pytest.fixture
def signal() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((16, 10)).astype(np.float32)


def test_identical_outputs_have_the_capped_sqnr(signal: np.ndarray) -> None:
    assert sqnr_db(signal, signal.copy()) == SQNR_CAP_DB
    assert math.isfinite(SQNR_CAP_DB)


def test_scaled_output_gives_the_expected_sqnr(signal: np.ndarray) -> None:
    # candidate = 0.9 x reference: the noise is 0.1 x the signal, so SQNR = 10 log10(1 / 0.01) = 20 dB.
    assert sqnr_db(signal, 0.9 * signal) == pytest.approx(20.0, abs=1e-4)
    assert sqnr_db(signal, 0.99 * signal) == pytest.approx(40.0, abs=1e-3)


@pytest.mark.parametrize("target_db", [3.0, 17.5, 30.0, 60.0])
def test_additive_noise_at_a_chosen_power_gives_that_sqnr(signal: np.ndarray, target_db: float) -> None:
    noise = np.random.default_rng(1).standard_normal(signal.shape)
    signal_power = float(np.sum(signal.astype(np.float64) ** 2))
    noise *= math.sqrt(signal_power / (10 ** (target_db / 10)) / float(np.sum(noise**2)))
    assert sqnr_db(signal, signal + noise) == pytest.approx(target_db, abs=1e-3)


def test_sqnr_of_a_zero_reference_is_the_negative_cap() -> None:
    assert sqnr_db(np.zeros(4), np.ones(4)) == -SQNR_CAP_DB
    assert sqnr_db(np.zeros(4), np.zeros(4)) == SQNR_CAP_DB


def test_sqnr_is_clipped_to_the_cap(signal: np.ndarray) -> None:
    assert sqnr_db(signal, signal * (1 + 1e-15)) <= SQNR_CAP_DB
    assert sqnr_db(signal, -1e12 * signal) >= -SQNR_CAP_DB


def test_cosine_on_known_vectors(signal: np.ndarray) -> None:
    assert cosine(signal, signal) == pytest.approx(1.0)
    assert cosine(signal, 3.5 * signal) == pytest.approx(1.0)  # scale invariant
    assert cosine(signal, -signal) == pytest.approx(-1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(0.0)
    assert cosine(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine(np.zeros(3), np.ones(3)) == 0.0


def test_top1_and_accuracy_against_labels() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [0.3, 0.2, 0.1]])
    assert top1(logits).tolist() == [1, 0, 2, 0]
    outputs = [row.reshape(1, 3) for row in logits]
    assert accuracy(outputs, np.array([1, 0, 2, 0])) == 1.0
    assert accuracy(outputs, np.array([1, 0, 2, 2])) == 0.75
    assert accuracy(outputs, np.array([0, 1, 0, 2])) == 0.0


def test_classifier_detection() -> None:
    assert looks_like_classifier(np.zeros((1, 10)))
    assert not looks_like_classifier(np.zeros((1, 1)))
    assert not looks_like_classifier(np.zeros((1, 8, 4, 4)))


def test_compare_reports_every_figure_and_top1_agreement() -> None:
    rng = np.random.default_rng(2)
    reference = [rng.standard_normal((1, 5)).astype(np.float32) for _ in range(20)]
    candidate = [0.9 * r for r in reference]
    candidate[0] = -reference[0]  # this sample's arg-max becomes its arg-min
    result = compare("logits", reference, candidate)
    expected_agreement = np.mean([np.argmax(r) == np.argmax(c) for r, c in zip(reference, candidate, strict=True)])
    assert result.name == "logits"
    assert result.finite
    assert result.top1_agreement == pytest.approx(expected_agreement)
    assert result.top1_agreement < 1.0
    flat_ref = np.concatenate(reference).astype(np.float64)
    flat_cand = np.concatenate(candidate).astype(np.float64)
    assert result.sqnr_db == pytest.approx(sqnr_db(flat_ref, flat_cand), abs=1e-3)
    assert result.max_abs_diff == pytest.approx(float(np.max(np.abs(flat_ref - flat_cand))))
    assert -1.0 <= result.cosine <= 1.0


def test_compare_of_identical_outputs_is_perfect() -> None:
    reference = [np.arange(10, dtype=np.float32).reshape(1, 10) + i for i in range(3)]
    result = compare("y", reference, [r.copy() for r in reference])
    assert result.sqnr_db == SQNR_CAP_DB
    assert result.cosine == pytest.approx(1.0)
    assert result.max_abs_diff == 0.0
    assert result.top1_agreement == 1.0


def test_compare_without_classes_has_no_top1() -> None:
    reference = [np.ones((1, 4, 3, 3), np.float32)]
    assert compare("feature_map", reference, reference).top1_agreement is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_compare_flags_non_finite_candidates(bad: float) -> None:
    reference = [np.ones((1, 4), np.float32)]
    candidate = [np.array([[1.0, bad, 1.0, 1.0]], np.float32)]
    result = compare("y", reference, candidate)
    assert not result.finite
    assert result.sqnr_db == -SQNR_CAP_DB
    assert result.top1_agreement == 0.0
    # The record must stay serialisable as finite JSON numbers where it matters (SQNR, cosine).
    assert math.isfinite(result.sqnr_db) and math.isfinite(result.cosine)
