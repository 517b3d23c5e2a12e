"""`fsseg train-panoptic`: a Panoptic-DeepLab-style model trained on SPINO pseudo-labels with mixed batches.

Reads:  a pseudo-label artifact (`--pseudo`) and, through its manifest, the dataset and the k
        annotated images label-gen learnt from (their ground truth joins every batch).
Writes: `checkpoints/last.pt` (resume state), `checkpoints/best.pt` (best validation PQ, or the
        last epoch without validation), `log.jsonl`, `loss.png`, `manifest.json` (kind "panoptic-model").
        `fsseg predict-panoptic` (stages/predict_panoptic.py) writes the model's predictions.
Algorithm: semantic head (bootstrapped CE, hardest 20%), center heatmap (MSE against Gaussians of
        sigma 8 at instance centres of mass, weight 200), offsets to the centre (L1 on thing pixels,
        weight 0.01); Adam with poly decay (power 0.9); hflip + colour jitter 0.2. Mixed batches:
        each batch of size B >= 2 holds B - 1 pseudo-labelled samples and one ground-truth sample;
        with B = 1 pseudo-labelled and ground-truth batches alternate. An epoch is one pass over the
        pseudo-labels. Random streams per epoch: the batches, and each rank's augmentation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.core import devices, distributed, training
from stages.core.artifacts import open_artifact, read_manifest
from stages.core.datasets import open_dataset
from stages.core.errors import FssegError
from stages.core.imageio import read_label
from stages.core.metrics import ConfusionMatrix, PanopticQuality
from stages.core.panoptic import PanopticWriter, cityscapes_form, from_instance_ids, instances_of
from stages.core.training import NO_SCORE
from stages.core.validation import checked_label
from stages.models import model_kwargs
from stages.models.backbones import load_backbone_weights
from stages.models.spino import (
    PanopticDeepLab,
    bootstrapped_ce,
    colour_jitter,
    input_size,
    predict_panoptic,
    to_unit,
)
from stages.params import TrainPanopticParams, resolve

log = logging.getLogger(__name__)


def mixed_batches(
    n_pseudo: int, n_gt: int, batch_size: int, rng: np.random.Generator
) -> list[list[tuple[str, int]]]:
    """One epoch of batches of ("pseudo" | "gt", index): every pseudo-labelled sample once; the
    ground-truth samples cycle in shuffled order, one per batch (B >= 2) or every other batch (B = 1)."""

    def cycle() -> Iterator[int]:
        while True:
            yield from rng.permutation(n_gt).tolist()

    pseudo = rng.permutation(n_pseudo).tolist()
    gt = cycle() if n_gt else None
    batches: list[list[tuple[str, int]]] = []
    per = max(1, batch_size - (1 if gt and batch_size > 1 else 0))
    for start in range(0, n_pseudo, per):
        batch = [("pseudo", p) for p in pseudo[start : start + per]]
        if gt is None:
            batches.append(batch)
        elif batch_size == 1:
            batches += [batch, [("gt", next(gt))]]
        else:
            batches.append([*batch, ("gt", next(gt))])
    return batches


def panoptic_targets(
    semantic: np.ndarray, instances: np.ndarray, ignore: int, sigma: float = 8.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(center heatmap (H, W), offsets (2, H, W) from each thing pixel to its instance's centre of
    mass, offset weight (H, W): 1 on thing pixels). Heatmap = max of Gaussians (sigma px) at the centres."""
    h, w = semantic.shape
    heat = np.zeros((h, w), np.float32)
    offset = np.zeros((2, h, w), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    keys = semantic.astype(np.int64) * 65536 + instances
    for key in np.unique(keys[(instances > 0) & (semantic != ignore)]):
        mask = keys == key
        cy, cx = ys[mask].mean(), xs[mask].mean()
        heat = np.maximum(heat, np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2)))
        offset[0][mask], offset[1][mask] = cy - ys[mask], cx - xs[mask]
    return heat, offset, ((instances > 0) & (semantic != ignore)).astype(np.float32)


