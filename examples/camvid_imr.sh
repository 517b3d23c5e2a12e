#!/usr/bin/env bash
# The CamVid IMR-HSNet experiment of the README (CPU, 2 cores: about 25 minutes on an AVX2-only CPU in fp32, 12 on a Xeon with AMX).
# Fold 2 holds out Pole, SignSymbol and Bicyclist: the CamVid classes whose labels the offline
# ImageNet CAM backend understands, so label-only supports can be tested; training uses the
# base classes that have CAMs too (Fence, Car). Backbone: EfficientNet-Lite0 (real ImageNet weights).
set -euo pipefail
FSSEG=${FSSEG:-.venv/bin/fsseg}
DATA=${DATA:-../shared/data/camvid}
OUT=${OUT:-runs/camvid-imr}
# PRECISION=auto (the default): bf16 where the CPU has bf16 units (AVX-512 BF16 / AMX), else fp32;
# pretrain keeps fp32 under auto everywhere (README, "Common options")
PRECISION=${PRECISION:-auto}
COMMON=(--dataset camvid --root "$DATA" --fold 2 --backbone efficientnet_lite0 --img-size 256 --batch-size 8
        --episodes-per-epoch 200 --epochs 3 --precision "$PRECISION")

$FSSEG clip-cam --dataset camvid --root "$DATA" --split train --backend imagenet --cam-size 90 --out "$OUT/cams-train" -q
$FSSEG clip-cam --dataset camvid --root "$DATA" --split val --backend imagenet --cam-size 90 --out "$OUT/cams-val" -q
$FSSEG data episodes camvid --root "$DATA" --split val --fold 2 --shots 1 --n 200 --seed 0 --out "$OUT/episodes.json"
$FSSEG pretrain --method imr-hsnet --cams "$OUT/cams-train" "${COMMON[@]}" --out "$OUT/imr" -q
$FSSEG pretrain --method hsnet "${COMMON[@]}" --out "$OUT/hsnet" -q
for refiner in none mutual imr; do
  ckpt="$OUT/hsnet/checkpoints/best.pt"; [ "$refiner" = imr ] && ckpt="$OUT/imr/checkpoints/best.pt"
  for supervision in label mask; do
    run="$OUT/refine-$refiner-$supervision"
    $FSSEG refine --checkpoint "$ckpt" --episodes "$OUT/episodes.json" --cams "$OUT/cams-val" --refiner "$refiner" \
      --supervision "$supervision" --img-size 256 --precision "$PRECISION" --out "$run" -q
    $FSSEG evaluate --task fss --pred "$run" --episodes "$OUT/episodes.json" --out "$run/eval" -q
  done
done
# the CAMs alone (no few-shot model): each query's own CAM mask, scored on the same episodes
.venv/bin/python examples/episode_preds.py cam "$OUT/episodes.json" "$OUT/cams-val" "$OUT/cam-only/pred"
$FSSEG evaluate --task fss --pred "$OUT/cam-only/pred" --episodes "$OUT/episodes.json" --out "$OUT/cam-only/eval" -q
