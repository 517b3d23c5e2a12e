"""`fsseg train-panoptic`: a Panoptic-DeepLab-style model trained on SPINO pseudo-labels with mixed batches.

Reads:  a pseudo-label artifact (`--pseudo`) and, through its manifest, the dataset and the k
        annotated images label-gen learnt from (their ground truth joins every batch).
Writes: `checkpoints/last.pt` (resume state), `checkpoints/best.pt` (best validation PQ, or the
        last epoch without validation), `log.jsonl`, `loss.png`, `manifest.json` (kind "panoptic-model").
        Predict mode (`run_predict_panoptic`): the panoptic forms of pseudo-label for a split
        (kind "panoptic-pred"), for `fsseg evaluate --task panoptic`.
Algorithm: semantic head (bootstrapped CE, hardest 20%), center heatmap (MSE against Gaussians of
        sigma 8 at instance centres of mass, weight 200), offsets to the centre (L1 on thing pixels,
        weight 0.01); Adam with poly decay (power 0.9); hflip + colour jitter 0.2. Mixed batches:
        each batch of size B >= 2 holds B - 1 pseudo-labelled samples and one ground-truth sample;
        with B = 1 pseudo-labelled and ground-truth batches alternate. An epoch is one pass over the
        pseudo-labels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from stages.core import devices, distributed, training
from stages.core.artifacts import open_artifact, read_manifest, run_items
from stages.core.checkpoints import build_from_checkpoint
from stages.core.datasets import open_dataset
from stages.core.errors import FssegError
from stages.core.imageio import read_label
from stages.core.metrics import ConfusionMatrix, PanopticQuality
from stages.core.panoptic import PanopticWriter, cityscapes_form, from_instance_ids, instances_of
from stages.core.validation import checked_label
from stages.core.weights import backbone_weights_fit
from stages.models.spino import (
    PanopticDeepLab,
    bootstrapped_ce,
    colour_jitter,
    input_size,
    panoptic_inference,
    to_unit,
)

log = logging.getLogger(__name__)

BACKBONES = ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "resnet50", "efficientnet_lite0", "tiny")


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


def predict(
    model, x: torch.Tensor, things, out_hw: tuple[int, int], device, precision
) -> tuple[np.ndarray, np.ndarray]:
    """(class map, instances) at `out_hw` for one normalised input (1, 3, h, w)."""
    with torch.no_grad(), devices.autocast(device, precision):
        out = model(x.to(device))
    classes, instances = panoptic_inference(
        out["semantic"][0].float(), out["center"][0].float(), out["offset"][0].float(), things
    )
    size = out_hw[::-1]
    import cv2

    classes = cv2.resize(classes.cpu().numpy().astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
    instances = cv2.resize(instances.cpu().numpy().astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
    return classes, instances


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
        classes, instances = predict(model, x, ds.things, label.shape, device, precision)
        cm.update(classes, label, ds.ignore_index)
        gt = from_instance_ids(
            cityscapes_form(label, gt_instances, label_ids, ds.ignore_index, void), categories
        )
        pred = from_instance_ids(
            cityscapes_form(classes, instances, label_ids, ds.ignore_index, void), categories
        )
        pq.update(gt, pred)
    parts = distributed.all_gather_objects((pq, cm), dist)
    pq, cm = parts[0]
    for other_pq, other_cm in parts[1:]:
        pq, cm = pq + other_pq, cm + other_cm
    res = pq.results(categories)["all"]
    return {"pq": 100 * res["pq"], "sq": 100 * res["sq"], "rq": 100 * res["rq"], "miou": 100 * cm.miou()}


def run_train_panoptic(
    out_dir: str | Path,
    *,
    pseudo: str | Path,
    backbone: str = "dinov2_vitb14",
    backbone_weights: str = "auto",
    size: int | None = None,
    epochs: int = 20,
    batch_size: int = 8,
    lr: float = 1e-3,
    mixed: bool = True,
    val_split: str | None = None,
    val_images: int | None = None,
    tiny: bool = False,
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
    overwrite: bool = False,
    on_progress: Callable[..., None] | None = None,
) -> Path:
    """Train on a pseudo-label artifact; returns the artifact folder."""
    if backbone not in BACKBONES:
        raise FssegError(f"--backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
    if epochs < 1 or batch_size < 1:
        raise FssegError("--epochs and --batch-size must be at least 1")
    pseudo_dir = Path(pseudo)
    made = read_manifest(pseudo_dir, "pseudo-label")["params"]
    ds = open_dataset(made["dataset"], made["root"], made["split"])
    gt_ds = open_dataset(made["label_gen_dataset"], made["label_gen_root"], made["label_gen_split"])
    if gt_ds.num_classes != ds.num_classes:
        raise FssegError(
            f"{pseudo_dir}: the annotated images and the pseudo-labels use different class lists"
        )
    pseudo_ids = sorted(
        p.name[: -len("_gtFine_instanceIds.png")]
        for p in (pseudo_dir / "cityscapes").glob("*_gtFine_instanceIds.png")
    )
    if not pseudo_ids:
        raise FssegError(
            f"{pseudo_dir} holds no pseudo-labels (cityscapes/*_gtFine_instanceIds.png); rerun fsseg pseudo-label"
        )
    gt_ids = list(made["annotated_ids"]) if mixed else []
    dev = devices.resolve_device(device)
    dist = distributed.init_distributed(dev.type)
    devices.check_precision(precision, dev)
    model_kwargs = {"backbone": backbone, "num_classes": ds.num_classes}
    if tiny:
        model_kwargs |= {"channels": 16, "head_channels": 8}
    first = ds.load_image(ds.sample(pseudo_ids[0]))
    params = {
        "backbone": backbone, "backbone_weights": backbone_weights, "size": size, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "mixed": mixed, "val_split": val_split, "val_images": val_images,
        "tiny": tiny, "precision": precision, "pseudo_images": len(pseudo_ids), "ground_truth_ids": gt_ids,
    }  # fmt: skip
    with open_artifact(
        out_dir, kind="panoptic-model", stage="train-panoptic", params=params, inputs=[pseudo_dir], seed=seed,
        overwrite=overwrite,
    ) as art:  # fmt: skip
        if art.up_to_date:
            return art.path
        devices.seed_everything(seed)
        with backbone_weights_fit(backbone_weights, backbone):
            model = PanopticDeepLab(**model_kwargs, backbone_weights=backbone_weights).to(dev)
        hw = input_size(first.shape[:2], size, model.backbone.multiple)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=lr)
        start_epoch, best, history = training.resume(
            art.path / "checkpoints" / "last.pt", model, optimizer, dev
        )
        net = torch.nn.parallel.DistributedDataParallel(model) if dist.enabled else model
        data = PanopticData(ds, pseudo_dir, hw)
        gt_data = PanopticData(gt_ds, pseudo_dir, hw)
        val_ds = open_dataset(ds.name, ds.root, val_split) if val_split else None
        val_ids = [s.id for s in val_ds.samples()][: val_images or None] if val_ds else []
        per_epoch = len(mixed_batches(len(pseudo_ids), len(gt_ids), batch_size, np.random.default_rng(0)))
        per_rank = -(-per_epoch // dist.world_size)
        total = epochs * per_rank
        for epoch in range(start_epoch, epochs):
            rng = np.random.default_rng([seed, epoch])
            batches = mixed_batches(len(pseudo_ids), len(gt_ids), batch_size, rng)
            mine = distributed.shard(batches, dist)
            mine += mine[: per_rank - len(mine)]  # equal step counts on every rank (DDP)
            aug = np.random.default_rng([seed, epoch, dist.rank])
            model.train()
            started, losses = time.time(), []
            for b, batch in enumerate(mine):
                it = epoch * per_rank + b
                for group in optimizer.param_groups:
                    group["lr"] = lr * (1 - it / total) ** 0.9
                items = [
                    data.tensors(*data.pseudo(pseudo_ids[i]), aug)
                    if source == "pseudo"
                    else gt_data.tensors(*gt_data.ground_truth(gt_ids[i]), aug)
                    for source, i in batch
                ]
                tensors = {key: torch.stack([t[key] for t in items]).to(dev) for key in items[0]}
                x = model.backbone.normalise(tensors["image"])
                with devices.autocast(dev, precision):
                    out = net(x)
                loss = panoptic_loss(out, tensors, ds.ignore_index)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                if on_progress is not None:
                    status = f"epoch {epoch + 1}/{epochs} loss {np.mean(losses):.3f}"
                    on_progress(
                        it + 1, total, status=status + (f" best val PQ {best:.1f}" if best >= 0 else "")
                    )
            val = validate(model, val_ds, hw, val_ids, dist, dev, precision) if val_ds else {}
            row = {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "seconds": round(time.time() - started, 2),
            }
            row |= {f"val_{k}": v for k, v in val.items()} or {"val_pq": None}
            history.append(row)
            improved = not val or val["pq"] > best
            best = max(best, val["pq"]) if val else best
            log.info(
                "epoch %d/%d: loss %.4f%s", epoch + 1, epochs, row["loss"], f", val {val}" if val else ""
            )
            training.end_epoch(art, model, "panoptic_deeplab", model_kwargs, optimizer, history, best, improved, dist,
                      extra={"size_hw": list(hw), "things": list(ds.things)}, score_key="val_pq")  # fmt: skip
        if dist.is_main:
            training.loss_png(
                art.file("loss.png"),
                history,
                title="train-panoptic",
                score_key="val_pq",
                score_label="val PQ (%)",
            )
        checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
        return art.finish(
            outputs={
                "best": "checkpoints/best.pt", "last": "checkpoints/last.pt", "log": "log.jsonl",
                "pseudo_images": len(pseudo_ids), "ground_truth_images": len(gt_ids),
                "best_val_pq": None if best < 0 else best, "history": history,
                "rank_weight_checksums": distributed.all_gather_objects(checksum, dist),
            },
            label_map=ds.class_names,
            device=devices.describe(dev),
        )  # fmt: skip


def run_predict_panoptic(
    out_dir: str | Path,
    *,
    checkpoint: str | Path,
    dataset: str,
    root: str | Path,
    split: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    overwrite: bool = False,
    on_progress: Callable[..., None] | None = None,
) -> Path:
    """Panoptic predictions of a trained model for every image of a split."""
    ds = open_dataset(dataset, root, split)
    dev = devices.resolve_device(device)
    distributed.init_distributed(dev.type)  # under torchrun: join, then shard the items
    params = {
        "dataset": dataset,
        "root": str(Path(root).resolve()),
        "split": ds.split,
        "precision": precision,
    }
    with open_artifact(
        out_dir, kind="panoptic-pred", stage="train-panoptic --predict", params=params, inputs=[checkpoint],
        overwrite=overwrite,
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
            writer.write(
                art, sample_id, image, *predict(model, x, ds.things, image.shape[:2], dev, precision)
            )

        run_items(art, ids, lambda i: art.has(writer.done_file(i)), work, on_progress)
        writer.write_coco_json(art, ids)
        return art.finish(
            outputs={"images": len(ids), "cityscapes": "cityscapes/", "coco_panoptic": "panoptic.json"},
            label_map=ds.class_names,
            device=devices.describe(dev),
        )
