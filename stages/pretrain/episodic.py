"""Episodic pretraining of IMR-HSNet and HSNet (`pretrain --method imr-hsnet | hsnet`), with Adam.

An episode is a query image, a support image of the same base class and that class. Each epoch
takes every usable (image, class) pair (at most `episodes_per_epoch`) in an order seeded by
`derived_seed(seed, epoch)`, with a new random support for each. Images are resized to
`img_size`^2 without augmentation, as in the paper; the backbone stays frozen.
- `imr-hsnet`: query and support start from their CAMs; loss paper Eq. 7, the sum over steps t of
  lambda_t (CE(query) + w_s CE(support)) against the ground-truth masks.
- `hsnet`: the plain HSNet baseline; ground-truth support masks (or CAMs with `cams`), CE on the
  query.
Validation (optional): FSS mIoU on fixed episodes, HSNet's protocol at the training resolution.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages.core import devices, distributed, training
from stages.core.episodes import open_episodes
from stages.core.errors import FssegError
from stages.core.imageio import load_float_map, read_image
from stages.core.metrics import FssMeter
from stages.core.validation import checked_label
from stages.models import build, model_kwargs
from stages.models.backbones import load_backbone_weights, network_input
from stages.models.hsnet import final_mask, initial_mask
from stages.params import EpisodicTrainParams
from stages.pretrain import LAST, Run, Trained

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data
class EpisodeData:
    """Loads (image, ground-truth mask, initial mask) triples at the training resolution."""

    def __init__(self, dataset, size: int, backbone: str, cams_dir: Path | None):
        self.ds, self.size, self.cams_dir, self.backbone = dataset, size, cams_dir, backbone

    def has_cam(self, image_id: str, cls: int) -> bool:
        return self.cams_dir is None or (self.cams_dir / "cams" / f"{image_id}__{cls}.npy").is_file()

    def __call__(self, image_id: str, cls: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image (3, s, s), target (s, s) 0/1/255, initial mask (1, h, w)): the CAM at the finest
        feature size, or without CAMs the ground-truth mask, as the authors feed them (`initial_mask`)."""
        sample = self.ds.sample(image_id)
        pixels = read_image(sample.image)
        image = network_input(pixels, self.size, self.backbone, resize="pil")[0]
        label = checked_label(self.ds, sample, self.ds.load_label(sample), pixels.shape)
        label = torch.from_numpy(label.astype(np.int64))[None, None].float()
        label = F.interpolate(label, size=(self.size, self.size), mode="nearest")[0, 0].long()
        target = torch.where(label == self.ds.ignore_index, 255, (label == cls).long())
        if self.cams_dir is not None:
            cam = load_float_map(self.cams_dir / "cams" / f"{image_id}__{cls}.npy")
            initial = initial_mask(cam, self.size, pixel=False)[0]
        else:
            initial = (target == 1).float()[None]
        return image, target, initial


def training_pairs(p: EpisodicTrainParams, run: Run, data: EpisodeData) -> tuple[list, dict[int, list[str]]]:
    """(the (image id, class) pairs used as queries, class -> its images): base-class pairs over
    `min_area` pixels (with a CAM, when there are CAMs) whose class has another image for a support."""
    pairs = [(i, c) for i, c in run.ds.pairs(run.base, p.min_area) if data.has_cam(i, c)]
    by_class: dict[int, list[str]] = {}
    for image_id, c in pairs:
        by_class.setdefault(c, []).append(image_id)
    pairs = [(i, c) for i, c in pairs if len(by_class[c]) > 1]
    if not pairs:
        raise FssegError(
            f"no training pairs: no base class of fold {p.fold} has two images over {p.min_area} pixels"
            + (" with CAMs in --cams" if data.cams_dir else "")
        )
    return pairs, by_class


def epoch_episodes(pairs: list, by_class: dict[int, list[str]], count: int, seed: int) -> list[tuple]:
    """`count` (query, support, class) episodes: the pairs in a seeded order, each query with a
    random other image of its class as support."""
    rng = np.random.default_rng(seed)
    episodes = []
    for k in rng.permutation(len(pairs))[:count]:
        query, c = pairs[k]
        others = [i for i in by_class[c] if i != query]
        episodes.append((query, others[int(rng.integers(len(others)))], c))
    return episodes


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ----------------------------------------------------------------------------- model and loss
def settled(p: EpisodicTrainParams, base: list[int]) -> dict[str, Any]:
    """What the run settles beyond the record: the optimizer, the per-step loss weights and the
    model's constructor arguments (the backbone's weights are loaded after it is built)."""
    state = {"state_size": p.img_size // 8} if p.method == "imr-hsnet" else {}
    kwargs = model_kwargs(_model_name(p), tiny=p.tiny, backbone=p.backbone, **state)
    return {"optimizer": "adam", "lambda_t": step_weights(p), "model_kwargs": kwargs}


def _model_name(p: EpisodicTrainParams) -> str:
    return "imr_hsnet" if p.method == "imr-hsnet" else "hsnet"


def step_weights(p: EpisodicTrainParams) -> list[float]:
    """lambda_t of Eq. 7, one weight per refinement step (default: 1 each)."""
    return list(p.lambda_t or [1.0] * p.steps)


def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=True)
    return F.cross_entropy(logits, target, ignore_index=255)


