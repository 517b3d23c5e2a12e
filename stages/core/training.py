"""What every training stage shares: resume from last.pt, end-of-epoch checkpoints, the loss chart.

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

log = logging.getLogger(__name__)


def cosine_lr(base_lr: float, it: int, total: int) -> float:
    """Cosine decay from `base_lr` at iteration 0 towards 0 at `total` (a Python float: it goes
    into the optimizer state, and from there into checkpoints)."""
    return float(base_lr * 0.5 * (1 + math.cos(math.pi * it / total)))


def resume(last: Path, model, optimizer, device) -> tuple[int, float, list[dict]]:
    """(start epoch, best validation score, history) from an unfinished run's last.pt, or a fresh start."""
    if not last.is_file():
        return 0, -1.0, []
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
