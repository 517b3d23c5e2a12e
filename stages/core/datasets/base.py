"""What every dataset reader provides: samples, labels in one label space, folds, a class scan."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from stages.core.artifacts import atomic_write_json
from stages.core.errors import FssegError
from stages.core.imageio import read_image, read_label
from stages.core.validation import checked_label


def cache_dir() -> Path:
    """fsseg's own cache (rendered masks, class scans): `FSSEG_CACHE` or ~/.cache/fsseg."""
    base = (
        os.environ.get("FSSEG_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fsseg"
    )
    return Path(base)


@dataclass(frozen=True)
class Sample:
    """One image of a dataset: its id (unique in the dataset), image file and label file(s)."""

    id: str
    image: Path
    label: Path | None
    instance: Path | None = None


class Dataset:
    """Base reader. Subclasses set the class list and list their samples.

    Label space: `load_label` returns ids `0..num_classes-1`, plus `ignore_index` for pixels
    that are not scored. `background` is the id of the background class where the dataset
    has one (PASCAL, COCO, FSS-1000, folder), or None where every id is a real class
    (Cityscapes, CamVid); there, few-shot episodes treat every other class as background.
    """

    name: ClassVar[str] = ""
    layout: ClassVar[str] = ""
    class_names: list[str]
    ignore_index: int = 255
    background: int | None = 0
    things: tuple[int, ...] = ()
    default_folds: ClassVar[int] = 4

    def __init__(self, root: str | os.PathLike, split: str | None = None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FssegError(
                f"dataset root {self.root} does not exist; pass --root with the {self.name} folder"
            )
        self.split = split
        self._samples: list[Sample] | None = None

    # -- listing -------------------------------------------------------------------------
    def _list(self) -> list[Sample]:
        raise NotImplementedError

    def samples(self) -> list[Sample]:
        """All samples of the split, sorted by id."""
        if self._samples is None:
            found = sorted(self._list(), key=lambda s: s.id)
            if not found:
                raise FssegError(
                    f"no {self.name} samples found under {self.root} (split {self.split!r}); expected {self.layout}"
                )
            self._samples = found
        return self._samples

    def sample(self, sample_id: str) -> Sample:
        index = {s.id: s for s in self.samples()}
        if sample_id not in index:
            raise FssegError(
                f"image id {sample_id!r} is not in {self.name} at {self.root} (split {self.split!r})"
            )
        return index[sample_id]

    # -- pixels --------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load_image(self, sample: Sample) -> np.ndarray:
        return read_image(sample.image)

    def load_label(self, sample: Sample) -> np.ndarray:
        """Label map (H, W) in the dataset's label space."""
        if sample.label is None:
            raise FssegError(f"{self.name} image {sample.id} has no label file")
        return read_label(sample.label)

    def load_instances(self, sample: Sample) -> np.ndarray | None:
        """Instance id map (0 = no instance) where the dataset has one, else None."""
        return None

    def load_panoptic(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """(label map (H, W), instances (H, W) int32: 1..n within each thing class, 0 elsewhere).
        Instances come from the dataset's instance ids, or else are the connected components
        (8-connected) of each thing class, an approximation for datasets without instances."""
        from scipy import ndimage

        label = checked_label(self, sample, self.load_label(sample))
        raw = self.load_instances(sample)
        instances = np.zeros(label.shape, np.int32)
        for c in self.things:
            mask = label == c
            if not mask.any():
                continue
            if raw is None:
                comps, _ = ndimage.label(mask, np.ones((3, 3), bool))
                instances[mask] = comps[mask]
            else:
                _, rank = np.unique(raw[mask], return_inverse=True)
                instances[mask] = rank.ravel() + 1
        return label, instances

    def panoptic_labels(self) -> tuple[np.ndarray, int]:
        """(label id of each class, void label id) used in Cityscapes-form panoptic PNGs: the class
        ids themselves and the ignore index, unless the dataset has its own label ids."""
        return np.arange(self.num_classes), self.ignore_index

    def panoptic_categories(self) -> dict[int, bool]:
        """Panoptic categories: label id -> is_thing."""
        ids, _ = self.panoptic_labels()
        return {int(ids[c]): c in self.things for c in range(self.num_classes)}

    def class_id(self, name_or_id: str | int) -> int:
        """A class id from a name (case-insensitive) or a number; clear error otherwise."""
        if isinstance(name_or_id, int) or str(name_or_id).isdigit():
            cid = int(name_or_id)
            if 0 <= cid < self.num_classes:
                return cid
        else:
            lowered = [n.lower() for n in self.class_names]
            if str(name_or_id).lower() in lowered:
                return lowered.index(str(name_or_id).lower())
        raise FssegError(f"unknown {self.name} class {name_or_id!r}; known: {', '.join(self.class_names)}")

    # -- folds ---------------------------------------------------------------------------
    def foreground_classes(self) -> list[int]:
        return [c for c in range(self.num_classes) if c != self.background]

    def fold_classes(self, fold: int, n_folds: int | None = None) -> list[int]:
        """Novel classes of a fold. Default rule: interleaved, fold i = every n-th class from the i-th."""
        n_folds = self.default_folds if n_folds is None else n_folds
        if not 0 <= fold < n_folds:
            raise FssegError(f"--fold {fold} is out of range for {self.name}: folds are 0..{n_folds - 1}")
        return self.foreground_classes()[fold::n_folds]

    # -- class scan ----------------------------------------------------------------------
    def _scan_key(self) -> str:
        digest = hashlib.sha256(f"{self.name}\0{self.root.resolve()}\0{self.split}\n".encode())
        for s in self.samples():
            st = s.label.stat() if s.label is not None and s.label.exists() else None
            digest.update(f"{s.id}\0{st.st_size if st else -1}\0{st.st_mtime_ns if st else -1}\n".encode())
        return digest.hexdigest()[:24]

    def scan(self, on_progress: Callable[[int, int], None] | None = None) -> dict[str, dict[int, int]]:
        """Pixel count of every class in every label map (cached on disk, keyed by the listing);
        a label map with ids the dataset lacks is refused (`checked_label`)."""
        path = cache_dir() / "scans" / f"{self.name}-{self._scan_key()}.json"
        if path.is_file():
            raw = json.loads(path.read_text())
            return {k: {int(c): n for c, n in v.items()} for k, v in raw.items()}
        result: dict[str, dict[int, int]] = {}
        samples = self.samples()
        for i, s in enumerate(samples, 1):
            label = checked_label(self, s, self.load_label(s))
            counts = np.bincount(label.ravel().astype(np.int64), minlength=self.num_classes)
            result[s.id] = {c: int(counts[c]) for c in range(self.num_classes) if counts[c] > 0}
            if on_progress:
                on_progress(i, len(samples))
        atomic_write_json(path, result)
        return result

    def pairs(
        self, classes: Sequence[int], min_area: int = 1, on_progress: Callable[[int, int], None] | None = None
    ) -> list[tuple[str, int]]:
        """(image id, class) for every image where a class of `classes` covers >= min_area pixels."""
        wanted = set(classes)
        scan = self.scan(on_progress)
        return [
            (s.id, c)
            for s in self.samples()
            for c in sorted(scan.get(s.id, {}))
            if c in wanted and scan[s.id][c] >= min_area
        ]


def check_id(
    value: object, source: str | os.PathLike, *, parts: int = 1, what: str = "id", fix: str = "fix that entry"
) -> str:
    """`value` if it is a safe image id: a plain name, or at most `parts` plain names joined by
    '/' (FSS-1000's `class/N`); else one FssegError naming `source`, the id and the fix.

    Ids become output file names (`cams/<id>__<class>.npy`), so `../../x` or `/tmp/x` would
    write outside `--out`.
    """
    pieces = value.replace("\\", "/").split("/") if isinstance(value, str) else []
    reason = None
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        reason = "it is empty or not a name"
    elif pieces[0] == "":
        reason = "it is an absolute path"
    elif any(p in (".", "..") for p in pieces):
        reason = "it has a '..' or '.' component"
    elif "\\" in value or len(pieces) > parts or "" in pieces:
        reason = "it holds a path separator"
    if reason is None:
        return value
    shape = "a plain file name" if parts == 1 else f"a plain name or up to {parts} names joined by '/'"
    raise FssegError(f"{source}: {what} {value!r} must be {shape} ({reason}); {fix}")


def read_id_list(path: Path) -> list[str]:
    """The first word of every non-empty line of a list file; each must be a plain name."""
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    for entry in ids:
        check_id(
            entry,
            f"list file {path}",
            fix="list plain file names there, without folders, '..' or absolute paths",
        )
    return ids
