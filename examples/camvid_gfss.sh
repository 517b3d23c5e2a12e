#!/usr/bin/env bash
# The CamVid transfer-learning FSS / GFSS experiment of the README (CPU, 2 cores: 45 minutes on a Xeon with AMX, about 90 on an AVX2-only CPU; the GFSS 5-shot runs are the longest).
# Fold 0 by default (novel: Sky, Pavement, Car; base: the 8 other classes + background, i.e. novel pixels);
# FOLD=2 gives the thin classes of the IMR experiment (Pole, SignSymbol, Bicyclist).
# Episodes use --min-area 512 (fold 2's Pole has only 4 val images with 2048 pixels, too few for 5-shot).
# PSPNet with an EfficientNet-Lite0 backbone (real ImageNet weights), pretrained without (lambda 0) and with
# the pixel contrastive loss, then per-episode classifiers for FSS and GFSS, 1-shot and 5-shot.
set -euo pipefail
FSSEG=${FSSEG:-.venv/bin/fsseg}
DATA=${DATA:-../shared/data/camvid}
OUT=${OUT:-runs/camvid-gfss}
SIZE=224
FOLD=${FOLD:-0}
for shots in 1 5; do
  n=$((shots == 1 ? 200 : 100))  # fewer 5-shot episodes: they cost five times as much on a CPU
  $FSSEG data episodes camvid --root "$DATA" --split val --fold $FOLD --shots $shots --n $n --seed 0 --min-area 512 \
    --out "$OUT/fss-${shots}shot.json"
  $FSSEG data episodes camvid --root "$DATA" --split val --fold $FOLD --shots $shots --n $n --seed 0 --min-area 512 --protocol gfss \
    --out "$OUT/gfss-${shots}shot.json"
done
for lambda in 0 0.1; do
  $FSSEG pretrain --method pspnet --dataset camvid --root "$DATA" --fold $FOLD --backbone efficientnet_lite0 \
    --img-size $SIZE --epochs 4 --batch-size 8 --contrastive $lambda --val-split val --val-images 50 \
    --out "$OUT/pspnet-lambda$lambda" -q
  for shots in 1 5; do
    for mode in fss gfss; do
      run="$OUT/lambda$lambda-$mode-${shots}shot"
      $FSSEG finetune-episode --checkpoint "$OUT/pspnet-lambda$lambda/checkpoints/best.pt" --mode $mode \
        --episodes "$OUT/$mode-${shots}shot.json" --img-size $SIZE --label-size 56 --out "$run" -q
      $FSSEG evaluate --task $mode --pred "$run" --episodes "$OUT/$mode-${shots}shot.json" --out "$run/eval" -q
    done
  done
done
