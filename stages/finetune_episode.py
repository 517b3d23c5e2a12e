"""`fsseg finetune-episode`: per-episode classifiers on a frozen PSPNet (the GFSS report).

Reads:  a PSPNet checkpoint (`fsseg pretrain --method pspnet`) and an episodes file.
Writes: `pred/<episode:05d>.png` (and `pred/<episode:05d>_base.png` for gfss-binary episodes)
        for `fsseg evaluate --task fss|gfss`, `episodes/<episode:05d>.json` (class, supports,
        final loss), `manifest.json` (kind "finetune").
Algorithm: backbone frozen; features (the 512-channel PSPNet feature at output stride 8) are
        computed once per image and cached. A new 1x1 classifier per episode whose logits are
        upsampled (bilinear) to the input size, where the loss meets the support labels; plain
        SGD (lr 0.1, 100 steps), many episodes at once (their losses are summed, so each
        episode gets exactly its own gradient).
        fss:  2-way (background, novel), cross-entropy.
        gfss: (|base| + 2)-way (background, base classes from the pretrained classifier, novel;
              with the standard protocol one novel row per novel class), loss = reformulated
              CE (Eq. 4-5: foreground = the support's class column, background = the sum of all
              other columns) + gamma * distillation (Eq. 6-7: the pretrained background
              probability equals the new background plus the novel classes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages.core import devices
from stages.core.artifacts import atomic_write_json, open_artifact, read_manifest, run_items
from stages.core.cache import TensorCache
from stages.core.checkpoints import build_from_checkpoint
from stages.core.datasets import Dataset, open_dataset
from stages.core.episodes import read_episodes
from stages.core.errors import FssegError
from stages.core.imageio import read_image, write_label
from stages.core.validation import check_episodes, checked_label
from stages.models.backbones import network_input
from stages.params import FinetuneParams, resolve

log = logging.getLogger(__name__)


def reformulated_ce(
    logits: torch.Tensor, target: torch.Tensor, column: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Eq. 4-5 per episode. logits (E, N, K); target (E, N), 1 = foreground; column (E, N): each
    pixel's foreground column (its support's class); valid (E, N). The background probability
    is the sum of every other column. Returns (E,)."""
    logp = logits.log_softmax(-1)
    fg = logp.gather(-1, column[..., None])[..., 0]
    bg = torch.logsumexp(logp.scatter(-1, column[..., None], float("-inf")), -1)
    per_pixel = -torch.where(target == 1, fg, bg)
    return (per_pixel * valid).sum(1) / valid.sum(1).clamp(min=1)


def distillation(
    logits: torch.Tensor, teacher: torch.Tensor, n_old: int, valid: torch.Tensor
) -> torch.Tensor:
    """Eq. 6-7 per episode. logits (E, N, K) with columns [background, base..., novel...];
    teacher (E, N, n_old) pretrained probabilities over [background, base...]. The student's
    old-background probability is its background plus every novel column. Returns (E,)."""
    p = logits.softmax(-1)
    old = torch.cat([p[..., :1] + p[..., n_old:].sum(-1, keepdim=True), p[..., 1:n_old]], -1)
    per_pixel = -(teacher * old.clamp(min=1e-12).log()).sum(-1)
    return (per_pixel * valid).sum(1) / valid.sum(1).clamp(min=1)


class Features:
    """Frozen PSPNet features and pretrained logits per image, cached (LRU)."""

    def __init__(self, model, dataset, size: int, backbone: str, device, precision: str, budget_mb: float):
        self.model, self.ds, self.size, self.device, self.precision = model, dataset, size, device, precision
        self.backbone = backbone
        self.cache = TensorCache(budget_mb)
        self.label_size = size  # where support losses are computed (logits upsampled to it)

    def __call__(self, image_id: str) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """(features (512, h, w), pretrained logits (K0, h, w), original image size)."""
        return self.cache(image_id, lambda: self._compute(image_id))

    def _compute(self, image_id: str) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        image = read_image(self.ds.sample(image_id).image)
        x = network_input(image, self.size, self.backbone).to(self.device)
        with torch.no_grad(), devices.autocast(self.device, self.precision):
            feats, logits = self.model(x)
        return feats[0].float(), logits[0].float(), image.shape[:2]


def _support_data(feats: Features, ds, image_id: str, cls: int):
    """Features (D, h, w), binary target (S, S) at the input size (255 = ignored) and the pretrained
    classifier's probabilities (K0, S, S), S = the input side."""
    f, old_logits, image_hw = feats(image_id)
    size = (feats.label_size, feats.label_size)
    sample = ds.sample(image_id)
    raw = checked_label(ds, sample, ds.load_label(sample), image_hw)
    label = torch.from_numpy(raw.astype(np.int64))[None, None].float()
    label = F.interpolate(label, size=size, mode="nearest")[0, 0].long()
    target = torch.where(label == ds.ignore_index, 255, (label == cls).long()).to(f.device)
    teacher = F.interpolate(old_logits[None], size=size, mode="bilinear", align_corners=True)[0].softmax(0)
    return f, target, teacher


