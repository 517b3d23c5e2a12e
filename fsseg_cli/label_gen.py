"""`fsseg label-gen`: SPINO's semantic and boundary heads from k annotated images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from fsseg_cli.console import handles_errors, progress, say, setup_logging
from fsseg_cli.options import Out, Overwrite, Quiet, Verbose
from fsseg_cli.params import derive
from stages.params import LabelGenParams

HELP = (
    "Train SPINO's semantic and boundary heads on a frozen backbone from k annotated images.\n\n"
    "[bold]Reads[/]: DATASET at --root (cityscapes, camvid, folder). --k 10 on Cityscapes picks the paper's ten "
    "train images; elsewhere k images drawn with --seed; --indices overrides.\n\n"
    "[bold]Writes[/] (--out): heads.pt, log.jsonl, loss.png, manifest.json.\n\n"
    "[bold]Defaults[/] (the paper's): DINOv2 ViT-B/14, Adam 1e-3 cosine, 50 epochs semantic / 40 boundary, batch 1, "
    "random resized crops (scale 0.2-1 / 0.4-1), hflip, colour jitter 0.2; backbone features of --views views per "
    "image and head are computed once. Heads run at patch resolution with logits upsampled; --upsample-features "
    "gives the authors' mode (features upsampled before the heads, far slower)."
)

# shared by the SPINO commands (pseudo-label, predict-panoptic)
PanopticDataset = Literal["cityscapes", "camvid", "folder"]
Root = Annotated[
    Path | None, typer.Option("--root", help="Dataset folder (default: data/DATASET in the current folder).")
]


def dataset_root(dataset: str, root: Path | None) -> Path:
    return root if root is not None else Path("data") / dataset


@handles_errors
@derive(params=LabelGenParams)
def label_gen(
    dataset: Annotated[PanopticDataset, typer.Argument(help="Dataset layout.")],
    out: Out,
    root: Root = None,
    params: LabelGenParams = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    from stages.label_gen import run_label_gen

    with progress("label-gen", quiet) as on_progress:
        path = run_label_gen(
            out,
            dataset=dataset,
            root=dataset_root(dataset, root),
            params=params,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    from stages.core.artifacts import read_manifest

    manifest = read_manifest(path)
    o = manifest["outputs"]
    say(
        f"heads trained on {len(manifest['resolved']['ids'])} images (final losses: semantic "
        f"{o['final_semantic_loss']:.3f}, boundary {o['final_boundary_loss']:.3f}) -> {path / o['heads']}"
    )
