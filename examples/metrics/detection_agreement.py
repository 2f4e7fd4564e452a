"""Detection metric for `autoptq --metric examples/metrics/detection_agreement.py:hmean`.

For detectors, where top-1 does not apply. The model's first two outputs are taken as boxes `[1, K, 4]` (x1, y1, x2,
y2, pixels) and scores `[1, K]`; detections scoring at least `SCORE_THRESHOLD` are matched one to one, greedily by
IoU, with the reference boxes in `labels`: an integer array `[samples, M, 4]` of pixel boxes, rows of -1 as padding.
The score is the harmonic mean (F1, "hmean") of precision and recall at IoU >= `IOU_THRESHOLD`.

Write the reference boxes from ground truth to measure detection quality, or from the float model's own detections
(rounded to pixels) to measure the quantized model's agreement with float.

autoptq calls `hmean(outputs, labels)`: `outputs` maps each model output name to a list with one array per
validation sample, as the model returns it.
"""

from __future__ import annotations

import numpy as np

SCORE_THRESHOLD = 0.5
IOU_THRESHOLD = 0.5


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` [n, 4] with every box in `b` [m, 4]."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def matches(predicted: np.ndarray, reference: np.ndarray) -> int:
    """Greedy one-to-one matches at IoU >= IOU_THRESHOLD, best pairs first."""
    if len(predicted) == 0 or len(reference) == 0:
        return 0
    overlaps = iou(predicted, reference)
    found = 0
    while True:
        i, j = np.unravel_index(np.argmax(overlaps), overlaps.shape)
        if overlaps[i, j] < IOU_THRESHOLD:
            return found
        found += 1
        overlaps[i, :] = -1.0
        overlaps[:, j] = -1.0


def hmean(outputs: dict[str, list[np.ndarray]], labels: np.ndarray | None) -> float:
    """F1 of the detections against the reference boxes over the validation set."""
    if labels is None:
        raise ValueError("this metric needs labels: reference boxes [samples, M, 4], rows of -1 as padding")
    boxes, scores = list(outputs.values())[:2]
    true_positives = predicted_count = reference_count = 0
    for sample_boxes, sample_scores, reference in zip(boxes, scores, labels, strict=True):
        keep = np.asarray(sample_scores).reshape(-1) >= SCORE_THRESHOLD
        predicted = np.asarray(sample_boxes, np.float64).reshape(-1, 4)[keep]
        reference = np.asarray(reference, np.float64).reshape(-1, 4)
        reference = reference[(reference >= 0).all(axis=1)]
        true_positives += matches(predicted, reference)
        predicted_count += len(predicted)
        reference_count += len(reference)
    precision = true_positives / predicted_count if predicted_count else 1.0
    recall = true_positives / reference_count if reference_count else 1.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
