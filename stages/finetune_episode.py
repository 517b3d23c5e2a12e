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
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages.core import devices
from stages.core.artifacts import atomic_write_json, open_artifact, read_manifest, run_items
from stages.core.checkpoints import build_from_checkpoint
from stages.core.datasets import open_dataset
from stages.core.episodes import read_episodes
from stages.core.errors import FssegError
from stages.core.imageio import read_image, write_label
from stages.core.validation import check_episodes, checked_label
from stages.models.backbones import network_input

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

    def __init__(self, model, dataset, size: int, backbone: str, device, precision: str, capacity: int):
        self.model, self.ds, self.size, self.device, self.precision = model, dataset, size, device, precision
        self.backbone = backbone
        self.capacity, self.store = capacity, OrderedDict()
        self.label_size = size  # where support losses are computed (logits upsampled to it)

    def __call__(self, image_id: str) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """(features (512, h, w), pretrained logits (K0, h, w), original image size)."""
        if image_id in self.store:
            self.store.move_to_end(image_id)
            return self.store[image_id]
        image = read_image(self.ds.sample(image_id).image)
        x = network_input(image, self.size, self.backbone).to(self.device)
        with torch.no_grad(), devices.autocast(self.device, self.precision):
            feats, logits = self.model(x)
        entry = (feats[0].float(), logits[0].float(), image.shape[:2])
        if self.capacity:
            self.store[image_id] = entry
            while len(self.store) > self.capacity:
                self.store.popitem(last=False)
        return entry


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


def run_finetune_episode(
    out_dir: str | Path,
    *,
    checkpoint: str | Path,
    episodes: str | Path,
    root: str | Path | None = None,
    mode: str = "fss",
    steps: int = 100,
    lr: float = 0.1,
    gamma: float = 10.0,
    img_size: int = 473,
    label_size: int | None = None,
    batch_episodes: int = 50,
    feature_cache: int = 512,
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
    overwrite: bool = False,
    on_progress: Callable[..., None] | None = None,
) -> Path:
    if mode not in ("fss", "gfss"):
        raise FssegError(f"--mode {mode!r} is not fss or gfss")
    doc = read_episodes(episodes)
    if mode == "gfss" and doc["protocol"] == "fss":
        raise FssegError(
            f"{episodes} holds fss episodes; --mode gfss needs `fsseg data episodes --protocol gfss` "
            f"(or gfss-binary)"
        )
    if mode == "fss" and doc["protocol"] == "gfss":
        raise FssegError(f"{episodes} holds gfss episodes (every novel class per episode); use --mode gfss")
    devices.seed_everything(seed)
    dev = devices.resolve_device(device)
    devices.check_precision(precision, dev)
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
    if base and base != doc["base_classes"]:
        raise FssegError(
            f"{checkpoint} was trained on base classes {base} but the episodes' base classes are "
            f"{doc['base_classes']}; use episodes of the same fold"
        )
    base = doc["base_classes"]
    ds = open_dataset(doc["dataset"], root or doc["root"], doc["split"])
    check_episodes(doc, ds, episodes)
    label_size = img_size if label_size is None else label_size
    params: dict[str, Any] = {
        "label_size": label_size,
        "mode": mode,
        "protocol": doc["protocol"],
        "steps": steps,
        "lr": lr,
        "optimizer": "sgd",
        "gamma": gamma if mode == "gfss" else None,
        "img_size": img_size,
        "batch_episodes": batch_episodes,
        "feature_cache": feature_cache,
        "precision": precision,
        "root": str(root) if root else None,
    }
    with open_artifact(
        out_dir,
        kind="finetune",
        stage="finetune-episode",
        params=params,
        inputs=[checkpoint, episodes],
        seed=seed,
        overwrite=overwrite,
    ) as art:
        if art.up_to_date:
            return art.path
        feats = Features(model, ds, img_size, data["model_kwargs"]["backbone"], dev, precision, feature_cache)
        feats.label_size = label_size
        classifier = model.classifier
        old_w = classifier.weight.detach()[:, :, 0, 0].float()
        old_b = classifier.bias.detach().float()
        indices = list(range(len(doc["episodes"])))
        # memory grows with the support images per chunk: batch_episodes counts 1-shot, 1-class episodes
        per_episode = doc["shots"] * (len(doc["novel_classes"]) if doc["protocol"] == "gfss" else 1)
        size_chunk = max(1, batch_episodes // per_episode)
        chunks = [indices[i : i + size_chunk] for i in range(0, len(indices), size_chunk)]
        done = 0

        def work(chunk: list[int]) -> None:
            nonlocal done
            _run_chunk(art, chunk, doc, ds, feats, old_w, old_b, base, mode, steps, lr, gamma, dev)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, len(indices))

        run_items(art, chunks, done=lambda c: all(art.has(f"episodes/{i:05d}.json") for i in c), work=work)
        return art.finish(
            outputs={"predictions": "pred", "episodes": "episodes", "count": len(indices)},
            label_map={str(i): n for i, n in enumerate(doc["class_names"])},
            device=devices.describe(dev),
        )


