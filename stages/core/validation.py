"""Checks of user data against the dataset it claims to belong to, shared by every stage that reads it.

- `checked_label`: a label map holds only the dataset's class ids and its ignore id, and has
  its image's size. Without it one stage fails with a traceback on an id like 300 (a lookup
  table of 256 entries), another trains silently on nonsense (an id like 200 counted as
  background); with it every stage refuses the file the same way.
- `episode_groups`: the one walk over an episodes document (every episode's query, supports and
  base query), which both checks of episodes files take: the ids' at read time
  (`stages.core.episodes`) and `check_episodes`.
- `check_episodes`: every episode of an episodes file names classes the dataset has, and has
  its query and supports.
- `check_predicted_for`: predictions scored against an episodes file were made for that file
  (the predicting artifact's manifest names its episodes input by sha256).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.artifacts import MANIFEST_NAME, sha256_file
from stages.core.errors import FssegError


def checked_label(ds, sample, label: np.ndarray, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """`label` (H, W), the label map of `sample` in dataset `ds`, unchanged; FssegError naming the
    file and the fix when it holds an id that is neither a class of `ds` nor its ignore id, or
    when its size differs from `image_shape` (the image's (H, W, ...))."""
    where = sample.label if sample.label is not None else f"{ds.name} image {sample.id}"
    if image_shape is not None and tuple(label.shape[:2]) != tuple(image_shape[:2]):
        raise FssegError(
            f"{where} is {label.shape[1]}x{label.shape[0]} but its image {sample.image} is "
            f"{image_shape[1]}x{image_shape[0]}; fix the dataset (fsseg data check lists every such file)"
        )
    bad = (label >= ds.num_classes) & (label != ds.ignore_index)
    if bad.any():
        ids = np.unique(label[bad])
        shown = ", ".join(str(int(i)) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise FssegError(
            f"{where} holds label id(s) {shown}, outside {ds.name}'s classes 0..{ds.num_classes - 1} "
            f"(ignore id {ds.ignore_index}); fix the mask or the class list (fsseg data check lists every "
            f"such file)"
        )
    return label


def episode_groups(doc: dict[str, Any], path: str | Path) -> Iterator[tuple[int, str, Any, Any]]:
    """(episode index, what, class, image ids) for every group of images of every episode of an
    episodes document, as the document holds them (unchecked): the query (one id), the supports
    (a list; per class under a gfss episode's "supports", where the class is the key) and the base
    query (one id, where there is one). The class is the episode's for fss supports, None for the
    query. A gfss "supports" that is not a dict is one support group of no class and no ids.
    FssegError when the document has no list of episodes (dicts)."""
    episodes = doc.get("episodes")
    if not isinstance(episodes, list) or not all(isinstance(ep, dict) for ep in episodes):
        raise FssegError(f"{path} has no list of episodes; regenerate it with `fsseg data episodes`")
    for i, ep in enumerate(episodes):
        yield i, "query", None, ep.get("query")
        if "supports" not in ep:
            yield i, "support", ep.get("class"), ep.get("support")
        elif isinstance(ep["supports"], dict) and ep["supports"]:
            yield from ((i, f"support (class {c})", c, ids) for c, ids in ep["supports"].items())
        else:
            yield i, "support", None, None
        if ep.get("base_query") is not None:
            yield i, "base query", None, ep["base_query"]


def check_episodes(doc: dict[str, Any], ds, path: str | Path) -> None:
    """FssegError naming the episodes file, the episode and the fix when an episode has no
    query, no supports, or a class `ds` lacks, or when the file's class list is not the dataset's."""
    fix = "make the file again with `fsseg data episodes` for this dataset"
    names = doc.get("class_names")
    if names is not None and list(names) != list(ds.class_names):
        raise FssegError(
            f"{path} was made for the classes {', '.join(map(str, names[:4]))}, ... but {ds.name} at {ds.root} "
            f"has {', '.join(ds.class_names[:4])}, ...; {fix}"
        )
    if not doc.get("episodes"):
        raise FssegError(f"{path} holds no episodes; {fix}")

    def known(cls: Any, where: str) -> None:
        try:
            value = int(cls)
        except (TypeError, ValueError):
            value = -1
        if isinstance(cls, bool) or not 0 <= value < ds.num_classes:
            raise FssegError(
                f"{path}: {where} has class {cls!r}, which {ds.name} lacks (its classes are "
                f"0..{ds.num_classes - 1}); {fix}"
            )

    for key in ("novel_classes", "base_classes"):
        for cls in doc.get(key) or []:
            known(cls, key)
    for i, what, cls, ids in episode_groups(doc, path):
        if what.startswith("support"):
            if not isinstance(ids, list) or not ids or not all(isinstance(s, str) and s for s in ids):
                raise FssegError(
                    f"{path}: episode {i} has no {what} images (an empty or malformed list); {fix}"
                )
            known(cls, f"episode {i}")
        elif not isinstance(ids, str) or not ids:
            raise FssegError(f"{path}: episode {i} has no {what} image; {fix}")


def _predicting_manifest(pred_dir: Path) -> dict[str, Any] | None:
    """The manifest of the artifact whose predictions `pred_dir` holds: its own, or its parent's
    when the parent names it as `outputs.predictions`; None for a plain folder."""
    for folder, inside in ((pred_dir, None), (pred_dir.parent, pred_dir.name)):
        try:
            manifest = json.loads((folder / MANIFEST_NAME).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict):
            continue
        if inside is None or (manifest.get("outputs") or {}).get("predictions") == inside:
            return manifest
    return None


def check_predicted_for(pred_dir: str | Path, episodes: str | Path) -> None:
    """FssegError when the artifact that wrote `pred_dir` read an episodes file other than
    `episodes` (compared by content): its predictions are numbered by another file's episodes."""
    manifest = _predicting_manifest(Path(pred_dir))
    if manifest is None:
        return
    made_for = [
        entry
        for entry in manifest.get("inputs") or []
        if isinstance(entry, dict) and "sha256" in entry and str(entry.get("path", "")).endswith(".json")
    ]
    if not made_for:
        return
    digest = sha256_file(episodes)
    if any(entry["sha256"] == digest for entry in made_for):
        return
    source = made_for[0]["path"]
    changed = " (as it was before it changed)" if Path(source) == Path(episodes).resolve() else ""
    raise FssegError(
        f"{pred_dir} holds predictions for the episodes file {source}{changed}, not for --episodes {episodes}; "
        f"score them with that file, or predict these episodes again"
    )
