"""`fsseg pretrain`: train a few-shot segmenter on the base classes of a fold.

Reads:  a dataset (training split) and a fold; for `imr-hsnet` a clip-cam artifact of that
        dataset (`cams`, ids `<image>__<class>`) whose CAMs are the initial masks; optionally a
        fixed validation episodes file (+ its CAMs), or for `pspnet` a validation split.
Writes: `checkpoints/last.pt` (full resume state) and `checkpoints/best.pt` (best validation
        mIoU, or last without validation), `log.jsonl` (one line per epoch), `loss.png`,
        `manifest.json` (kind "checkpoint"; `outputs.best_val_miou` in percent).
Algorithm: the record of the chosen method (`EpisodicTrainParams`, `PSPNetTrainParams`) says
        everything; one module per method holds its training loop:
- `episodic` (`imr-hsnet`, `hsnet`): frozen backbone, Adam, episodes of a query and a random
  support of the same base class; IMR-HSNet's loss is paper Eq. 7 over the refinement steps.
- `pspnet`: PSPNet on background + base classes, SGD with cosine decay, CE with label smoothing
  + a pixel InfoNCE term (the GFSS report).
Both: seeded once before anything is built, one seed per epoch (`training.derived_seed`), DDP
under torchrun (each rank takes its share; gradients are averaged), validation each epoch, best
tracked in percent, exactly resumable from last.pt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.core import devices, distributed, training
from stages.core.artifacts import open_artifact, read_manifest
from stages.core.datasets import Dataset, open_dataset
from stages.core.errors import FssegError
from stages.params import PRETRAIN_METHODS, EpisodicTrainParams, PSPNetTrainParams, TrainParams, resolve

METHODS = tuple(PRETRAIN_METHODS)
PSPNET_BACKBONES = ("resnet50", "efficientnet_lite0", "tiny")
LAST = "checkpoints/last.pt"


@dataclass(frozen=True)
class Run:
    """What a method's training loop is handed: the fold, the device and processes, the model."""

    ds: Dataset  # the training split
    base: list[int]  # the fold's base classes, the ones trained on
    dev: torch.device
    dist: distributed.DistInfo
    precision: str  # resolved: fp32, bf16 or fp16
    model_kwargs: dict[str, Any]
    on_progress: Callable[..., None] | None

    def report(self, done: int, total: int, *, epoch: int, epochs: int, losses: list[float], best: float):
        """Progress with the status line "epoch E/N loss L [best val mIoU B]" (best in percent)."""
        if self.on_progress is not None:
            shown = "" if best == training.NO_SCORE else f" best val mIoU {best:.1f}"
            self.on_progress(
                done, total, status=f"epoch {epoch + 1}/{epochs} loss {np.mean(losses):.4f}{shown}"
            )


@dataclass(frozen=True)
class Trained:
    """What a method's training loop hands back for the manifest."""

    history: list[dict]  # one row per epoch: epoch, loss, seconds, val_miou (percent or None)
    best: float  # the best validation mIoU in percent, or training.NO_SCORE
    weights: list[torch.Tensor]  # the trained parameters (their sum is compared across ranks)
    label_map: dict[str, str]
    counts: dict[str, int]  # what it trained on ("training_pairs" or "training_images")


def pretrain_params(params: TrainParams | None, changes: dict[str, Any]) -> TrainParams:
    """The method's record: `params`, or the defaults of the record of `changes["method"]`
    (imr-hsnet when absent), with the other `changes` applied."""
    method = changes.pop("method", None)
    if method is not None and method not in PRETRAIN_METHODS:
        raise FssegError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    cls = type(params) if params is not None else PRETRAIN_METHODS[method or "imr-hsnet"]
    if method is not None and PRETRAIN_METHODS[method] is not cls:
        raise FssegError(f"--method {method} does not go with params={cls.__name__}")
    if method is not None and cls is EpisodicTrainParams:
        changes["method"] = method
    return resolve(cls, params, changes)


