"""Panoptic label formats: Cityscapes-form instance id PNGs and COCO panoptic (PNG + JSON).

Cityscapes form: one uint16 PNG per image, `labelId * 1000 + k` for the k-th instance of a
thing class and `labelId` elsewhere; a thing-class pixel below 1000 is a crowd region, a
label outside the evaluated categories is void. COCO panoptic: an RGB PNG whose colour
encodes the segment id (R + 256 G + 256^2 B) and a JSON listing each segment's category.
Both are read into `PanopticImage` for `PanopticQuality`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from stages.core.errors import FssegError
from stages.core.imageio import read_label
from stages.core.metrics import PanopticImage


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids (uint32) of an RGB panoptic PNG: R + 256 G + 256^2 B."""
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] | (rgb[..., 1] << 8) | (rgb[..., 2] << 16)


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def from_instance_ids(raw: np.ndarray, categories: dict[int, bool]) -> PanopticImage:
    """Cityscapes-form ids -> PanopticImage. `categories` maps evaluated label id -> is_thing."""
    values = np.unique(raw)
    label_of = np.where(values >= 1000, values // 1000, values)
    keep = np.isin(label_of, list(categories))
    segment_ids = values.astype(np.int64) + 1  # +1 so that label id 0 can be a real class
    lut_keys, lut_vals = values, np.where(keep, segment_ids, 0)
    ids = lut_vals[np.searchsorted(lut_keys, raw)]
    cats = {int(s): int(c) for s, c, k in zip(segment_ids, label_of, keep, strict=True) if k}
    crowd = frozenset(
        int(s)
        for s, v, c, k in zip(segment_ids, values, label_of, keep, strict=True)
        if k and v < 1000 and categories[int(c)]
    )
    return PanopticImage(ids, cats, crowd)


def read_instance_ids(path: Path, categories: dict[int, bool]) -> PanopticImage:
    return from_instance_ids(read_label(path), categories)


def load_coco_panoptic(folder: Path) -> tuple[dict[int, dict], dict[str, tuple[Path, list[dict]]]]:
    """(categories by id, {file stem: (png path, segments_info)}) from a COCO panoptic folder.

    The folder holds one `*.json`; the PNGs lie in a folder named like the JSON's stem, or beside it.
    """
    folder = Path(folder)
    jsons = sorted(folder.glob("*.json")) if folder.is_dir() else []
    jsons = [j for j in jsons if j.name != "manifest.json"]
    if len(jsons) != 1:
        raise FssegError(
            f"{folder} must hold exactly one COCO panoptic *.json (found {len(jsons)}); see README"
        )
    try:
        data = json.loads(jsons[0].read_text())
        categories = {int(c["id"]): c for c in data["categories"]}
        annotations = data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise FssegError(
            f"{jsons[0]} is not a COCO panoptic JSON ({err.__class__.__name__}: {err}); fix it"
        ) from None
    png_dir = jsons[0].with_suffix("") if jsons[0].with_suffix("").is_dir() else folder
    entries = {Path(a["file_name"]).stem: (png_dir / a["file_name"], a["segments_info"]) for a in annotations}
    return categories, entries


def read_coco_png(path: Path, segments_info: list[dict]) -> PanopticImage:
    if not path.is_file():
        raise FssegError(f"panoptic PNG not found: {path}; check the folder named like the JSON")
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)  # decodes PNGs faster than PIL
    if bgr is None:
        raise FssegError(f"cannot read {path}: not a readable PNG; re-export it")
    if sys.byteorder == "little":  # RGBA bytes read as one uint32 are R + 256 G + 256^2 B + 256^3 A
        ids = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA).view(np.uint32)[..., 0] & 0xFFFFFF
    else:
        ids = rgb_to_id(bgr[..., ::-1])
    cats = {int(s["id"]): int(s["category_id"]) for s in segments_info}
    crowd = frozenset(int(s["id"]) for s in segments_info if s.get("iscrowd", 0))
    return PanopticImage(ids, cats, crowd)


def write_coco_png(path: Path, ids: np.ndarray) -> None:
    from stages.core.artifacts import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(id_to_rgb(ids)).save(tmp, format="PNG")
