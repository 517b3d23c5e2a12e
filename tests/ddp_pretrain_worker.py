"""Run under torchrun by the DDP tests: a few training steps of a tiny model (IMR-HSNet or PSPNet)."""

import sys

from stages.pretrain import run_pretrain

method, root, cams, out = sys.argv[1:5]
common = dict(
    dataset="pascal",
    root=root,
    split="all",
    backbone="tiny",
    backbone_weights="random",
    tiny=True,
    img_size=64,
    epochs=2,
    batch_size=4,
    device="cpu",
)
if method == "imr-hsnet":
    run_pretrain(out, method=method, fold=1, cams=cams, min_area=100, **common)
else:
    run_pretrain(out, method=method, fold=0, contrastive=0.1, **common)
