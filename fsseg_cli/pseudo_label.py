"""`fsseg pseudo-label`: SPINO panoptic pseudo-labels (running label-gen first without --heads)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsseg_cli.console import handles_errors, progress, say, setup_logging
from fsseg_cli.label_gen import PanopticDataset, Root, dataset_root
from fsseg_cli.options import Overwrite, Quiet, Verbose
from fsseg_cli.params import derive
from stages.params import LabelGenParams, PseudoLabelParams

HELP = (
    "Panoptic pseudo-labels for every image of a split (default: the training split minus the k annotated).\n\n"
    "[bold]Reads[/]: --heads (a label-gen artifact); without it, label-gen runs first into OUT-label-gen with the "
    "label-gen options given here.\n\n"
    "[bold]Writes[/] (--out): cityscapes/<id>_gtFine_{labelIds,instanceIds}.png, panoptic/<id>.png + panoptic.json "
    "(COCO panoptic), semantic/<id>.png (class ids), preview/<id>.jpg (image | classes | segments), manifest.json. "
    "Resumable; shards images across ranks under torchrun.\n\n"
    "[bold]Fusion[/]: connected components per thing class, components under --min-segment px void, predicted "
    "boundaries subtracted, components again, the rest of each component joins its nearest instance."
)

# label-gen's options that pseudo-label takes for the run it starts without --heads
LABEL_GEN_OPTIONS = ("k", "indices", "backbone", "backbone_weights", "size", "views", "epochs_semantic",
                     "epochs_boundary", "device", "precision", "seed")  # fmt: skip


@handles_errors
@derive(params=PseudoLabelParams, label_gen=(LabelGenParams, LABEL_GEN_OPTIONS))
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
    params: PseudoLabelParams = None,
    label_gen: LabelGenParams = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    from stages.pseudo_label import run_pseudo_label

    root = dataset_root(dataset, root)
    out = out or Path("runs") / "pseudo-label" / f"{dataset}-k{label_gen.k}"
    if heads is None:
        from stages.label_gen import run_label_gen

        heads = out.with_name(out.name + "-label-gen")
        with progress("label-gen", quiet) as on_progress:
            run_label_gen(
                heads,
                dataset=dataset,
                root=root,
                params=label_gen,
                overwrite=overwrite,
                on_progress=on_progress,
            )
        say(f"label-gen heads -> {heads}")
    with progress("pseudo-labelling", quiet) as on_progress:
        path = run_pseudo_label(
            out,
            heads=heads,
            dataset=dataset,
            root=root,
            params=params,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    from stages.core.artifacts import read_manifest

    images = read_manifest(path)["outputs"]["images"]
    say(f"{images} images pseudo-labelled -> {path} (previews in {path / 'preview'})")
