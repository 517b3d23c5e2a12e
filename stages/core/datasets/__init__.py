"""Dataset readers: one per layout, all speaking the same `Dataset` interface.

`open_dataset(name, root, split)` returns a reader; `DATASETS` lists them. Each reader's
docstring (and the README) shows the folder tree it expects.
"""

from __future__ import annotations

import os

from stages.core.datasets.base import Dataset, Sample
from stages.core.datasets.readers import CamVid, Cityscapes, Coco, Folder, Fss1000, Pascal
from stages.core.errors import FssegError

DATASETS: dict[str, type[Dataset]] = {
    cls.name: cls for cls in (Pascal, Coco, Cityscapes, CamVid, Fss1000, Folder)
}


def open_dataset(name: str, root: str | os.PathLike, split: str | None = None) -> Dataset:
    """The reader for dataset `name` over `root` (split None = the reader's default)."""
    if name not in DATASETS:
        raise FssegError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](root, split)


__all__ = ["DATASETS", "Dataset", "Sample", "open_dataset"]
