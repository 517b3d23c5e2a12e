"""`fsseg pretrain`: train a few-shot segmenter (IMR-HSNet, HSNet or PSPNet) on a fold's base classes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from fsseg_cli.console import handles_errors, progress, say, setup_logging
from fsseg_cli.options import Out, Overwrite, Quiet, Verbose
from fsseg_cli.params import derive
from stages.params import PRETRAIN_METHODS, DatasetName, TrainParams

HELP = (
    "Train a few-shot segmenter on the base classes of a fold.\n\n"
    "[bold]--method imr-hsnet[/]: episodic IMR training from CAMs (--cams: a clip-cam artifact of the training "
    "images), loss of paper Eq. 7. [bold]--method hsnet[/]: the HSNet baseline with ground-truth support masks. "
    "[bold]--method pspnet[/]: PSPNet on background + base classes, CE with label smoothing + --contrastive x "
    "pixel InfoNCE (the GFSS report), SGD with cosine decay.\n\n"
    "[bold]Writes[/] (--out): checkpoints/last.pt (resume state), checkpoints/best.pt, log.jsonl, loss.png, "
    "manifest.json. Rerunning into an unfinished run continues from last.pt. Runs under torchrun (DDP).\n\n"
    "[bold]Defaults[/] are each method's paper settings (PASCAL), shown per method below; an option left "
    "out takes the chosen method's default."
)


@handles_errors
@derive(params=(PRETRAIN_METHODS, "method"))
def pretrain(
    out: Out,
    method: Annotated[
        Literal["imr-hsnet", "hsnet", "pspnet"], typer.Option("--method", help="What to train.")
    ],
    dataset: Annotated[DatasetName, typer.Option("--dataset", help="Dataset layout.")],
    root: Annotated[Path, typer.Option("--root", help="Dataset folder.")],
    cams: Annotated[
        Path | None, typer.Option("--cams", help="imr-hsnet: clip-cam artifact of the training images.")
    ] = None,
    val_episodes: Annotated[
        Path | None, typer.Option("--val-episodes", help="Fixed validation episodes (imr-hsnet, hsnet).")
    ] = None,
    val_cams: Annotated[
        Path | None, typer.Option("--val-cams", help="clip-cam artifact for the validation images.")
    ] = None,
    params: TrainParams = None,
    resume: Annotated[bool, typer.Option("--resume", help="Require an unfinished run to continue.")] = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    from stages.pretrain import run_pretrain

    with progress("training", quiet) as on_progress:
        path = run_pretrain(
            out,
            dataset=dataset,
            root=root,
            cams=cams,
            val_episodes=val_episodes,
            val_cams=val_cams,
            params=params,
            resume=resume,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    from stages.core.artifacts import read_manifest

    outputs = read_manifest(path)["outputs"]
    best = outputs["best_val_miou"]
    seen = (
        f"{outputs['training_pairs']} pairs"
        if "training_pairs" in outputs
        else f"{outputs['training_images']} images"
    )
    say(
        f"trained on {seen}; best val mIoU {'n/a' if best is None else f'{best:.2f}'} -> {path / outputs['best']}"
    )
