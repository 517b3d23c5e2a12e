"""`fsseg finetune-episode`: per-episode classifiers on frozen PSPNet or ImageNet features (few-shot masks)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsseg_cli.console import handles_errors, progress, say, setup_logging
from fsseg_cli.options import Out, Overwrite, Query, Quiet, Support, Verbose
from fsseg_cli.params import derive
from stages.params import FinetuneParams

HELP = (
    "Few-shot masks from per-episode classifiers on frozen features: a PSPNet's (transfer-learning FSS and GFSS, "
    "the GFSS report), or, without --checkpoint, a plain ImageNet backbone's (no pretraining stage).\n\n"
    "[bold]Benchmark mode[/]: --episodes FILE (fss, gfss-binary or gfss) writes pred/<episode>.png (and "
    "<episode>_base.png for gfss-binary) for `fsseg evaluate --task fss|gfss`.\n\n"
    "[bold]Ad-hoc mode[/]: --support DIR --support-masks DIR --query DIR writes masks/<query>.png (0/1) and "
    "overlays/<query>.jpg; every support is a shot of every query. --support-masks may be a clip-cam artifact "
    "(its masks: supports described by a label).\n\n"
    "[bold]Writes[/] (--out): the masks, episodes/<episode>.json, manifest.json.\n\n"
    "[bold]fss[/]: 2-way classifier, cross-entropy; on ImageNet features it starts from the supports' cosine "
    "prototypes (--prototype-scale). [bold]gfss[/] (--checkpoint only): (|base|+2)-way, base rows from the "
    "pretrained classifier, reformulated CE (Eq. 4-5) + --gamma x distillation (Eq. 6-7). --batch-episodes "
    "classifiers are trained at once, features cached per image."
)


@handles_errors
@derive(params=FinetuneParams)
def finetune_episode(
    out: Out,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="PSPNet checkpoint from fsseg pretrain --method pspnet (file, or its output folder: best.pt); "
            "omit it to classify a frozen ImageNet --backbone's features.",
        ),
    ] = None,
    episodes: Annotated[
        Path | None, typer.Option("--episodes", help="Benchmark mode: episodes JSON (fsseg data episodes).")
    ] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Dataset folder, if it moved.")] = None,
    support: Support = None,
    support_masks: Annotated[
        Path | None,
        typer.Option(
            "--support-masks", help="Ad-hoc mode: the supports' masks (same stems), or a clip-cam artifact."
        ),
    ] = None,
    query: Query = None,
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
            support=support,
            support_masks=support_masks,
            query=query,
            params=params,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    from stages.core.artifacts import read_manifest

    outputs = read_manifest(path)["outputs"]
    seen = f" (overlays: {path / outputs['overlays']})" if "overlays" in outputs else ""
    say(f"{outputs['count']} episodes -> {path / outputs['predictions']}{seen}")
