"""`fsseg label-gen`: SPINO's semantic and boundary heads on a frozen backbone, from k labelled images.

Reads:  a dataset (k annotated images of its split).
Writes: `heads.pt` (both heads; backbone named, not stored), `log.jsonl` (loss per epoch),
        `loss.png`, `manifest.json` (kind "label-gen").
Algorithm: the frozen backbone sees `--views` versions of each image per head, computed once and
        cached (view 0 the whole image; the others random resized crops with the head's scale range,
        horizontal flips and colour jitter 0.2). Semantic head: bootstrapped cross-entropy over the
        hardest 20% of pixels; boundary head: BCE against pixels whose 3x3 neighbourhood holds another
        segment (instances from the dataset, else connected components of thing classes). Adam with
        cosine decay, batch 1, each head its own epochs (50 / 40), epoch e using view e mod V. Random
        streams: one per image (its views) and one per epoch (the image order), from the seed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages.core import devices, training
from stages.core.artifacts import atomic_write_text, open_artifact
from stages.core.checkpoints import save_checkpoint
from stages.core.datasets import open_dataset
from stages.core.errors import FssegError
from stages.core.panoptic import boundary_target, segment_ids
from stages.core.validation import checked_label
from stages.models.backbones import load_backbone_weights
from stages.models.spino import (
    DenseFeatures,
    LabelGenHeads,
    bootstrapped_ce,
    colour_jitter,
    input_size,
    to_unit,
)
from stages.params import LabelGenParams, resolve

log = logging.getLogger(__name__)

# The ten Cityscapes training images of the SPINO paper (indices into the sorted train list).
CITYSCAPES_K10 = (12, 324, 450, 608, 742, 768, 798, 836, 1300, 2892)
SCALES = {"semantic": (0.2, 1.0), "boundary": (0.4, 1.0)}


def choose_indices(ds, k: int, indices: Sequence[int] | None, seed: int) -> list[int]:
    """Which training images are annotated: `indices`, the authors' ten for Cityscapes with k=10,
    else k drawn with `seed`."""
    n = len(ds.samples())
    if indices:
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise FssegError(f"--indices {bad} are out of range: {ds.name} split {ds.split!r} has {n} images")
        return sorted(set(indices))
    if ds.name == "cityscapes" and k == 10:
        if n <= max(CITYSCAPES_K10):
            raise FssegError(
                f"--k 10 on cityscapes uses the SPINO paper's train indices {list(CITYSCAPES_K10)}, which need the "
                f"full train split (2975 images); this split has {n}: pass --indices or another --k"
            )
        return list(CITYSCAPES_K10)
    labelled = [i for i, s in enumerate(ds.samples()) if s.label is not None and s.label.is_file()]
    if not 1 <= k <= len(labelled):
        raise FssegError(
            f"--k {k} is out of range: {ds.name} split {ds.split!r} at {ds.root} has {len(labelled)} images "
            f"with labels; lower --k, or add the masks of more images"
        )
    return sorted(np.random.default_rng(seed).choice(labelled, size=k, replace=False).tolist())


def augmented_view(
    image: np.ndarray,
    label: np.ndarray,
    ids: np.ndarray,
    out_hw: tuple[int, int],
    scale: tuple[float, float] | None,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(input (1, 3, h, w) in [0, 1], label (h, w), segment ids (h, w)): the whole image when
    `scale` is None, else a random resized crop (area fraction in `scale`, image aspect), flipped
    with p=0.5 and colour-jittered."""
    import cv2

    x = to_unit(image)
    if scale is not None:
        H, W = label.shape
        side = np.sqrt(rng.uniform(*scale))
        ch, cw = max(1, round(H * side)), max(1, round(W * side))
        top, left = rng.integers(0, H - ch + 1), rng.integers(0, W - cw + 1)
        x, label, ids = (
            x[..., top : top + ch, left : left + cw],
            label[top : top + ch, left : left + cw],
            ids[top : top + ch, left : left + cw],
        )
        if rng.random() < 0.5:
            x, label, ids = x.flip(-1), label[:, ::-1], ids[:, ::-1]
        x = colour_jitter(x, rng)
    x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
    nearest = cv2.INTER_NEAREST
    label = cv2.resize(np.ascontiguousarray(label).astype(np.int32), out_hw[::-1], interpolation=nearest)
    # boundaries at the network's resolution, from the resized segment ids
    ids = cv2.resize(np.ascontiguousarray(ids).astype(np.float64), out_hw[::-1], interpolation=nearest)
    return x, label, ids