def _run_chunk(art, chunk, doc, ds, feats, old_w, old_b, base, mode, steps, lr, gamma, dev) -> None:
    """Train and apply the classifiers of a chunk of episodes at once."""
    n_old = len(base) + 1
    rows = []  # per training unit: (episode index, novel classes of the episode, [(support id, class)])
    for i in chunk:
        ep = doc["episodes"][i]
        if "supports" in ep:  # standard gfss: every novel class
            novel = [int(c) for c in ep["supports"]]
            shots = [(sid, int(c)) for c, ids in ep["supports"].items() for sid in ids]
        else:
            novel, shots = [ep["class"]], [(sid, ep["class"]) for sid in ep["support"]]
        rows.append((i, novel, shots))
    n_novel = max(len(r[1]) for r in rows)
    n_shots = max(len(r[2]) for r in rows)
    size = feats.label_size
    e = len(rows)
    f0 = feats(rows[0][2][0][0])[0]
    d, h, w_ = f0.shape
    x = torch.zeros(e, n_shots, d, h, w_, device=dev)
    target = torch.zeros(e, n_shots, size, size, dtype=torch.long, device=dev)
    valid = torch.zeros(e, n_shots, size, size, device=dev)
    teacher = torch.zeros(e, n_shots, size, size, n_old, device=dev)
    column_px = torch.zeros(e, n_shots, size, size, dtype=torch.long, device=dev)
    for j, (_, novel, shots) in enumerate(rows):
        for k, (sid, c) in enumerate(shots):  # shots missing from a shorter episode stay invalid (valid = 0)
            fx, ft, fte = _support_data(feats, ds, sid, c)
            x[j, k], target[j, k], teacher[j, k] = fx, ft.clamp(max=1), fte.permute(1, 2, 0)
            valid[j, k] = (ft != 255).float()
            column_px[j, k] = 1 if mode == "fss" else n_old + novel.index(c)
    target, valid, column_px = (t.reshape(e, -1) for t in (target, valid, column_px))
    teacher = teacher.reshape(e, -1, n_old)
    if mode == "fss":
        init_w, init_b = torch.zeros(e, 2, d, device=dev), torch.zeros(e, 2, device=dev)
    else:  # background and base rows from the pretrained classifier, novel rows new
        init_w = torch.cat([old_w, torch.zeros(n_novel, d, device=dev)]).expand(e, -1, -1).contiguous()
        init_b = torch.cat([old_b, torch.zeros(n_novel, device=dev)]).expand(e, -1).contiguous()
    w, b, loss = train_classifiers(
        x,
        target,
        valid,
        teacher,
        init_w,
        init_b,
        column_px,
        mode=mode,
        steps=steps,
        lr=lr,
        gamma=gamma,
        n_old=n_old,
        size=size,
    )
    for j, (i, novel, shots) in enumerate(rows):
        ep = doc["episodes"][i]
        _predict(
            art,
            f"pred/{i:05d}.png",
            feats,
            ep["query"],
            w[j],
            b[j],
            mode,
            doc,
            base,
            novel,
            binary_column=None if mode == "fss" or "supports" in ep else n_old,
        )
        if mode == "gfss" and ep.get("base_query"):
            _predict(
                art,
                f"pred/{i:05d}_base.png",
                feats,
                ep["base_query"],
                w[j],
                b[j],
                "gfss",
                doc,
                base,
                novel,
                binary_column=None,
            )
        atomic_write_json(
            art.file(f"episodes/{i:05d}.json"),
            {
                "episode": i,
                "novel_classes": novel,
                "supports": [s for s, _ in shots],
                "query": ep["query"],
                "final_loss": float(loss[j]),
            },
        )


def _predict(art, relpath, feats, image_id, w, b, mode, doc, base, novel, binary_column) -> None:
    f, _, shape = feats(image_id)
    logits = torch.einsum("dhw,kd->khw", f, w) + b[:, None, None]
    logits = F.interpolate(logits[None], size=shape, mode="bilinear", align_corners=True)[0]
    arg = logits.max(0).indices.cpu().numpy()  # argmax(0) is ~40x slower on CPU here
    if mode == "fss":
        write_label(art.file(relpath), (arg == 1).astype(np.uint8))
        return
    if binary_column is not None:  # gfss-binary query: novel vs the rest
        write_label(art.file(relpath), (arg == binary_column).astype(np.uint8))
        return
    background = (
        doc["background"] if doc["background"] is not None else doc["ignore_index"]
    )  # "none of these"
    ids = np.array([background, *base, *novel], dtype=np.int64)
    write_label(art.file(relpath), ids[arg].astype(np.uint8))
