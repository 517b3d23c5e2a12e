"""`fsseg finetune-episode`: per-episode classifiers on frozen features (transfer-learning FSS / GFSS,
and few-shot masks with no pretraining stage).

Reads:  an episodes file (benchmark mode), or --support / --support-masks / --query folders (ad-hoc
        mode: one episode per query, every support a shot); a PSPNet checkpoint (`fsseg pretrain
        --method pspnet`), or none: a frozen ImageNet backbone then gives the features.
Writes: benchmark: `pred/<episode:05d>.png` (and `pred/<episode:05d>_base.png` for gfss-binary
        episodes) for `fsseg evaluate --task fss|gfss`; ad-hoc: `masks/<query>.png` (0/1) and
        `overlays/<query>.jpg`; `episodes/<episode:05d>.json` (class, supports, final loss),
        `manifest.json` (kind "finetune").
Algorithm: backbone frozen; features computed once per image and cached: the PSPNet's 512-channel
        feature at output stride 8, or the ImageNet backbone's stride-16 and stride-32 block outputs,
        each L2-normalised, concatenated at stride 16. A new 1x1 classifier per episode whose logits
        are upsampled (bilinear) to the label size, where the loss meets the support labels; plain
        SGD (--steps), many episodes at once (their losses are summed, so each episode gets exactly
        its own gradient).
        fss:  2-way (background, novel), cross-entropy; from zero on a PSPNet (the report), from the
              supports' cosine prototypes times --prototype-scale on ImageNet features.
        gfss: (|base| + 2)-way (background, base classes from the pretrained classifier, novel;
              with the standard protocol one novel row per novel class), loss = reformulated
              CE (Eq. 4-5: foreground = the support's class column, background = the sum of all
              other columns) + gamma * distillation (Eq. 6-7: the pretrained background
              probability equals the new background plus the novel classes).
The classifiers' math lives in `stages.models.episode_classifier`. This file stays above 400 lines
because its two input modes (episodes file, folders) and two feature sources (PSPNet, ImageNet)
meet in one chunked loop; the folder mode's readers are kept beside the loop that calls them.
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
from stages.core.datasets import Dataset
from stages.core.episodes import open_episodes
from stages.core.errors import FssegError
from stages.core.imageio import (
    list_images,
    overlay,
    read_image,
    read_support_mask,
    support_mask_path,
    write_jpeg,
    write_label,
)
from stages.core.validation import checked_label
from stages.models.backbones import network_input
from stages.models.episode_classifier import Extract, imagenet_features, prototype_start, train_classifiers
from stages.params import FINETUNE_LR, FinetuneParams, resolve

log = logging.getLogger(__name__)


class DatasetImages:
    """Images and support labels of an episodes file's dataset."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def image(self, image_id: str) -> np.ndarray:
        return read_image(self.ds.sample(image_id).image)

    def target(self, image_id: str, cls: int, image_hw: tuple[int, int]) -> np.ndarray:
        """(H, W) int64: 1 where the support shows `cls`, 0 elsewhere, 255 where the dataset ignores."""
        sample = self.ds.sample(image_id)
        raw = checked_label(self.ds, sample, self.ds.load_label(sample), image_hw).astype(np.int64)
        return np.where(raw == self.ds.ignore_index, 255, raw == cls).astype(np.int64)


class FolderImages:
    """Ad-hoc mode: image files by id (`support/<stem>`, `query/<stem>`) and the supports' mask files."""

    def __init__(self, images: dict[str, Path], masks: dict[str, Path]):
        self.images, self.masks = images, masks

    def image(self, image_id: str) -> np.ndarray:
        return read_image(self.images[image_id])

    def target(self, image_id: str, cls: int, image_hw: tuple[int, int]) -> np.ndarray:
        path = self.masks[image_id]
        mask = read_support_mask(path, self.images[image_id], image_hw)
        if not mask.any():
            log.warning("support mask %s is empty: that support shows only background", path)
        return mask.astype(np.int64)


Source = DatasetImages | FolderImages


