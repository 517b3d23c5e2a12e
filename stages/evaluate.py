"""`fsseg evaluate`: score predicted label maps against ground truth.

Reads:  a folder of predicted label PNGs and a folder of ground-truth label PNGs, paired by
        file name (stem); ids are class ids, `ignore_index` in the ground truth is not scored.
Writes: `metrics.json` (scores in percent + the confusion matrix), `per_class.csv`,
        `per_class_iou.png`, `confusion_matrix.png`, `manifest.json` (kind "metrics").
Algorithm (task "semantic"): one confusion matrix over all pixels of all images
        (np.bincount per image, summed); IoU_c = TP / (TP + FP + FN); mIoU = mean over the
        classes present in prediction or ground truth; pixel accuracy = trace / total.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from stages.core.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text, open_artifact
from stages.core.errors import FssegError
from stages.core.imageio import read_label
from stages.core.metrics import ConfusionMatrix

log = logging.getLogger(__name__)

LABEL_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
TASKS = ("semantic",)


def _label_files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FssegError(f"{what} folder not found: {folder}; pass a folder of label PNGs")
    files = {
        p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in LABEL_EXTENSIONS
    }
    if not files:
        raise FssegError(f"no label images ({', '.join(LABEL_EXTENSIONS)}) in {what} folder {folder}")
    return files


def _pair(pred_dir: Path, gt_dir: Path) -> list[tuple[Path, Path]]:
    gts = _label_files(gt_dir, "ground-truth")
    preds = _label_files(pred_dir, "prediction")
    missing = [stem for stem in gts if stem not in preds]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FssegError(
            f"{len(missing)} of {len(gts)} ground-truth images have no prediction in {pred_dir} ({shown}); "
            f"predict them (same file name) or evaluate a ground-truth folder without them"
        )
    extra = len(set(preds) - set(gts))
    if extra:
        log.warning("%d predictions in %s have no ground truth and are not scored", extra, pred_dir)
    return [(preds[stem], gt) for stem, gt in gts.items()]


def confusion_of_pair(pred_path: Path, gt_path: Path, num_classes: int, ignore_index: int) -> ConfusionMatrix:
    """Confusion matrix of one prediction file against its ground truth, with input checks."""
    gt = read_label(gt_path)
    pred = read_label(pred_path)
    if pred.shape != gt.shape:
        raise FssegError(
            f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but ground truth {gt_path} is "
            f"{gt.shape[1]}x{gt.shape[0]}; predict at the ground-truth size"
        )
    bad_gt = (gt >= num_classes) & (gt != ignore_index)
    if bad_gt.any():
        ids = ", ".join(str(v) for v in np.unique(gt[bad_gt])[:5])
        raise FssegError(
            f"ground truth {gt_path} has label id(s) {ids} outside 0..{num_classes - 1} that are not the "
            f"ignore index {ignore_index}; check --num-classes and --ignore-index"
        )
    scored = gt != ignore_index
    bad_pred = scored & (pred >= num_classes)
    if bad_pred.any():
        ids = ", ".join(str(v) for v in np.unique(pred[bad_pred])[:5])
        raise FssegError(
            f"prediction {pred_path} has label id(s) {ids} outside 0..{num_classes - 1} at "
            f"{int(bad_pred.sum())} scored pixels; predictions must use the class ids 0..{num_classes - 1}"
        )
    return ConfusionMatrix(num_classes).update(pred, gt, ignore_index)


def _bar_chart_png(names: Sequence[str], iou: np.ndarray, miou: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2), dpi=110)
    values = np.nan_to_num(iou * 100, nan=0.0)
    ax.barh(range(len(names)), values, color="#3b7dd8")
    for i, v in enumerate(iou * 100):
        ax.text(
            min(np.nan_to_num(v), 100) + 1, i, "n/a" if np.isnan(v) else f"{v:.1f}", va="center", fontsize=8
        )
    ax.axvline(miou, color="#d8453b", linestyle="--", label=f"mIoU {miou:.1f}")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("IoU (%)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _confusion_png(names: Sequence[str], matrix: np.ndarray) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def run_evaluate(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out_dir: str | Path,
    *,
    task: str = "semantic",
    num_classes: int,
    ignore_index: int = 255,
    class_names: Sequence[str] | None = None,
    num_workers: int = 0,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Score `pred_dir` against `gt_dir`; returns the metrics artifact folder."""
    if task not in TASKS:
        raise FssegError(f"--task {task!r} is not one of {', '.join(TASKS)}")
    if num_classes < 1:
        raise FssegError(f"--num-classes must be at least 1, got {num_classes}")
    names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise FssegError(
            f"--class-names gives {len(names)} names but --num-classes is {num_classes}; make them agree"
        )
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    pairs = _pair(pred_dir, gt_dir)
    params = {"task": task, "num_classes": num_classes, "ignore_index": ignore_index, "class_names": names}
    with open_artifact(
        out_dir,
        kind="metrics",
        stage="evaluate",
        params=params,
        inputs=[pred_dir, gt_dir],
        overwrite=overwrite,
    ) as art:
        if art.up_to_date:
            return art.path

        def score(pair: tuple[Path, Path]) -> ConfusionMatrix:
            return confusion_of_pair(pair[0], pair[1], num_classes, ignore_index)

        total = ConfusionMatrix(num_classes)
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            for i, cm in enumerate(pool.map(score, pairs), 1):
                total = total + cm
                if on_progress is not None:
                    on_progress(i, len(pairs))

        iou, acc = total.iou(), total.class_accuracy()
        metrics = {
            "task": task,
            "num_images": len(pairs),
            "num_classes": num_classes,
            "ignore_index": ignore_index,
            "units": "percent",
            "miou": round(total.miou() * 100, 4),
            "pixel_accuracy": round(total.pixel_accuracy() * 100, 4),
            "mean_class_accuracy": round(total.mean_class_accuracy() * 100, 4),
            "per_class": {
                name: {
                    "iou": None if np.isnan(iou[c]) else round(float(iou[c]) * 100, 4),
                    "accuracy": None if np.isnan(acc[c]) else round(float(acc[c]) * 100, 4),
                    "gt_pixels": int(total.gt_pixels[c]),
                    "pred_pixels": int(total.pred_pixels[c]),
                }
                for c, name in enumerate(names)
            },
            "confusion_matrix": total.matrix.tolist(),
        }
        rows = io.StringIO()
        writer = csv.writer(rows)
        writer.writerow(["class_id", "name", "iou", "accuracy", "gt_pixels", "pred_pixels"])
        for c, name in enumerate(names):
            entry = metrics["per_class"][name]
            writer.writerow(
                [c, name, entry["iou"], entry["accuracy"], entry["gt_pixels"], entry["pred_pixels"]]
            )
        atomic_write_text(art.file("per_class.csv"), rows.getvalue())
        atomic_write_bytes(art.file("per_class_iou.png"), _bar_chart_png(names, iou, metrics["miou"]))
        atomic_write_bytes(art.file("confusion_matrix.png"), _confusion_png(names, total.matrix))
        atomic_write_json(art.file("metrics.json"), metrics)
        return art.finish(
            outputs={
                "metrics": "metrics.json",
                "per_class": "per_class.csv",
                "charts": ["per_class_iou.png", "confusion_matrix.png"],
                "summary": {
                    k: metrics[k] for k in ("miou", "pixel_accuracy", "mean_class_accuracy", "num_images")
                },
            },
            label_map={str(i): n for i, n in enumerate(names)},
        )
