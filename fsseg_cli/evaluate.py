"""`fsseg evaluate`: scores and charts for a folder of predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from fsseg_cli.console import console, handles_errors, progress, setup_logging
from fsseg_cli.options import NumWorkers, Out, Overwrite, Quiet, Verbose

HELP = (
    "Score predicted label maps against ground truth.\n\n"
    "[bold]Reads[/]: --pred and --gt folders of label PNGs paired by file name (pixel value = class id; "
    "ground-truth pixels equal to --ignore-index are not scored).\n\n"
    "[bold]Writes[/] (--out): metrics.json (mIoU, pixel accuracy, mean class accuracy, per-class IoU, all in "
    "percent; the confusion matrix), per_class.csv, per_class_iou.png, confusion_matrix.png, manifest.json.\n\n"
    "[bold]Example[/]: fsseg evaluate --task semantic --pred preds/ --gt camvid/valannot --num-classes 11 "
    "--ignore-index 11 --out runs/eval"
)


def _class_names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [name.strip() for name in value.split(",")]


@handles_errors
def evaluate(
    pred: Annotated[
        Path, typer.Option("--pred", help="Folder of predicted label PNGs (same file names as --gt).")
    ],
    gt: Annotated[Path, typer.Option("--gt", help="Folder of ground-truth label PNGs.")],
    num_classes: Annotated[int, typer.Option("--num-classes", min=1, help="Number of classes (ids 0..N-1).")],
    out: Out,
    task: Annotated[Literal["semantic"], typer.Option("--task", help="What to score.")] = "semantic",
    ignore_index: Annotated[
        int, typer.Option("--ignore-index", help="Ground-truth id that is not scored.")
    ] = 255,
    class_names: Annotated[
        str | None,
        typer.Option(
            "--class-names", help="Class names: a text file (one per line) or a comma-separated list."
        ),
    ] = None,
    overwrite: Overwrite = False,
    num_workers: NumWorkers = 2,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    import json

    from stages.evaluate import run_evaluate

    with progress("scoring", quiet) as on_progress:
        path = run_evaluate(
            pred,
            gt,
            out,
            task=task,
            num_classes=num_classes,
            ignore_index=ignore_index,
            class_names=_class_names(class_names),
            num_workers=num_workers,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    metrics = json.loads((path / "metrics.json").read_text())
    console.print(
        f"mIoU {metrics['miou']:.2f}  pixel accuracy {metrics['pixel_accuracy']:.2f}  "
        f"({metrics['num_images']} images) -> {path / 'metrics.json'}",
        highlight=False,
        soft_wrap=True,
    )
