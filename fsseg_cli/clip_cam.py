"""`fsseg clip-cam`: coarse masks from a class name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from fsseg_cli import options as opt
from fsseg_cli.console import fail, handles_errors, progress, say, setup_logging
from fsseg_cli.options import Device, NumWorkers, Out, Overwrite, Precision, Quiet, Seed, Verbose

HELP = (
    "Coarse masks from label text: a class activation map per image.\n\n"
    "[bold]Reads[/]: --images (a folder, a file or a glob) with --label, or --dataset/--root (one CAM per image "
    "and class present, as IMR training needs).\n\n"
    "[bold]Writes[/] (--out): cams/<id>.npy (float16, [0,1], original size), masks/<id>.png (0/1 at "
    "--threshold), overlays/<id>.jpg, manifest.json.\n\n"
    "[bold]Backends[/]: clip (the paper's; open_clip --model/--pretrained), imagenet (EfficientNet-Lite0, "
    "offline), auto (clip when its weights are in the local cache, else imagenet).\n\n"
    "[bold]Example[/]: fsseg clip-cam --images photos/ --label dog --out runs/dog-cams"
)

Panel = "Method"


@handles_errors
def clip_cam(
    out: Out,
    images: Annotated[str | None, typer.Option("--images", help="Image folder, file or glob.")] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="Class name to find in every image (e.g. dog).")
    ] = None,
    dataset: Annotated[
        Literal["pascal", "coco", "cityscapes", "camvid", "fss1000", "folder"] | None,
        typer.Option("--dataset", help="Instead of --images: a dataset; one CAM per (image, class present)."),
    ] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Dataset folder (with --dataset).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Dataset split (with --dataset).")] = None,
    backend: Annotated[
        Literal["auto", "clip", "imagenet"],
        typer.Option(
            "--backend", help="auto: clip when its weights are local, else imagenet.", rich_help_panel=Panel
        ),
    ] = "auto",
    model: Annotated[
        str, typer.Option("--model", help="open_clip model name.", rich_help_panel=Panel)
    ] = "RN50",
    pretrained: Annotated[
        str,
        typer.Option(
            "--pretrained",
            help="open_clip tag, a local checkpoint file, or none (random weights, for tests).",
            rich_help_panel=Panel,
        ),
    ] = "openai",
    score: Annotated[
        Literal["auto", "cosine", "softmax"],
        typer.Option(
            "--score",
            help="cosine with the prompt (paper text), or softmax over the prompts of --classes (authors' "
            "code); auto: softmax when a class list is known.",
            rich_help_panel=Panel,
        ),
    ] = "auto",
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            help="Class list for softmax: voc, coco, camvid or a file (one name per line).",
            rich_help_panel=Panel,
        ),
    ] = None,
    template: Annotated[
        str, typer.Option("--template", help="Prompt template.", rich_help_panel=Panel)
    ] = "a photo of a {}.",
    ensemble: Annotated[
        bool, typer.Option("--ensemble", help="Average 7 prompt templates.", rich_help_panel=Panel)
    ] = False,
    method: Annotated[
        Literal["gradcam", "gradcam++", "layercam", "hirescam", "dense"],
        typer.Option(
            "--method",
            help="CAM method; dense = MaskCLIP-style per-pixel cosine (ResNet CLIPs).",
            rich_help_panel=Panel,
        ),
    ] = "gradcam",
    threshold: Annotated[
        float, opt.probability("--threshold", help="Mask = CAM >= threshold.", rich_help_panel=Panel)
    ] = 0.5,
    input_size: Annotated[
        int,
        opt.side(
            "--input-size",
            help="Network input side; the whole image is resized to it (no crop).",
            rich_help_panel=Panel,
        ),
    ] = 224,
    cam_size: Annotated[
        int | None,
        opt.pixels(
            "--cam-size", help="Store CAMs at NxN instead of the original size.", rich_help_panel=Panel
        ),
    ] = None,
    batch_size: Annotated[int, opt.count("--batch-size", help="Images per forward/backward.")] = 16,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first unreadable image.")] = False,
    device: Device = "auto",
    precision: Precision = "fp32",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    num_workers: NumWorkers = 2,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    import json

    from stages.clip_cam import run_clip_cam

    with progress("CAMs", quiet) as on_progress:
        path = run_clip_cam(
            out,
            images=images,
            label=label,
            dataset=dataset,
            root=str(root) if root else None,
            split=split,
            backend=backend,
            model=model,
            pretrained=pretrained,
            score=score,
            classes=classes,
            template=template,
            ensemble=ensemble,
            method=method,
            threshold=threshold,
            input_size=input_size,
            cam_size=cam_size,
            batch_size=batch_size,
            strict=strict,
            device=device,
            precision=precision,
            seed=seed,
            num_workers=num_workers,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    manifest = json.loads((path / "manifest.json").read_text())
    outputs, params = manifest["outputs"], manifest["params"]
    n_ok = len(outputs["items"]) - len(outputs["failed"])
    say(f"{n_ok} CAMs ({params['backend']} {params['model']}, {params['method']}) -> {path}/overlays")
    if outputs["failed"]:
        for entry in outputs["failed"]:
            say(f"  failed: {entry['error']}")
        raise fail(f"{len(outputs['failed'])} image(s) could not be read (listed above); the others are done")
