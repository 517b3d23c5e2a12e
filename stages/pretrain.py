"""`fsseg pretrain`: train a few-shot segmenter on the base classes of a fold.

Reads:  a dataset (train split), a fold, and for `imr-hsnet` a clip-cam artifact of that
        dataset (`cams`, ids `<image>__<class>`) whose CAMs are the initial masks; optionally a
        fixed validation episodes file (+ its CAMs).
Writes: `checkpoints/last.pt` (full resume state) and `checkpoints/best.pt` (best validation
        mIoU, or last without validation), `log.jsonl` (one line per epoch), `loss.png`,
        `manifest.json` (kind "checkpoint").
Methods:
- `imr-hsnet`: episodic training, query and support initial masks = their CAMs, loss Eq. 7:
  sum over steps of lambda_t (CE(query) + w_s CE(support)) against ground-truth masks.
- `hsnet`: the plain HSNet baseline, ground-truth support masks, CE on the query.
Both: frozen backbone, Adam, images resized to `img_size`^2 without augmentation (as the
paper), a new random support per query each epoch (seeded), DDP under torchrun (each rank
takes its share of the episodes; gradients are averaged), validation each epoch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages.core import devices, distributed, training
from stages.core.artifacts import open_artifact, read_manifest
from stages.core.datasets import open_dataset
from stages.core.episodes import DEFAULT_MIN_AREA, read_episodes
from stages.core.errors import FssegError
from stages.core.imageio import load_float_map, read_image
from stages.core.metrics import FssMeter
from stages.core.validation import checked_label
from stages.models.backbones import network_input
from stages.models.hsnet import HSNet, IMRHSNet, final_mask, initial_mask

log = logging.getLogger(__name__)
METHODS = ("imr-hsnet", "hsnet", "pspnet")


class EpisodeData:
    """Loads (image, ground-truth mask, initial mask) triples at the training resolution."""

    def __init__(self, dataset, size: int, backbone: str, cams_dir: Path | None):
        self.ds, self.size, self.cams_dir, self.backbone = dataset, size, cams_dir, backbone

    def has_cam(self, image_id: str, cls: int) -> bool:
        return self.cams_dir is None or (self.cams_dir / "cams" / f"{image_id}__{cls}.npy").is_file()

    def __call__(self, image_id: str, cls: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image (3, s, s), target (s, s) 0/1/255, initial mask (1, h, w)): the CAM at the finest
        feature size, or for hsnet the ground-truth mask, as the authors feed them (`initial_mask`)."""
        sample = self.ds.sample(image_id)
        image = network_input(read_image(sample.image), self.size, self.backbone, resize="pil")[0]
        label = checked_label(self.ds, sample, self.ds.load_label(sample))
        label = torch.from_numpy(label.astype(np.int64))[None, None].float()
        label = F.interpolate(label, size=(self.size, self.size), mode="nearest")[0, 0].long()
        target = torch.where(label == self.ds.ignore_index, 255, (label == cls).long())
        if self.cams_dir is not None:
            cam = load_float_map(self.cams_dir / "cams" / f"{image_id}__{cls}.npy")
            initial = initial_mask(cam, self.size, pixel=False)[0]
        else:
            initial = (target == 1).float()[None]
        return image, target, initial


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=True)
    return F.cross_entropy(logits, target, ignore_index=255)


def episode_loss(
    model, method: str, batch, *, steps: int, lambdas: Sequence[float], w_s: float
) -> torch.Tensor:
    """Loss of one batch of (query, support) episodes."""
    qi, qt, qm, si, st, sm = batch
    with torch.no_grad():
        q_levels, s_levels = model.backbone(qi), model.backbone(si)
    if method == "hsnet":
        return _ce(model.predict(q_levels, s_levels, sm), qt)
    q_steps, s_steps = model.refine(q_levels, s_levels, qm, sm, steps=steps)
    return sum(
        lambdas[t] * (_ce(lq, qt) + w_s * _ce(ls, st))
        for t, (lq, ls) in enumerate(zip(q_steps, s_steps, strict=True))
    )


