"""`fsseg data panoptic-gt`: a dataset's ground truth as a panoptic artifact (the forms
`fsseg pseudo-label` writes), so that `fsseg evaluate --task panoptic` can score against it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stages.core import distributed
from stages.core.artifacts import open_artifact, run_items
from stages.core.datasets import open_dataset
from stages.core.panoptic import PanopticWriter


def export_panoptic_gt(
    out_dir: str | Path,
    *,
    dataset: str,
    root: str | Path,
    split: str | None = None,
    overwrite: bool = False,
    on_progress: Callable[..., None] | None = None,
) -> Path:
    ds = open_dataset(dataset, root, split)
    distributed.init_distributed("cpu")  # under torchrun: join, then shard the images
    params = {"dataset": dataset, "root": str(Path(root).resolve()), "split": ds.split}
    with open_artifact(
        out_dir, kind="panoptic-gt", stage="data panoptic-gt", params=params, overwrite=overwrite
    ) as art:
        if art.up_to_date:
            return art.path
        writer = PanopticWriter(ds)
        ids = [s.id for s in ds.samples()]

        def work(sample_id: str) -> None:
            sample = ds.sample(sample_id)
            writer.write(art, sample_id, None, *ds.load_panoptic(sample))

        run_items(art, ids, lambda i: art.has(writer.done_file(i)), work, on_progress)
        writer.write_coco_json(art, ids)
        instances = (
            "dataset instance ids"
            if ds.load_instances(ds.samples()[0]) is not None
            else "connected components"
        )
        return art.finish(
            outputs={
                "images": len(ids),
                "instances": instances,
                "cityscapes": "cityscapes/",
                "coco_panoptic": "panoptic.json",
            },
            label_map=ds.class_names,
        )
