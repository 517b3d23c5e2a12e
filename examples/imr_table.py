"""The table of examples/coco_imr.sh: every row's scores on the same episodes, step by step.

Usage: python examples/imr_table.py RUN_DIR  (the script's OUT). Prints a Markdown table: mIoU,
FB-IoU, the share of query pixels predicted foreground, the mean IoU of the prediction with the
query's own CAM mask (how closely a row follows its input), and the per-class IoU.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROWS = [
    ("initial CAM mask (query's own)", "cam-only"),
    ("HSNet, support CAM", "hsnet-label/step1"),
    ("HSNet mutual, t1", "hsnet-mutual/step1"),
    ("HSNet mutual, t2 (query <- support <- query)", "hsnet-mutual/step2"),
    ("IMR-HSNet, step 1", "imr-label/step1"),
    ("IMR-HSNet, step 2", "imr-label/step2"),
    ("IMR-HSNet, step 3 (its prediction)", "imr-label/step3"),
]


def _mask(path: Path, shape=None) -> np.ndarray:
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0
    if shape is not None and m.shape != shape:
        m = cv2.resize(m.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    return m


def _follow(pred: Path, cams: Path) -> tuple[float, float]:
    """(mean foreground share, mean IoU with the CAM mask) over the episodes."""
    shares, ious = [], []
    for f in sorted(pred.glob("*.png")):
        p = _mask(f)
        c = _mask(cams / f.name, p.shape)
        shares.append(p.mean())
        union = (p | c).sum()
        ious.append((p & c).sum() / union if union else 1.0)
    return 100 * float(np.mean(shares)), 100 * float(np.mean(ious))


def main(run: Path) -> None:
    classes: list[str] = []
    lines = []
    for title, folder in ROWS:
        metrics = json.loads((run / folder / "eval" / "metrics.json").read_text())
        with open(run / folder / "eval" / "per_class.csv", newline="") as f:
            per_class = {r["name"]: float(r["iou"]) for r in csv.DictReader(f)}
        classes = classes or sorted(per_class)
        share, follow = _follow(run / folder / "pred", run / "cam-only" / "pred")
        cells = " / ".join(f"{per_class.get(c, float('nan')):.1f}" for c in classes)
        lines.append(
            f"| {title} | {metrics['miou']:.2f} | {metrics['fb_iou']:.2f} | {share:.1f} | {follow:.1f} | {cells} |"
        )
    print(f"episodes: {metrics['num_episodes']}; per class: {' / '.join(classes)}\n")
    print("| masks | mIoU | FB-IoU | foreground % | IoU with the CAM mask | per class |")
    print("|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
