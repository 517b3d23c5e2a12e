"""`fsseg finetune-episode`: per-episode classifiers on a frozen PSPNet (transfer-learning FSS / GFSS)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsseg_cli.console import handles_errors, progress, say, setup_logging
from fsseg_cli.options import Out, Overwrite, Quiet, Verbose
from fsseg_cli.params import derive
from stages.params import FinetuneParams

HELP = (
    "Per-episode classifiers on a frozen PSPNet (transfer-learning FSS and GFSS, the GFSS report).\n\n"
    "[bold]Reads[/]: --checkpoint (fsseg pretrain --method pspnet) and --episodes (fss, gfss-binary or gfss).\n\n"
    "[bold]Writes[/] (--out): pred/<episode>.png (and <episode>_base.png for gfss-binary) for `fsseg evaluate "
    "--task fss|gfss`, episodes/<episode>.json, manifest.json.\n\n"
    "[bold]fss[/]: 2-way classifier, cross-entropy. [bold]gfss[/]: (|base|+2)-way, base rows from the pretrained "
    "classifier, reformulated CE (Eq. 4-5) + --gamma x distillation (Eq. 6-7). --batch-episodes classifiers are "
    "trained at once, features cached per image."
)


@handles_errors
@derive(params=FinetuneParams)
def finetune_episode(
    out: Out,
    checkpoint: Annotated[
        Path,
        typer.Option(
            "--checkpoint",
            help="PSPNet checkpoint from fsseg pretrain (file, or its output folder: best.pt).",
        ),
    ],
    episodes: Annotated[Path, typer.Option("--episodes", help="Episodes JSON (fsseg data episodes).")],
    root: Annotated[Path | None, typer.Option("--root", help="Dataset folder, if it moved.")] = None,
    params: FinetuneParams = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    from stages.finetune_episode import run_finetune_episode

    with progress("episodes", quiet) as on_progress:
        path = run_finetune_episode(
            out,
            checkpoint=checkpoint,
            episodes=episodes,
            root=root,
            params=params,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    from stages.core.artifacts import read_manifest

    outputs = read_manifest(path)["outputs"]
    say(f"{outputs['count']} episodes -> {path / outputs['predictions']}")
