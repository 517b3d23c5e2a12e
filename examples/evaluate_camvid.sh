#!/usr/bin/env bash
# Score a prediction folder against CamVid's validation labels (here: the labels themselves,
# which must give mIoU 100). Run from the repository root after `make install`.
set -euo pipefail
DATA=${DATA:-../shared/data/camvid}
OUT=${OUT:-runs/eval-camvid}
.venv/bin/fsseg evaluate --task semantic --pred "$DATA/valannot" --gt "$DATA/valannot" \
  --num-classes 11 --ignore-index 11 \
  --class-names Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist \
  --out "$OUT"