class PanopticData:
    """Training samples at one input size: pseudo-labels (from the artifact) and ground truth."""

    def __init__(self, ds, pseudo_dir: Path, hw: tuple[int, int]):
        self.ds, self.pseudo_dir, self.hw = ds, pseudo_dir, hw

    def pseudo(self, sample_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        semantic = read_label(self.pseudo_dir / "semantic" / f"{sample_id}.png").astype(np.int64)
        ids = read_label(self.pseudo_dir / PanopticWriter.done_file(sample_id)).astype(np.int64)
        instances = instances_of(ids)
        return self.ds.load_image(self.ds.sample(sample_id)), semantic, instances

    def ground_truth(self, sample_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sample = self.ds.sample(sample_id)
        image, (label, instances) = self.ds.load_image(sample), self.ds.load_panoptic(sample)
        return image, checked_label(self.ds, sample, label, image.shape), instances

    def tensors(self, image, semantic, instances, rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
        """Resized (and, with `rng`, flipped and colour-jittered) network input and targets."""
        import cv2

        size = self.hw[::-1]
        x = to_unit(image, self.hw)
        semantic = cv2.resize(semantic.astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
        instances = cv2.resize(instances.astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
        if rng is not None:
            if rng.random() < 0.5:
                x, semantic, instances = x.flip(-1), semantic[:, ::-1].copy(), instances[:, ::-1].copy()
            x = colour_jitter(x, rng)
        heat, offset, weight = panoptic_targets(semantic, instances, self.ds.ignore_index)
        return {
            "image": x[0],
            "semantic": torch.from_numpy(semantic).long(),
            "center": torch.from_numpy(heat)[None],
            "offset": torch.from_numpy(offset),
            "offset_weight": torch.from_numpy(weight),
            "valid": torch.from_numpy(semantic != self.ds.ignore_index).float(),
        }


def panoptic_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], ignore: int) -> torch.Tensor:
    """Bootstrapped CE + 200 * center MSE (valid pixels) + 0.01 * offset L1 (thing pixels)."""
    semantic = bootstrapped_ce(out["semantic"].float(), batch["semantic"], ignore)
    center = ((out["center"].float() - batch["center"]) ** 2 * batch["valid"][:, None]).sum() / batch[
        "valid"
    ].sum().clamp(min=1)
    w = batch["offset_weight"][:, None]
    offset = ((out["offset"].float() - batch["offset"]).abs() * w).sum() / w.sum().clamp(min=1)
    return semantic + 200 * center + 0.01 * offset


def validate(model, ds, hw, ids, dist, device, precision) -> dict[str, float]:
    """PQ / SQ / RQ and mIoU (%) on ground truth (dataset instances, or connected components)."""
    label_ids, void = ds.panoptic_labels()
    categories = ds.panoptic_categories()
    pq, cm = PanopticQuality(), ConfusionMatrix(ds.num_classes)
    model.eval()
    for sample_id in distributed.shard(ids, dist):
        sample = ds.sample(sample_id)
        image = ds.load_image(sample)
        label, gt_instances = ds.load_panoptic(sample)
        checked_label(ds, sample, label, image.shape)
        x = model.backbone.normalise(to_unit(image, hw))
        classes, instances = predict_panoptic(model, x, ds.things, label.shape, device, precision)
        cm.update(classes, label, ds.ignore_index)
        gt = from_instance_ids(
            cityscapes_form(label, gt_instances, label_ids, ds.ignore_index, void), categories
        )
        pred = from_instance_ids(
            cityscapes_form(classes, instances, label_ids, ds.ignore_index, void), categories
        )
        pq.update(gt, pred)
    pq, cm = distributed.summed(pq, dist), distributed.summed(cm, dist)
    res = pq.results(categories)["all"]
    return {"pq": 100 * res["pq"], "sq": 100 * res["sq"], "rq": 100 * res["rq"], "miou": 100 * cm.miou()}


def _read_pseudo_labels(pseudo_dir: Path) -> tuple[Any, Any, list[str], list[str]]:
    """(dataset of the pseudo-labels, dataset of the annotated images, pseudo-labelled ids,
    annotated ids) of a pseudo-label artifact."""
    manifest = read_manifest(pseudo_dir, "pseudo-label")
    made = manifest.get("resolved") or manifest["params"]  # artifacts before fsseg recorded `resolved`
    ds = open_dataset(made["dataset"], made["root"], made["split"])
    gt_ds = open_dataset(made["label_gen_dataset"], made["label_gen_root"], made["label_gen_split"])
    if gt_ds.num_classes != ds.num_classes:
        raise FssegError(
            f"{pseudo_dir}: the annotated images and the pseudo-labels use different class lists"
        )
    suffix = "_gtFine_instanceIds.png"
    pseudo_ids = sorted(f.name[: -len(suffix)] for f in (pseudo_dir / "cityscapes").glob(f"*{suffix}"))
    if not pseudo_ids:
        raise FssegError(
            f"{pseudo_dir} holds no pseudo-labels (cityscapes/*{suffix}); rerun fsseg pseudo-label"
        )
    return ds, gt_ds, pseudo_ids, list(made["annotated_ids"])


# one random stream per purpose (`training.derived_seed(seed, stream, ...)`)
BATCHES_STREAM, AUGMENT_STREAM = 1, 2


class MixedBatches:
    """The tensors of one mixed batch: ("pseudo", i) is the i-th pseudo-labelled image, ("gt", i)
    the i-th annotated one; images normalised for the backbone, on `device`."""

    def __init__(self, pseudo: PanopticData, pseudo_ids, gt: PanopticData, gt_ids, normalise, device):
        self.sources = {"pseudo": (pseudo, pseudo.pseudo, pseudo_ids), "gt": (gt, gt.ground_truth, gt_ids)}
        self.normalise, self.device = normalise, device

    def load(self, batch: list[tuple[str, int]], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        items = []
        for source, i in batch:
            data, read, ids = self.sources[source]
            items.append(data.tensors(*read(ids[i]), rng))
        tensors = {key: torch.stack([t[key] for t in items]).to(self.device) for key in items[0]}
        return tensors | {"image": self.normalise(tensors["image"])}


def _epoch_batches(p: TrainPanopticParams, epoch: int, n_pseudo: int, n_gt: int, dist):
    """(this rank's batches of `epoch`, padded to the same step count on every rank for DDP; this
    rank's augmentation stream)."""
    rng = np.random.default_rng(training.derived_seed(p.seed, BATCHES_STREAM, epoch))
    batches = mixed_batches(n_pseudo, n_gt, p.batch_size, rng)
    mine = distributed.shard(batches, dist)
    mine += mine[: -(-len(batches) // dist.world_size) - len(mine)]
    return mine, np.random.default_rng(training.derived_seed(p.seed, AUGMENT_STREAM, epoch, dist.rank))


def _train_epoch(net, optimizer, batches, loader: MixedBatches, rng, *, lr, first_it, total, ignore, dev,
                 precision, on_progress, status: str) -> tuple[float, float]:  # fmt: skip
    """One pass over this rank's `batches` (augmented with `rng`), poly LR per step; returns (mean
    loss, seconds). Progress reads "`status` loss L" (L the epoch's running mean)."""
    started, losses = time.time(), []
    net.train()
    for b, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = training.poly_lr(lr, first_it + b, total)
        tensors = loader.load(batch, rng)
        with devices.autocast(dev, precision):
            out = net(tensors["image"])
        loss = panoptic_loss(out, tensors, ignore)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(training.finite_loss(loss, f"{status}, step {b + 1}", precision))
        if on_progress is not None:
            on_progress(first_it + b + 1, total, status=f"{status} loss {np.mean(losses):.3f}")
    return float(np.mean(losses)), round(time.time() - started, 2)


def run_train_panoptic(
    out_dir: str | Path,
    *,
    pseudo: str | Path,
    params: TrainPanopticParams | None = None,
    overwrite: bool = False,
    on_progress: Callable[..., None] | None = None,
    **changes: Any,
) -> Path:
    """Train on the pseudo-label artifact `pseudo`; returns the artifact folder. `changes` are
    field values of `params` (`epochs=2` is `params=TrainPanopticParams(epochs=2)`)."""
    p = resolve(TrainPanopticParams, params, changes)
    pseudo_dir = Path(pseudo)
    ds, gt_ds, pseudo_ids, annotated_ids = _read_pseudo_labels(pseudo_dir)
    gt_ids = annotated_ids if p.mixed else []
    dev = devices.resolve_device(p.device)
    dist = distributed.init_distributed(dev.type)
    precision = devices.stage_precision(p, dev)
    kwargs = model_kwargs("panoptic_deeplab", tiny=p.tiny, backbone=p.backbone, num_classes=ds.num_classes)
    first = ds.load_image(ds.sample(pseudo_ids[0]))
    resolved = {"precision": precision, "pseudo_images": len(pseudo_ids), "ground_truth_ids": gt_ids}
    with open_artifact(
        out_dir, kind="panoptic-model", stage="train-panoptic", params=p, resolved=resolved,
        inputs=[pseudo_dir], overwrite=overwrite,
    ) as art:  # fmt: skip
        if art.up_to_date:
            return art.path
        # 1. model, optimizer, resume state, data
        devices.seed_everything(p.seed)
        model = load_backbone_weights(PanopticDeepLab(**kwargs), p.backbone_weights).to(dev)
        hw = input_size(first.shape[:2], p.size, model.backbone.multiple)
        optimizer = torch.optim.Adam([w for w in model.parameters() if w.requires_grad], lr=p.lr)
        last = art.path / "checkpoints" / "last.pt"
        start_epoch, best, history = training.resume(last, model, optimizer, dev)
        net = torch.nn.parallel.DistributedDataParallel(model) if dist.enabled else model
        data, gt_data = PanopticData(ds, pseudo_dir, hw), PanopticData(gt_ds, pseudo_dir, hw)
        loader = MixedBatches(data, pseudo_ids, gt_data, gt_ids, model.backbone.normalise, dev)
        val_ds = open_dataset(ds.name, ds.root, p.val_split) if p.val_split else None
        val_ids = [s.id for s in val_ds.samples()][: p.val_images or None] if val_ds else []
        for epoch in range(start_epoch, p.epochs):
            # 2. one epoch of mixed batches
            mine, aug = _epoch_batches(p, epoch, len(pseudo_ids), len(gt_ids), dist)
            status = f"epoch {epoch + 1}/{p.epochs}" + (f" best val PQ {best:.1f}" if best > NO_SCORE else "")
            loss, seconds = _train_epoch(
                net, optimizer, mine, loader, aug, lr=p.lr, first_it=epoch * len(mine),
                total=p.epochs * len(mine), ignore=ds.ignore_index, dev=dev, precision=precision,
                on_progress=on_progress, status=status,
            )  # fmt: skip
            # 3. validate, keep the best (PQ in percent), checkpoint
            val = validate(model, val_ds, hw, val_ids, dist, dev, precision) if val_ds else {}
            row = {"epoch": epoch + 1, "loss": loss, "seconds": seconds}
            row |= {f"val_{k}": v for k, v in val.items()} or {"val_pq": None}
            history.append(row)
            better, best = training.improved(val.get("pq"), best)
            log.info(
                "epoch %d/%d: loss %.4f%s", epoch + 1, p.epochs, row["loss"], f", val {val}" if val else ""
            )
            training.end_epoch(
                art, model, "panoptic_deeplab", kwargs, optimizer, history, best, better, dist,
                extra={"size_hw": list(hw), "things": list(ds.things)}, score_key="val_pq",
            )  # fmt: skip
        if dist.is_main:
            training.loss_png(art.file("loss.png"), history, title="train-panoptic", score_key="val_pq",
                              score_label="val PQ (%)")  # fmt: skip
        return art.finish(
            outputs={
                "best": "checkpoints/best.pt", "last": "checkpoints/last.pt", "log": "log.jsonl",
                "pseudo_images": len(pseudo_ids), "ground_truth_images": len(gt_ids), "input_hw": list(hw),
                "best_val_pq": None if best == NO_SCORE else best, "history": history,
                "rank_weight_checksums": distributed.weight_checksums(model.parameters(), dist),
            },
            label_map=ds.class_names,
            device=devices.describe(dev),
        )  # fmt: skip
