"""Embedding metric for `autoptq --metric examples/metrics/embedding_cosine.py:score`.

For sentence/image embedding models scored on retrieval rather than top-1: `labels` give each validation sample a
group (e.g. the topic of a sentence, the identity of a face). The score is how well the embeddings keep groups
apart under cosine similarity: the mean cosine between samples of the same group minus the mean cosine between
samples of different groups (higher is better; 2.0 at most). `recall_at_1` is the retrieval view of the same thing.

autoptq calls `score(outputs, labels)`: `outputs` maps each model output name to a list with one array per
validation sample (as the model returns it, batch axis included, e.g. `[1, 384]`); the first output is taken as the
embedding. `labels` is the validation data's `labels` array (one integer per sample).
"""

from __future__ import annotations

import numpy as np


def _embeddings(outputs: dict[str, list[np.ndarray]]) -> np.ndarray:
    first = next(iter(outputs.values()))
    vectors = np.stack([np.asarray(v, np.float64).reshape(-1) for v in first])
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _groups(labels: np.ndarray | None, count: int) -> np.ndarray:
    if labels is None:
        raise ValueError("this metric needs labels: one group id per validation sample (a 'labels' array)")
    groups = np.asarray(labels).reshape(count, -1)[:, 0]
    return groups


def score(outputs: dict[str, list[np.ndarray]], labels: np.ndarray | None) -> float:
    """Mean same-group cosine minus mean different-group cosine."""
    vectors = _embeddings(outputs)
    groups = _groups(labels, len(vectors))
    cosines = vectors @ vectors.T
    same = groups[:, None] == groups[None, :]
    off_diagonal = ~np.eye(len(vectors), dtype=bool)
    positives, negatives = cosines[same & off_diagonal], cosines[~same]
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("needs at least two samples of one group and two groups")
    return float(positives.mean() - negatives.mean())


def recall_at_1(outputs: dict[str, list[np.ndarray]], labels: np.ndarray | None) -> float:
    """Share of samples whose nearest other sample (cosine) is of the same group."""
    vectors = _embeddings(outputs)
    groups = _groups(labels, len(vectors))
    cosines = vectors @ vectors.T
    np.fill_diagonal(cosines, -np.inf)
    return float(np.mean(groups[np.argmax(cosines, axis=1)] == groups))
