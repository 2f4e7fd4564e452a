"""Fidelity metrics between a reference output and a candidate output (numpy, float64)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

SQNR_CAP_DB = 200.0
"""Identical outputs have infinite SQNR; it is reported as this cap so JSON stays finite."""


class OutputFidelity(BaseModel):
    """How closely one output follows the reference over a set of samples."""

    name: str
    sqnr_db: float
    cosine: float
    max_abs_diff: float | None = Field(description="largest |difference|; null when the candidate is not finite")
    top1_agreement: float | None = None
    finite: bool = True


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σref² / Σ(ref−cand)²), capped at SQNR_CAP_DB."""
    ref = reference.astype(np.float64).reshape(-1)
    noise = ref - candidate.astype(np.float64).reshape(-1)
    return sqnr_from_powers(float(np.dot(ref, ref)), float(np.dot(noise, noise)))


def sqnr_from_powers(signal_power: float, noise_power: float) -> float:
    """SQNR in dB from summed powers Σref² and Σ(ref−cand)², capped at ±SQNR_CAP_DB."""
    if noise_power == 0.0:
        return SQNR_CAP_DB
    if signal_power == 0.0:
        return -SQNR_CAP_DB
    return float(np.clip(10.0 * np.log10(signal_power / noise_power), -SQNR_CAP_DB, SQNR_CAP_DB))


def cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine similarity of the flattened outputs (1.0 when both are zero)."""
    a = reference.astype(np.float64).reshape(-1)
    b = candidate.astype(np.float64).reshape(-1)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 1.0 if float(np.linalg.norm(a - b)) == 0.0 else 0.0
    return float(np.dot(a, b) / norms)


def looks_like_classifier(sample_output: np.ndarray) -> bool:
    """A [batch, classes] output with more than one class: top-1 agreement is meaningful."""
    return sample_output.ndim == 2 and sample_output.shape[-1] > 1


def top1(outputs: np.ndarray) -> np.ndarray:
    """Arg-max over the last axis, flattened over samples."""
    return np.argmax(outputs.reshape(-1, outputs.shape[-1]), axis=-1)


class FidelityAccumulator:
    """Fidelity of one output, accumulated sample by sample: sums only, so no output is kept and outputs whose
    shape varies between samples (a recogniser's width) are never stacked. SQNR and cosine are those of all samples'
    values taken together."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.signal = self.noise = self.cross = self.candidate_power = self.max_diff = 0.0
        self.agreeing = self.predictions = 0
        self.classifier: bool | None = None
        self.broken = False

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        """One sample's output of the reference and of the candidate."""
        ref = np.asarray(reference, np.float64)
        cand = np.asarray(candidate, np.float64)
        if self.classifier is None:
            self.classifier = looks_like_classifier(ref)
        if self.broken or not np.all(np.isfinite(cand)) or ref.shape != cand.shape:
            self.broken = True
            return
        flat_ref, flat_cand = ref.reshape(-1), cand.reshape(-1)
        difference = flat_ref - flat_cand
        self.signal += float(np.dot(flat_ref, flat_ref))
        self.noise += float(np.dot(difference, difference))
        self.cross += float(np.dot(flat_ref, flat_cand))
        self.candidate_power += float(np.dot(flat_cand, flat_cand))
        self.max_diff = max(self.max_diff, float(np.max(np.abs(difference))) if difference.size else 0.0)
        if self.classifier:
            self.agreeing += int(np.sum(top1(ref) == top1(cand)))
            self.predictions += top1(ref).size

    def result(self) -> OutputFidelity:
        if self.broken:
            return OutputFidelity(
                name=self.name, sqnr_db=-SQNR_CAP_DB, cosine=0.0, max_abs_diff=None, finite=False, top1_agreement=0.0
            )
        norms = float(np.sqrt(self.signal * self.candidate_power))
        similarity = (1.0 if self.noise == 0.0 else 0.0) if norms == 0.0 else self.cross / norms
        return OutputFidelity(
            name=self.name,
            sqnr_db=round(sqnr_from_powers(self.signal, self.noise), 3),
            cosine=round(similarity, 6),
            max_abs_diff=self.max_diff,
            top1_agreement=self.agreeing / self.predictions if self.classifier and self.predictions else None,
        )


def compare(name: str, reference: list[np.ndarray], candidate: list[np.ndarray]) -> OutputFidelity:
    """Fidelity of one output over matching per-sample lists (see FidelityAccumulator)."""
    accumulator = FidelityAccumulator(name)
    for ref_sample, cand_sample in zip(reference, candidate, strict=True):
        accumulator.add(ref_sample, cand_sample)
    return accumulator.result()


def predicted_class(output: np.ndarray) -> int:
    """A classifier's prediction for one sample: the arg-max over all its values."""
    return int(np.argmax(np.asarray(output).reshape(-1)))


def accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    """Top-1 accuracy of classifier outputs (one per sample, arg-max over all its values) against integer labels."""
    return accuracy_of([predicted_class(o) for o in outputs], labels)


def accuracy_of(predictions: list[int], labels: np.ndarray) -> float:
    """Top-1 accuracy of per-sample predicted classes against integer labels."""
    return float(np.mean(np.asarray(predictions) == labels.reshape(-1)))
