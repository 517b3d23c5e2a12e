"""`fsseg pseudo-label`: SPINO panoptic pseudo-labels from a label-gen artifact.

Reads:  a label-gen artifact (`--heads`) and the images of a dataset split.
Writes: per image `semantic/<id>.png`, `cityscapes/<id>_gtFine_{labelIds,instanceIds}.png`,
        `panoptic/<id>.png` (+ `panoptic.json`, COCO panoptic), `preview/<id>.jpg`; `manifest.json`
        (kind "pseudo-label"). Resumable; sharded across ranks under torchrun.
Algorithm: semantic and boundary heads on the frozen backbone (optionally averaged over
        `tta_scales`), logits at the image's resolution; fusion of stages.core.panoptic.fuse_panoptic
        (connected components per thing class, small components void, boundary subtraction,
        components again, nearest-instance fill).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.core import devices, distributed
from stages.core.artifacts import open_artifact, read_manifest, run_items
from stages.core.checkpoints import build_from_checkpoint
from stages.core.datasets import open_dataset
from stages.core.errors import FssegError
from stages.core.panoptic import PanopticWriter, fuse_panoptic
from stages.models.backbones import load_backbone_weights
from stages.models.spino import DenseFeatures, input_size, to_unit
from stages.params import PseudoLabelParams, resolve

log = logging.getLogger(__name__)


def predict_maps(
    features: DenseFeatures,
    heads,
    image: np.ndarray,
    *,
    size: int | None,
    scales: Sequence[float],
    device,
    precision: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(semantic class map (H, W), boundary probability (H, W)) at the image's resolution; class
    probabilities and boundary probabilities are averaged over `scales`."""
    h, w = image.shape[:2]
    probs, boundary = 0, 0
    for scale in scales:
        hw = input_size((h, w), round((size or h) * scale), features.multiple)
        x = features.normalise(to_unit(image, hw).to(device))
        with torch.no_grad(), devices.autocast(device, precision):
            sem, bnd = heads(features(x), (h, w))
        probs = probs + sem.float().softmax(1)[0]
        boundary = boundary + bnd.float().sigmoid()[0, 0]
    return probs.max(0).indices.cpu().numpy(), (boundary / len(scales)).cpu().numpy()


def run_pseudo_label(
    out_dir: str | Path,
    *,
    heads: str | Path,
    dataset: str | None = None,
    root: str | Path | None = None,
    params: PseudoLabelParams | None = None,
    overwrite: bool = False,
    on_progress: Callable[..., None] | None = None,
    **changes: Any,
) -> Path:
    """Pseudo-label every image of a split (default: label-gen's split minus its k images) with
    the heads of the label-gen artifact `heads`; `dataset` and `root` default to label-gen's.
    `changes` are field values of `params` (`min_segment=20`: `PseudoLabelParams(min_segment=20)`)."""
    p = resolve(PseudoLabelParams, params, changes)
    if not p.tta_scales:
        raise FssegError("--tta-scales needs at least one scale, e.g. 1 or 0.75,1,1.25")
    heads_dir = Path(heads)
    manifest = read_manifest(heads_dir, "label-gen")
    made = manifest.get("resolved") or manifest["params"]  # artifacts before fsseg recorded `resolved`
    dataset = dataset or made["dataset"]
    root = Path(root or made["root"])
    ds = open_dataset(dataset, root, p.split or (made["split"] if dataset == made["dataset"] else None))
    if ds.num_classes != len(made["class_names"]):
        raise FssegError(
            f"{heads_dir} was trained on {len(made['class_names'])} classes but {dataset} has {ds.num_classes}; "
            f"pass the dataset label-gen was trained on"
        )
    same_images = (
        dataset == made["dataset"] and root.resolve() == Path(made["root"]) and ds.split == made["split"]
    )
    annotated = set(made["ids"]) if same_images else set()
    ids = [s.id for s in ds.samples() if s.id not in annotated]
    dev = devices.resolve_device(p.device)
    precision = devices.stage_precision(p, dev)
    distributed.init_distributed(dev.type)
    resolved = {
        "dataset": dataset, "root": str(root.resolve()), "split": ds.split, "precision": precision,
        "excluded_annotated": sorted(annotated), "class_names": ds.class_names, "things": list(ds.things),
        "annotated_ids": made["ids"], "label_gen_dataset": made["dataset"], "label_gen_root": made["root"],
        "label_gen_split": made["split"],
    }  # fmt: skip
    art = open_artifact(
        out_dir, kind="pseudo-label", stage="pseudo-label", params=p, resolved=resolved, inputs=[heads_dir],
        overwrite=overwrite,
    )  # fmt: skip
    with art:
        if art.up_to_date:
            return art.path
        devices.seed_everything(p.seed)
        model, ckpt = build_from_checkpoint(heads_dir / "heads.pt", dev)
        model.to(dev).eval()
        features = DenseFeatures(name=ckpt["backbone"])
        features = load_backbone_weights(features, ckpt["backbone_weights"]).to(dev)
        writer = PanopticWriter(ds)

        def work(sample_id: str) -> None:
            sample = ds.sample(sample_id)
            image = ds.load_image(sample)
            semantic, boundary = predict_maps(features, model, image, size=ckpt["size"], scales=p.tta_scales,
                                              device=dev, precision=precision)  # fmt: skip
            cut = boundary > p.boundary_threshold
            semantic, instances = fuse_panoptic(
                semantic, cut, ds.things, min_size=p.min_segment, void=ds.ignore_index
            )
            writer.write(art, sample_id, image, semantic, instances)

        done = run_items(art, ids, lambda i: art.has(writer.done_file(i)), work, on_progress)
        writer.write_coco_json(art, ids)
        return art.finish(
            outputs={
                "images": len(ids), "labelled_by_rank0": done, "semantic": "semantic/", "cityscapes": "cityscapes/",
                "coco_panoptic": "panoptic.json", "preview": "preview/",
            },
            label_map=ds.class_names,
            device=devices.describe(dev),
        )  # fmt: skip
