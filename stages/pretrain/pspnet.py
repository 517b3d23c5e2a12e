"""PSPNet pretraining on background + base classes (`pretrain --method pspnet`, the GFSS report).

Labels are remapped: background 0 (the dataset's background and every novel class), base classes
1..B in order, ignored pixels 255. Each epoch visits every training image once in an order seeded
by `derived_seed(seed, epoch)`, each mirrored with probability 1/2, resized to `img_size`^2.
Loss (the report's Eq. 3): CE with label smoothing + `contrastive` x pixel InfoNCE on anchors
sampled half hard, half easy per class. SGD with momentum and weight decay, the learning rate
decayed by `cosine_lr` each iteration. Validation (optional): mIoU over background + base
classes on `val_split`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages.core import devices, distributed, training
from stages.core.datasets import open_dataset
from stages.core.imageio import read_image
from stages.core.validation import checked_label
from stages.models import model_kwargs
from stages.models.backbones import load_backbone_weights, network_input
from stages.params import PSPNetTrainParams
from stages.pretrain import LAST, Run, Trained

log = logging.getLogger(__name__)


class SegmentationData:
    """Training samples with labels remapped: background 0 (the dataset's background and every
    novel class), base classes 1..B in order, ignored pixels 255."""

    def __init__(self, dataset, base: Sequence[int], size: int, backbone: str):
        self.ds, self.size, self.backbone = dataset, size, backbone
        self.lut = np.zeros(max(256, dataset.num_classes, dataset.ignore_index + 1), np.int64)
        for k, c in enumerate(base, 1):
            self.lut[c] = k
        self.lut[dataset.ignore_index] = 255

    def __call__(self, image_id: str, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (3, s, s), remapped label (s, s)), mirrored when `flip`."""
        sample = self.ds.sample(image_id)
        rgb = read_image(sample.image)
        raw = checked_label(self.ds, sample, self.ds.load_label(sample), rgb.shape)  # as label-gen refuses
        image = network_input(rgb, self.size, self.backbone)[0]
        label = torch.from_numpy(self.lut[raw])[None, None].float()
        label = F.interpolate(label, size=(self.size, self.size), mode="nearest")[0, 0].long()
        if flip:
            image, label = image.flip(-1), label.flip(-1)
        return image, label


def settled(p: PSPNetTrainParams, base: list[int]) -> dict[str, Any]:
    """What the run settles beyond the record: the optimizer, schedule and augmentation, and the
    model's constructor arguments (the backbone's weights are loaded after it is built)."""
    kwargs = model_kwargs("pspnet", tiny=p.tiny, backbone=p.backbone, num_classes=len(base) + 1)
    return {"optimizer": "sgd", "schedule": "cosine", "augmentation": "random mirror", "model_kwargs": kwargs}


class PSPNetLoss(torch.nn.Module):
    """CE with label smoothing + lambda * pixel InfoNCE on sampled anchors (the report's Eq. 3)."""

    def __init__(self, model, p: PSPNetTrainParams):
        super().__init__()
        self.model, self.p = model, p

    def forward(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
        """Loss of images (B, 3, s, s) against labels (B, s, s); `generator` samples the anchors."""
        from stages.models.pspnet import pixel_info_nce, sample_anchors

        p = self.p
        feats, logits = self.model(images)
        up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=True)
        loss = F.cross_entropy(up, labels, ignore_index=255, label_smoothing=p.label_smoothing)
        if p.contrastive > 0:
            small = F.interpolate(labels[:, None].float(), size=feats.shape[-2:], mode="nearest")[:, 0].long()
            emb = F.normalize(self.model.projection(feats).float(), dim=1)
            emb = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
            idx = sample_anchors(small, logits.max(1).indices, max_anchors=p.max_anchors, generator=generator)
            if len(idx) > 1:
                loss = loss + p.contrastive * pixel_info_nce(
                    emb[idx],
                    small.reshape(-1)[idx],
                    temperature=p.temperature,
                    base_temperature=p.base_temperature,
                )
        return loss


