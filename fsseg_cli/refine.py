"""`fsseg refine`: few-shot masks by IMR-HSNet and its HSNet baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsseg_cli.console import handles_errors, progress, say, setup_logging
from fsseg_cli.options import Out, Overwrite, Query, Quiet, Support, Verbose
from fsseg_cli.params import derive
from stages.params import RefineParams

HELP = (
    "Few-shot masks by iterative mutual refinement of support and query masks (IMR-HSNet), or the HSNet "
    "baselines.\n\n"
    "[bold]Benchmark mode[/]: --episodes FILE --checkpoint C [--cams ART] writes pred/<episode>.png for "
    "`fsseg evaluate --task fss`.\n\n"
    "[bold]Ad-hoc mode[/]: --support DIR --query DIR --label TEXT (supports described by the label: their CAMs "
    "come from --cams or are computed), or --support-masks DIR for pixel-labelled supports.\n\n"
    "[bold]Writes[/] (--out): pred/ or masks/ (0/1 PNGs), steps/tN/{query,support}/, overlays/ (masks step by "
    "step), manifest.json.\n\n"
    "[bold]Checkpoints[/]: fsseg's (`fsseg pretrain`) or the authors' released HSNet / IMR-HSNet state dicts."
)


@handles_errors
@derive(params=RefineParams)
def refine(
    out: Out,
    checkpoint: Annotated[
        Path,
        typer.Option(
            "--checkpoint",
            help="fsseg checkpoint (file, or the fsseg pretrain folder: its best.pt) or the authors' state dict.",
        ),
    ],
    episodes: Annotated[
        Path | None, typer.Option("--episodes", help="Benchmark mode: episodes JSON.")
    ] = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="Dataset folder, if it moved since the episodes were made.")
    ] = None,
    support: Support = None,
    query: Query = None,
    label: Annotated[str | None, typer.Option("--label", help="Ad-hoc mode: the class name.")] = None,
    support_masks: Annotated[
        Path | None, typer.Option("--support-masks", help="Pixel masks of the supports (same stems).")
    ] = None,
    cams: Annotated[
        Path | None, typer.Option("--cams", help="clip-cam artifact with the initial masks.")
    ] = None,
    params: RefineParams = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    from stages.refine import run_refine

    with progress("episodes", quiet) as on_progress:
        path = run_refine(
            out,
            checkpoint=checkpoint,
            episodes=episodes,
            root=root,
            support=support,
            query=query,
            label=label,
            support_masks=support_masks,
            cams=cams,
            params=params,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    from stages.core.artifacts import read_manifest

    outputs = read_manifest(path)["outputs"]
    say(f"{outputs['episodes']} episodes -> {path / outputs['predictions']} (overlays: {path / 'overlays'})")
