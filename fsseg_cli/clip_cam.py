"""`fsseg clip-cam`: coarse masks from a class name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsseg_cli.console import fail, handles_errors, progress, say, setup_logging
from fsseg_cli.options import Out, Overwrite, Quiet, Verbose
from fsseg_cli.params import derive
from stages.params import ClipCamParams, DatasetName

HELP = (
    "Coarse masks from label text: a class activation map per image.\n\n"
    "[bold]Reads[/]: --images (a folder, a file or a glob) with --label, or --dataset/--root (one CAM per image "
    "and class present, as IMR training needs).\n\n"
    "[bold]Writes[/] (--out): cams/<id>.npy (float16, [0,1], original size), masks/<id>.png (0/1 at "
    "--threshold), overlays/<id>.jpg, scores.csv (a presence score per image), manifest.json.\n\n"
    "[bold]Absent labels[/]: a CAM always has a hot spot, so each image also gets a presence score; below "
    "--min-score the label is judged absent: its mask is left empty and its overlay grey (the CAM .npy is "
    "kept as computed).\n\n"
    "[bold]Backends[/]: clip (the paper's; open_clip --model/--pretrained), imagenet (EfficientNet-Lite0, "
    "offline), auto (clip when its weights are in the local cache, else imagenet).\n\n"
    "[bold]Example[/]: fsseg clip-cam --images photos/ --label dog --out runs/dog-cams"
)


@handles_errors
@derive(params=ClipCamParams)
def clip_cam(
    out: Out,
    images: Annotated[str | None, typer.Option("--images", help="Image folder, file or glob.")] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="Class name to find in every image (e.g. dog).")
    ] = None,
    dataset: Annotated[
        DatasetName | None,
        typer.Option("--dataset", help="Instead of --images: a dataset; one CAM per (image, class present)."),
    ] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Dataset folder (with --dataset).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Dataset split (with --dataset).")] = None,
    params: ClipCamParams = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    from stages.clip_cam import run_clip_cam
    from stages.core.artifacts import read_manifest

    with progress("CAMs", quiet) as on_progress:
        path = run_clip_cam(
            out,
            images=images,
            label=label,
            dataset=dataset,
            root=str(root) if root else None,
            split=split,
            params=params,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    manifest = read_manifest(path)
    outputs, resolved = manifest["outputs"], manifest["resolved"]
    n_ok = len(outputs["items"]) - len(outputs["failed"])
    absent = (
        f"{outputs['absent']} judged absent (presence < {resolved['min_score']:g}: empty masks)"
        if resolved["min_score"] > 0
        else "none judged absent (--min-score 0)"
    )
    say(
        f"{n_ok} CAMs ({resolved['backend']} {resolved['model']}, {params.method}), {absent} -> {path}/overlays"
    )
    if outputs["failed"]:
        for entry in outputs["failed"]:
            say(f"  failed: {entry['error']}")
        raise fail(f"{len(outputs['failed'])} image(s) could not be read (listed above); the others are done")
