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
    noise_power = float(np.dot(noise, noise))
    signal_power = float(np.dot(ref, ref))
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


def compare(name: str, reference: list[np.ndarray], candidate: list[np.ndarray]) -> OutputFidelity:
    """Fidelity of one output over matching per-sample lists."""
    ref = np.concatenate([np.asarray(r, np.float64).reshape(1, -1) for r in reference], axis=0)
    cand = np.concatenate([np.asarray(c, np.float64).reshape(1, -1) for c in candidate], axis=0)
    finite = bool(np.all(np.isfinite(cand)))
    if not finite:
        return OutputFidelity(
            name=name, sqnr_db=-SQNR_CAP_DB, cosine=0.0, max_abs_diff=None, finite=False, top1_agreement=0.0
        )
    agreement = None
    if looks_like_classifier(np.asarray(reference[0])):
        agreement = float(np.mean(top1(ref) == top1(cand)))
    return OutputFidelity(
        name=name,
        sqnr_db=round(sqnr_db(ref, cand), 3),
        cosine=round(cosine(ref, cand), 6),
        max_abs_diff=float(np.max(np.abs(ref - cand))) if ref.size else 0.0,
        top1_agreement=agreement,
    )


def accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    """Top-1 accuracy of classifier outputs against integer labels."""
    predictions = top1(np.concatenate([np.asarray(o).reshape(1, -1) for o in outputs], axis=0))
    return float(np.mean(predictions == labels.reshape(-1)))