def _pixel_logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, size: int) -> torch.Tensor:
    """Classifier logits of support features, upsampled to the input size: x (E, D, S, h, w) ->
    (E, K, S*size*size). A 1x1 classifier commutes with bilinear upsampling, so this equals
    classifying upsampled features, without materialising them."""
    e, d, s, h, wd = x.shape
    k = w.shape[1]
    logits = torch.bmm(w, x.view(e, d, -1)) + b[:, :, None]  # (E, K, S*h*w): one matrix product per episode
    logits = F.interpolate(
        logits.view(e, k, s, h, wd).transpose(1, 2).reshape(e * s, k, h, wd),
        size=(size, size),
        mode="bilinear",
        align_corners=True,
    )
    return logits.view(e, s, k, -1).transpose(1, 2).reshape(e, k, -1)


def train_classifiers(
    x,
    target,
    valid,
    teacher,
    init_w,
    init_b,
    column,
    *,
    mode: str,
    steps: int,
    lr: float,
    gamma: float,
    n_old: int,
    size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain SGD on E classifiers at once; returns (weights (E, K, D), bias (E, K), final loss (E,)).

    x: (E, N, D) pixel features, or (E, S, D, h, w) support feature maps whose logits are
    upsampled to `size` (then target/valid/column/teacher hold S*size*size pixels per episode).
    target/valid/column: (E, N); teacher: (E, N, n_old) pretrained probabilities."""
    w = init_w.clone().requires_grad_(True)
    b = init_b.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([w, b], lr=lr)
    x = x.transpose(1, 2).contiguous()  # (E, D, S, h, w) or (E, D, N): logits are matrix products
    for _ in range(steps):
        if x.dim() == 5:
            by_class = _pixel_logits(x, w, b, size)  # (E, K, N)
        else:
            by_class = torch.bmm(w, x) + b[:, :, None]
        if mode == "fss":
            per_pixel = F.cross_entropy(by_class, target, reduction="none")
            loss = (per_pixel * valid).sum(1) / valid.sum(1).clamp(min=1)
        else:
            logits = by_class.transpose(1, 2)  # (E, N, K)
            loss = reformulated_ce(logits, target, column, valid)
            if gamma > 0:
                loss = loss + gamma * distillation(logits, teacher, n_old, valid)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # episodes are independent: each gets exactly its own gradient
        optimizer.step()
    return w.detach(), b.detach(), loss.detach()


@dataclass(frozen=True)
class Run:
    """What every chunk of episodes is run with: the episodes, the frozen model's parts, the record."""

    doc: dict[str, Any]  # the episodes file
    ds: Dataset  # the split the episodes draw from
    feats: Features
    old_w: torch.Tensor  # (K0, D): the pretrained classifier's background and base rows
    old_b: torch.Tensor  # (K0,)
    base: list[int]  # the fold's base classes
    dev: torch.device
    p: FinetuneParams


def run_finetune_episode(
    out_dir: str | Path,
    *,
    checkpoint: str | Path,
    episodes: str | Path,
    root: str | Path | None = None,
    params: FinetuneParams | None = None,
    overwrite: bool = False,
    on_progress: Callable[..., None] | None = None,
    **changes: Any,
) -> Path:
    """Train one classifier per episode and write its query prediction. `changes` are field values
    of `params` (`steps=10` is `params=FinetuneParams(steps=10)`)."""
    # 1. the record, and the episodes it fits
    p = resolve(FinetuneParams, params, changes)
    doc = read_episodes(episodes)
    _check_protocol(p.mode, doc, episodes)

    # 2. seeded once; the device, the precision, the frozen PSPNet of the episodes' fold, their dataset
    devices.seed_everything(p.seed)
    dev = devices.resolve_device(p.device)
    precision = devices.resolve_precision(p.precision, dev)
    model, backbone = _load_pspnet(checkpoint, dev, doc["base_classes"])
    ds = open_dataset(doc["dataset"], root or doc["root"], doc["split"])
    check_episodes(doc, ds, episodes)
    label_size = p.img_size if p.label_size is None else p.label_size
    resolved = {
        "label_size": label_size,
        "protocol": doc["protocol"],
        "optimizer": "sgd",
        "precision": precision,
        "root": str(root) if root else None,
    }

    # 3. the artifact (a finished one is up to date; an unfinished one skips the episodes it has written)
    with open_artifact(
        out_dir,
        kind="finetune",
        stage="finetune-episode",
        params=p,
        resolved=resolved,
        inputs=[checkpoint, episodes],
        overwrite=overwrite,
    ) as art:
        if art.up_to_date:
            return art.path
        feats = Features(model, ds, p.img_size, backbone, dev, precision, p.feature_cache_mb)
        feats.label_size = label_size
        old_w, old_b = (
            model.classifier.weight.detach()[:, :, 0, 0].float(),
            model.classifier.bias.detach().float(),
        )

        # 4. the episodes, chunk by chunk, then the manifest
        _run_chunks(art, Run(doc, ds, feats, old_w, old_b, doc["base_classes"], dev, p), on_progress)
        return art.finish(
            outputs={"predictions": "pred", "episodes": "episodes", "count": len(doc["episodes"])},
            label_map={str(i): n for i, n in enumerate(doc["class_names"])},
            device=devices.describe(dev),
        )


def _check_protocol(mode: str, doc: dict[str, Any], episodes: str | Path) -> None:
    """The episodes' protocol must suit the mode: fss episodes for fss, gfss (or gfss-binary) for gfss."""
    if mode == "gfss" and doc["protocol"] == "fss":
        raise FssegError(
            f"{episodes} holds fss episodes; --mode gfss needs `fsseg data episodes --protocol gfss` "
            f"(or gfss-binary)"
        )
    if mode == "fss" and doc["protocol"] == "gfss":
        raise FssegError(f"{episodes} holds gfss episodes (every novel class per episode); use --mode gfss")


def _load_pspnet(
    checkpoint: str | Path, dev: torch.device, base_classes: list[int]
) -> tuple[torch.nn.Module, str]:
    """(the PSPNet in eval mode on `dev`, its backbone name); an error unless it is a pspnet trained
    on `base_classes` (those of the episodes' fold)."""
    model, data = build_from_checkpoint(checkpoint, dev)
    if data["model_name"] != "pspnet":
        raise FssegError(
            f"{checkpoint} holds a {data['model_name']} model; finetune-episode needs a pspnet checkpoint "
            f"(fsseg pretrain --method pspnet)"
        )
    model = model.to(dev).eval()
    base = list(data.get("base_classes") or [])
    ckpt_dir = Path(checkpoint).parent.parent
    if (ckpt_dir / "manifest.json").is_file():
        read_manifest(ckpt_dir, "checkpoint")
    if base and base != base_classes:
        raise FssegError(
            f"{checkpoint} was trained on base classes {base} but the episodes' base classes are "
            f"{base_classes}; use episodes of the same fold"
        )
    return model, data["model_kwargs"]["backbone"]


def _run_chunks(art, run: Run, on_progress: Callable[..., None] | None) -> None:
    """Every episode not written yet, in chunks trained at once."""
    indices = list(range(len(run.doc["episodes"])))
    # memory grows with the support images per chunk: batch_episodes counts 1-shot, 1-class episodes
    per_episode = run.doc["shots"] * (len(run.doc["novel_classes"]) if run.doc["protocol"] == "gfss" else 1)
    size_chunk = max(1, run.p.batch_episodes // per_episode)
    chunks = [indices[i : i + size_chunk] for i in range(0, len(indices), size_chunk)]
    done = 0

    def work(chunk: list[int]) -> None:
        nonlocal done
        _run_chunk(art, chunk, run)
        done += len(chunk)
        if on_progress is not None:
            on_progress(done, len(indices))

    run_items(art, chunks, done=lambda c: all(art.has(f"episodes/{i:05d}.json") for i in c), work=work)


def _run_chunk(art, chunk: list[int], run: Run) -> None:
    """Train and apply the classifiers of a chunk of episodes at once."""
    rows = _training_units(run.doc, chunk)
    x, target, valid, teacher, column_px = _support_batch(rows, run)
    e, d = x.shape[0], x.shape[2]
    n_old = len(run.base) + 1
    if run.p.mode == "fss":
        init_w, init_b = torch.zeros(e, 2, d, device=run.dev), torch.zeros(e, 2, device=run.dev)
    else:  # background and base rows from the pretrained classifier, novel rows new
        n_novel = max(len(novel) for _, novel, _ in rows)
        init_w = (
            torch.cat([run.old_w, torch.zeros(n_novel, d, device=run.dev)]).expand(e, -1, -1).contiguous()
        )
        init_b = torch.cat([run.old_b, torch.zeros(n_novel, device=run.dev)]).expand(e, -1).contiguous()
    w, b, loss = train_classifiers(
        x,
        target,
        valid,
        teacher,
        init_w,
        init_b,
        column_px,
        mode=run.p.mode,
        steps=run.p.steps,
        lr=run.p.lr,
        gamma=run.p.gamma,
        n_old=n_old,
        size=run.feats.label_size,
    )
    for j, (i, novel, shots) in enumerate(rows):
        _write_episode(art, run, i, novel, shots, w[j], b[j], float(loss[j]))


def _training_units(
    doc: dict[str, Any], chunk: list[int]
) -> list[tuple[int, list[int], list[tuple[str, int]]]]:
    """Per episode of the chunk: (its index, its novel classes, [(support id, class)])."""
    rows = []
    for i in chunk:
        ep = doc["episodes"][i]
        if "supports" in ep:  # standard gfss: every novel class
            novel = [int(c) for c in ep["supports"]]
            shots = [(sid, int(c)) for c, ids in ep["supports"].items() for sid in ids]
        else:
            novel, shots = [ep["class"]], [(sid, ep["class"]) for sid in ep["support"]]
        rows.append((i, novel, shots))
    return rows


def _support_batch(rows, run: Run) -> tuple[torch.Tensor, ...]:
    """The supports of E episodes stacked for `train_classifiers`: features (E, S, D, h, w), and
    target, valid, teacher (E, N, K0), foreground column, N = S * size * size pixels per episode
    (S: the most shots of an episode; a shorter episode's missing shots stay invalid)."""
    n_old, size, dev = len(run.base) + 1, run.feats.label_size, run.dev
    e, n_shots = len(rows), max(len(shots) for _, _, shots in rows)
    d, h, w_ = run.feats(rows[0][2][0][0])[0].shape
    x = torch.zeros(e, n_shots, d, h, w_, device=dev)
    target = torch.zeros(e, n_shots, size, size, dtype=torch.long, device=dev)
    valid = torch.zeros(e, n_shots, size, size, device=dev)
    teacher = torch.zeros(e, n_shots, size, size, n_old, device=dev)
    column_px = torch.zeros(e, n_shots, size, size, dtype=torch.long, device=dev)
    for j, (_, novel, shots) in enumerate(rows):
        for k, (sid, c) in enumerate(shots):
            fx, ft, fte = _support_data(run.feats, run.ds, sid, c)
            x[j, k], target[j, k], teacher[j, k] = fx, ft.clamp(max=1), fte.permute(1, 2, 0)
            valid[j, k] = (ft != 255).float()
            column_px[j, k] = 1 if run.p.mode == "fss" else n_old + novel.index(c)
    target, valid, column_px = (t.reshape(e, -1) for t in (target, valid, column_px))
    return x, target, valid, teacher.reshape(e, -1, n_old), column_px


def _write_episode(
    art, run: Run, i: int, novel, shots, w: torch.Tensor, b: torch.Tensor, loss: float
) -> None:
    """An episode's query prediction (and its base query's), then its record: the file that marks it done."""
    ep = run.doc["episodes"][i]
    binary = run.p.mode == "gfss" and "supports" not in ep  # gfss-binary: novel vs the rest
    _predict(art, run, f"pred/{i:05d}.png", ep["query"], w, b, novel, len(run.base) + 1 if binary else None)
    if run.p.mode == "gfss" and ep.get("base_query"):
        _predict(art, run, f"pred/{i:05d}_base.png", ep["base_query"], w, b, novel, None)
    atomic_write_json(
        art.file(f"episodes/{i:05d}.json"),
        {
            "episode": i,
            "novel_classes": novel,
            "supports": [s for s, _ in shots],
            "query": ep["query"],
            "final_loss": loss,
        },
    )


def _predict(art, run: Run, relpath: str, image_id: str, w, b, novel, binary_column: int | None) -> None:
    f, _, shape = run.feats(image_id)
    logits = torch.einsum("dhw,kd->khw", f, w) + b[:, None, None]
    logits = F.interpolate(logits[None], size=shape, mode="bilinear", align_corners=True)[0]
    arg = logits.max(0).indices.cpu().numpy()  # argmax(0) is ~40x slower on CPU here
    if run.p.mode == "fss":
        write_label(art.file(relpath), (arg == 1).astype(np.uint8))
        return
    if binary_column is not None:  # gfss-binary query: novel vs the rest
        write_label(art.file(relpath), (arg == binary_column).astype(np.uint8))
        return
    doc = run.doc  # "none of these": the episodes' background class, else their ignore index
    background = doc["background"] if doc["background"] is not None else doc["ignore_index"]
    ids = np.array([background, *run.base, *novel], dtype=np.int64)
    write_label(art.file(relpath), ids[arg].astype(np.uint8))
