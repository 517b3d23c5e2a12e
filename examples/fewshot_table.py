"""Print the few-shot results of examples/fewshot_imagenet.sh as one markdown table (mean over folds)."""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1])


def metrics(name: str) -> dict:
    return json.loads((out / name / "eval" / "metrics.json").read_text())


print("| data | shots | mIoU | FB-IoU | per fold (mIoU) |")
print("|---|---|---|---|---|")
for data, folds in (("fss1000", [None]), ("camvid", [0, 1, 2, 3]), ("coco", [0, 1, 2, 3])):
    for shots in (1, 5):
        runs = [metrics(f"{data}-{shots}shot" if f is None else f"{data}-f{f}-{shots}shot") for f in folds]
        miou = sum(r["miou"] for r in runs) / len(runs)
        fb = sum(r["fb_iou"] for r in runs) / len(runs)
        per_fold = " / ".join(f"{r['miou']:.1f}" for r in runs) if len(runs) > 1 else ""
        print(f"| {data} | {shots} | {miou:.2f} | {fb:.2f} | {per_fold} |")
