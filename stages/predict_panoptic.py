"""`fsseg predict-panoptic`: panoptic predictions of a train-panoptic model for every image of a split.

Reads:  a train-panoptic checkpoint (`checkpoints/best.pt` or `last.pt`) and a dataset split.
Writes: the forms pseudo-label writes, per image: `cityscapes/<id>_gtFine_{labelIds,instanceIds}.png`,
        `panoptic/<id>.png` (+ `panoptic.json`, COCO panoptic), `semantic/<id>.png`,
        `preview/<id>.jpg`; `manifest.json` (kind "panoptic-pred"), for `fsseg evaluate --task
        panoptic`. Resumable; sharded across ranks under torchrun.
Algorithm: each image resized to the model's training input size; Panoptic-DeepLab
        post-processing (`stages.models.spino.panoptic_inference`); class map and instances
        resized back to the image (nearest).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.core import devices, distributed
from stages.core.artifacts import open_artifact, run_items
from stages.core.checkpoints import build_from_checkpoint
from stages.core.datasets import open_dataset
from stages.core.errors import FssegError
from stages.core.panoptic import PanopticWriter
from stages.models.spino import predict_panoptic, to_unit
from stages.params import PredictPanopticParams, resolve

log = logging.getLogger(__name__)


def run_predict_panoptic(
    out_dir: str | Path,
    *,
    checkpoint: str | Path,
    dataset: str,
    root: str | Path,
    params: PredictPanopticParams | None = None,
    overwrite: bool = False,
    on_progress: Callable[..., None] | None = None,
    **changes: Any,
) -> Path:
    """Panoptic predictions of the train-panoptic model `checkpoint` for every image of a split of
    `dataset` at `root`; returns the artifact folder. `changes` are field values of `params`
    (`split="all"` is `params=PredictPanopticParams(split="all")`)."""
    p = resolve(PredictPanopticParams, params, changes)
    ds = open_dataset(dataset, root, p.split)
    dev = devices.resolve_device(p.device)
    precision = devices.stage_precision(p, dev)
    distributed.init_distributed(dev.type)  # under torchrun: join, then shard the items
    resolved = {
        "dataset": dataset,
        "root": str(Path(root).resolve()),
        "split": ds.split,
        "precision": precision,
    }
    with open_artifact(
        out_dir, kind="panoptic-pred", stage="predict-panoptic", params=p, resolved=resolved,
        inputs=[checkpoint], overwrite=overwrite,
    ) as art:  # fmt: skip
        if art.up_to_date:
            return art.path
        model, ckpt = build_from_checkpoint(checkpoint, dev)
        if ckpt["model_name"] != "panoptic_deeplab":
            raise FssegError(
                f"{checkpoint} holds a {ckpt['model_name']!r} model; pass a train-panoptic checkpoint"
            )
        if ckpt["model_kwargs"]["num_classes"] != ds.num_classes:
            raise FssegError(
                f"{checkpoint} predicts {ckpt['model_kwargs']['num_classes']} classes but {dataset} has "
                f"{ds.num_classes}; pass the dataset the model was trained on"
            )
        model.to(dev).eval()
        hw = tuple(ckpt["size_hw"])
        writer = PanopticWriter(ds)
        ids = [s.id for s in ds.samples()]

        def work(sample_id: str) -> None:
            image = ds.load_image(ds.sample(sample_id))
            x = model.backbone.normalise(to_unit(image, hw))
            classes, instances = predict_panoptic(model, x, ds.things, image.shape[:2], dev, precision)
            writer.write(art, sample_id, image, classes, instances)

        run_items(art, ids, lambda i: art.has(writer.done_file(i)), work, on_progress)
        writer.write_coco_json(art, ids)
        return art.finish(
            outputs={"images": len(ids), "cityscapes": "cityscapes/", "coco_panoptic": "panoptic.json"},
            label_map=ds.class_names,
            device=devices.describe(dev),
        )