def validate(model, ds, p: PSPNetTrainParams, run: Run) -> float:
    """mIoU in percent over background + base classes on (at most `val_images`) images of `ds`,
    each rank scoring its share."""
    from stages.core.metrics import ConfusionMatrix

    data = SegmentationData(ds, run.base, p.img_size, p.backbone)
    ids = [s.id for s in ds.samples()][: p.val_images or None]
    cm = ConfusionMatrix(len(run.base) + 1)
    model.eval()
    with torch.no_grad(), devices.autocast(run.dev, run.precision):
        for image_id in distributed.shard(ids, run.dist):
            image, label = data(image_id)
            logits = model(image[None].to(run.dev))[1]
            up = F.interpolate(logits.float(), size=label.shape, mode="bilinear", align_corners=True)
            cm.update(up.max(1).indices[0].cpu().numpy(), label.numpy(), 255)
    return 100 * distributed.summed(cm, run.dist).miou()


def train_epoch(
    net,
    model,
    optimizer,
    data: SegmentationData,
    ids: list[str],
    epoch: int,
    best: float,
    p: PSPNetTrainParams,
    run: Run,
) -> list[float]:
    """One pass over this rank's share of the images (batch_size a step, all ranks together), in the
    epoch's seeded order and mirroring; the learning rate follows `cosine_lr` per iteration.
    Returns the losses of its steps."""
    per_rank = max(1, p.batch_size // run.dist.world_size)
    iters_per_epoch = -(-len(distributed.shard(ids, run.dist)) // per_rank)
    total_iters = p.epochs * iters_per_epoch
    seed = training.derived_seed(p.seed, epoch)
    rng = np.random.default_rng(seed)
    order = [ids[k] for k in rng.permutation(len(ids))]
    flips = rng.random(len(order)) < 0.5
    generator = torch.Generator().manual_seed(seed)  # anchor sampling
    model.train()
    losses: list[float] = []
    mine = distributed.shard(list(zip(order, flips, strict=True)), run.dist)
    for b in range(0, len(mine), per_rank):
        it = epoch * iters_per_epoch + b // per_rank
        for group in optimizer.param_groups:
            group["lr"] = training.cosine_lr(p.lr, it, total_iters)
        samples = [data(image_id, bool(flip)) for image_id, flip in mine[b : b + per_rank]]
        images = torch.stack([image for image, _ in samples]).to(run.dev)
        labels = torch.stack([label for _, label in samples]).to(run.dev)
        with devices.autocast(run.dev, run.precision):
            loss = net(images, labels, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(
            training.finite_loss(loss, f"epoch {epoch + 1}, step {b // per_rank + 1}", run.precision)
        )
        run.report(it + 1, total_iters, epoch=epoch, epochs=p.epochs, losses=losses, best=best)
    return losses


def train(art, p: PSPNetTrainParams, run: Run) -> Trained:
    """The PSPNet training loop inside the open artifact `art`."""
    from stages.models.pspnet import PSPNet

    # 1. the model, trained whole with SGD; resumed from last.pt
    model = load_backbone_weights(PSPNet(**run.model_kwargs), p.backbone_weights).to(run.dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    start_epoch, best, history = training.resume(art.path / LAST, model, optimizer, run.dev)
    net = PSPNetLoss(model, p)
    if run.dist.enabled:  # a batch without anchors leaves the projection unused
        net = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)

    # 2. the data: every training image; the validation split
    data = SegmentationData(run.ds, run.base, p.img_size, p.backbone)
    ids = [s.id for s in run.ds.samples()]
    val_ds = open_dataset(run.ds.name, run.ds.root, p.val_split) if p.val_split else None

    # 3. the epochs: a pass, validation, checkpoints (best in percent)
    for epoch in range(start_epoch, p.epochs):
        started = time.time()
        losses = train_epoch(net, model, optimizer, data, ids, epoch, best, p, run)
        score = validate(model, val_ds, p, run) if val_ds else None
        is_best, best = training.improved(score, best)
        row = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "seconds": time.time() - started,
            "val_miou": score,
        }
        history.append(row)
        shown = "" if score is None else f", val mIoU (background + base) {score:.2f}"
        log.info("epoch %d/%d: loss %.4f%s", epoch + 1, p.epochs, row["loss"], shown)
        training.end_epoch(
            art,
            model,
            "pspnet",
            run.model_kwargs,
            optimizer,
            history,
            best,
            is_best,
            run.dist,
            extra={"base_classes": list(run.base)},
        )

    label_map = {"0": "background"} | {str(k): run.ds.class_names[c] for k, c in enumerate(run.base, 1)}
    return Trained(history, best, list(model.parameters()), label_map, {"training_images": len(ids)})
