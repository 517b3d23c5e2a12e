"""Run under torchrun by test_imr.py: a few DDP training steps of a tiny IMR-HSNet."""

import sys

from stages.pretrain import run_pretrain

root, cams, out = sys.argv[1:4]
run_pretrain(
    out,
    method="imr-hsnet",
    dataset="pascal",
    root=root,
    split="all",
    fold=1,
    cams=cams,
    backbone="tiny",
    backbone_weights="random",
    tiny=True,
    img_size=64,
    epochs=2,
    batch_size=4,
    min_area=100,
    device="cpu",
)
