"""`fsseg train-panoptic`: a Panoptic-DeepLab-style model trained on SPINO pseudo-labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsseg_cli.console import handles_errors, progress, say, setup_logging
from fsseg_cli.options import Out, Overwrite, Quiet, Verbose
from fsseg_cli.params import derive
from stages.params import TrainPanopticParams

HELP = (
    "Train a Panoptic-DeepLab-style model on pseudo-labels with mixed batches.\n\n"
    "[bold]Reads[/]: --pseudo (a pseudo-label artifact); the ground truth of the k annotated images it came from.\n\n"
    "[bold]Mixed batches[/]: each batch of size B >= 2 holds B-1 pseudo-labelled images and one ground-truth image; "
    "with B = 1, pseudo-labelled and ground-truth batches alternate. --no-mixed: pseudo-labels only.\n\n"
    "[bold]Writes[/] (--out): checkpoints/last.pt (resume state), checkpoints/best.pt, log.jsonl, loss.png, "
    "manifest.json; runs under torchrun (DDP). `fsseg predict-panoptic` writes the model's predictions.\n\n"
    "[bold]Defaults[/]: Panoptic-DeepLab losses (bootstrapped CE top 20%, center MSE x200 with sigma 8, offset L1 "
    "x0.01) and post-processing (center threshold 0.1, NMS 7, top-k 200, label divisor 1000); Adam 1e-3 poly."
)


@handles_errors
@derive(params=TrainPanopticParams)
def train_panoptic(
    out: Out,
    pseudo: Annotated[Path, typer.Option("--pseudo", help="pseudo-label artifact to train on.")],
    params: TrainPanopticParams = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    from stages.train_panoptic import run_train_panoptic

    with progress("train-panoptic", quiet) as on_progress:
        path = run_train_panoptic(
            out, pseudo=pseudo, params=params, overwrite=overwrite, on_progress=on_progress
        )
    from stages.core.artifacts import read_manifest

    o = read_manifest(path)["outputs"]
    best = o["best_val_pq"]
    say(
        f"trained on {o['pseudo_images']} pseudo-labelled + {o['ground_truth_images']} ground-truth images; best "
        f"val PQ {'n/a' if best is None else f'{best:.2f}'} -> {path / o['best']}"
    )
