"""`fsseg predict-panoptic`: panoptic predictions of a train-panoptic model for a dataset split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsseg_cli.console import handles_errors, progress, say, setup_logging
from fsseg_cli.label_gen import PanopticDataset, Root, dataset_root
from fsseg_cli.options import Out, Overwrite, Quiet, Verbose
from fsseg_cli.params import derive
from stages.params import PredictPanopticParams

HELP = (
    "Panoptic predictions of a train-panoptic model for every image of a split.\n\n"
    "[bold]Reads[/]: --checkpoint (checkpoints/best.pt or last.pt of `fsseg train-panoptic`) and --split of "
    "--dataset at --root.\n\n"
    "[bold]Writes[/] (--out): the forms pseudo-label writes: cityscapes/<id>_gtFine_{labelIds,instanceIds}.png, "
    "panoptic/<id>.png + panoptic.json (COCO panoptic), semantic/<id>.png, preview/<id>.jpg, manifest.json; for "
    "`fsseg evaluate --task panoptic`. Resumable; shards images across ranks under torchrun."
)


@handles_errors
@derive(params=PredictPanopticParams)
def predict_panoptic(
    out: Out,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A train-panoptic checkpoint.")],
    dataset: Annotated[PanopticDataset, typer.Option("--dataset", help="Dataset layout.")],
    root: Root = None,
    params: PredictPanopticParams = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    from stages.predict_panoptic import run_predict_panoptic

    with progress("predicting", quiet) as on_progress:
        path = run_predict_panoptic(
            out,
            checkpoint=checkpoint,
            dataset=dataset,
            root=dataset_root(dataset, root),
            params=params,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    from stages.core.artifacts import read_manifest

    images = read_manifest(path)["outputs"]["images"]
    say(f"{images} panoptic predictions -> {path}")