def check(p: TrainParams, *, cams, val_episodes, val_cams) -> None:
    """The rules that join fields, or fields and inputs (each field's own rule is in its record)."""
    if isinstance(p, PSPNetTrainParams):
        if p.backbone not in PSPNET_BACKBONES:
            raise FssegError(
                f"--backbone {p.backbone} is not available for pspnet; use {', '.join(PSPNET_BACKBONES)}"
            )
        inputs = {"--cams": cams, "--val-episodes": val_episodes, "--val-cams": val_cams}
        given = [flag for flag, path in inputs.items() if path]
        if given:
            raise FssegError(
                f"{', '.join(given)}: for --method imr-hsnet and hsnet; pspnet validates on --val-split"
            )
        return
    if p.method == "imr-hsnet" and cams is None:
        raise FssegError(
            "--cams is required for --method imr-hsnet: the clip-cam artifact of the training images "
            "(fsseg clip-cam --dataset ... --root ...)"
        )
    if p.lambda_t is not None and len(p.lambda_t) != p.steps:
        raise FssegError(f"--lambda-t gives {len(p.lambda_t)} weights for {p.steps} steps")
    if val_cams is not None and val_episodes is None:
        raise FssegError("--val-cams goes with --val-episodes (the CAMs of the validation images)")


def run_pretrain(
    out_dir: str | Path,
    *,
    dataset: str,
    root: str | Path,
    cams: str | Path | None = None,
    val_episodes: str | Path | None = None,
    val_cams: str | Path | None = None,
    params: TrainParams | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_progress: Callable[..., None] | None = None,
    **changes: Any,
) -> Path:
    """Train on the base classes of `p.fold`; returns the artifact folder. `params` is an
    `EpisodicTrainParams` or a `PSPNetTrainParams`; `changes` are field values of it, and
    `method=` picks the record when `params` is None (`run_pretrain(out, method="pspnet", epochs=3,
    ...)`). `resume` requires an unfinished run to continue (a rerun continues one anyway)."""
    from stages.pretrain import episodic, pspnet  # here: they import Run and Trained from this module

    # 1. the record, and the rules between its fields and the inputs
    p = pretrain_params(params, changes)
    check(p, cams=cams, val_episodes=val_episodes, val_cams=val_cams)
    trainer = pspnet if isinstance(p, PSPNetTrainParams) else episodic
    if cams is not None:
        read_manifest(cams, "cams")

    # 2. seeded once, before anything is built; the device, the processes (torchrun), the precision
    devices.seed_everything(p.seed)
    dev = devices.resolve_device(p.device)
    dist = distributed.init_distributed(dev.type)
    precision = devices.stage_precision(p, dev)

    # 3. the fold: its novel classes are held out, the others are the base classes trained on
    ds = open_dataset(dataset, root, p.split)
    novel = ds.fold_classes(p.fold, p.n_folds)
    base = [c for c in ds.foreground_classes() if c not in novel]
    resolved = {
        "method": "pspnet" if trainer is pspnet else p.method,
        "split": ds.split,
        "n_folds": ds.default_folds if p.n_folds is None else p.n_folds,
        "novel_classes": novel,
        "base_classes": base,
        "precision": precision,
        **trainer.settled(p, base),
    }

    # 4. the artifact (a finished one is up to date; an unfinished one resumes from last.pt)
    inputs = [root, *(path for path in (cams, val_episodes, val_cams) if path)]
    with open_artifact(
        out_dir,
        kind="checkpoint",
        stage="pretrain",
        params=p,
        resolved=resolved,
        inputs=inputs,
        overwrite=overwrite,
    ) as art:
        if art.up_to_date:
            return art.path
        if resume and not art.has(LAST):
            raise FssegError(f"--resume: no {art.path / LAST} to resume from; run without --resume to start")

        # 5. the method's training loop
        run = Run(ds, base, dev, dist, precision, resolved["model_kwargs"], on_progress)
        if trainer is pspnet:
            trained = pspnet.train(art, p, run)
        else:
            cams_dir, val_dir = (Path(path) if path else None for path in (cams, val_cams))
            trained = episodic.train(art, p, run, cams=cams_dir, val_episodes=val_episodes, val_cams=val_dir)

        # 6. the loss chart and the manifest
        return art.finish(
            outputs=outputs(art, trained, dist), label_map=trained.label_map, device=devices.describe(dev)
        )


def outputs(art, trained: Trained, dist: distributed.DistInfo) -> dict[str, Any]:
    """The manifest's outputs (rank 0 also draws loss.png); every rank must hold the same weights."""
    if dist.is_main:
        training.loss_png(art.file("loss.png"), trained.history)
    return {
        "best": "checkpoints/best.pt",
        "last": LAST,
        "log": "log.jsonl",
        **trained.counts,
        "best_val_miou": None if trained.best == training.NO_SCORE else trained.best,
        "history": trained.history,
        "rank_weight_checksums": distributed.weight_checksums(trained.weights, dist),
    }
