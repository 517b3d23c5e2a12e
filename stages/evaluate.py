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
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.artifacts import (
    MANIFEST_NAME,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    is_temp_file,
    open_artifact,
)
from stages.core.datasets import open_dataset
from stages.core.datasets.readers import PANOPTIC_CATEGORIES
from stages.core.episodes import read_episodes
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
from stages.core.validation import check_episodes, check_predicted_for

log = logging.getLogger(__name__)

LABEL_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
TASKS = ("semantic", "fss", "gfss", "panoptic")
Progress = Callable[[int, int], None] | None


# ----------------------------------------------------------------------------- inputs
def predictions_folder(pred: Path) -> Path:
    """A predictions folder, or the one an artifact's manifest names in outputs.predictions."""
    if not pred.exists():
        raise FssegError(
            f"prediction folder not found: {pred}; pass the --out folder of the predicting stage"
        )
    manifest = pred / MANIFEST_NAME
    if manifest.is_file():
        sub = json.loads(manifest.read_text()).get("outputs", {}).get("predictions")
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
        cm = ConfusionMatrix(num_classes)
        if stem not in preds:
            return cm.add_missed(gt, ignore_index)
        pred = read_label(preds[stem])
        _check_pair(pred, gt, preds[stem], str(gts[stem]))
        _check_ids(pred, gt, num_classes, ignore_index, preds[stem], str(gts[stem]))
        return cm.update(pred, gt, ignore_index)

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
    return metrics, rows, {"confusion_matrix.png": _confusion_png(names, total.matrix)}, "miou"


# ----------------------------------------------------------------------------- fss / gfss
def _episode_inputs(episodes_path: Path, root: Path | None):
    doc = read_episodes(episodes_path)
    dataset = open_dataset(doc["dataset"], root or doc["root"], doc["split"])
    check_episodes(doc, dataset, episodes_path)
    return doc, dataset


def _binary_gt(label: np.ndarray, cls: int, ignore: int) -> np.ndarray:
    return np.where(label == ignore, 255, (label == cls).astype(np.uint8)).astype(np.uint8)


