#!/usr/bin/env bash
# The CamVid SPINO experiment of the README (CPU, 2 cores).
# EfficientNet-Lite0 frozen features (real ImageNet weights; DINOv2 weights are not available offline).
# 1. label-gen on k=10 CamVid train images (seeded choice), pseudo-labels for the other 357 train images
#    and for val, their quality against the ground truth (semantic mIoU; PQ with connected components of
#    Car / Pedestrian / Bicyclist as instances, since CamVid has no instance ids);
# 2. the same heads trained on all 367 labelled train images (fully supervised reference; fewer epochs,
#    as 367 images give ~37x more steps per epoch);
# 3. train-panoptic on the train pseudo-labels with mixed batches; val PQ / mIoU.
# --min-segment 40: the paper's 500 px at 1024x2048, scaled to CamVid's 360x480.
# SIZE (label-gen --size; default the image's own height, the paper's) and TTA (pseudo-label
# --tta-scales; default 1) apply to both label generators, so the k=10 heads and the supervised
# reference always share their settings; the README's stronger row is SIZE=720 TTA=0.75,1,1.25.
set -euo pipefail
FSSEG=${FSSEG:-.venv/bin/fsseg}
DATA=${DATA:-../shared/data/camvid}
OUT=${OUT:-runs/camvid-spino}
EPOCHS=${EPOCHS:-4}
SIZE=${SIZE:-}
TTA=${TTA:-1}
common=(--backbone efficientnet_lite0 --device cpu -q ${SIZE:+--size "$SIZE"})
$FSSEG data panoptic-gt camvid --root "$DATA" --split val --out "$OUT/gt-val" -q
$FSSEG label-gen camvid --root "$DATA" --k 10 "${common[@]}" --out "$OUT/label-gen-k10"
$FSSEG label-gen camvid --root "$DATA" --k 367 --views 2 --epochs-semantic 10 --epochs-boundary 8 \
  "${common[@]}" --out "$OUT/label-gen-all"
for heads in k10 all; do
  $FSSEG pseudo-label camvid --root "$DATA" --heads "$OUT/label-gen-$heads" --split val --min-segment 40 \
    --tta-scales "$TTA" --device cpu -q --out "$OUT/pseudo-val-$heads"
  $FSSEG evaluate --task semantic --pred "$OUT/pseudo-val-$heads/semantic" --gt "$DATA/valannot" \
    --num-classes 11 --ignore-index 11 --out "$OUT/pseudo-val-$heads/eval-semantic" -q
  $FSSEG evaluate --task panoptic --dataset camvid --pred "$OUT/pseudo-val-$heads" --gt "$OUT/gt-val" \
    --out "$OUT/pseudo-val-$heads/eval-panoptic" -q
done
$FSSEG pseudo-label camvid --root "$DATA" --heads "$OUT/label-gen-k10" --min-segment 40 --tta-scales "$TTA" --device cpu -q \
  --out "$OUT/pseudo-train-k10"
$FSSEG train-panoptic --pseudo "$OUT/pseudo-train-k10" --backbone efficientnet_lite0 --epochs "$EPOCHS" \
  --batch-size 8 --val-split val --val-images 50 --device cpu -q --out "$OUT/panoptic-k10"
$FSSEG predict-panoptic --checkpoint "$OUT/panoptic-k10/checkpoints/best.pt" --dataset camvid \
  --root "$DATA" --split val --device cpu -q --out "$OUT/panoptic-k10-val"
$FSSEG evaluate --task panoptic --dataset camvid --pred "$OUT/panoptic-k10-val" --gt "$OUT/gt-val" \
  --out "$OUT/panoptic-k10-val/eval-panoptic" -q
$FSSEG evaluate --task semantic --pred "$OUT/panoptic-k10-val/semantic" --gt "$DATA/valannot" \
  --num-classes 11 --ignore-index 11 --out "$OUT/panoptic-k10-val/eval-semantic" -q
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def metric(path, key):
    m = json.loads((out / path / "metrics.json").read_text())
    return m[key] if key in m else m["metrics"][key]
print("| labels | semantic mIoU | PQ | SQ | RQ |")
print("|---|---|---|---|---|")
for name, run in (("pseudo-labels, k=10", "pseudo-val-k10"), ("heads on all 367 (supervised)", "pseudo-val-all"),
                  ("train-panoptic on k=10 pseudo-labels", "panoptic-k10-val")):
    row = [metric(f"{run}/eval-semantic", "miou")] + [metric(f"{run}/eval-panoptic", k) for k in ("pq", "sq", "rq")]
    print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
PY