def episode_loss(
    model, method: str, batch, *, steps: int, lambdas: Sequence[float], w_s: float
) -> torch.Tensor:
    """Loss of one batch of (query, support) episodes: 6 tensors, (image, target, initial mask)
    of the queries then of the supports."""
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

    def __init__(self, model, p: EpisodicTrainParams):
        super().__init__()
        self.model, self.method, self.steps, self.w_s = model, p.method, p.steps, p.w_s
        self.lambdas = step_weights(p)

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return episode_loss(
            self.model, self.method, batch, steps=self.steps, lambdas=self.lambdas, w_s=self.w_s
        )


def validate(model, method: str, data: EpisodeData, doc: dict, *, steps: int, run: Run) -> float:
    """FSS mIoU in percent (HSNet's protocol, at the training resolution) over `doc`'s episodes,
    each rank scoring its share."""
    meter = FssMeter()
    model.eval()
    with torch.no_grad(), devices.autocast(run.dev, run.precision):
        for ep in distributed.shard(doc["episodes"], run.dist):
            qi, qt, qm = data(ep["query"], ep["class"])
            si, st, sm = data(ep["support"][0], ep["class"])
            q_levels = model.backbone(qi[None].to(run.dev))
            s_levels = model.backbone(si[None].to(run.dev))
            if method == "hsnet":  # the ground-truth support mask
                logits = model.predict(q_levels, s_levels, (st == 1).float()[None, None].to(run.dev))
            else:
                q_mask, s_mask = qm[None].to(run.dev), sm[None].to(run.dev)
                logits = model.refine(q_levels, s_levels, q_mask, s_mask, steps=steps)[0][-1]
            meter.update(final_mask(logits, qt.shape), qt.numpy(), ep["class"], 255)
    return 100 * distributed.summed(meter, run.dist).miou()


# ----------------------------------------------------------------------------- training
def train_epoch(
    net,
    model,
    optimizer,
    data: EpisodeData,
    episodes: list,
    epoch: int,
    best: float,
    p: EpisodicTrainParams,
    run: Run,
) -> list[float]:
    """One pass over this rank's share of `episodes` (batch_size episodes a step, all ranks
    together); returns the losses of its steps."""
    per_epoch = len(episodes)
    net.train()
    model.backbone.eval()
    losses: list[float] = []
    mine = distributed.shard(episodes, run.dist)
    for b, batch in enumerate(_batches(mine, max(1, p.batch_size // run.dist.world_size)), 1):
        loaded = [data(q, c) + data(s, c) for q, s, c in batch]
        tensors = [torch.stack([row[j] for row in loaded]).to(run.dev) for j in range(6)]
        with devices.autocast(run.dev, run.precision):
            loss = net(*tensors)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(training.finite_loss(loss, f"epoch {epoch + 1}, step {b}", run.precision))
        done = epoch * per_epoch + min(b * p.batch_size, per_epoch)
        run.report(done, p.epochs * per_epoch, epoch=epoch, epochs=p.epochs, losses=losses, best=best)
    return losses


def train(
    art, p: EpisodicTrainParams, run: Run, *, cams: Path | None, val_episodes, val_cams: Path | None
) -> Trained:
    """The episodic training loop inside the open artifact `art`; `cams`: the clip-cam artifact of
    the training images (required for imr-hsnet), `val_cams` that of the validation episodes."""
    # 1. the model: a frozen backbone and the learner, trained with Adam; resumed from last.pt
    model_name = _model_name(p)
    model = load_backbone_weights(build(model_name, **run.model_kwargs), p.backbone_weights).to(run.dev)
    model.backbone.eval()
    trainable = [w for name, w in model.named_parameters() if not name.startswith("backbone.")]
    optimizer = torch.optim.Adam(trainable, lr=p.lr)
    start_epoch, best, history = training.resume(art.path / LAST, model, optimizer, run.dev)
    net = EpisodeLoss(model, p)
    if run.dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(net)

    # 2. the data: training pairs; the validation episodes and their initial masks
    data = EpisodeData(run.ds, p.img_size, p.backbone, cams)
    pairs, by_class = training_pairs(p, run, data)
    val_doc, val_ds = open_episodes(val_episodes) if val_episodes else (None, run.ds)
    val_data = EpisodeData(
        val_ds, p.img_size, p.backbone, val_cams or (cams if p.method == "imr-hsnet" else None)
    )

    # 3. the epochs: new episodes, a pass, validation, checkpoints (best in percent)
    per_epoch = min(p.episodes_per_epoch or len(pairs), len(pairs))
    for epoch in range(start_epoch, p.epochs):
        started = time.time()
        episodes = epoch_episodes(pairs, by_class, per_epoch, training.derived_seed(p.seed, epoch))
        losses = train_epoch(net, model, optimizer, data, episodes, epoch, best, p, run)
        score = validate(model, p.method, val_data, val_doc, steps=p.steps, run=run) if val_doc else None
        is_best, best = training.improved(score, best)
        row = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)) if losses else None,
            "seconds": time.time() - started,
            "val_miou": score,
        }
        history.append(row)
        shown = "" if score is None else f", val mIoU {score:.2f} (best {best:.2f})"
        log.info("epoch %d/%d: loss %.4f%s", epoch + 1, p.epochs, row["loss"] or 0, shown)
        training.end_epoch(
            art, model, model_name, run.model_kwargs, optimizer, history, best, is_best, run.dist
        )

    label_map = {str(c): run.ds.class_names[c] for c in run.base}
    return Trained(history, best, trainable, label_map, {"training_pairs": len(pairs)})
