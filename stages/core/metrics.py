"""Metric accumulators with summable state.

Each accumulator is updated image by image (or episode by episode) and two of them add up
(`a + b`), so per-worker or per-rank partial results combine exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ConfusionMatrix:
    """Semantic segmentation: `matrix[gt, pred]` pixel counts over `num_classes` classes.

    Pixels whose ground truth is `ignore_index` (or any id >= num_classes, when the caller
    chooses to let them through) are not counted.
    """

    num_classes: int
    matrix: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.matrix is None:
            self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray, ignore_index: int | None = None) -> ConfusionMatrix:
        """Add one prediction / ground-truth pair (same shape, integer ids); returns self."""
        n = self.num_classes
        valid = gt < n
        if ignore_index is not None:
            valid &= gt != ignore_index
        codes = gt[valid].astype(np.int64) * n + pred[valid].astype(np.int64)
        self.matrix += np.bincount(codes, minlength=n * n).reshape(n, n)
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if other.num_classes != self.num_classes:
            raise ValueError("cannot add confusion matrices of different sizes")
        return ConfusionMatrix(self.num_classes, self.matrix + other.matrix)

    @property
    def true_positives(self) -> np.ndarray:
        return np.diag(self.matrix)

    @property
    def gt_pixels(self) -> np.ndarray:
        return self.matrix.sum(axis=1)

    @property
    def pred_pixels(self) -> np.ndarray:
        return self.matrix.sum(axis=0)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both prediction and ground truth."""
        union = self.gt_pixels + self.pred_pixels - self.true_positives
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, self.true_positives / np.maximum(union, 1), np.nan)

    def class_accuracy(self) -> np.ndarray:
        """Per-class recall (TP / ground-truth pixels); NaN for classes absent from the ground truth."""
        gt = self.gt_pixels
        return np.where(gt > 0, self.true_positives / np.maximum(gt, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that occur in the prediction or the ground truth."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(self.true_positives.sum() / total) if total else float("nan")

    def mean_class_accuracy(self) -> float:
        acc = self.class_accuracy()
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")
