#!/usr/bin/env bash
# Few-shot segmentation with no pretraining stage (README "Few-shot masks without pretraining"):
# `fsseg finetune-episode` without --checkpoint, on the frozen offline EfficientNet-Lite0 (ImageNet),
# with its defaults, on the real data of ../shared/data:
#   FSS-1000 (eiffel, apple, basketball): every image the query once (25 images; 5-shot: 20, since
#     eiffel has 5 masked images and so no 5-shot episodes), the supports drawn from the others (seed 0);
#   CamVid folds 0-3 (val, 200 episodes per fold and shot count, seed 0, --min-area 512 as in camvid_gfss.sh);
#   COCO-mini folds 0-3 (val2017, 200 episodes, seed 0; classes without shots+1 images are skipped,
#     and a fold without any such class is skipped whole).
# Prints one markdown table. About an hour on a 2-core CPU. Run from the repository root.
set -euo pipefail
FSSEG=${FSSEG:-.venv/bin/fsseg}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/fewshot-imagenet}
mkdir -p "$OUT"

# FSS-1000 in its reader's layout (<class>/<N>.jpg + <N>.png), as links to the shared copies
FSS="$OUT/fss1000"
mkdir -p "$FSS/eiffel"
ln -sfn "$(realpath "$DATA/fss1000-mini/apple")" "$FSS/apple"
ln -sfn "$(realpath "$DATA/fss1000-mini/basketball")" "$FSS/basketball"
i=0
for image in "$DATA"/fss1000-eiffel/support/image/*.jpg; do
  i=$((i + 1))
  ln -sfn "$(realpath "$image")" "$FSS/eiffel/$i.jpg"
  ln -sfn "$(realpath "$DATA/fss1000-eiffel/support/label/$(basename "${image%.*}").png")" "$FSS/eiffel/$i.png"
done

run() {  # name dataset root n extra-episode-args...
  local name=$1 dataset=$2 root=$3 n=$4
  shift 4
  [ -f "$OUT/$name/eval/metrics.json" ] && return 0
  if ! $FSSEG data episodes "$dataset" --root "$root" --n "$n" --seed 0 "$@" --out "$OUT/$name.json" -q --overwrite; then
    echo "$name: no episodes (no class has enough images): skipped"
    return 0
  fi
  $FSSEG finetune-episode --episodes "$OUT/$name.json" --out "$OUT/$name" -q
  $FSSEG evaluate --task fss --pred "$OUT/$name" --episodes "$OUT/$name.json" --out "$OUT/$name/eval" -q
}
for shots in 1 5; do
  run "fss1000-${shots}shot" fss1000 "$FSS" $((shots == 1 ? 25 : 20)) --fold 0 --shots $shots --min-area 1
  for fold in 0 1 2 3; do
    run "camvid-f$fold-${shots}shot" camvid "$DATA/camvid" 200 --split val --fold $fold --shots $shots --min-area 512
    run "coco-f$fold-${shots}shot" coco "$DATA/coco-mini" 200 --split val2017 --fold $fold --shots $shots
  done
done
.venv/bin/python examples/fewshot_table.py "$OUT"
