"""`fsseg evaluate`: scores and charts for predictions of any stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsseg_cli.console import console, handles_errors, progress, setup_logging
from fsseg_cli.options import Out, Overwrite, Quiet, Verbose
from fsseg_cli.params import derive
from stages.params import EvaluateParams

HELP = (
    "Score predictions against ground truth.\n\n"
    "[bold]semantic[/]: --pred and --gt folders of label PNGs paired by file name (pixel = class id); "
    "mIoU, pixel accuracy, confusion matrix.\n\n"
    "[bold]fss[/]: --pred holds <episode index:05d>.png (non-zero = foreground) for the episodes of --episodes; "
    "mIoU and FB-IoU as in HSNet, plus the example-wise mean.\n\n"
    "[bold]gfss[/]: --pred holds <index:05d>.png class-id maps (standard protocol) or binary query masks plus "
    "<index:05d>_base.png (gfss-binary); base / novel / mean / harmonic mIoU.\n\n"
    "[bold]panoptic[/]: --pred and --gt in Cityscapes form (*_instanceIds.png) or COCO panoptic (one JSON + "
    "PNG folder); PQ, SQ, RQ for all, things, stuff and per class.\n\n"
    "[bold]Writes[/] (--out): metrics.json (percent), per_class.csv, per_class.png, confusion_matrix.png or "
    "pq_breakdown.png, manifest.json.\n\n"
    "[bold]Example[/]: fsseg evaluate --task semantic --pred preds/ --gt camvid/valannot --num-classes 11 "
    "--ignore-index 11 --out runs/eval"
)

_HEADLINES = {
    "semantic": ("mIoU", "miou", "pixel accuracy", "pixel_accuracy"),
    "fss": ("mIoU", "miou", "FB-IoU", "fb_iou"),
    "gfss": ("base mIoU", "base_miou", "novel mIoU", "novel_miou"),
    "panoptic": ("PQ", "pq", "SQ", "sq"),
}


@handles_errors
@derive(params=EvaluateParams)
def evaluate(
    pred: Annotated[
        Path, typer.Option("--pred", help="Predictions: a folder, or the artifact of the predicting stage.")
    ],
    out: Out,
    gt: Annotated[Path | None, typer.Option("--gt", help="Ground-truth folder (semantic, panoptic).")] = None,
    episodes: Annotated[
        Path | None, typer.Option("--episodes", help="fss/gfss: episodes JSON from `fsseg data episodes`.")
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option("--root", help="fss/gfss: dataset folder, if it moved since the episodes were made."),
    ] = None,
    params: EvaluateParams = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    import json

    from stages.evaluate import run_evaluate

    with progress("scoring", quiet) as on_progress:
        path = run_evaluate(
            pred, out, gt_dir=gt, episodes=episodes, root=root, params=params, overwrite=overwrite,
            on_progress=on_progress,
        )  # fmt: skip
    task = params.task
    metrics = json.loads((path / "metrics.json").read_text())
    first, first_key, second, second_key = _HEADLINES[task]
    count = metrics.get("num_images", metrics.get("num_episodes"))
    unit = "images" if "num_images" in metrics else "episodes"

    def fmt(v):
        return "n/a" if v is None else f"{v:.2f}"

    extra = f"  harmonic {fmt(metrics['harmonic_miou'])}" if task == "gfss" else ""
    console.print(
        f"{first} {fmt(metrics[first_key])}  {second} {fmt(metrics[second_key])}{extra}  ({count} {unit}) -> "
        f"{path / 'metrics.json'}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
