"""Reproducible few-shot episodes: one JSON file that every method reads.

Protocols (see the README, "Episodes"):
- `fss` (HSNet's): the (image, class) pairs of the fold's classes in list order; episode i
  takes pair i mod N as query, and its K supports are drawn at random among the other images
  of the same class (distinct, never the query). COCO draws the class uniformly first, then
  the query, then the supports, as HSNet does for COCO-20i.
- `gfss-binary` (the GFSS report's): an `fss` episode plus one extra image showing base classes
  (`base_query`), on which base-class predictions are scored.
- `gfss` (the standard GFSS protocol of CAPL / DIaM): K supports for every novel class of the
  fold; the query is labelled among background, base and novel classes at once.
Same arguments and seed -> the same file, byte for byte.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.artifacts import atomic_write_text
from stages.core.datasets import Dataset, open_dataset
from stages.core.datasets.base import check_id
from stages.core.errors import FssegError
from stages.core.validation import check_episodes, episode_groups

log = logging.getLogger(__name__)

FORMAT = "fsseg-episodes/1"
PROTOCOLS = ("fss", "gfss-binary", "gfss")
DEFAULT_MIN_AREA = 2 * 32 * 32  # pixels a class must cover to enter an image's list (PFENet's rule)


def _draw_supports(
    rng: np.random.Generator, pool: list[str], exclude: str, shots: int, cls: str
) -> list[str]:
    candidates = [i for i in pool if i != exclude]
    if len(candidates) < shots:
        raise FssegError(
            f"class {cls} has {len(candidates)} image(s) besides the query, fewer than --shots {shots}; "
            f"lower --shots or --min-area"
        )
    return [candidates[int(i)] for i in rng.choice(len(candidates), size=shots, replace=False)]


def _with_enough_supports(dataset: Dataset, pairs: list, by_class: dict[int, list[str]], shots: int):
    """(pairs, by_class, skipped classes) without the classes shown by no more than `shots` images."""
    skipped = sorted(c for c, ids in by_class.items() if len(ids) <= shots)
    if skipped:
        names = ", ".join(f"{dataset.class_names[c]} ({len(by_class[c])})" for c in skipped)
        log.warning("classes with no more images than --shots %d are left out: %s", shots, names)
    kept = {c: ids for c, ids in by_class.items() if c not in skipped}
    return [(image_id, c) for image_id, c in pairs if c in kept], kept, skipped


def _gfss_episodes(dataset, rng, novel, pairs, by_class, n, shots, fold) -> list[dict[str, Any]]:
    """Standard GFSS: query i = image i mod N, supports of every novel class."""
    missing = [dataset.class_names[c] for c in novel if c not in by_class]
    if missing:
        raise FssegError(
            f"fold {fold} classes {', '.join(missing)} have no images; the gfss protocol needs all"
        )
    queries = list(dict.fromkeys(image_id for image_id, _ in pairs))
    episodes = []
    for i in range(n):
        query = queries[i % len(queries)]
        supports = {
            str(c): _draw_supports(rng, by_class[c], query, shots, dataset.class_names[c]) for c in novel
        }
        episodes.append({"query": query, "supports": supports})
    return episodes


def _class_episodes(dataset, rng, base, pairs, by_class, n, shots, protocol) -> list[dict[str, Any]]:
    """One class per episode: query i = pair i mod N (HSNet), or a drawn class then a drawn image
    (COCO-20i); gfss-binary adds a query showing a base class."""
    base_pool = []
    if protocol == "gfss-binary":
        scan = dataset.scan()
        base_pool = [s.id for s in dataset.samples() if any(c in scan.get(s.id, {}) for c in base)]
    classes = sorted(by_class)
    episodes = []
    for i in range(n):
        if dataset.name == "coco":
            cls = classes[int(rng.integers(len(classes)))]
            query = by_class[cls][int(rng.integers(len(by_class[cls])))]
        else:
            query, cls = pairs[i % len(pairs)]
        support = _draw_supports(rng, by_class[cls], query, shots, dataset.class_names[cls])
        episode: dict[str, Any] = {"class": cls, "query": query, "support": support}
        if protocol == "gfss-binary":
            episode["base_query"] = base_pool[int(rng.integers(len(base_pool)))] if base_pool else None
        episodes.append(episode)
    return episodes


def make_episodes(
    dataset: Dataset,
    *,
    fold: int,
    shots: int,
    n: int,
    seed: int = 0,
    protocol: str = "fss",
    n_folds: int | None = None,
    min_area: int = DEFAULT_MIN_AREA,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Build the episodes document (not yet written)."""
    if protocol not in PROTOCOLS:
        raise FssegError(f"--protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if shots < 1 or n < 1:
        raise FssegError("--shots and --n must be at least 1")
    novel = dataset.fold_classes(fold, n_folds)
    base = [c for c in dataset.foreground_classes() if c not in novel]
    pairs = dataset.pairs(novel, min_area, on_progress)
    if not pairs:
        raise FssegError(
            f"no image of {dataset.name} shows a class of fold {fold} over {min_area} pixels; "
            f"check --root/--split or lower --min-area"
        )
    by_class: dict[int, list[str]] = {}
    for image_id, c in pairs:
        by_class.setdefault(c, []).append(image_id)
    skipped: list[int] = []
    if protocol != "gfss":  # gfss needs every novel class: _draw_supports says which one lacks images
        pairs, by_class, skipped = _with_enough_supports(dataset, pairs, by_class, shots)
        if not pairs:
            raise FssegError(
                f"no class of fold {fold} has more than --shots {shots} images over {min_area} pixels "
                f"(a query and {shots} supports); lower --shots or --min-area"
            )
    rng = np.random.default_rng(seed)
    if protocol == "gfss":
        episodes = _gfss_episodes(dataset, rng, novel, pairs, by_class, n, shots, fold)
    else:
        episodes = _class_episodes(dataset, rng, base, pairs, by_class, n, shots, protocol)
    return {
        "format": FORMAT,
        "dataset": dataset.name,
        "root": str(dataset.root.resolve()),
        "split": dataset.split,
        "fold": fold,
        "n_folds": n_folds,
        "shots": shots,
        "seed": seed,
        "protocol": protocol,
        "min_area": min_area,
        "novel_classes": novel,
        "skipped_classes": skipped,
        "base_classes": base,
        "class_names": dataset.class_names,
        "ignore_index": dataset.ignore_index,
        "background": dataset.background,
        "episodes": episodes,
    }


def check_episodes_out(path: str | Path) -> dict[str, Any] | None:
    """The episodes already at `path` (None when nothing is there), or a FssegError when `path`
    can never take an episodes file: a folder, a path under a regular file, or a file that is
    not an fsseg episodes file (fsseg never replaces a file it did not write). Cheap: the CLI
    calls it before scanning the dataset."""
    path = Path(path)
    foreign = FssegError(
        f"--out {path} exists and is not an fsseg episodes file; fsseg never replaces a file it "
        f"did not write: choose another path"
    )
    try:
        above = next((p for p in path.parents if p.exists() or p.is_symlink()), None)
        if above is not None and not above.is_dir():
            raise FssegError(f"--out {path} lies under {above}, which is a file; choose another path")
        if path.is_dir():
            raise FssegError(f"--out {path} is a folder; pass a file path such as {path / 'episodes.json'}")
        if not path.exists():
            return None
        if not path.is_file():
            raise foreign
        document = json.loads(path.read_bytes())
    except OSError as err:  # e.g. a folder on the way that this user may not enter
        raise FssegError(
            f"cannot read --out {path}: {err.strerror or err.__class__.__name__}; choose another path"
        ) from None
    except ValueError:  # not JSON, not UTF-8
        raise foreign from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise foreign
    return document


def write_episodes(path: str | Path, document: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Write `document` to `path` atomically, under the rules of every fsseg artifact: the same
    episodes already there: up to date, nothing written; other episodes: refused unless
    `overwrite`; a folder, a file fsseg did not write, or an unwritable path: refused."""
    path = Path(path)
    old = check_episodes_out(path)
    text = json.dumps(document, indent=1, sort_keys=True) + "\n"
    if old is not None:
        new = json.loads(text)
        if old == new:
            log.info("%s is up to date (same episodes); nothing to do", path)
            return path
        if not overwrite:
            diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            raise FssegError(
                f"--out {path} already holds other episodes (its {', '.join(diff)} differ); pass "
                f"--overwrite to replace it, or choose another --out"
            )
    try:
        atomic_write_text(path, text)
    except OSError as err:
        reason = err.strerror or err.__class__.__name__
        raise FssegError(f"cannot write --out {path}: {reason}; choose a writable --out") from None
    return path


def read_episodes(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FssegError(f"episodes file not found: {path}; make one with `fsseg data episodes`")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FssegError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}); regenerate it"
        ) from None
    except UnicodeDecodeError:
        document = None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise FssegError(f"{path} is not an fsseg episodes file; make one with `fsseg data episodes`")
    _check_episode_ids(path, document)
    return document


def _check_episode_ids(path: Path, document: dict[str, Any]) -> None:
    """Every image id of every episode is a plain name (FSS-1000: `class/N`): ids name output
    files, so one like `../../x` would write outside `--out`."""
    parts = 2 if document.get("dataset") == "fss1000" else 1
    fix = "image ids must be plain names as the dataset lists them; regenerate it with `fsseg data episodes`"
    for i, _, _, ids in episode_groups(document, path):
        for image_id in ids if isinstance(ids, list) else [ids]:
            if image_id is not None:  # a missing one: check_episodes says which episode lacks what
                check_id(image_id, f"{path} (episode {i})", parts=parts, fix=fix)


def open_episodes(path: str | Path, root: str | Path | None = None) -> tuple[dict[str, Any], Dataset]:
    """The episodes file at `path` and the dataset its episodes come from (at `root` when it
    moved since), checked against each other (`check_episodes`)."""
    doc = read_episodes(path)
    dataset = open_dataset(doc["dataset"], root or doc["root"], doc["split"])
    check_episodes(doc, dataset, path)
    return doc, dataset