class Features:
    """Frozen features (and a PSPNet's pretrained logits) per image, cached (LRU)."""

    def __init__(
        self, extract: Extract, source: Source, size: int, backbone: str, device, precision, budget_mb
    ):
        self.extract, self.source, self.size, self.device, self.precision = (
            extract,
            source,
            size,
            device,
            precision,
        )
        self.backbone = backbone
        self.cache = TensorCache(budget_mb)
        self.label_size = size  # where support losses are computed (logits upsampled to it)

    def __call__(self, image_id: str) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        """(features (D, h, w), pretrained logits (K0, h, w) or None, original image size)."""
        return self.cache(image_id, lambda: self._compute(image_id))

    def _compute(self, image_id: str) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        image = self.source.image(image_id)
        x = network_input(image, self.size, self.backbone).to(self.device)
        with torch.no_grad(), devices.autocast(self.device, self.precision):
            feats, logits = self.extract(x)
        return feats[0].float(), None if logits is None else logits[0].float(), image.shape[:2]


def _support_data(feats: Features, image_id: str, cls: int, mode: str):
    """Features (D, h, w), binary target (S, S) at the label size (255 = ignored) and, for gfss, the
    pretrained classifier's probabilities (K0, S, S)."""
    f, old_logits, image_hw = feats(image_id)
    size = (feats.label_size, feats.label_size)
    raw = feats.source.target(image_id, cls, image_hw)
    label = torch.from_numpy(raw)[None, None].float()
    target = F.interpolate(label, size=size, mode="nearest")[0, 0].long().to(f.device)
    if mode != "gfss":
        return f, target, None
    teacher = F.interpolate(old_logits[None], size=size, mode="bilinear", align_corners=True)[0].softmax(0)
    return f, target, teacher


@dataclass(frozen=True)
class Run:
    """What every chunk of episodes is run with: the episodes, the frozen model's parts, the record."""

    doc: dict[str, Any]  # the episodes file (ad-hoc mode: built from the folders)
    feats: Features
    old_w: torch.Tensor | None  # (K0, D): a PSPNet's pretrained background and base rows
    old_b: torch.Tensor | None  # (K0,)
    base: list[int]  # the fold's base classes
    dev: torch.device
    p: FinetuneParams
    adhoc: bool
    lr: float  # --lr, or its default for the features' source


def run_finetune_episode(
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    episodes: str | Path | None = None,
    root: str | Path | None = None,
    support: str | None = None,
    support_masks: str | Path | None = None,
    query: str | None = None,
    params: FinetuneParams | None = None,
    overwrite: bool = False,
    on_progress: Callable[..., None] | None = None,
    **changes: Any,
) -> Path:
    """Train one classifier per episode and write its query prediction. Episodes come from an
    episodes file, or (ad-hoc mode) one per --query image with every --support image as its shots.
    Features come from a PSPNet `checkpoint`, or without one from a frozen ImageNet backbone.
    `changes` are field values of `params` (`steps=10` is `params=FinetuneParams(steps=10)`)."""
    # 1. the record, the episodes and their images: read before the artifact opens (a wrong one leaves nothing)
    p = resolve(FinetuneParams, params, changes)
    _check_inputs(p, checkpoint, episodes, support, support_masks, query)
    if episodes is not None:
        doc, ds = open_episodes(episodes, root)
        _check_protocol(p.mode, doc, episodes)
        source: Source = DatasetImages(ds)
    else:
        doc, source = _adhoc_episodes(support, support_masks, query)

    # 2. seeded once; the device, the precision, the frozen features
    devices.seed_everything(p.seed)
    dev = devices.resolve_device(p.device)
    precision = devices.stage_precision(p, dev)
    extract, backbone, old = _frozen_features(p, checkpoint, dev, doc["base_classes"])
    feats = Features(extract, source, p.img_size, backbone, dev, precision, p.feature_cache_mb)
    feats.label_size = p.label_size or (p.img_size if checkpoint else 4 * _feature_side(feats))
    lr = p.lr or FINETUNE_LR["checkpoint" if checkpoint else "imagenet"]
    resolved = {
        "mode": "benchmark" if episodes is not None else "ad-hoc",
        "lr": lr,
        "features": "pspnet checkpoint" if checkpoint else f"{backbone} ({p.backbone_weights})",
        "label_size": feats.label_size,
        "protocol": doc["protocol"],
        "optimizer": "sgd",
        "precision": precision,
        "root": str(root) if root else None,
    }
    inputs = [x for x in (checkpoint, episodes, support, support_masks, query) if x and Path(x).exists()]

    # 3. the artifact (a finished one is up to date; an unfinished one skips the episodes it has written)
    with open_artifact(
        out_dir,
        kind="finetune",
        stage="finetune-episode",
        params=p,
        resolved=resolved,
        inputs=inputs,
        overwrite=overwrite,
    ) as art:
        if art.up_to_date:
            return art.path

        # 4. the episodes, chunk by chunk, then the manifest
        run = Run(doc, feats, *old, doc["base_classes"], dev, p, adhoc=episodes is None, lr=lr)
        _run_chunks(art, run, on_progress)
        predictions = (
            {"predictions": "masks", "overlays": "overlays"} if run.adhoc else {"predictions": "pred"}
        )
        return art.finish(
            outputs={**predictions, "episodes": "episodes", "count": len(doc["episodes"])},
            label_map={str(i): n for i, n in enumerate(doc["class_names"])},
            device=devices.describe(dev),
        )


