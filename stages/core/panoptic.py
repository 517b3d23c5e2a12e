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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def label_ids_of(ids: np.ndarray) -> np.ndarray:
    """Cityscapes-form ids -> their label ids (`id // 1000` for thing instances, the id elsewhere)."""
    return np.where(ids >= 1000, ids // 1000, ids)


def instances_of(ids: np.ndarray) -> np.ndarray:
    """Cityscapes-form ids -> instance numbers 1..n (`id % 1000 + 1`), 0 where there is no instance."""
    return np.where(ids >= 1000, ids % 1000 + 1, 0)


def from_instance_ids(raw: np.ndarray, categories: dict[int, bool]) -> PanopticImage:
    """Cityscapes-form ids -> PanopticImage. `categories` maps evaluated label id -> is_thing."""
    values = np.unique(raw)
    label_of = label_ids_of(values)
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


@dataclass(frozen=True)
class CocoPanoptic:
    """A COCO panoptic folder read: its JSON, categories by id (None when the JSON has no
    `categories`, as a prediction may omit them) and one entry per annotation by `image_id`."""

    json_path: Path
    categories: dict[int, dict] | None
    entries: dict[Any, tuple[Path, list[dict]]]  # image_id -> (PNG path, segments_info)


def load_coco_panoptic(folder: Path, *, need_categories: bool = True) -> CocoPanoptic:
    """Read a COCO panoptic folder: one `*.json`, the PNGs in a folder named like the JSON's
    stem or beside it. Annotations are keyed by `image_id`, as the reference evaluators pair
    prediction with ground truth; `categories` may be absent unless `need_categories`."""
    folder = Path(folder)
    jsons = sorted(folder.glob("*.json")) if folder.is_dir() else []
    jsons = [j for j in jsons if j.name != "manifest.json" and not j.name.startswith(".")]
    if len(jsons) != 1:
        raise FssegError(
            f"{folder} must hold exactly one COCO panoptic *.json (found {len(jsons)}); see README"
        )
    path = jsons[0]
    png_dir = path.with_suffix("") if path.with_suffix("").is_dir() else folder
    try:
        data = json.loads(path.read_text())
        categories = (
            {int(c["id"]): c for c in data["categories"]} if need_categories or "categories" in data else None
        )
        entries: dict[Any, tuple[Path, list[dict]]] = {}
        for a in data["annotations"]:
            image_id = a["image_id"]
            if image_id in entries:
                raise FssegError(f"{path} has two annotations for image_id {image_id!r}; keep one per image")
            entries[image_id] = (png_dir / a["file_name"], list(a["segments_info"]))
    except (KeyError, TypeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise FssegError(
            f"{path} is not a COCO panoptic JSON ({err.__class__.__name__}: {err}); fix it"
        ) from None
    return CocoPanoptic(path, categories, entries)


def read_coco_png(path: Path, segments_info: list[dict]) -> PanopticImage:
    """A COCO panoptic PNG and its `segments_info` -> PanopticImage. A category's crowd segment
    for false positives is its last one with iscrowd=1 in list order, as the reference keeps."""
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
    crowd_listed = [s for s in segments_info if s.get("iscrowd", 0)]
    crowd = frozenset(int(s["id"]) for s in crowd_listed)
    crowd_of = {int(s["category_id"]): int(s["id"]) for s in crowd_listed}  # the last one listed wins
    return PanopticImage(ids, cats, crowd, crowd_of)


def write_coco_png(path: Path, ids: np.ndarray) -> None:
    from stages.core.artifacts import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(id_to_rgb(ids)).save(tmp, format="PNG")


# ----------------------------------------------------------------------------- building panoptic maps
def segment_ids(
    semantic: np.ndarray, instances: np.ndarray, things: tuple[int, ...], ignore: int
) -> np.ndarray:
    """One id per segment (H, W) int64 from `Dataset.load_panoptic`'s maps: stuff pixels get their
    class, thing pixels their instance, void -1."""
    ids = semantic.astype(np.int64)
    ids[semantic == ignore] = -1
    thing = np.isin(semantic, things) & (instances > 0)
    ids[thing] = (semantic[thing].astype(np.int64) + 1) << 20 | instances[thing]
    return ids


def boundary_target(ids: np.ndarray) -> np.ndarray:
    """Boundary pixels (H, W) bool: a neighbour within radius 1.5 (the 3x3 window) has another id."""
    from scipy import ndimage

    return ndimage.maximum_filter(ids, size=3, mode="nearest") != ndimage.minimum_filter(
        ids, size=3, mode="nearest"
    )


def fuse_panoptic(
    semantic: np.ndarray,
    boundary: np.ndarray | None,
    things: tuple[int, ...] | list[int],
    *,
    min_size: int = 500,
    void: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """SPINO's fusion of a semantic map (H, W) and a boundary map (H, W bool) into panoptic segments.

    Per thing class: connected components (8-connected); components under `min_size` pixels
    become void; boundaries are subtracted and components taken again; pieces under `min_size`
    are dropped; if none survives the whole component is one instance; every other pixel of the
    component joins its nearest instance. Stuff: one segment per class.
    Returns (semantic with void, instances (H, W) int32: 1..n per thing class, 0 elsewhere)."""
    from scipy import ndimage

    semantic = semantic.copy()
    instances = np.zeros(semantic.shape, np.int32)
    eight = np.ones((3, 3), bool)
    for c in things:
        comps, n = ndimage.label(semantic == c, eight)
        if n == 0:
            continue
        sizes = np.bincount(comps.ravel())
        next_id = 1
        for j, box in enumerate(ndimage.find_objects(comps), 1):
            comp = comps[box] == j
            if sizes[j] < min_size:
                semantic[box][comp] = void
                continue
            inner = comp if boundary is None else comp & ~boundary[box]
            pieces, m = ndimage.label(inner, eight)
            piece_sizes = np.bincount(pieces.ravel(), minlength=m + 1)
            piece_sizes[0] = 0
            keep = np.flatnonzero(piece_sizes >= min_size)
            block = instances[box]
            if len(keep) <= 1:
                block[comp] = next_id
                next_id += 1
                continue
            relabel = np.zeros(m + 1, np.int32)
            relabel[keep] = np.arange(next_id, next_id + len(keep))
            seeds = relabel[pieces]
            _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
            block[comp] = seeds[iy, ix][comp]
            next_id += len(keep)
    return semantic, instances


def cityscapes_form(
    semantic: np.ndarray, instances: np.ndarray, label_ids: np.ndarray, ignore: int, void_label: int
) -> np.ndarray:
    """(H, W) uint16 Cityscapes-form ids: labelId * 1000 + (instance - 1) for thing instances,
    labelId elsewhere, `void_label` where `semantic == ignore`. `label_ids` maps class -> labelId."""
    lut = np.full(max(int(semantic.max()), ignore) + 1, void_label, np.int64)
    lut[: len(label_ids)] = label_ids
    lut[ignore] = void_label
    ids = lut[semantic]
    inst = instances > 0
    ids[inst] = ids[inst] * 1000 + instances[inst] - 1
    return ids.astype(np.uint16)


def coco_segments(ids: np.ndarray, categories: dict[int, bool]) -> tuple[np.ndarray, list[dict]]:
    """Cityscapes-form ids -> (COCO segment id map (id + 1; 0 = void), segments_info)."""
    values, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    label = label_ids_of(values)
    seg = np.where(np.isin(label, list(categories)), values.astype(np.int64) + 1, 0)
    info = [
        {"id": int(s), "category_id": int(c), "area": int(n), "iscrowd": 0}
        for s, c, n in zip(seg, label, counts, strict=True)
        if s
    ]
    return seg[inverse.reshape(ids.shape)], info


# ----------------------------------------------------------------------------- writing panoptic artifacts
def preview(
    image: np.ndarray, semantic: np.ndarray, ids: np.ndarray, ignore: int, width: int = 480
) -> np.ndarray:
    """Image | semantic classes | segments (thing instances in their own colours, outlines white),
    side by side at `width` pixels each."""
    import cv2

    from stages.core.imageio import voc_palette

    palette = voc_palette()
    sem_rgb = palette[np.where(semantic == ignore, 0, semantic + 1) % 256]
    rng = np.random.default_rng(0)
    values, inverse = np.unique(ids, return_inverse=True)
    colours = rng.integers(40, 256, (len(values), 3)).astype(np.uint8)
    stuff = values < 1000
    colours[stuff] = (palette[(values[stuff] + 1) % 256] * 0.45).astype(np.uint8)  # stuff dimmed
    seg_rgb = colours[inverse.reshape(ids.shape)]
    seg_rgb[boundary_target(ids.astype(np.int64))] = 255
    h = round(image.shape[0] * width / image.shape[1])
    panels = [
        cv2.resize(image, (width, h), interpolation=cv2.INTER_AREA),
        cv2.resize(
            ((image * 0.4) + sem_rgb * 0.6).astype(np.uint8), (width, h), interpolation=cv2.INTER_NEAREST
        ),
        cv2.resize(seg_rgb, (width, h), interpolation=cv2.INTER_NEAREST),
    ]
    return np.concatenate(panels, 1)


class PanopticWriter:
    """Writes one image's panoptic result into an artifact, in every form fsseg promises:

    `semantic/<id>.png` (class ids, ignore = void), `cityscapes/<id>_gtFine_labelIds.png` (uint8),
    `panoptic/<id>.png` + `segments/<id>.json` (COCO panoptic; `write_coco_json` joins them into
    `panoptic.json` at the end), `preview/<id>.jpg`, and last `cityscapes/<id>_gtFine_instanceIds.png`
    (uint16), whose presence marks the item done."""

    def __init__(self, ds):
        self.ds = ds
        self.label_ids, self.void_label = ds.panoptic_labels()
        self.categories = ds.panoptic_categories()

    @staticmethod
    def done_file(sample_id: str) -> str:
        return f"cityscapes/{sample_id}_gtFine_instanceIds.png"

    def write(
        self, art, sample_id: str, image: np.ndarray | None, semantic: np.ndarray, instances: np.ndarray
    ) -> None:
        from stages.core.artifacts import atomic_write_json
        from stages.core.imageio import write_jpeg, write_label

        ignore = self.ds.ignore_index
        ids = cityscapes_form(semantic, instances, self.label_ids, ignore, self.void_label)
        write_label(
            art.file(f"semantic/{sample_id}.png"), semantic.astype(np.uint8 if ignore < 256 else np.uint16)
        )
        labels = label_ids_of(ids)
        write_label(art.file(f"cityscapes/{sample_id}_gtFine_labelIds.png"), labels.astype(np.uint8))
        seg, info = coco_segments(ids, self.categories)
        write_coco_png(art.file(f"panoptic/{sample_id}.png"), seg)
        atomic_write_json(art.file(f"segments/{sample_id}.json"), info)
        if image is not None:
            write_jpeg(art.file(f"preview/{sample_id}.jpg"), preview(image, semantic, ids, ignore))
        write_label(art.file(self.done_file(sample_id)), ids)

    def write_coco_json(self, art, sample_ids: list[str]) -> None:
        """`panoptic.json` (COCO panoptic) over every item; PNGs in `panoptic/`. Every rank calls
        it: rank 0 writes once all ranks have written their items."""
        from stages.core import distributed
        from stages.core.artifacts import atomic_write_json

        distributed.barrier(art.dist)
        if not art.dist.is_main:
            return

        names = {int(self.label_ids[c]): n for c, n in enumerate(self.ds.class_names)}
        annotations = [
            {
                "image_id": sid,
                "file_name": f"{sid}.png",
                "segments_info": json.loads((art.path / "segments" / f"{sid}.json").read_text()),
            }
            for sid in sample_ids
        ]
        atomic_write_json(
            art.file("panoptic.json"),
            {
                "images": [{"id": sid, "file_name": f"{sid}.png"} for sid in sample_ids],
                "annotations": annotations,
                "categories": [
                    {"id": c, "name": names[c], "isthing": int(t)} for c, t in self.categories.items()
                ],
            },
        )
