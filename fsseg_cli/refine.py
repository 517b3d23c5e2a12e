"""`fsseg refine` and `fsseg pretrain`: IMR-HSNet and its HSNet baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from fsseg_cli import options as opt
from fsseg_cli.console import console, handles_errors, progress, setup_logging
from fsseg_cli.options import Device, NumWorkers, Out, Overwrite, Precision, Quiet, Seed, Verbose

DatasetName = Literal["pascal", "coco", "cityscapes", "camvid", "fss1000", "folder"]

REFINE_HELP = (
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

PRETRAIN_HELP = (
    "Train a few-shot segmenter on the base classes of a fold.\n\n"
    "[bold]--method imr-hsnet[/]: episodic IMR training from CAMs (--cams: a clip-cam artifact of the training "
    "images), loss of paper Eq. 7. [bold]--method hsnet[/]: the HSNet baseline with ground-truth support masks. "
    "[bold]--method pspnet[/]: PSPNet on background + base classes, CE with label smoothing + --contrastive x "
    "pixel InfoNCE (the GFSS report), SGD with cosine decay.\n\n"
    "[bold]Writes[/] (--out): checkpoints/last.pt (resume state), checkpoints/best.pt, log.jsonl, loss.png, "
    "manifest.json. Rerunning into an unfinished run continues from last.pt. Runs under torchrun (DDP).\n\n"
    "[bold]Defaults[/]: the papers' PASCAL settings: IMR/HSNet Adam lr 4e-4, batch 40, 400x400, 2 steps; "
    "PSPNet SGD lr 2.5e-3 cosine, momentum 0.9, weight decay 1e-4, batch 12, 473x473, mirror, 100 epochs."
)


@handles_errors
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
    support: Annotated[
        str | None, typer.Option("--support", help="Ad-hoc mode: support image folder/file/glob.")
    ] = None,
    query: Annotated[
        str | None, typer.Option("--query", help="Ad-hoc mode: query image folder/file/glob.")
    ] = None,
    label: Annotated[str | None, typer.Option("--label", help="Ad-hoc mode: the class name.")] = None,
    support_masks: Annotated[
        Path | None, typer.Option("--support-masks", help="Pixel masks of the supports (same stems).")
    ] = None,
    cams: Annotated[
        Path | None, typer.Option("--cams", help="clip-cam artifact with the initial masks.")
    ] = None,
    supervision: Annotated[
        Literal["label", "mask"],
        typer.Option(
            "--supervision", help="Benchmark mode: supports described by label (CAMs) or by their masks."
        ),
    ] = "label",
    refiner: Annotated[
        Literal["imr", "none", "mutual"],
        typer.Option("--refiner", help="imr (IMR-HSNet checkpoint), none or mutual (HSNet checkpoint)."),
    ] = "imr",
    steps: Annotated[int, opt.count("--steps", help="Refinement steps (paper: 2 PASCAL, 3 COCO).")] = 2,
    zero_shot: Annotated[
        bool, typer.Option("--zero-shot", help="The query is its own support (paper Table 3).")
    ] = False,
    img_size: Annotated[int, opt.side("--img-size", help="Network input side.")] = 400,
    mask_size: Annotated[
        Literal["original", "input"],
        typer.Option(
            "--mask-size",
            help="Masks at the query's own size, or at the network input size (the authors' test protocol; "
            "score with evaluate --resize-gt IMG_SIZE).",
        ),
    ] = "original",
    cam_backend: Annotated[
        Literal["auto", "clip", "imagenet"],
        typer.Option("--cam-backend", help="Backend for CAMs computed on the fly (without --cams)."),
    ] = "auto",
    feature_cache: Annotated[
        int,
        opt.count("--feature-cache", minimum=0, help="Images whose backbone features stay cached (0: off)."),
    ] = 64,
    save_probs: Annotated[bool, typer.Option("--save-probs", help="Also write probs/<id>.npy.")] = False,
    device: Device = "auto",
    precision: Precision = "fp32",
    seed: Seed = 0,
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
            supervision=supervision,
            refiner=refiner,
            steps=steps,
            zero_shot=zero_shot,
            img_size=img_size,
            mask_size=mask_size,
            cam_backend=cam_backend,
            feature_cache=feature_cache,
            save_probs=save_probs,
            device=device,
            precision=precision,
            seed=seed,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    import json

    outputs = json.loads((path / "manifest.json").read_text())["outputs"]
    console.print(
        f"{outputs['episodes']} episodes -> {path / outputs['predictions']} (overlays: {path / 'overlays'})",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


@handles_errors
def pretrain(
    out: Out,
    method: Annotated[
        Literal["imr-hsnet", "hsnet", "pspnet"], typer.Option("--method", help="What to train.")
    ],
    dataset: Annotated[DatasetName, typer.Option("--dataset", help="Dataset layout.")],
    root: Annotated[Path, typer.Option("--root", help="Dataset folder.")],
    fold: Annotated[int, opt.index("--fold", help="Fold whose classes are held out (novel).")] = 0,
    split: Annotated[
        str | None, typer.Option("--split", help="Training split (reader's default: train).")
    ] = None,
    cams: Annotated[
        Path | None, typer.Option("--cams", help="imr-hsnet: clip-cam artifact of the training images.")
    ] = None,
    backbone: Annotated[
        Literal["resnet50", "resnet101", "vgg16", "efficientnet_lite0", "tiny"],
        typer.Option("--backbone", help="Frozen backbone (efficientnet_lite0 has offline ImageNet weights)."),
    ] = "resnet50",
    backbone_weights: Annotated[
        str,
        opt.backbone_weights(
            "--backbone-weights", help="imagenet (cache), a file, or random.", keywords=("imagenet", "random")
        ),
    ] = "imagenet",
    img_size: Annotated[
        int | None, opt.side("--img-size", help="Training resolution (square) (default 400; pspnet 473).")
    ] = None,
    epochs: Annotated[int | None, opt.count("--epochs", help="Default 200; pspnet 100.")] = None,
    batch_size: Annotated[
        int | None,
        opt.count(
            "--batch-size",
            help="Episodes (pspnet: images) per step, all ranks together (default 40; pspnet 12).",
        ),
    ] = None,
    lr: Annotated[
        float | None,
        opt.learning_rate("--lr", help="Adam (pspnet: SGD) learning rate (default 4e-4; pspnet 2.5e-3)."),
    ] = None,
    steps: Annotated[int, opt.count("--steps", help="imr-hsnet: refinement steps.")] = 2,
    lambda_t: Annotated[
        str | None, opt.numbers("--lambda-t", help="Per-step loss weights, comma-separated.", minimum=0)
    ] = None,
    w_s: Annotated[float, opt.weight("--w-s", help="Weight of the support loss.")] = 1.0,
    episodes_per_epoch: Annotated[
        int | None, opt.count("--episodes-per-epoch", help="Cap per epoch.")
    ] = None,
    val_episodes: Annotated[
        Path | None, typer.Option("--val-episodes", help="Fixed validation episodes.")
    ] = None,
    val_cams: Annotated[
        Path | None, typer.Option("--val-cams", help="clip-cam artifact for the validation images.")
    ] = None,
    min_area: Annotated[
        int, opt.count("--min-area", minimum=0, help="Pixels a class needs in an image to be used.")
    ] = 2048,
    n_folds: Annotated[
        int | None,
        opt.count(
            "--n-folds", minimum=2, help="Folds for datasets without published ones (one is held out)."
        ),
    ] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="Tiny learner widths (tests, smoke runs).")] = False,
    momentum: Annotated[
        float, opt.probability("--momentum", help="pspnet: SGD momentum.", rich_help_panel="pspnet")
    ] = 0.9,
    weight_decay: Annotated[
        float, opt.weight("--weight-decay", help="pspnet.", rich_help_panel="pspnet")
    ] = 1e-4,
    label_smoothing: Annotated[
        float,
        opt.probability("--label-smoothing", help="pspnet: CE label smoothing.", rich_help_panel="pspnet"),
    ] = 0.1,
    contrastive: Annotated[
        float,
        opt.weight(
            "--contrastive",
            help="pspnet: lambda of the pixel InfoNCE loss (0: the baseline; the report searched 0.01-0.4).",
            rich_help_panel="pspnet",
        ),
    ] = 0.0,
    temperature: Annotated[
        float, opt.positive("--temperature", help="pspnet: InfoNCE temperature.", rich_help_panel="pspnet")
    ] = 0.1,
    base_temperature: Annotated[
        float, opt.positive("--base-temperature", help="pspnet: loss scale t/base.", rich_help_panel="pspnet")
    ] = 0.07,
    max_anchors: Annotated[
        int,
        opt.count(
            "--max-anchors",
            minimum=2,
            help="pspnet: anchors per batch (half hard, half easy per class).",
            rich_help_panel="pspnet",
        ),
    ] = 1024,
    val_split: Annotated[
        str | None,
        typer.Option(
            "--val-split",
            help="pspnet: split for validation mIoU on background + base classes.",
            rich_help_panel="pspnet",
        ),
    ] = None,
    val_images: Annotated[
        int | None,
        opt.count("--val-images", help="pspnet: cap on validation images.", rich_help_panel="pspnet"),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Require an unfinished run to continue.")] = False,
    device: Device = "auto",
    precision: Precision = "fp32",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    num_workers: NumWorkers = 0,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    opt.no_weights_for_tiny(backbone, backbone_weights)
    from stages.pretrain import run_pretrain

    lambdas = opt.parse_numbers(lambda_t, minimum=0) if lambda_t else None
    with progress("training", quiet) as on_progress:
        path = run_pretrain(
            out,
            method=method,
            dataset=dataset,
            root=root,
            fold=fold,
            split=split,
            cams=cams,
            backbone=backbone,
            backbone_weights=backbone_weights,
            img_size=img_size,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            steps=steps,
            lambda_t=lambdas,
            w_s=w_s,
            episodes_per_epoch=episodes_per_epoch,
            val_episodes=val_episodes,
            val_cams=val_cams,
            min_area=min_area,
            n_folds=n_folds,
            tiny=tiny,
            momentum=momentum,
            weight_decay=weight_decay,
            label_smoothing=label_smoothing,
            contrastive=contrastive,
            temperature=temperature,
            base_temperature=base_temperature,
            max_anchors=max_anchors,
            val_split=val_split,
            val_images=val_images,
            resume=resume,
            device=device,
            precision=precision,
            seed=seed,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    import json

    outputs = json.loads((path / "manifest.json").read_text())["outputs"]
    best = outputs["best_val_miou"]
    seen = (
        f"{outputs['training_pairs']} pairs"
        if "training_pairs" in outputs
        else f"{outputs['training_images']} images"
    )
    console.print(
        f"trained on {seen}; best val mIoU {'n/a' if best is None else f'{best:.2f}'} -> "
        f"{path / outputs['best']}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


FINETUNE_HELP = (
    "Per-episode classifiers on a frozen PSPNet (transfer-learning FSS and GFSS, the GFSS report).\n\n"
    "[bold]Reads[/]: --checkpoint (fsseg pretrain --method pspnet) and --episodes (fss, gfss-binary or gfss).\n\n"
    "[bold]Writes[/] (--out): pred/<episode>.png (and <episode>_base.png for gfss-binary) for `fsseg evaluate "
    "--task fss|gfss`, episodes/<episode>.json, manifest.json.\n\n"
    "[bold]fss[/]: 2-way classifier, cross-entropy. [bold]gfss[/]: (|base|+2)-way, base rows from the pretrained "
    "classifier, reformulated CE (Eq. 4-5) + --gamma x distillation (Eq. 6-7).\n\n"
    "[bold]Defaults[/]: SGD lr 0.1, 100 steps, gamma 10, 473x473; --batch-episodes classifiers trained at once, "
    "features cached per image."
)


@handles_errors
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
    mode: Annotated[
        Literal["fss", "gfss"], typer.Option("--mode", help="fss: 2-way; gfss: base + novel.")
    ] = "fss",
    root: Annotated[Path | None, typer.Option("--root", help="Dataset folder, if it moved.")] = None,
    steps: Annotated[int, opt.count("--steps", help="SGD steps per episode.")] = 100,
    lr: Annotated[float, opt.learning_rate("--lr", help="SGD learning rate.")] = 0.1,
    gamma: Annotated[float, opt.weight("--gamma", help="gfss: distillation weight.")] = 10.0,
    img_size: Annotated[int, opt.side("--img-size", help="Input side (the report: 473).")] = 473,
    label_size: Annotated[
        int | None,
        opt.pixels(
            "--label-size",
            help="Side where the support loss is computed "
            "(logits upsampled to it); default: the input side. Smaller is "
            "faster on a CPU.",
        ),
    ] = None,
    batch_episodes: Annotated[int, opt.count("--batch-episodes", help="Episodes trained at once.")] = 50,
    feature_cache: Annotated[
        int, opt.count("--feature-cache", minimum=0, help="Images whose features stay cached.")
    ] = 512,
    device: Device = "auto",
    precision: Precision = "fp32",
    seed: Seed = 0,
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
            mode=mode,
            steps=steps,
            lr=lr,
            gamma=gamma,
            img_size=img_size,
            label_size=label_size,
            batch_episodes=batch_episodes,
            feature_cache=feature_cache,
            device=device,
            precision=precision,
            seed=seed,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    import json

    outputs = json.loads((path / "manifest.json").read_text())["outputs"]
    console.print(
        f"{outputs['count']} episodes -> {path / outputs['predictions']}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