class EpisodeLoss(torch.nn.Module):
    """The training loss as a module, so that DistributedDataParallel can wrap it."""

    def __init__(self, model, method: str, steps: int, lambdas: Sequence[float], w_s: float):
        super().__init__()
        self.model, self.method, self.steps, self.lambdas, self.w_s = model, method, steps, list(lambdas), w_s

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return episode_loss(
            self.model, self.method, batch, steps=self.steps, lambdas=self.lambdas, w_s=self.w_s
        )


def validate(
    model, method: str, data: EpisodeData, doc: dict, *, steps: int, dist, device, precision
) -> float:
    """FSS mIoU (HSNet's protocol, at the training resolution) over this rank's share of `doc`'s episodes."""
    meter = FssMeter()
    model.eval()
    with torch.no_grad(), devices.autocast(device, precision):
        for ep in distributed.shard(doc["episodes"], dist):
            qi, qt, qm = data(ep["query"], ep["class"])
            si, st, sm = data(ep["support"][0], ep["class"])
            if method == "hsnet":
                sm = (st == 1).float()[None]
            q_levels = model.backbone(qi[None].to(device))
            s_levels = model.backbone(si[None].to(device))
            if method == "hsnet":
                logits = model.predict(q_levels, s_levels, sm[None].to(device))
            else:
                logits = model.refine(
                    q_levels, s_levels, qm[None].to(device), sm[None].to(device), steps=steps
                )[0][-1]
            meter.update(final_mask(logits, qt.shape), qt.numpy(), ep["class"], 255)
    total = FssMeter()
    for part in distributed.all_gather_objects(meter, dist):
        total = total + part
    return total.miou()


