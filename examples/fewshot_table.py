"""Print the few-shot results of examples/fewshot_imagenet.sh as one markdown table (mean over the
folds that gave episodes; "none": a fold without results)."""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1])


def metrics(name: str) -> dict | None:
    path = out / name / "eval" / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


print("| data | shots | mIoU | FB-IoU | per fold (mIoU) |")
print("|---|---|---|---|---|")
for data, folds in (("fss1000", [None]), ("camvid", [0, 1, 2, 3]), ("coco", [0, 1, 2, 3])):
    for shots in (1, 5):
        names = [f"{data}-{shots}shot" if f is None else f"{data}-f{f}-{shots}shot" for f in folds]
        runs = [r for r in map(metrics, names) if r is not None]
        if not runs:
            print(f"| {data} | {shots} | none | | |")
            continue
        miou = sum(r["miou"] for r in runs) / len(runs)
        fb = sum(r["fb_iou"] for r in runs) / len(runs)
        per_fold = " / ".join(f"{r['miou']:.1f}" if r else "none" for r in map(metrics, names))
        print(f"| {data} | {shots} | {miou:.2f} | {fb:.2f} | {per_fold if len(names) > 1 else ''} |")
