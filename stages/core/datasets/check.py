"""`fsseg data check`: is a dataset folder complete and consistent?"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from stages.core.datasets.base import Dataset, Sample
from stages.core.errors import FssegError
from stages.core.imageio import read_image
from stages.core.validation import checked_label


@dataclass
class CheckReport:
    dataset: str
    root: str
    split: str | None
    num_samples: int = 0
    class_names: list[str] = field(default_factory=list)
    pixels: np.ndarray | None = None  # per class, plus ignored pixels in the last slot
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    size_mismatch: list[str] = field(default_factory=list)
    unexpected_ids: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return len(self.missing) + len(self.unreadable) + len(self.size_mismatch) + len(self.unexpected_ids)


def _check_one(dataset: Dataset, sample: Sample) -> tuple[str, str | None, np.ndarray | None]:
    """(kind of problem or "", detail, per-class pixel counts incl. ignore). Sizes and ids are
    checked by `checked_label`, as every stage that reads the labels checks them."""
    for path in (sample.image, sample.label):
        if path is not None and not path.is_file() and not (path is sample.label and dataset.name == "coco"):
            return "missing", f"{sample.id}: {path}", None
    try:
        image = read_image(sample.image)
        label = dataset.load_label(sample)
    except FssegError as err:
        return "unreadable", str(err), None
    problem = _label_problem(dataset, sample, label, image.shape)
    if image.shape[:2] != label.shape:
        return "size_mismatch", problem, None
    n = dataset.num_classes
    counts = np.bincount(label.ravel().astype(np.int64), minlength=max(n, int(label.max()) + 1))
    hist = np.append(counts[:n], counts[dataset.ignore_index] if dataset.ignore_index < len(counts) else 0)
    return ("unexpected_ids", problem, hist) if problem else ("", None, hist)


def _label_problem(dataset: Dataset, sample: Sample, label: np.ndarray, image_shape: tuple) -> str | None:
    try:
        checked_label(dataset, sample, label, image_shape)
    except FssegError as err:
        return str(err)
    return None


def check_dataset(
    dataset: Dataset, *, num_workers: int = 2, on_progress: Callable[[int, int], None] | None = None
) -> CheckReport:
    samples = dataset.samples()
    report = CheckReport(
        dataset.name, str(dataset.root), dataset.split, len(samples), list(dataset.class_names)
    )
    report.pixels = np.zeros(dataset.num_classes + 1, np.int64)
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        for i, (kind, detail, hist) in enumerate(pool.map(lambda s: _check_one(dataset, s), samples), 1):
            if kind:
                getattr(report, kind).append(detail)
            if hist is not None:
                report.pixels += hist
            if on_progress:
                on_progress(i, len(samples))
    return report