def _resize_nearest(label: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return label
    import cv2

    return cv2.resize(label, (size, size), interpolation=cv2.INTER_NEAREST)


def _fss(pred_dir, episodes_path, *, root, resize_gt, missing_as_empty, workers, on_progress):
    doc, dataset = _episode_inputs(episodes_path, root)
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
        gt = _resize_nearest(_binary_gt(dataset.load_label(sample), episode["class"], ignore), resize_gt)
        path = pred_dir / names[i]
        pred = (read_label(path) > 0) if path.is_file() else np.zeros(gt.shape, bool)
        _check_pair(pred, gt, path, f"{sample.label} (episode {i})")
        meter = FssMeter()
        meter.update(pred, gt, episode["class"], 255)
        return meter

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
    doc, dataset = _episode_inputs(episodes_path, root)
    protocol = doc["protocol"]
    if protocol == "fss":
        raise FssegError(
            f"{episodes_path} holds fss episodes; make gfss ones with `fsseg data episodes --protocol "
            f"gfss` (or gfss-binary)"
        )
    n_cls, ignore, bg = dataset.num_classes, dataset.ignore_index, dataset.background
    novel, base = doc["novel_classes"], doc["base_classes"]
    base_scored = ([bg] if bg is not None else []) + base
    n = len(doc["episodes"])
    files = [f"{i:05d}.png" for i in range(n)]
    if protocol == "gfss-binary":
        files += [f"{i:05d}_base.png" for i in range(n) if doc["episodes"][i].get("base_query")]
    missing = [f for f in files if not (pred_dir / f).is_file()]
    if missing and not missing_as_empty:
        raise _missing_error(missing, len(files), pred_dir)

    def class_ids(path: Path, gt: np.ndarray, name: str) -> ConfusionMatrix:
        cm = ConfusionMatrix(n_cls)
        if not path.is_file():
            return cm.add_missed(gt, ignore)
        pred = read_label(path)
        _check_pair(pred, gt, path, name)
        _check_ids(pred, gt, n_cls, ignore, path, name)
        return cm.update(pred, gt, ignore)

    def score(i: int) -> tuple[ConfusionMatrix, FssMeter]:
        episode, meter = doc["episodes"][i], FssMeter()
        sample = dataset.sample(episode["query"])
        label = dataset.load_label(sample)
        if protocol == "gfss":
            return class_ids(pred_dir / files[i], label, f"{sample.label} (episode {i})"), meter
        gt = _binary_gt(label, episode["class"], ignore)
        path = pred_dir / files[i]
        pred = (read_label(path) > 0) if path.is_file() else np.zeros(gt.shape, bool)
        _check_pair(pred, gt, path, f"{sample.label} (episode {i})")
        meter.update(pred, gt, episode["class"], 255)
        if not episode.get("base_query"):
            return ConfusionMatrix(n_cls), meter
        base_sample = dataset.sample(episode["base_query"])
        base_label = dataset.load_label(base_sample)
        # novel pixels of a base image: background at pretraining time, or unscored without one
        base_label = np.where(np.isin(base_label, novel), bg if bg is not None else ignore, base_label)
        return class_ids(
            pred_dir / f"{i:05d}_base.png", base_label.astype(np.uint8), str(base_sample.label)
        ), meter

    cm, meter = _parallel_sum(score, range(n), (ConfusionMatrix(n_cls), FssMeter()), workers, on_progress)
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
        "num_episodes": n,
        "num_missing": len(missing),
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
        {"confusion_matrix.png": _confusion_png(dataset.class_names, cm.matrix)},
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


def _panoptic(pred_dir, gt_dir, *, panoptic_format, dataset_name, missing_as_empty, workers, on_progress):
    if gt_dir is None:
        raise FssegError("--gt is required for --task panoptic")
    if panoptic_format == "coco":
        gt_coco = load_coco_panoptic(gt_dir)
        if not gt_coco.categories:
            raise FssegError(f"{gt_coco.json_path} lists no categories; the ground truth must list them")
        pred_coco = load_coco_panoptic(pred_dir, need_categories=False)  # categories: the ground truth's
        categories = {c: bool(info.get("isthing", 0)) for c, info in gt_coco.categories.items()}
        names = {c: str(info.get("name", c)) for c, info in gt_coco.categories.items()}
        gt_entries, pred_entries = gt_coco.entries, pred_coco.entries  # paired by image_id

        def load(entries, key):
            return read_coco_png(*entries[key])

        def png_of(entries, key) -> Path:
            return entries[key][0]

        def json_of(side: str) -> Path:
            return (gt_coco if side == "ground-truth" else pred_coco).json_path
    elif panoptic_format == "cityscapes":
        if dataset_name not in PANOPTIC_CATEGORIES:
            raise FssegError(
                f"--dataset {dataset_name!r} has no panoptic categories; use one of "
                f"{', '.join(PANOPTIC_CATEGORIES)} or --format coco"
            )
        categories, names = PANOPTIC_CATEGORIES[dataset_name]
        gt_entries = _cityscapes_form_files(gt_dir, "ground-truth")
        pred_entries = _cityscapes_form_files(pred_dir, "prediction")

        def load(entries, key):
            return read_instance_ids(entries[key], categories)

        def png_of(entries, key) -> Path:
            return entries[key]

        def json_of(side: str) -> Path:  # never needed: Cityscapes-form ids carry their categories
            return gt_dir if side == "ground-truth" else pred_dir
    else:
        raise FssegError(f"--format {panoptic_format!r} is not one of cityscapes, coco")
    missing = [k for k in gt_entries if k not in pred_entries]
    if missing and not missing_as_empty:
        if panoptic_format == "coco":
            raise _coco_missing_error(missing, gt_coco, pred_coco)
        raise _missing_error(missing, len(gt_entries), pred_dir)
    known = f"the ground truth's {len(categories)} categories (ids {min(categories)}..{max(categories)})"

    def score(key) -> PanopticQuality:
        gt = load(gt_entries, key)
        if key not in pred_entries:
            return PanopticQuality().update(gt, PanopticImage(np.zeros_like(gt.ids), {}))
        pred = load(pred_entries, key)
        pred_png = png_of(pred_entries, key)
        if pred.ids.shape != gt.ids.shape:
            raise FssegError(
                f"panoptic prediction {pred_png} is {pred.ids.shape[1]}x{pred.ids.shape[0]} but its "
                f"ground truth is {gt.ids.shape[1]}x{gt.ids.shape[0]}; predict at the ground-truth size"
            )
        for sid, cat in pred.categories.items():
            if cat not in categories:
                raise FssegError(
                    f"{pred_png}: segment {sid} has category_id {cat}, which is not among {known}; "
                    f"use the ground truth's category ids"
                )
        try:
            return PanopticQuality().update(gt, pred, require_listed=True)
        except SegmentListError as err:
            png = png_of(gt_entries if err.side == "ground-truth" else pred_entries, key)
            if err.problem == "absent":
                raise FssegError(
                    f"{png}: segment {err.segment_id} is listed in segments_info but absent from the PNG; "
                    f"drop it from segments_info or draw it in the PNG"
                ) from None
            raise FssegError(
                f"{png}: segment id {err.segment_id} is in the PNG but not in its segments_info in "
                f"{json_of(err.side)}; list every segment id of the PNG in the JSON"
            ) from None

    pq = _parallel_sum(score, list(gt_entries), PanopticQuality(), workers, on_progress)
    res = pq.results(categories)
    metrics = {"num_images": len(gt_entries), "num_missing": len(missing), "format": panoptic_format}
    for group in ("all", "things", "stuff"):
        metrics[group] = {k: _pct(v) for k, v in res[group].items() if k != "n"} | {"n": res[group]["n"]}
    metrics["pq"], metrics["sq"], metrics["rq"] = (metrics["all"][k] for k in ("pq", "sq", "rq"))
    rows = []
    for c, thing in categories.items():
        r = res["per_class"][c]
        rows.append(
            {
                "class_id": c,
                "name": names[c],
                "kind": "thing" if thing else "stuff",
                "pq": _pct(r["pq"]) if r else None,
                "sq": _pct(r["sq"]) if r else None,
                "rq": _pct(r["rq"]) if r else None,
                "tp": r["tp"] if r else 0,
                "fp": r["fp"] if r else 0,
                "fn": r["fn"] if r else 0,
            }
        )
    return metrics, rows, {"pq_breakdown.png": _pq_breakdown_png(metrics)}, "pq"


# ----------------------------------------------------------------------------- charts
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return buf.getvalue()


def _bar_chart_png(
    names: Sequence[str], values: Sequence[float | None], label: str, mean: float | None
) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2), dpi=110)
    vals = [0.0 if v is None else v for v in values]
    ax.barh(range(len(names)), vals, color="#3b7dd8")
    for i, v in enumerate(values):
        ax.text((v or 0) + 1, i, "n/a" if v is None else f"{v:.1f}", va="center", fontsize=8)
    if mean is not None:
        ax.axvline(mean, color="#d8453b", linestyle="--", label=f"mean {mean:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel(f"{label} (%)")
    fig.tight_layout()
    return _png(fig)


def _confusion_png(names: Sequence[str], matrix: np.ndarray) -> bytes:
    plt = _pyplot()
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, np.maximum(rows, 1), dtype=np.float64)
    n = len(names)
    size = min(12, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=110)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if norm[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of ground-truth row")
    ax.set_title("confusion matrix (row-normalised)")
    fig.tight_layout()
    return _png(fig)


def _pq_breakdown_png(metrics: dict) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    groups = ["all", "things", "stuff"]
    for k, key in enumerate(("pq", "sq", "rq")):
        vals = [metrics[g][key] or 0 for g in groups]
        bars = ax.bar(np.arange(3) + (k - 1) * 0.27, vals, width=0.27, label=key.upper())
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(3), groups)
    ax.set_ylim(0, 110)
    ax.set_ylabel("%")
    ax.legend(fontsize=8, ncol=3)
    ax.set_title("panoptic quality")
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------- stage
def run_evaluate(
    pred_dir: str | Path,
    out_dir: str | Path,
    *,
    task: str = "semantic",
    gt_dir: str | Path | None = None,
    episodes: str | Path | None = None,
    root: str | Path | None = None,
    num_classes: int | None = None,
    ignore_index: int = 255,
    class_names: Sequence[str] | None = None,
    panoptic_format: str = "cityscapes",
    dataset: str = "cityscapes",
    resize_gt: int | None = None,
    missing_as_empty: bool = False,
    num_workers: int = 0,
    overwrite: bool = False,
    on_progress: Progress = None,
) -> Path:
    """Score `pred_dir` for `task`; returns the metrics artifact folder."""
    if task not in TASKS:
        raise FssegError(f"--task {task!r} is not one of {', '.join(TASKS)}")
    pred_dir = predictions_folder(Path(pred_dir))
    gt_dir = Path(gt_dir) if gt_dir is not None else None
    if task in ("fss", "gfss") and episodes is None:
        raise FssegError(f"--episodes is required for --task {task} (make one with `fsseg data episodes`)")
    if gt_dir is not None and not gt_dir.is_dir():
        raise FssegError(f"ground-truth folder not found: {gt_dir}; check --gt")
    if episodes is not None and not Path(episodes).is_file():
        raise FssegError(f"episodes file not found: {episodes}; make one with `fsseg data episodes`")
    if task in ("fss", "gfss"):
        check_predicted_for(pred_dir, episodes)
    names: list[str] = []
    if task == "semantic" and num_classes is not None:
        if num_classes < 1:
            raise FssegError(f"--num-classes must be at least 1, got {num_classes}")
        names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        if len(names) != num_classes:
            raise FssegError(
                f"--class-names gives {len(names)} names but --num-classes is {num_classes}; make them agree"
            )
    params: dict[str, Any] = {"task": task, "missing_as_empty": missing_as_empty}
    inputs: list[Path] = [pred_dir]
    if task == "semantic":
        params |= {"num_classes": num_classes, "ignore_index": ignore_index, "class_names": names}
        inputs += [gt_dir] if gt_dir else []
    elif task in ("fss", "gfss"):
        params |= {"root": str(root) if root else None, "resize_gt": resize_gt}
        inputs += [Path(episodes)]
    else:
        params |= {"format": panoptic_format, "dataset": dataset}
        inputs += [gt_dir] if gt_dir else []
    with open_artifact(
        out_dir, kind="metrics", stage="evaluate", params=params, inputs=inputs, overwrite=overwrite
    ) as art:
        if art.up_to_date:
            return art.path
        common = {"missing_as_empty": missing_as_empty, "workers": num_workers, "on_progress": on_progress}
        if task == "semantic":
            metrics, rows, charts, headline = _semantic(
                pred_dir, gt_dir, num_classes=num_classes, ignore_index=ignore_index, names=names, **common
            )
        elif task == "fss":
            metrics, rows, charts, headline = _fss(
                pred_dir, Path(episodes), root=root, resize_gt=resize_gt, **common
            )
        elif task == "gfss":
            metrics, rows, charts, headline = _gfss(pred_dir, Path(episodes), root=root, **common)
        else:
            metrics, rows, charts, headline = _panoptic(
                pred_dir, gt_dir, panoptic_format=panoptic_format, dataset_name=dataset, **common
            )
        metrics = {"task": task, "units": "percent", "headline": headline, **metrics, "per_class": rows}
        value_key = "pq" if task == "panoptic" else "iou"
        charts["per_class.png"] = _bar_chart_png(
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
