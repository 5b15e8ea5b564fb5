"""The SSD fork's detection scores: average precision per class (its ComputeAP, three versions) and the
gathering of DetectionEvaluate rows over a test pass into a mean AP (its TestDetection), for the solver's
``eval_type: "detection"`` and ``caffe test``."""

from __future__ import annotations

import logging

import numpy as np

from caffe.errors import SolverError

log = logging.getLogger("caffe")

AP_VERSIONS = ("11point", "MaxIntegral", "Integral")
_EPS = np.float32(1e-6)  # recall steps this small add nothing (the fork's eps)


def average_precision(scores: np.ndarray, true_positive: np.ndarray, positives: int, version: str) -> float:
    """The fork's ComputeAP: AP of one class's detections (``true_positive`` 1 or 0 each) against ``positives``
    ground-truth boxes. ``version``: "11point" (VOC2007: mean of the best precision at recall >= 0, 0.1, ...,
    1), "MaxIntegral" (area under the precision envelope) or "Integral" (sum of precision x recall step).
    Precision and recall are float32 and sums run in the fork's order and precision."""
    if version not in AP_VERSIONS:
        raise ValueError(f"unknown ap_version '{version}' ({', '.join(AP_VERSIONS)})")
    if len(scores) == 0 or positives == 0:
        return 0.0
    hits = np.asarray(true_positive, dtype=np.int64)[np.argsort(-np.asarray(scores, np.float32), kind="stable")]
    tp, fp = np.cumsum(hits), np.cumsum(1 - hits)
    precision = (tp / (tp + fp)).astype(np.float32)
    recall = (tp / positives).astype(np.float32)
    if version == "11point":
        best = [precision[recall.astype(np.float64) >= j / 10].max(initial=0) for j in range(10, -1, -1)]
        return float(np.cumsum(np.array(best, dtype=np.float32) / np.float32(11), dtype=np.float32)[-1])
    if version == "MaxIntegral":
        envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision from each detection on
        steps = recall[1:] - recall[:-1]
        terms = np.where(np.abs(steps) > _EPS, envelope[:-1] * np.abs(steps), np.float32(0))[::-1]
        return float(np.cumsum(np.append(terms, recall[0] * envelope[0]), dtype=np.float32)[-1])
    steps = recall - np.append(np.float32(0), recall[:-1])
    return float(
        np.cumsum(np.where(np.abs(steps) > _EPS, precision * np.abs(steps), np.float32(0)), dtype=np.float32)[-1]
    )


class DetectionTally:
    """DetectionEvaluate rows of a test net's outputs gathered over the test iterations (the fork's TestDetection)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.rows: list[list[np.ndarray]] = [[] for _ in names]

    def add(self, outputs: list[np.ndarray]) -> None:
        """One test iteration's output blobs, in the order of ``names``."""
        for name, rows, data in zip(self.names, self.rows, outputs, strict=True):
            if data.ndim == 0 or data.shape[-1] != 5:
                raise SolverError(
                    f"eval_type 'detection': test net output '{name}' has shape {data.shape}; every output "
                    "must be a DetectionEvaluate top (rows of 5)"
                )
            rows.append(data.reshape(-1, 5).astype(np.float32))

    def precisions(self, index: int, version: str) -> tuple[float, dict[int, float]]:
        """Mean AP of output ``index`` and each class's AP; the mean counts every class with a count row, a class
        without detections as 0 (a warning, as the fork; NaN without any class)."""
        table = np.concatenate(self.rows[index]) if self.rows[index] else np.zeros((0, 5), dtype=np.float32)
        image, label = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64)
        positives: dict[int, int] = {}
        for c, count in zip(label[image == -1], table[image == -1, 2].astype(np.int64), strict=True):
            positives[int(c)] = positives.get(int(c), 0) + int(count)
        tp, fp = table[:, 3].astype(np.int64), table[:, 4].astype(np.int64)
        scored = (image != -1) & ((tp != 0) | (fp != 0))  # neither: matched to a difficult box not evaluated
        aps: dict[int, float] = {}
        for c in sorted(positives):
            mine = scored & (label == c)
            if not mine.any():
                log.warning("Missing true_pos for label: %d", c)
                continue
            aps[c] = average_precision(table[mine, 2], tp[mine], positives[c], version)
        return (sum(aps.values()) / len(positives) if positives else float("nan")), aps