def _check_inputs(p: FinetuneParams, checkpoint, episodes, support, support_masks, query) -> None:
    """One mode, and what that mode needs: an error naming the missing option otherwise."""
    if (episodes is None) == (query is None):
        raise FssegError("pass either --episodes (benchmark mode) or --query (ad-hoc mode)")
    if query is not None and (support is None or support_masks is None):
        raise FssegError(
            "ad-hoc mode needs --support DIR and --support-masks DIR (masks named like the images)"
        )
    if p.mode == "gfss" and (checkpoint is None or query is not None):
        raise FssegError(
            "--mode gfss needs --checkpoint (a pspnet from fsseg pretrain: its base classifier) and --episodes"
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


def _adhoc_episodes(support, support_masks, query) -> tuple[dict[str, Any], FolderImages]:
    """Ad-hoc mode's episodes: one per query image, every support image a shot. --support-masks is
    a folder of masks named like the supports, or a clip-cam artifact (its masks/)."""
    masks_dir = Path(support_masks)
    if (masks_dir / "manifest.json").is_file():
        masks_dir = masks_dir / read_manifest(masks_dir, "cams")["outputs"]["masks"]
    supports, queries = _by_stem(support, "--support"), _by_stem(query, "--query")
    masks = {f"support/{stem}": support_mask_path(masks_dir, image) for stem, image in supports.items()}
    doc = {
        "protocol": "fss",
        "shots": len(supports),
        "base_classes": [],
        "novel_classes": [1],
        "class_names": ["background", "foreground"],
        "episodes": [
            {"class": 1, "support": [f"support/{s}" for s in supports], "query": f"query/{q}", "name": q}
            for q in queries
        ],
    }
    images = {f"support/{s}": path for s, path in supports.items()} | {
        f"query/{q}": path for q, path in queries.items()
    }
    return doc, FolderImages(images, masks)


def _by_stem(source: str, flag: str) -> dict[str, Path]:
    """The images of a folder/file/glob by file stem; two files with one stem are an error."""
    out: dict[str, Path] = {}
    for path in list_images(source):
        if path.stem in out:
            raise FssegError(
                f"{flag}: {out[path.stem].name} and {path.name} share the stem {path.stem!r}; rename one"
            )
        out[path.stem] = path
    return out


def _frozen_features(p: FinetuneParams, checkpoint, dev, base_classes) -> tuple[Extract, str, tuple]:
    """(the feature extractor, its backbone name, (pretrained classifier weight, bias) or (None, None))."""
    if checkpoint is not None:
        model, backbone = _load_pspnet(checkpoint, dev, base_classes)
        old = (model.classifier.weight.detach()[:, :, 0, 0].float(), model.classifier.bias.detach().float())
        return model, backbone, old
    from stages.core.weights import backbone_weights_fit
    from stages.models.backbones import feature_pyramid

    with backbone_weights_fit(p.backbone_weights, p.backbone):
        pyramid = feature_pyramid(p.backbone, weights=p.backbone_weights).to(dev)
    return imagenet_features(pyramid), p.backbone, (None, None)


def _feature_side(feats: Features) -> int:
    """The side of the feature map of a feats.size input."""
    x = torch.zeros(1, 3, feats.size, feats.size, device=feats.device)
    with torch.no_grad(), devices.autocast(feats.device, feats.precision):
        return int(feats.extract(x)[0].shape[-1])


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
        init_w, init_b = _fss_start(x, target, valid, run), torch.zeros(e, 2, device=run.dev)
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
        lr=run.lr,
        gamma=run.p.gamma,
        n_old=n_old,
        size=run.feats.label_size,
    )
    for j, (i, novel, shots) in enumerate(rows):
        _write_episode(art, run, i, novel, shots, w[j], b[j], float(loss[j]))


