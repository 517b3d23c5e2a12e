#!/usr/bin/env bash
# IMR-HSNet on real COCO images with image-label supervision (README "IMR-HSNet on COCO-mini").
# About 37 minutes on a 2-core CPU in fp32. COCO-20i fold 1 of ../shared/data/coco-mini: the
# models train on the base classes of train2017 (32 classes the offline ImageNet CAM backend
# knows, ground-truth masks as targets, CAMs as the initial masks), and are tested on val2017's
# novel classes that backend knows and two or more images show (9 classes, 200 one-shot
# episodes, seed 0). Every row below is scored on the same episodes:
#   cam-only      each query's own CAM mask (the input IMR starts from)
#   hsnet-label   HSNet, one pass from the support's CAM mask (the paper's HSNet + CAM row)
#   hsnet-mutual  HSNet, query -> support -> query (steps t1, t2)
#   imr-label     IMR-HSNet, steps t1..t3 (the last step is the prediction)
# The same rows on episodes of the training images and classes (seen/) show what the models fit.
set -euo pipefail
FSSEG=${FSSEG:-.venv/bin/fsseg}
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/coco-mini}
OUT=${OUT:-runs/coco-imr}
PRECISION=${PRECISION:-auto}
EPOCHS=${EPOCHS:-8}
FOLD=1
COMMON=(--dataset coco --root "$DATA" --split train2017 --fold $FOLD --backbone efficientnet_lite0
        --img-size 256 --batch-size 4 --epochs "$EPOCHS" --precision "$PRECISION" --seed 0)

$FSSEG clip-cam --dataset coco --root "$DATA" --split train2017 --backend imagenet --cam-size 32 --out "$OUT/cams-train" -q
$FSSEG clip-cam --dataset coco --root "$DATA" --split val2017 --backend imagenet --cam-size 32 --out "$OUT/cams-val" -q
$FSSEG pretrain --method imr-hsnet --cams "$OUT/cams-train" --steps 3 --lambda-t 1,1,1 "${COMMON[@]}" --out "$OUT/imr" -q
$FSSEG pretrain --method hsnet "${COMMON[@]}" --out "$OUT/hsnet" -q

# episodes DEST SPLIT FOLD CAMS: 200 one-shot episodes, kept where query and support have a CAM
episodes() {
  $FSSEG data episodes coco --root "$DATA" --split "$2" --fold "$3" --n 200 --seed 0 --out "$1/episodes-all.json" -q
  "$PY" examples/episode_preds.py with-cams "$1/episodes-all.json" "$4" "$1/episodes.json"
}
refine() {  # dir cams name checkpoint refiner steps
  $FSSEG refine --checkpoint "$OUT/$4" --episodes "$1/episodes.json" --cams "$2" --refiner "$5" \
    --steps "$6" --supervision label --img-size 256 --precision "$PRECISION" --out "$1/$3" -q
  for t in $(seq 1 "$6"); do
    "$PY" examples/episode_preds.py step "$1/$3" "$t" "$1/$3/step$t/pred"
    $FSSEG evaluate --task fss --pred "$1/$3/step$t/pred" --episodes "$1/episodes.json" --out "$1/$3/step$t/eval" -q
  done
}
rows() {  # dir cams: every row of the table on the episodes of dir
  refine "$1" "$2" hsnet-label hsnet none 1
  refine "$1" "$2" hsnet-mutual hsnet mutual 2
  refine "$1" "$2" imr-label imr imr 3
  # the CAMs alone: each query's own CAM mask, on the same episodes
  "$PY" examples/episode_preds.py cam "$1/episodes.json" "$2" "$1/cam-only/pred"
  $FSSEG evaluate --task fss --pred "$1/cam-only/pred" --episodes "$1/episodes.json" --out "$1/cam-only/eval" -q
  "$PY" examples/imr_table.py "$1"
}
# the result: novel classes (fold 1) on val2017
mkdir -p "$OUT/novel" "$OUT/seen"
episodes "$OUT/novel" val2017 $FOLD "$OUT/cams-val"
rows "$OUT/novel" "$OUT/cams-val"
# the diagnosis: classes the models trained on (fold 0's are base classes of fold 1), on the
# training images themselves: what the models fit, apart from what they generalise
episodes "$OUT/seen" train2017 0 "$OUT/cams-train"
rows "$OUT/seen" "$OUT/cams-train"
