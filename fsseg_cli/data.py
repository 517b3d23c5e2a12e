"""`fsseg data`: check a dataset folder, and write reproducible few-shot episodes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from fsseg_cli import options
from fsseg_cli.console import console, fail, handles_errors, progress, setup_logging
from fsseg_cli.options import NumWorkers, Out, Overwrite, Quiet, Seed, Verbose

DatasetName = Literal["pascal", "coco", "cityscapes", "camvid", "fss1000", "folder"]

app = typer.Typer(
    help="Dataset tools: `check` a dataset folder, write few-shot `episodes`. Layouts: see the README.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

Root = Annotated[Path, typer.Option("--root", help="Dataset folder (layout per dataset: see README).")]
Split = Annotated[
    str | None, typer.Option("--split", help="Split name or list file (default: the reader's).")
]


@app.command("check")
@handles_errors
def check(
    dataset: Annotated[DatasetName, typer.Argument(help="Dataset layout.")],
    root: Root,
    split: Split = None,
    num_workers: NumWorkers = 2,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Count samples; report missing or unreadable files, image/label size mismatches, unexpected label ids,
    and the pixel histogram per class. Exits non-zero when anything is wrong."""
    setup_logging(quiet, verbose)
    from stages.core.datasets import open_dataset
    from stages.core.datasets.check import check_dataset

    ds = open_dataset(dataset, root, split)
    with progress("checking", quiet) as on_progress:
        report = check_dataset(ds, num_workers=num_workers, on_progress=on_progress)
    console.print(
        f"{report.dataset} at {report.root} (split {report.split}): {report.num_samples} samples, "
        f"{len(report.class_names)} classes, ignore id {ds.ignore_index}",
        highlight=False,
        markup=False,
    )
    total = max(int(report.pixels.sum()), 1)
    table = Table(title="pixels per class", title_justify="left")
    for col in ("id", "class", "pixels", "share", ""):
        table.add_column(col, justify="right" if col in ("id", "pixels", "share") else "left")
    names = [*report.class_names, f"(ignore {ds.ignore_index})"]
    for i, (name, count) in enumerate(zip(names, report.pixels, strict=True)):
        share = count / total
        table.add_row(
            str(i) if i < len(report.class_names) else "",
            name,
            f"{int(count):,}",
            f"{share:6.2%}",
            "█" * int(round(share * 40)),
        )
    console.print(table)
    for label, items in (
        ("missing files", report.missing),
        ("unreadable files", report.unreadable),
        ("image/label size mismatches", report.size_mismatch),
        ("unexpected label ids", report.unexpected_ids),
    ):
        if items:
            console.print(f"[red]{len(items)} {label}[/]:", highlight=False)
            for item in items[:10]:
                console.print(f"  {item}", highlight=False, markup=False, soft_wrap=True)
            if len(items) > 10:
                console.print(f"  ... and {len(items) - 10} more")
    if report.problems:
        raise fail(f"{report.problems} problem(s) in {report.root}; see the lists above")
    console.print("[green]no problems found[/]")


@app.command("episodes")
@handles_errors
def episodes(
    dataset: Annotated[DatasetName, typer.Argument(help="Dataset layout.")],
    root: Root,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Episodes JSON file to write (replaced only with --overwrite)."),
    ],
    fold: Annotated[int, options.index("--fold", help="Fold whose classes are the novel ones.")] = 0,
    shots: Annotated[int, options.count("--shots", help="Supports per episode (K).")] = 1,
    n: Annotated[int, options.count("--n", help="Number of episodes.")] = 1000,
    split: Annotated[
        str | None,
        typer.Option(
            "--split", help="Split (default: val for pascal, the reader's default otherwise) or a list file."
        ),
    ] = None,
    protocol: Annotated[
        Literal["fss", "gfss-binary", "gfss"],
        typer.Option(
            "--protocol",
            help="fss (HSNet), gfss-binary (the GFSS report's), gfss (standard, all novel classes).",
        ),
    ] = "fss",
    min_area: Annotated[
        int,
        options.pixels(
            "--min-area",
            help="Pixels a class must cover in an image to be used (2048 = 2*32^2, PFENet's rule).",
        ),
    ] = 2048,
    n_folds: Annotated[
        int | None,
        options.count("--n-folds", help="Folds for datasets without published ones (interleaved classes)."),
    ] = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Write few-shot episodes (class, query id, support ids) that refine, finetune-episode and evaluate all read.
    Same arguments and seed give the same file, byte for byte."""
    setup_logging(quiet, verbose)
    from stages.core.datasets import open_dataset
    from stages.core.episodes import check_episodes_out, make_episodes, write_episodes

    check_episodes_out(out)  # a folder or a foreign file fails before the scan, not after
    ds = open_dataset(dataset, root, split)
    with progress("scanning classes", quiet) as on_progress:
        doc = make_episodes(
            ds,
            fold=fold,
            shots=shots,
            n=n,
            seed=seed,
            protocol=protocol,
            n_folds=n_folds,
            min_area=min_area,
            on_progress=on_progress,
        )
    write_episodes(out, doc, overwrite=overwrite)
    novel = ", ".join(ds.class_names[c] for c in doc["novel_classes"] if c not in doc["skipped_classes"])
    console.print(
        f"{len(doc['episodes'])} {protocol} episodes, {shots}-shot, fold {fold} (novel: {novel}) -> {out}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


@app.command("panoptic-gt")
@handles_errors
def panoptic_gt(
    dataset: Annotated[DatasetName, typer.Argument(help="Dataset layout.")],
    root: Root,
    out: Out,
    split: Split = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Write a split's ground truth in the panoptic forms fsseg's stages write (Cityscapes-form
    *_gtFine_instanceIds.png, COCO panoptic PNG + panoptic.json), the --gt of
    `fsseg evaluate --task panoptic`. Instances: the dataset's instance ids, or else connected
    components of each thing class (an approximation, e.g. for CamVid)."""
    setup_logging(quiet, verbose)
    from stages.core.datasets.export import export_panoptic_gt

    with progress("exporting", quiet) as on_progress:
        path = export_panoptic_gt(
            out, dataset=dataset, root=root, split=split, overwrite=overwrite, on_progress=on_progress
        )
    from stages.core.artifacts import read_manifest

    outputs = read_manifest(path)["outputs"]
    console.print(
        f"{outputs['images']} images ({outputs['instances']}) -> {path}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