def _fss_start(x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, run: Run) -> torch.Tensor:
    """The 2-way classifiers' starting rows (E, 2, D): zero on a PSPNet (the report), the supports'
    cosine prototypes times --prototype-scale on ImageNet features."""
    if run.old_w is not None or run.p.prototype_scale == 0:
        return torch.zeros(x.shape[0], 2, x.shape[2], device=run.dev)
    return prototype_start(x, target, valid, run.feats.label_size, run.p.prototype_scale)


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
    n_old, size, dev, gfss = len(run.base) + 1, run.feats.label_size, run.dev, run.p.mode == "gfss"
    e, n_shots = len(rows), max(len(shots) for _, _, shots in rows)
    x = None  # (E, S, D, h, w), sized by the first support's features
    target = torch.zeros(e, n_shots, size, size, dtype=torch.long, device=dev)
    valid = torch.zeros(e, n_shots, size, size, device=dev)
    teacher = torch.zeros(e, n_shots, size, size, n_old, device=dev) if gfss else None
    column_px = torch.zeros(e, n_shots, size, size, dtype=torch.long, device=dev)
    for j, (_, novel, shots) in enumerate(rows):
        for k, (sid, c) in enumerate(shots):
            fx, ft, fte = _support_data(run.feats, sid, c, run.p.mode)
            if x is None:
                x = torch.zeros(e, n_shots, *fx.shape, device=dev)
            x[j, k], target[j, k] = fx, ft.clamp(max=1)
            valid[j, k] = (ft != 255).float()
            column_px[j, k] = n_old + novel.index(c) if gfss else 1
            if gfss:
                teacher[j, k] = fte.permute(1, 2, 0)
    target, valid, column_px = (t.reshape(e, -1) for t in (target, valid, column_px))
    return x, target, valid, teacher.reshape(e, -1, n_old) if gfss else None, column_px


def _write_episode(
    art, run: Run, i: int, novel, shots, w: torch.Tensor, b: torch.Tensor, loss: float
) -> None:
    """An episode's query prediction (and its base query's), then its record: the file that marks it done."""
    ep = run.doc["episodes"][i]
    binary = run.p.mode == "gfss" and "supports" not in ep  # gfss-binary: novel vs the rest
    relpath = f"masks/{ep['name']}.png" if run.adhoc else f"pred/{i:05d}.png"
    _predict(art, run, relpath, ep["query"], w, b, novel, len(run.base) + 1 if binary else None)
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
        mask = (arg == 1).astype(np.uint8)
        if run.adhoc:  # a picture to look at, written before the mask that marks the query done
            image = run.feats.source.image(image_id)
            write_jpeg(art.file(f"overlays/{Path(relpath).stem}.jpg"), overlay(image, mask=mask))
        write_label(art.file(relpath), mask)
        return
    if binary_column is not None:  # gfss-binary query: novel vs the rest
        write_label(art.file(relpath), (arg == binary_column).astype(np.uint8))
        return
    doc = run.doc  # "none of these": the episodes' background class, else their ignore index
    background = doc["background"] if doc["background"] is not None else doc["ignore_index"]
    ids = np.array([background, *run.base, *novel], dtype=np.int64)
    write_label(art.file(relpath), ids[arg].astype(np.uint8))
