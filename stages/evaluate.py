"""`fsseg evaluate`: score predictions of any stage against ground truth.

Reads:  predictions (a folder, or an artifact whose manifest names its predictions folder)
        and ground truth: a label folder (semantic, panoptic) or a dataset through an episodes
        file (fss, gfss).
Writes: `metrics.json` (all scores in percent), `per_class.csv`, `per_class.png` (bar chart),
        `confusion_matrix.png` (semantic, gfss), `manifest.json` (kind "metrics").
Tasks:
- semantic: one confusion matrix over all pixels; IoU = TP / (TP + FP + FN); mIoU over the
  classes present in prediction or ground truth; pixel accuracy.
- fss: HSNet's protocol; per episode the prediction `<episode index:05d>.png` (non-zero =
  foreground) against the query's mask of the episode class; fg/bg intersection and union
  summed per class; mIoU, FB-IoU and the example-wise mean IoU.
- gfss: `--protocol gfss` (standard: query labelled among background, base and novel classes
  at once; base mIoU includes background where the dataset has one) or `gfss-binary` (the
  GFSS report's: novel IoU from the binary query prediction, base mIoU from
  `<index:05d>_base.png` on the extra base image); base, novel, mean and harmonic mean.
- panoptic: PQ / SQ / RQ (all, things, stuff, per class) on Cityscapes-form instance id PNGs
  or COCO panoptic PNG + JSON, with the COCO / Cityscapes rules for void and crowd.
One file for the four tasks (the charts are in stages.core.charts): they share the prediction
checks, the parallel sum and the writing of metrics.json, per_class.csv and the charts, and each
task's scorer reads top to bottom in a few short functions.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.artifacts import (
    MANIFEST_NAME,
    RUN_STATE_NAME,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    is_temp_file,
    open_artifact,
    read_manifest,
)
from stages.core.charts import bar_chart_png, confusion_png, pq_breakdown_png
from stages.core.datasets.readers import PANOPTIC_CATEGORIES
from stages.core.episodes import open_episodes
from stages.core.errors import FssegError
from stages.core.imageio import read_label
from stages.core.metrics import (
    ConfusionMatrix,
    FssMeter,
    PanopticImage,
    PanopticQuality,
    SegmentListError,
    gfss_summary,
)
from stages.core.panoptic import load_coco_panoptic, read_coco_png, read_instance_ids
from stages.core.validation import check_predicted_for, checked_label
from stages.params import EvaluateParams, resolve

log = logging.getLogger(__name__)

LABEL_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
Progress = Callable[[int, int], None] | None


# ----------------------------------------------------------------------------- inputs
def predictions_folder(pred: Path) -> Path:
    """A predictions folder, or the one an artifact's manifest names in outputs.predictions (an
    unfinished artifact, or a corrupt manifest, is refused)."""
    if not pred.exists():
        raise FssegError(
            f"prediction folder not found: {pred}; pass the --out folder of the predicting stage"
        )
    if (pred / MANIFEST_NAME).is_file() or (pred / RUN_STATE_NAME).is_file():  # an artifact, finished or not
        sub = read_manifest(pred).get("outputs", {}).get("predictions")
        if isinstance(sub, str) and (pred / sub).is_dir():
            return pred / sub
    return pred


def _label_files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FssegError(f"{what} folder not found: {folder}; pass a folder of label PNGs")
    files = {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in LABEL_EXTENSIONS and not is_temp_file(p)
    }
    if not files:
        raise FssegError(f"no label images ({', '.join(LABEL_EXTENSIONS)}) in {what} folder {folder}")
    return files


def _missing_error(missing: Sequence[str], total: int, where: Path) -> FssegError:
    shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    return FssegError(
        f"{len(missing)} of {total} predictions are missing in {where} ({shown}); predict them, or pass "
        f"--missing-as-empty to count them as empty predictions"
    )


def _check_pair(pred: np.ndarray, gt: np.ndarray, pred_path: Path, gt_name: str) -> None:
    if pred.shape != gt.shape:
        raise FssegError(
            f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but ground truth {gt_name} is "
            f"{gt.shape[1]}x{gt.shape[0]}; predict at the ground-truth size"
        )


def _check_ids(pred: np.ndarray, gt: np.ndarray, n: int, ignore: int, pred_path: Path, gt_name: str) -> None:
    bad_gt = (gt >= n) & (gt != ignore)
    if bad_gt.any():
        ids = ", ".join(str(v) for v in np.unique(gt[bad_gt])[:5])
        raise FssegError(
            f"ground truth {gt_name} has label id(s) {ids} outside 0..{n - 1} that are not the ignore index "
            f"{ignore}; check --num-classes and --ignore-index"
        )
    bad_pred = (gt != ignore) & (pred >= n) & (pred != ignore)  # the ignore id predicted = "no class": a miss
    if bad_pred.any():
        ids = ", ".join(str(v) for v in np.unique(pred[bad_pred])[:5])
        raise FssegError(
            f"prediction {pred_path} has label id(s) {ids} outside 0..{n - 1} at {int(bad_pred.sum())} scored "
            f"pixels; predictions must use the class ids 0..{n - 1}"
        )


def _class_id_matrix(
    pred_path: Path | None, gt: np.ndarray, n: int, ignore: int, gt_name: str
) -> ConfusionMatrix:
    """The confusion matrix of one class-id prediction against `gt`; None: a missing prediction,
    counted as empty."""
    cm = ConfusionMatrix(n)
    if pred_path is None:
        return cm.add_missed(gt, ignore)
    pred = read_label(pred_path)
    _check_pair(pred, gt, pred_path, gt_name)
    _check_ids(pred, gt, n, ignore, pred_path, gt_name)
    return cm.update(pred, gt, ignore)


def _binary_meter(pred_path: Path, gt: np.ndarray, cls: int, gt_name: str) -> FssMeter:
    """The fg/bg counts of one binary prediction (non-zero = foreground; no file: empty) against
    `gt` (0/1, 255 ignored) for class `cls`."""
    pred = (read_label(pred_path) > 0) if pred_path.is_file() else np.zeros(gt.shape, bool)
    _check_pair(pred, gt, pred_path, gt_name)
    meter = FssMeter()
    meter.update(pred, gt, cls, 255)
    return meter


def _parallel_sum(fn: Callable, items: Sequence, start: Any, workers: int, on_progress: Progress) -> Any:
    """Sum of fn(item) over items (accumulators add; tuples of accumulators add element-wise)."""
    total = start
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, part in enumerate(pool.map(fn, items), 1):
            total = (
                tuple(a + b for a, b in zip(total, part, strict=True))
                if isinstance(total, tuple)
                else total + part
            )
            if on_progress is not None:
                on_progress(i, len(items))
    return total


def _pct(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x) * 100


# ----------------------------------------------------------------------------- semantic
def _semantic(pred_dir, gt_dir, *, num_classes, ignore_index, names, missing_as_empty, workers, on_progress):
    if num_classes is None:
        raise FssegError("--num-classes is required for --task semantic")
    if gt_dir is None:
        raise FssegError("--gt is required for --task semantic")
    gts = _label_files(gt_dir, "ground-truth")
    preds = _label_files(pred_dir, "prediction")
    missing = [stem for stem in gts if stem not in preds]
    if missing and not missing_as_empty:
        raise _missing_error(missing, len(gts), pred_dir)
    if len(set(preds) - set(gts)):
        log.warning(
            "%d predictions in %s have no ground truth and are not scored",
            len(set(preds) - set(gts)),
            pred_dir,
        )

    def score(stem: str) -> ConfusionMatrix:
        gt = read_label(gts[stem])
        return _class_id_matrix(preds.get(stem), gt, num_classes, ignore_index, str(gts[stem]))

    total = _parallel_sum(score, list(gts), ConfusionMatrix(num_classes), workers, on_progress)
    iou, acc = total.iou(), total.class_accuracy()
    metrics = {
        "num_images": len(gts),
        "num_missing": len(missing),
        "num_classes": num_classes,
        "ignore_index": ignore_index,
        "miou": _pct(total.miou()),
        "pixel_accuracy": _pct(total.pixel_accuracy()),
        "mean_class_accuracy": _pct(total.mean_class_accuracy()),
        "confusion_matrix": total.matrix.tolist(),
    }
    rows = [
        {
            "class_id": c,
            "name": n,
            "iou": _pct(iou[c]),
            "accuracy": _pct(acc[c]),
            "gt_pixels": int(total.gt_pixels[c]),
            "pred_pixels": int(total.pred_pixels[c]),
        }
        for c, n in enumerate(names)
    ]
    return metrics, rows, {"confusion_matrix.png": confusion_png(names, total.matrix)}, "miou"


# ----------------------------------------------------------------------------- fss / gfss
def _binary_gt(label: np.ndarray, cls: int, ignore: int) -> np.ndarray:
    return np.where(label == ignore, 255, (label == cls).astype(np.uint8)).astype(np.uint8)


def _resize_nearest(label: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return label
    import cv2

    return cv2.resize(label, (size, size), interpolation=cv2.INTER_NEAREST)


def _fss(pred_dir, episodes_path, *, root, resize_gt, missing_as_empty, workers, on_progress):
    doc, dataset = open_episodes(episodes_path, root)
    if doc["protocol"] == "gfss":
        raise FssegError(f"{episodes_path} holds gfss episodes; score them with --task gfss")
    ignore = dataset.ignore_index
    n = len(doc["episodes"])
    names = {i: f"{i:05d}.png" for i in range(n)}
    missing = [names[i] for i in range(n) if not (pred_dir / names[i]).is_file()]
    if missing and not missing_as_empty:
        raise _missing_error(missing, n, pred_dir)

    def score(i: int) -> FssMeter:
        episode = doc["episodes"][i]
        sample = dataset.sample(episode["query"])
        label = checked_label(dataset, sample, dataset.load_label(sample))
        gt = _resize_nearest(_binary_gt(label, episode["class"], ignore), resize_gt)
        return _binary_meter(pred_dir / names[i], gt, episode["class"], f"{sample.label} (episode {i})")

    meter = _parallel_sum(score, range(n), FssMeter(), workers, on_progress)
    class_iou = meter.class_iou()
    metrics = {
        "protocol": "fss (HSNet: IoU summed per class over episodes)",
        "num_episodes": n,
        "num_missing": len(missing),
        "shots": doc["shots"],
        "fold": doc["fold"],
        "miou": _pct(meter.miou()),
        "fb_iou": _pct(meter.fb_iou()),
        "episode_mean_fg_iou": _pct(meter.episode_mean_fg_iou()),
        "classes_without_episodes": [
            doc["class_names"][c] for c in doc["novel_classes"] if c not in class_iou
        ],
    }
    rows = [
        {
            "class_id": c,
            "name": doc["class_names"][c],
            "iou": _pct(v),
            "episodes": sum(1 for e in doc["episodes"] if e["class"] == c),
        }
        for c, v in class_iou.items()
    ]
    return metrics, rows, {}, "miou"


def _gfss(pred_dir, episodes_path, *, root, missing_as_empty, workers, on_progress):
    doc, dataset = open_episodes(episodes_path, root)
    protocol = doc["protocol"]
    if protocol == "fss":
        raise FssegError(
            f"{episodes_path} holds fss episodes; make gfss ones with `fsseg data episodes --protocol "
            f"gfss` (or gfss-binary)"
        )
    n_cls, ignore, bg = dataset.num_classes, dataset.ignore_index, dataset.background
    novel = doc["novel_classes"]
    n = len(doc["episodes"])
    files = [f"{i:05d}.png" for i in range(n)]
    if protocol == "gfss-binary":
        files += [f"{i:05d}_base.png" for i in range(n) if doc["episodes"][i].get("base_query")]
    missing = [f for f in files if not (pred_dir / f).is_file()]
    if missing and not missing_as_empty:
        raise _missing_error(missing, len(files), pred_dir)

    def class_ids(path: Path, gt: np.ndarray, name: str) -> ConfusionMatrix:
        return _class_id_matrix(path if path.is_file() else None, gt, n_cls, ignore, name)

    def score(i: int) -> tuple[ConfusionMatrix, FssMeter]:
        episode = doc["episodes"][i]
        sample = dataset.sample(episode["query"])
        label = checked_label(dataset, sample, dataset.load_label(sample))
        if protocol == "gfss":
            return class_ids(pred_dir / files[i], label, f"{sample.label} (episode {i})"), FssMeter()
        gt = _binary_gt(label, episode["class"], ignore)
        meter = _binary_meter(pred_dir / files[i], gt, episode["class"], f"{sample.label} (episode {i})")
        if not episode.get("base_query"):
            return ConfusionMatrix(n_cls), meter
        base_sample = dataset.sample(episode["base_query"])
        base_label = checked_label(dataset, base_sample, dataset.load_label(base_sample))
        # novel pixels of a base image: background at pretraining time, or unscored without one
        base_label = np.where(np.isin(base_label, novel), bg if bg is not None else ignore, base_label)
        return class_ids(
            pred_dir / f"{i:05d}_base.png", base_label.astype(np.uint8), str(base_sample.label)
        ), meter

    cm, meter = _parallel_sum(score, range(n), (ConfusionMatrix(n_cls), FssMeter()), workers, on_progress)
    return _gfss_results(doc, dataset, cm, meter, num_missing=len(missing))


def _gfss_results(doc: dict, dataset, cm: ConfusionMatrix, meter: FssMeter, *, num_missing: int):
    """Base IoU (with background where the dataset has one) from the class-id matrix; novel IoU
    from it too (gfss) or from the binary query predictions (gfss-binary); their summary."""
    protocol, novel, bg = doc["protocol"], doc["novel_classes"], dataset.background
    base_scored = ([bg] if bg is not None else []) + doc["base_classes"]
    cm_iou = cm.iou()
    if protocol == "gfss":
        novel_iou = np.array([cm_iou[c] for c in novel])
    else:
        per_novel = meter.class_iou()
        novel_iou = np.array([per_novel.get(c, np.nan) for c in novel])
    base_iou = np.array([cm_iou[c] for c in base_scored])
    summary = gfss_summary(base_iou, novel_iou)
    metrics = {
        "protocol": {
            "gfss": "gfss (standard: all classes at once; base includes background)",
            "gfss-binary": "gfss-binary (report: novel from the query, base from an extra image)",
        }[protocol],
        "num_episodes": len(doc["episodes"]),
        "num_missing": num_missing,
        "shots": doc["shots"],
        "fold": doc["fold"],
        **{k: _pct(v) for k, v in summary.items()},
        "confusion_matrix": cm.matrix.tolist(),
    }
    rows = [
        {"class_id": c, "name": dataset.class_names[c], "group": "base", "iou": _pct(v)}
        for c, v in zip(base_scored, base_iou, strict=True)
    ]
    rows += [
        {"class_id": c, "name": dataset.class_names[c], "group": "novel", "iou": _pct(v)}
        for c, v in zip(novel, novel_iou, strict=True)
    ]
    return (
        metrics,
        rows,
        {"confusion_matrix.png": confusion_png(dataset.class_names, cm.matrix)},
        "harmonic_miou",
    )


# ----------------------------------------------------------------------------- panoptic
def _cityscapes_form_files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FssegError(f"{what} folder not found: {folder}")
    files = {}
    for path in sorted(p for p in folder.rglob("*instanceIds.png") if not is_temp_file(p)):
        key = path.name.replace("_gtFine_instanceIds.png", "").replace("_instanceIds.png", "")
        files[key] = path
    if not files:
        raise FssegError(f"no *_instanceIds.png files under {what} folder {folder} (Cityscapes form)")
    return files


def _coco_missing_error(missing: Sequence[Any], gt, pred) -> FssegError:
    shown = ", ".join(f"image_id {k!r} ({gt.entries[k][0].name})" for k in missing[:3])
    shown += ", ..." if len(missing) > 3 else ""
    hint = ""
    same = {str(k): k for k in pred.entries}
    twin = next((same[str(k)] for k in missing if str(k) in same), None)
    if twin is not None:  # e.g. 1 in the ground truth, "1" in the prediction
        hint = (
            f" (the prediction writes image_id {twin!r} where the ground truth has {missing[0]!r}: "
            f"write the ground truth's image_id values)"
        )
    return FssegError(
        f"{len(missing)} of {len(gt.entries)} ground-truth images have no prediction in {pred.json_path} "
        f"(paired by image_id): {shown}{hint}; predict them, or pass --missing-as-empty to count them "
        f"as empty predictions"
    )


@dataclass(frozen=True)
class _PanopticPair:
    """Ground truth and prediction in one panoptic format, their entries paired by key (a COCO
    image_id, or a Cityscapes-form file name)."""

    categories: dict[int, bool]  # category id -> is a thing class
    names: dict[int, str]
    gt_entries: dict[Any, Any]
    pred_entries: dict[Any, Any]
    read: Callable[[Any], PanopticImage]  # an entry -> its ids and their categories
    png: Callable[[Any], Path]  # an entry -> its PNG
    gt_json: Path  # where the segments are listed (Cityscapes form: never needed)
    pred_json: Path
    missing_error: Callable[[list], FssegError]


def _coco_pair(pred_dir: Path, gt_dir: Path) -> _PanopticPair:
    gt_coco = load_coco_panoptic(gt_dir)
    if not gt_coco.categories:
        raise FssegError(f"{gt_coco.json_path} lists no categories; the ground truth must list them")
    pred_coco = load_coco_panoptic(pred_dir, need_categories=False)  # categories: the ground truth's
    return _PanopticPair(
        categories={c: bool(info.get("isthing", 0)) for c, info in gt_coco.categories.items()},
        names={c: str(info.get("name", c)) for c, info in gt_coco.categories.items()},
        gt_entries=gt_coco.entries,  # paired by image_id
        pred_entries=pred_coco.entries,
        read=lambda entry: read_coco_png(*entry),
        png=lambda entry: entry[0],
        gt_json=gt_coco.json_path,
        pred_json=pred_coco.json_path,
        missing_error=lambda missing: _coco_missing_error(missing, gt_coco, pred_coco),
    )


def _cityscapes_pair(pred_dir: Path, gt_dir: Path, dataset_name: str) -> _PanopticPair:
    if dataset_name not in PANOPTIC_CATEGORIES:
        raise FssegError(
            f"--dataset {dataset_name!r} has no panoptic categories; use one of "
            f"{', '.join(PANOPTIC_CATEGORIES)} or --format coco"
        )
    categories, names = PANOPTIC_CATEGORIES[dataset_name]
    gt_entries = _cityscapes_form_files(gt_dir, "ground-truth")
    return _PanopticPair(
        categories=categories,
        names=names,
        gt_entries=gt_entries,
        pred_entries=_cityscapes_form_files(pred_dir, "prediction"),
        read=lambda path: read_instance_ids(path, categories),
        png=lambda path: path,
        gt_json=gt_dir,  # never named: Cityscapes-form ids carry their categories
        pred_json=pred_dir,
        missing_error=lambda missing: _missing_error(missing, len(gt_entries), pred_dir),
    )


def _panoptic_quality(pair: _PanopticPair, key: Any) -> PanopticQuality:
    """The PQ counts of one image; a missing prediction counts as empty."""
    gt = pair.read(pair.gt_entries[key])
    if key not in pair.pred_entries:
        return PanopticQuality().update(gt, PanopticImage(np.zeros_like(gt.ids), {}))
    pred = pair.read(pair.pred_entries[key])
    pred_png = pair.png(pair.pred_entries[key])
    if pred.ids.shape != gt.ids.shape:
        raise FssegError(
            f"panoptic prediction {pred_png} is {pred.ids.shape[1]}x{pred.ids.shape[0]} but its "
            f"ground truth is {gt.ids.shape[1]}x{gt.ids.shape[0]}; predict at the ground-truth size"
        )
    categories = pair.categories
    for sid, cat in pred.categories.items():
        if cat not in categories:
            known = (
                f"the ground truth's {len(categories)} categories (ids {min(categories)}..{max(categories)})"
            )
            raise FssegError(
                f"{pred_png}: segment {sid} has category_id {cat}, which is not among {known}; "
                f"use the ground truth's category ids"
            )
    try:
        return PanopticQuality().update(gt, pred, require_listed=True)
    except SegmentListError as err:
        raise _segment_list_error(pair, key, err) from None


def _segment_list_error(pair: _PanopticPair, key: Any, err: SegmentListError) -> FssegError:
    on_gt = err.side == "ground-truth"
    png = pair.png((pair.gt_entries if on_gt else pair.pred_entries)[key])
    if err.problem == "absent":
        return FssegError(
            f"{png}: segment {err.segment_id} is listed in segments_info but absent from the PNG; "
            f"drop it from segments_info or draw it in the PNG"
        )
    return FssegError(
        f"{png}: segment id {err.segment_id} is in the PNG but not in its segments_info in "
        f"{pair.gt_json if on_gt else pair.pred_json}; list every segment id of the PNG in the JSON"
    )


def _panoptic(pred_dir, gt_dir, *, panoptic_format, dataset_name, missing_as_empty, workers, on_progress):
    if gt_dir is None:
        raise FssegError("--gt is required for --task panoptic")
    if panoptic_format == "coco":
        pair = _coco_pair(pred_dir, gt_dir)
    elif panoptic_format == "cityscapes":
        pair = _cityscapes_pair(pred_dir, gt_dir, dataset_name)
    else:
        raise FssegError(f"--format {panoptic_format!r} is not one of cityscapes, coco")
    missing = [k for k in pair.gt_entries if k not in pair.pred_entries]
    if missing and not missing_as_empty:
        raise pair.missing_error(missing)
    score = functools.partial(_panoptic_quality, pair)
    pq = _parallel_sum(score, list(pair.gt_entries), PanopticQuality(), workers, on_progress)
    res = pq.results(pair.categories)
    metrics = {"num_images": len(pair.gt_entries), "num_missing": len(missing), "format": panoptic_format}
    for group in ("all", "things", "stuff"):
        metrics[group] = {k: _pct(v) for k, v in res[group].items() if k != "n"} | {"n": res[group]["n"]}
    metrics["pq"], metrics["sq"], metrics["rq"] = (metrics["all"][k] for k in ("pq", "sq", "rq"))
    rows = []
    for c, thing in pair.categories.items():
        r = res["per_class"][c]
        rows.append(
            {
                "class_id": c,
                "name": pair.names[c],
                "kind": "thing" if thing else "stuff",
                "pq": _pct(r["pq"]) if r else None,
                "sq": _pct(r["sq"]) if r else None,
                "rq": _pct(r["rq"]) if r else None,
                "tp": r["tp"] if r else 0,
                "fp": r["fp"] if r else 0,
                "fn": r["fn"] if r else 0,
            }
        )
    return metrics, rows, {"pq_breakdown.png": pq_breakdown_png(metrics)}, "pq"


# ----------------------------------------------------------------------------- stage
def run_evaluate(
    pred_dir: str | Path,
    out_dir: str | Path,
    *,
    gt_dir: str | Path | None = None,
    episodes: str | Path | None = None,
    root: str | Path | None = None,
    params: EvaluateParams | None = None,
    overwrite: bool = False,
    on_progress: Progress = None,
    **changes: Any,
) -> Path:
    """Score `pred_dir` for `params.task`; returns the metrics artifact folder. `changes` are field
    values of `params` (`task="fss"` is `params=EvaluateParams(task="fss")`)."""
    p = resolve(EvaluateParams, params, changes)
    task = p.task
    pred_dir = predictions_folder(Path(pred_dir))
    gt_dir = Path(gt_dir) if gt_dir is not None else None
    _check_inputs(task, pred_dir, gt_dir, episodes, root)
    names = _semantic_class_names(p)
    inputs: list[Path] = [pred_dir] + (
        [Path(episodes)] if task in ("fss", "gfss") else [gt_dir] if gt_dir else []
    )
    resolved = {"class_names": names, "root": str(root) if root else None}
    with open_artifact(
        out_dir,
        kind="metrics",
        stage="evaluate",
        params=p,
        resolved=resolved,
        inputs=inputs,
        overwrite=overwrite,
    ) as art:
        if art.up_to_date:
            return art.path
        common = {
            "missing_as_empty": p.missing_as_empty,
            "workers": p.num_workers,
            "on_progress": on_progress,
        }
        if task == "semantic":
            scored = _semantic(
                pred_dir,
                gt_dir,
                num_classes=p.num_classes,
                ignore_index=p.ignore_index,
                names=names,
                **common,
            )
        elif task == "fss":
            scored = _fss(pred_dir, Path(episodes), root=root, resize_gt=p.resize_gt, **common)
        elif task == "gfss":
            scored = _gfss(pred_dir, Path(episodes), root=root, **common)
        else:
            scored = _panoptic(
                pred_dir, gt_dir, panoptic_format=p.panoptic_format, dataset_name=p.dataset, **common
            )
        return _write_results(art, task, *scored)


def _check_inputs(
    task: str, pred_dir: Path, gt_dir: Path | None, episodes: str | Path | None, root: str | Path | None
) -> None:
    if task in ("fss", "gfss") and episodes is None:
        raise FssegError(f"--episodes is required for --task {task} (make one with `fsseg data episodes`)")
    if gt_dir is not None and not gt_dir.is_dir():
        raise FssegError(f"ground-truth folder not found: {gt_dir}; check --gt")
    if episodes is not None and not Path(episodes).is_file():
        raise FssegError(f"episodes file not found: {episodes}; make one with `fsseg data episodes`")
    if task in ("fss", "gfss"):
        open_episodes(episodes, root)  # a broken episodes file is named as such, not as another one
        check_predicted_for(pred_dir, episodes)


def _semantic_class_names(p: EvaluateParams) -> list[str]:
    """The semantic task's class names (`class_<id>` where none are given); empty for other tasks."""
    if p.task != "semantic" or p.num_classes is None:
        return []
    names = list(p.class_names) if p.class_names else [f"class_{i}" for i in range(p.num_classes)]
    if len(names) != p.num_classes:
        raise FssegError(
            f"--class-names gives {len(names)} names but --num-classes is {p.num_classes}; make them agree"
        )
    return names


def _write_results(
    art, task: str, metrics: dict, rows: list[dict], charts: dict[str, bytes], headline: str
) -> Path:
    """Write metrics.json, per_class.csv, the task's charts and per_class.png; finish the artifact."""
    metrics = {"task": task, "units": "percent", "headline": headline, **metrics, "per_class": rows}
    value_key = "pq" if task == "panoptic" else "iou"
    charts["per_class.png"] = bar_chart_png(
        [str(r["name"]) for r in rows],
        [r[value_key] for r in rows],
        value_key.upper(),
        metrics.get(headline) if task != "gfss" else None,
    )
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["class_id"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(art.file("per_class.csv"), text.getvalue())
    for name, data in charts.items():
        atomic_write_bytes(art.file(name), data)
    atomic_write_json(art.file("metrics.json"), metrics)
    summary = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return art.finish(
        outputs={
            "metrics": "metrics.json",
            "per_class": "per_class.csv",
            "charts": sorted(charts),
            "summary": summary,
        },
        label_map={str(r["class_id"]): r["name"] for r in rows},
    )
