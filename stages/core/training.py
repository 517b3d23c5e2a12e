"""What every training stage shares: one seed derivation, the LR schedules, best-score tracking
(in percent), resume from last.pt, end-of-epoch checkpoints, the loss chart.

Checkpoints: `checkpoints/last.pt` (full resume state: optimizer, RNG, epoch, best score, history)
and `checkpoints/best.pt` (weights of the best validation epoch); `log.jsonl` one row per epoch.
History rows hold "epoch", "loss" and the validation score under `score_key`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from stages.core import distributed
from stages.core.artifacts import atomic_write_text
from stages.core.checkpoints import load_checkpoint, save_checkpoint, set_rng_state
from stages.core.errors import FssegError

log = logging.getLogger(__name__)


def derived_seed(seed: int, *keys: int) -> int:
    """The seed of a random stream inside a run (per epoch, rank, item...): `derived_seed(seed,
    epoch)`. The one derivation every stage uses, so streams never collide across keys."""
    import numpy as np

    return int(np.random.SeedSequence([seed, len(keys), *keys]).generate_state(1)[0])


def improved(score: float | None, best: float) -> tuple[bool, float]:
    """(whether `score` beats `best`, the new best). Scores are percentages; `best` starts at
    `NO_SCORE`; without validation (score None) every epoch counts as the best so far."""
    if score is None:
        return True, best
    return score > best, max(score, best)


NO_SCORE = -1.0  # `best` before any validation; recorded as None in manifests


def finite_loss(loss: torch.Tensor, where: str, precision: str) -> float:
    """The loss as a float, or a one-line error when it is NaN or infinite: the model has diverged
    and every later step would train on NaN weights. Checkpoints of earlier epochs stay as they were."""
    value = loss.item()
    if not math.isfinite(value):
        fix = "rerun with --precision fp32" if precision != "fp32" else "rerun with a lower --lr"
        raise FssegError(f"training diverged: the loss is {value} at {where} ({fix})")
    return value


def cosine_lr(base_lr: float, it: int, total: int) -> float:
    """Cosine decay from `base_lr` at iteration 0 towards 0 at `total` (a Python float: it goes
    into the optimizer state, and from there into checkpoints)."""
    return float(base_lr * 0.5 * (1 + math.cos(math.pi * it / total)))


def poly_lr(base_lr: float, it: int, total: int, power: float = 0.9) -> float:
    """Polynomial decay from `base_lr` at iteration 0 to 0 at `total` (Panoptic-DeepLab's)."""
    return float(base_lr * (1 - it / total) ** power)


def resume(last: Path, model, optimizer, device) -> tuple[int, float, list[dict]]:
    """(start epoch, best validation score, history) from an unfinished run's last.pt, or a fresh start."""
    if not last.is_file():
        return 0, NO_SCORE, []
    state = load_checkpoint(last, device)
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    log.info("resuming from %s at epoch %d", last, state["epoch"] + 2)
    return state["epoch"] + 1, state["best"], state["history"]


def end_epoch(
    art,
    model: torch.nn.Module,
    name: str,
    model_kwargs: dict,
    optimizer,
    history: list[dict],
    best: float,
    improved: bool,
    dist,
    extra: dict | None = None,
    score_key: str = "val_miou",
) -> None:
    """Rank 0 writes best.pt (when improved), last.pt (full resume state) and log.jsonl; all ranks wait."""
    epoch = history[-1]["epoch"] - 1
    if dist.is_main:
        if improved:
            save_checkpoint(
                art.file("checkpoints/best.pt"),
                model,
                model_name=name,
                model_kwargs=model_kwargs,
                extra={"epoch": epoch, score_key: history[-1][score_key], **(extra or {})},
            )
        save_checkpoint(
            art.file("checkpoints/last.pt"),
            model,
            model_name=name,
            model_kwargs=model_kwargs,
            optimizer=optimizer,
            step=epoch,
            extra={"epoch": epoch, "best": best, "history": history, **(extra or {})},
        )
        atomic_write_text(art.file("log.jsonl"), "".join(json.dumps(r) + "\n" for r in history))
    distributed.barrier(dist)


def loss_png(
    path: Path,
    history: list[dict],
    title: str = "pretrain",
    score_key: str = "val_miou",
    score_label: str = "val mIoU (%)",
) -> None:
    """Training loss (and the validation score, when there is one) per epoch."""
    from stages.core.charts import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["loss"] for r in history], "o-", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if any(r.get(score_key) is not None for r in history):
        twin = ax.twinx()
        twin.plot(epochs, [r.get(score_key) for r in history], "s--", color="#d8453b")
        twin.set_ylabel(score_label)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