def run_pretrain(
    out_dir: str | Path,
    *,
    method: str,
    dataset: str,
    root: str | Path,
    fold: int,
    split: str | None = None,
    cams: str | Path | None = None,
    backbone: str = "resnet50",
    backbone_weights: str = "imagenet",
    img_size: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    steps: int = 2,
    lambda_t: Sequence[float] | None = None,
    w_s: float = 1.0,
    episodes_per_epoch: int | None = None,
    val_episodes: str | Path | None = None,
    val_cams: str | Path | None = None,
    min_area: int = DEFAULT_MIN_AREA,
    n_folds: int | None = None,
    tiny: bool = False,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    label_smoothing: float = 0.1,
    contrastive: float = 0.0,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    max_anchors: int = 1024,
    val_split: str | None = None,
    val_images: int | None = None,
    resume: bool = False,
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
    overwrite: bool = False,
    on_progress: Callable[..., None] | None = None,
) -> Path:
    if method not in METHODS:
        raise FssegError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if method == "imr-hsnet" and cams is None:
        raise FssegError(
            "--cams is required for --method imr-hsnet: the clip-cam artifact of the training images "
            "(fsseg clip-cam --dataset ... --root ...)"
        )
    defaults = (
        PSPNET_DEFAULTS
        if method == "pspnet"
        else {"img_size": 400, "epochs": 200, "batch_size": 40, "lr": 4e-4}
    )
    # None (not 0: a value to refuse at the CLI) means the method's own default
    img_size = defaults["img_size"] if img_size is None else img_size
    epochs = defaults["epochs"] if epochs is None else epochs
    batch_size = defaults["batch_size"] if batch_size is None else batch_size
    lr = defaults["lr"] if lr is None else lr
    if method == "pspnet":
        return _pretrain_pspnet_artifact(
            out_dir,
            dataset=dataset,
            root=root,
            fold=fold,
            split=split,
            backbone=backbone,
            backbone_weights=backbone_weights,
            img_size=img_size,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            smoothing=label_smoothing,
            contrastive=contrastive,
            temperature=temperature,
            base_temperature=base_temperature,
            max_anchors=max_anchors,
            val_split=val_split,
            val_images=val_images,
            n_folds=n_folds,
            tiny=tiny,
            resume=resume,
            device=device,
            precision=precision,
            seed=seed,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    lambdas = list(lambda_t) if lambda_t else [1.0] * steps
    if len(lambdas) != steps:
        raise FssegError(f"--lambda-t gives {len(lambdas)} weights for {steps} steps")
    dev = devices.resolve_device(device)
    devices.check_precision(precision, dev)
    dist = distributed.init_distributed(dev.type)
    devices.seed_everything(seed)
    cams_dir = Path(cams) if cams else None
    if cams_dir is not None:
        read_manifest(cams_dir, "cams")
    ds = open_dataset(dataset, root, split)
    novel = ds.fold_classes(fold, n_folds)
    base = [c for c in ds.foreground_classes() if c not in novel]
    channels = (4, 8, 16) if tiny else (16, 64, 128)
    model_kwargs: dict[str, Any] = {
        "backbone": backbone,
        "backbone_weights": None,
        "channels": list(channels),
    }
    if method == "imr-hsnet":
        model_kwargs |= {"mid": 32 if tiny else 512, "gate": 32 if tiny else 512, "state_size": img_size // 8}
    params = {
        "method": method,
        "dataset": dataset,
        "split": ds.split,
        "fold": fold,
        "n_folds": n_folds,
        "base_classes": base,
        "backbone": backbone,
        "backbone_weights": str(backbone_weights),
        "img_size": img_size,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": "adam",
        "steps": steps,
        "lambda_t": lambdas,
        "w_s": w_s,
        "episodes_per_epoch": episodes_per_epoch,
        "min_area": min_area,
        "tiny": tiny,
        "precision": precision,
        "model_kwargs": model_kwargs,
    }
    inputs = [root] + [p for p in (cams, val_episodes, val_cams) if p]
    with open_artifact(
        out_dir,
        kind="checkpoint",
        stage="pretrain",
        params=params,
        inputs=inputs,
        seed=seed,
        overwrite=overwrite,
    ) as art:
        if art.up_to_date:
            return art.path
        last = art.path / "checkpoints" / "last.pt"
        if resume and not last.is_file():
            raise FssegError(f"--resume: no {last} to resume from; run without --resume to start")
        cls = IMRHSNet if method == "imr-hsnet" else HSNet
        model = cls(**(model_kwargs | {"backbone_weights": backbone_weights})).to(dev)
        model.backbone.eval()
        trainable = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
        optimizer = torch.optim.Adam(trainable, lr=lr)
        start_epoch, best, history = training.resume(
            last, model, optimizer, dev
        )  # continue an unfinished run
        net = EpisodeLoss(model, method, steps, lambdas, w_s)
        if dist.enabled:
            net = torch.nn.parallel.DistributedDataParallel(net)

        data = EpisodeData(ds, img_size, backbone, cams_dir)
        pairs = [(i, c) for i, c in ds.pairs(base, min_area) if data.has_cam(i, c)]
        by_class: dict[int, list[str]] = {}
        for image_id, c in pairs:
            by_class.setdefault(c, []).append(image_id)
        pairs = [(i, c) for i, c in pairs if len(by_class[c]) > 1]
        if not pairs:
            raise FssegError(
                f"no training pairs: no base class of fold {fold} has two images over {min_area} pixels"
                + (" with CAMs in --cams" if cams_dir else "")
            )
        val_doc = read_episodes(val_episodes) if val_episodes else None
        val_data = EpisodeData(
            ds if val_doc is None else open_dataset(val_doc["dataset"], val_doc["root"], val_doc["split"]),
            img_size,
            backbone,
            Path(val_cams) if val_cams else cams_dir if method == "imr-hsnet" else None,
        )

        per_epoch = min(episodes_per_epoch or len(pairs), len(pairs))
        for epoch in range(start_epoch, epochs):
            rng = np.random.default_rng([seed, epoch])
            order = rng.permutation(len(pairs))[:per_epoch]
            episodes = []
            for k in order:
                qid, c = pairs[k]
                others = [i for i in by_class[c] if i != qid]
                episodes.append((qid, others[int(rng.integers(len(others)))], c))
            mine = distributed.shard(episodes, dist)
            net.train()
            model.backbone.eval()
            started, losses = time.time(), []
            for b, batch in enumerate(_batches(mine, max(1, batch_size // dist.world_size)), 1):
                loaded = [data(q, c) + data(s, c) for q, s, c in batch]
                tensors = [torch.stack([row[j] for row in loaded]).to(dev) for j in range(6)]
                with devices.autocast(dev, precision):
                    loss = net(*tensors)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                if on_progress is not None:
                    on_progress(
                        epoch * per_epoch + min(b * batch_size, per_epoch),
                        epochs * per_epoch,
                        status=f"epoch {epoch + 1}/{epochs} loss {np.mean(losses):.4f}"
                        + (f" best val mIoU {100 * best:.1f}" if best >= 0 else ""),
                    )
            val = (
                validate(
                    model, method, val_data, val_doc, steps=steps, dist=dist, device=dev, precision=precision
                )
                if val_doc
                else None
            )
            row = {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)) if losses else None,
                "seconds": time.time() - started,
                "val_miou": None if val is None else 100 * val,
            }
            history.append(row)
            improved = val is None or val > best
            if val is not None and val > best:
                best = val
            log.info(
                "epoch %d/%d: loss %.4f%s",
                epoch + 1,
                epochs,
                row["loss"] or 0,
                "" if val is None else f", val mIoU {100 * val:.2f} (best {100 * best:.2f})",
            )
            training.end_epoch(
                art, model, _name(method), model_kwargs, optimizer, history, best, improved, dist
            )
        if dist.is_main:
            training.loss_png(art.file("loss.png"), history)
        checksum = float(sum(p.detach().double().sum() for p in trainable))
        checksums = distributed.all_gather_objects(checksum, dist)  # every rank must hold the same weights
        if len(set(checksums)) > 1:
            log.warning("ranks disagree on the trained weights: %s", checksums)
        return art.finish(
            outputs={
                "rank_weight_checksums": checksums,
                "best": "checkpoints/best.pt",
                "last": "checkpoints/last.pt",
                "log": "log.jsonl",
                "training_pairs": len(pairs),
                "best_val_miou": None if best < 0 else 100 * best,
                "history": history,
            },
            label_map={str(c): ds.class_names[c] for c in base},
            device=devices.describe(dev),
        )


def _name(method: str) -> str:
    return "imr_hsnet" if method == "imr-hsnet" else "hsnet"


# ----------------------------------------------------------------------------- PSPNet (GFSS report)
PSPNET_DEFAULTS = {"img_size": 473, "epochs": 100, "batch_size": 12, "lr": 2.5e-3}


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
        sample = self.ds.sample(image_id)
        rgb = read_image(sample.image)
        raw = checked_label(self.ds, sample, self.ds.load_label(sample), rgb.shape)  # as label-gen refuses
        image = network_input(rgb, self.size, self.backbone)[0]
        label = torch.from_numpy(self.lut[raw])[None, None].float()
        label = F.interpolate(label, size=(self.size, self.size), mode="nearest")[0, 0].long()
        if flip:
            image, label = image.flip(-1), label.flip(-1)
        return image, label


class PSPNetLoss(torch.nn.Module):
    """CE with label smoothing + lambda * pixel InfoNCE on sampled anchors (the report's Eq. 3)."""

    def __init__(
        self,
        model,
        *,
        smoothing: float,
        contrastive: float,
        temperature: float,
        base_temperature: float,
        max_anchors: int,
    ):
        super().__init__()
        self.model, self.smoothing, self.contrastive = model, smoothing, contrastive
        self.temperature, self.base_temperature, self.max_anchors = temperature, base_temperature, max_anchors

    def forward(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
        from stages.models.pspnet import pixel_info_nce, sample_anchors

        feats, logits = self.model(images)
        up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=True)
        loss = F.cross_entropy(up, labels, ignore_index=255, label_smoothing=self.smoothing)
        if self.contrastive > 0:
            small = F.interpolate(labels[:, None].float(), size=feats.shape[-2:], mode="nearest")[:, 0].long()
            emb = F.normalize(self.model.projection(feats).float(), dim=1)
            emb = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
            idx = sample_anchors(
                small, logits.max(1).indices, max_anchors=self.max_anchors, generator=generator
            )
            if len(idx) > 1:
                loss = loss + self.contrastive * pixel_info_nce(
                    emb[idx],
                    small.reshape(-1)[idx],
                    temperature=self.temperature,
                    base_temperature=self.base_temperature,
                )
        return loss


def run_pretrain_pspnet(art, hp: dict, *, ds, base, dist, dev, model_kwargs, on_progress) -> dict:
    """The PSPNet training loop (inside an open artifact); returns the manifest outputs. `hp`: the
    hyperparameters recorded in the manifest."""
    h = SimpleNamespace(**hp)
    from stages.core.weights import backbone_weights_fit
    from stages.models.pspnet import PSPNet

    with backbone_weights_fit(h.backbone_weights, h.backbone):
        model = PSPNet(**(model_kwargs | {"backbone_weights": h.backbone_weights})).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
    last = art.path / "checkpoints" / "last.pt"
    start_epoch, best, history = training.resume(last, model, optimizer, dev)
    net = PSPNetLoss(
        model,
        smoothing=h.smoothing,
        contrastive=h.contrastive,
        temperature=h.temperature,
        base_temperature=h.base_temperature,
        max_anchors=h.max_anchors,
    )
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            net, find_unused_parameters=True
        )  # no anchors: no projection
    data = SegmentationData(ds, base, h.img_size, h.backbone)
    ids = [s.id for s in ds.samples()]
    per_rank = max(1, h.batch_size // dist.world_size)
    iters_per_epoch = -(-len(distributed.shard(ids, dist)) // per_rank)
    total_iters = h.epochs * iters_per_epoch
    val_ds = open_dataset(ds.name, ds.root, h.val_split) if h.val_split else None
    for epoch in range(start_epoch, h.epochs):
        rng = np.random.default_rng([h.seed, epoch])
        order = [ids[k] for k in rng.permutation(len(ids))]
        flips = rng.random(len(order)) < 0.5
        mine = distributed.shard(list(zip(order, flips, strict=True)), dist)
        model.train()
        started, losses = time.time(), []
        generator = torch.Generator().manual_seed(h.seed * 1000 + epoch)
        for b, batch in enumerate(_batches(mine, per_rank)):
            it = epoch * iters_per_epoch + b
            for group in optimizer.param_groups:  # cosine decay per iteration
                group["lr"] = training.cosine_lr(h.lr, it, total_iters)
            pairs = [data(i, bool(f)) for i, f in batch]
            images = torch.stack([p[0] for p in pairs]).to(dev)
            labels = torch.stack([p[1] for p in pairs]).to(dev)
            with devices.autocast(dev, h.precision):
                loss = net(images, labels, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if on_progress is not None:
                on_progress(
                    it + 1,
                    total_iters,
                    status=f"epoch {epoch + 1}/{h.epochs} loss {np.mean(losses):.4f}"
                    + (f" best val mIoU {100 * best:.1f}" if best >= 0 else ""),
                )
        val = (
            _pspnet_val(model, val_ds, base, h.img_size, h.backbone, h.val_images, dist, dev, h.precision)
            if val_ds
            else None
        )
        row = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "seconds": time.time() - started,
            "val_miou": None if val is None else 100 * val,
        }
        history.append(row)
        improved = val is None or val > best
        best = max(best, val) if val is not None else best
        log.info(
            "epoch %d/%d: loss %.4f%s",
            epoch + 1,
            h.epochs,
            row["loss"],
            "" if val is None else f", val mIoU (background + base) {100 * val:.2f}",
        )
        training.end_epoch(
            art,
            model,
            "pspnet",
            model_kwargs,
            optimizer,
            history,
            best,
            improved,
            dist,
            extra={"base_classes": list(base)},
        )
    if dist.is_main:
        training.loss_png(art.file("loss.png"), history)
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    return {
        "best": "checkpoints/best.pt",
        "last": "checkpoints/last.pt",
        "log": "log.jsonl",
        "training_images": len(ids),
        "best_val_miou": None if best < 0 else 100 * best,
        "history": history,
        "rank_weight_checksums": distributed.all_gather_objects(checksum, dist),
    }


def _pspnet_val(model, ds, base, size, backbone, limit, dist, dev, precision) -> float:
    """mIoU over background + base classes on (up to `limit`) validation images."""
    from stages.core.metrics import ConfusionMatrix

    data = SegmentationData(ds, base, size, backbone)
    ids = [s.id for s in ds.samples()][: limit or None]
    cm = ConfusionMatrix(len(base) + 1)
    model.eval()
    with torch.no_grad(), devices.autocast(dev, precision):
        for image_id in distributed.shard(ids, dist):
            image, label = data(image_id)
            logits = model(image[None].to(dev))[1]
            pred = (
                F.interpolate(logits.float(), size=label.shape, mode="bilinear", align_corners=True)
                .max(1)
                .indices[0]
            )
            cm.update(pred.cpu().numpy(), label.numpy(), 255)
    total = ConfusionMatrix(len(base) + 1)
    for part in distributed.all_gather_objects(cm, dist):
        total = total + part
    return total.miou()


def _pretrain_pspnet_artifact(
    out_dir, *, dataset, root, fold, split, n_folds, resume, device, overwrite, on_progress, **hp
) -> Path:
    backbone, precision, seed = hp["backbone"], hp["precision"], hp["seed"]
    contrastive, temperature, max_anchors = hp["contrastive"], hp["temperature"], hp["max_anchors"]
    if backbone not in ("resnet50", "efficientnet_lite0", "tiny"):
        raise FssegError(
            f"--backbone {backbone} is not available for pspnet; use resnet50, efficientnet_lite0 or tiny"
        )
    if contrastive < 0 or temperature <= 0 or max_anchors < 2:
        raise FssegError("--contrastive must be >= 0, --temperature > 0 and --max-anchors >= 2")
    dev = devices.resolve_device(device)
    devices.check_precision(precision, dev)
    dist = distributed.init_distributed(dev.type)
    devices.seed_everything(seed)
    ds = open_dataset(dataset, root, split)
    novel = ds.fold_classes(fold, n_folds)
    base = [c for c in ds.foreground_classes() if c not in novel]
    model_kwargs = {
        "backbone": backbone,
        "backbone_weights": None,
        "num_classes": len(base) + 1,
        "bottleneck": 32 if hp["tiny"] else 512,
        "proj_dim": 16 if hp["tiny"] else 128,
    }
    hp["backbone_weights"] = str(hp["backbone_weights"])
    params = {
        "method": "pspnet",
        "dataset": dataset,
        "split": ds.split,
        "fold": fold,
        "n_folds": n_folds,
        "base_classes": base,
        "optimizer": "sgd",
        "schedule": "cosine",
        "augmentation": "random mirror",
        **hp,
        "model_kwargs": model_kwargs,
    }
    with open_artifact(
        out_dir,
        kind="checkpoint",
        stage="pretrain",
        params=params,
        inputs=[root],
        seed=seed,
        overwrite=overwrite,
    ) as art:
        if art.up_to_date:
            return art.path
        if resume and not (art.path / "checkpoints" / "last.pt").is_file():
            raise FssegError(f"--resume: no {art.path / 'checkpoints' / 'last.pt'} to resume from")
        outputs = run_pretrain_pspnet(
            art, hp, ds=ds, base=base, dist=dist, dev=dev, model_kwargs=model_kwargs, on_progress=on_progress
        )
        label_map = {"0": "background"} | {str(k): ds.class_names[c] for k, c in enumerate(base, 1)}
        return art.finish(outputs=outputs, label_map=label_map, device=devices.describe(dev))