def boundary_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE over valid pixels. logits (B, 1, H, W); target, valid (B, H, W)."""
    per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), reduction="none")
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


# one random stream per purpose (`training.derived_seed(seed, stream, key)`)
VIEWS_STREAM, ORDER_STREAM = 1, 2
View = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (features (D, h, w) fp16, target, valid)


def _encode_views(
    ds, samples, features: DenseFeatures, p: LabelGenParams, dev, precision: str, on_progress
) -> dict[str, list[list[View]]]:
    """head -> image -> its `p.views` views (view 0 the whole image, shared by both heads; the
    others augmented with the head's crop scale, from the image's own random stream)."""
    cache: dict[str, list[list[View]]] = {h: [] for h in SCALES}
    total_views = 2 * p.views * len(samples)
    for n, sample in enumerate(samples):
        image, (label, instances) = ds.load_image(sample), ds.load_panoptic(sample)
        checked_label(ds, sample, label, image.shape)
        ids = segment_ids(label, instances, ds.things, ds.ignore_index)
        hw = input_size(label.shape, p.size, features.multiple)
        rng = np.random.default_rng(training.derived_seed(p.seed, VIEWS_STREAM, n))
        whole = None
        for h_i, (head, scale) in enumerate(SCALES.items()):
            per_image = []
            for v in range(p.views):
                x, lab, seg = augmented_view(image, label, ids, hw, None if v == 0 else scale, rng)
                if v > 0 or whole is None:
                    with torch.no_grad(), devices.autocast(dev, precision):
                        f = features(features.normalise(x.to(dev)))[0].to(torch.float16)
                    whole = f if v == 0 else whole
                else:
                    f = whole
                if head == "semantic":
                    target = torch.from_numpy(lab).long()
                    valid = target != ds.ignore_index
                else:
                    target = torch.from_numpy(boundary_target(seg))
                    valid = torch.from_numpy(seg >= 0)
                per_image.append((f, target, valid))
                if on_progress is not None:
                    done = (n * 2 + h_i) * p.views + v + 1
                    on_progress(done, total_views, status="backbone features")
            cache[head].append(per_image)
    return cache


def _train_heads(
    heads: LabelGenHeads, cache, p: LabelGenParams, ignore_index: int, dev, precision: str, on_progress
) -> list[dict]:
    """Train each head for its epochs on the cached views (epoch e: view e mod V; images in the
    epoch's random order); returns one history row per epoch."""
    epochs = {"semantic": p.epochs_semantic, "boundary": p.epochs_boundary}
    n_images = len(cache["semantic"])
    optimizers = {h: torch.optim.Adam(getattr(heads, h).parameters(), lr=p.lr) for h in SCALES}
    history, step = [], 0
    total_steps = max(epochs.values()) * n_images
    heads.train()
    for epoch in range(max(epochs.values())):
        losses: dict[str, list[float]] = {h: [] for h in SCALES}
        order = np.random.default_rng(training.derived_seed(p.seed, ORDER_STREAM, epoch))
        for i in order.permutation(n_images):
            for head in (h for h in SCALES if epoch < epochs[h]):
                f, target, valid = cache[head][i][epoch % p.views]
                it = epoch * n_images + len(losses[head])
                for group in optimizers[head].param_groups:
                    group["lr"] = training.cosine_lr(p.lr, it, epochs[head] * n_images)
                with devices.autocast(dev, precision):
                    logits = heads.run_head(head, f[None].float().to(dev), tuple(target.shape))
                if head == "semantic":
                    loss = bootstrapped_ce(logits.float(), target[None].to(dev), ignore_index)
                else:
                    loss = boundary_loss(logits.float(), target[None].to(dev), valid[None].to(dev))
                optimizers[head].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[head].step()
                losses[head].append(training.finite_loss(loss, f"epoch {epoch + 1}, {head} head", precision))
            step += 1
            if on_progress is not None:
                status = " ".join(f"{h} {np.mean(v):.3f}" for h, v in losses.items() if v)
                on_progress(step, total_steps, status=f"epoch {epoch + 1} {status}")
        row = {"epoch": epoch + 1} | {f"{h}_loss": float(np.mean(v)) for h, v in losses.items() if v}
        row["loss"] = sum(v for key, v in row.items() if key.endswith("_loss"))
        history.append(row)
    return history


def run_label_gen(
    out_dir: str | Path,
    *,
    dataset: str,
    root: str | Path,
    params: LabelGenParams | None = None,
    overwrite: bool = False,
    on_progress: Callable[..., None] | None = None,
    **changes: Any,
) -> Path:
    """Train both heads on k annotated images of `dataset` at `root`; returns the artifact folder.
    `changes` are field values of `params` (`k=3` is `params=LabelGenParams(k=3)`)."""
    p = resolve(LabelGenParams, params, changes)
    ds = open_dataset(dataset, root, p.split)
    chosen = choose_indices(ds, p.k, p.indices, p.seed)
    samples = [ds.samples()[i] for i in chosen]
    dev = devices.resolve_device(p.device)
    precision = devices.stage_precision(p, dev)
    resolved = {
        "dataset": dataset, "root": str(Path(root).resolve()), "split": ds.split, "indices": chosen,
        "ids": [s.id for s in samples], "precision": precision, "class_names": ds.class_names,
        "things": list(ds.things), "ignore_index": ds.ignore_index,
    }  # fmt: skip
    with open_artifact(
        out_dir, kind="label-gen", stage="label-gen", params=p, resolved=resolved, overwrite=overwrite
    ) as art:
        if art.up_to_date:
            return art.path
        devices.seed_everything(p.seed)
        features = load_backbone_weights(DenseFeatures(name=p.backbone), p.backbone_weights).to(dev)
        model_kwargs = {
            "in_channels": features.out_channels, "num_classes": ds.num_classes,
            "upsample_features": p.upsample_features,
        }  # fmt: skip
        heads = LabelGenHeads(**model_kwargs).to(dev)
        # 1. the frozen backbone's features of every view, once
        started = time.time()
        cache = _encode_views(ds, samples, features, p, dev, precision, on_progress)
        feature_seconds = time.time() - started
        # 2. both heads, batch 1, Adam with cosine decay
        history = _train_heads(heads, cache, p, ds.ignore_index, dev, precision, on_progress)
        save_checkpoint(
            art.file("heads.pt"), heads, model_name="spino_heads", model_kwargs=model_kwargs,
            extra={"backbone": p.backbone, "backbone_weights": p.backbone_weights, "size": p.size},
        )  # fmt: skip
        atomic_write_text(art.file("log.jsonl"), "".join(json.dumps(r) + "\n" for r in history))
        training.loss_png(art.file("loss.png"), history, title="label-gen (semantic + boundary loss)")
        return art.finish(
            outputs={
                "heads": "heads.pt",
                "log": "log.jsonl",
                "final_semantic_loss": history[p.epochs_semantic - 1]["semantic_loss"],
                "final_boundary_loss": history[p.epochs_boundary - 1]["boundary_loss"],
                "feature_seconds": round(feature_seconds, 2),
                "train_seconds": round(time.time() - started - feature_seconds, 2),
            },
            label_map=ds.class_names,
            device=devices.describe(dev),
        )
