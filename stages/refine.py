"""`fsseg refine`: few-shot masks by iterative mutual refinement (IMR-HSNet) or HSNet baselines.

Reads:  a checkpoint (fsseg's, or the authors' plain state dict of HSNet / IMR-HSNet), and
        either an episodes file over a dataset (benchmark mode) or folders of support and
        query images (ad-hoc mode). Initial masks: CAMs from a clip-cam artifact (`cams`), or
        computed on the fly with the code clip-cam uses; or pixel-labelled support masks.
Writes: `pred/<episode:05d>.png` (benchmark; what `fsseg evaluate --task fss` reads) or
        `masks/<query>.png` (ad-hoc), 0/1 at the query's size; `steps/tN/{query,support}/...`
        per refinement step; `overlays/<id>.jpg` (support and query masks, step by step);
        optional `probs/<id>.npy`; `manifest.json` (kind "refine").
Algorithm: images resized to `img_size`^2; backbone features cached per image (LRU) across
        episodes; refiners: `imr` (IMR-HSNet, `steps` steps, support and query refined
        mutually; pixel-labelled supports stay fixed), `none` (one HSNet pass from the initial
        support mask) and `mutual` (HSNet: query <- support, support <- query, query <-
        support). k-shot: each support predicts; votes / max vote >= 0.5.
Length: over 400 lines because both modes build their jobs here (images, CAMs read or computed,
        support masks) beside the per-job forward and overlays they share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages.core import devices, distributed
from stages.core.artifacts import open_artifact, read_manifest, run_items
from stages.core.cache import TensorCache
from stages.core.checkpoints import build_from_checkpoint, load_checkpoint
from stages.core.datasets import open_dataset
from stages.core.episodes import open_episodes
from stages.core.errors import FssegError
from stages.core.imageio import (
    list_images,
    load_float_map,
    overlay,
    read_image,
    read_support_mask,
    support_mask_path,
    write_jpeg,
    write_label,
)
from stages.core.validation import checked_label
from stages.models.backbones import network_input
from stages.models.hsnet import (
    HSNet,
    IMRHSNet,
    final_mask,
    initial_mask,
    load_reference_state_dict,
    reference_architecture,
    vote,
)
from stages.params import RefineParams, resolve

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- model
def load_refiner(checkpoint: str | Path, device: torch.device) -> tuple[torch.nn.Module, str, str]:
    """(model, method "imr-hsnet" | "hsnet", backbone name) from an fsseg or an authors' checkpoint."""
    data = load_checkpoint(checkpoint)
    if "model_name" in data:
        model, data = build_from_checkpoint(checkpoint)
        if not isinstance(model, HSNet | IMRHSNet):
            raise FssegError(
                f"{checkpoint} holds a {data['model_name']} model; refine needs hsnet or imr_hsnet"
            )
        method, backbone = (
            ("imr-hsnet" if isinstance(model, IMRHSNet) else "hsnet"),
            data["model_kwargs"]["backbone"],
        )
        if str(data.get("fsseg_version", "")).startswith("0.1."):
            log.warning(
                "%s was trained with fsseg %s, whose HSNet forward differed from the authors' (taps, GRU, "
                "masking); it now runs the authors' forward: retrain it with `fsseg pretrain`",
                checkpoint,
                data["fsseg_version"],
            )
    else:
        state = data.get("state_dict", data) if isinstance(data.get("state_dict"), dict) else data
        method, backbone = reference_architecture(state)
        cls = IMRHSNet if method == "imr-hsnet" else HSNet
        model = cls(backbone=backbone)
        try:
            load_reference_state_dict(model, state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0][:200]
            raise FssegError(
                f"{checkpoint} is not an {method} {backbone} state dict fsseg can map ({first})"
            ) from None
    return model.to(device).eval(), method, backbone


# ----------------------------------------------------------------------------- episodes
@dataclass
class Shot:
    """One image and its initial mask (a CAM, or a pixel mask for supports), loaded on demand."""

    key: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]  # -> (RGB image, mask in [0, 1] at its size)


@dataclass
class Job:
    id: str
    query: Shot
    supports: list[Shot]
    output: str  # relative path of the final mask


def _to_tensor(image: np.ndarray, size: int, backbone: str, device) -> torch.Tensor:
    return network_input(image, size, backbone, resize="pil").to(device)


def _fg(logits: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Foreground probability (H, W) at an image's size from 2-class logits."""
    prob = logits.float().softmax(1)[:, 1:]
    return F.interpolate(prob, size=shape, mode="bilinear", align_corners=True)[0, 0].cpu().numpy()


def refine_one(
    model,
    method: str,
    refiner: str,
    q_levels,
    s_levels,
    q_mask,
    s_mask,
    *,
    steps: int,
    fixed_support: bool,
    zero_shot: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Per-step query and support logits for one (query, support) pair."""
    if method == "imr-hsnet":
        if refiner != "imr":
            raise FssegError(
                f"--refiner {refiner} runs an HSNet checkpoint; this one is IMR-HSNet (use --refiner imr)"
            )
        return model.refine(
            q_levels,
            s_levels,
            q_mask,
            s_mask,
            steps=steps,
            update_support=not fixed_support,
            zero_shot=zero_shot,
        )
    if refiner == "imr":
        raise FssegError(
            "--refiner imr needs an IMR-HSNet checkpoint; this one is HSNet (use --refiner none or mutual)"
        )
    if zero_shot:
        s_levels, s_mask = q_levels, q_mask
    q1 = model.predict(q_levels, s_levels, s_mask)
    if refiner == "none":
        return [q1], [None]
    s2 = model.predict(s_levels, q_levels, q1.softmax(1)[:, 1:])
    q3 = model.predict(q_levels, s_levels, s2.softmax(1)[:, 1:])
    return [q1, q3], [s2, s2]


# ----------------------------------------------------------------------------- stage
@dataclass(frozen=True)
class Run:
    """What every job is run with: the loaded model, where and how it runs, the resolved record."""

    model: torch.nn.Module
    method: str  # the checkpoint's: "imr-hsnet" | "hsnet"
    backbone: str
    dev: torch.device
    precision: str  # resolved: fp32, bf16 or fp16
    fixed_support: bool  # pixel-labelled supports: kept as they are, never refined
    p: RefineParams

    def features(self, image: np.ndarray):
        """The backbone's feature pyramid of an RGB image resized to `img_size`^2."""
        return self.model.backbone(_to_tensor(image, self.p.img_size, self.backbone, self.dev))


def run_refine(
    out_dir: str | Path,
    *,
    checkpoint: str | Path,
    episodes: str | Path | None = None,
    root: str | Path | None = None,
    support: str | None = None,
    query: str | None = None,
    label: str | None = None,
    support_masks: str | Path | None = None,
    cams: str | Path | None = None,
    params: RefineParams | None = None,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    **changes: Any,
) -> Path:
    """Refine the masks of every episode (benchmark mode) or of the query images (ad-hoc mode).
    `changes` are field values of `params` (`steps=3` is `params=RefineParams(steps=3)`)."""
    # 1. the record, and the rules between it and the inputs; seeded once, then the model on its device
    p = resolve(RefineParams, params, changes)
    _check_inputs(p, episodes, query, support, label, support_masks)
    run = _start(p, checkpoint, fixed_support=p.supervision == "mask" or support_masks is not None)

    # 2. the inputs, read before the artifact opens: a wrong one leaves no folder behind
    cam_artifact = read_manifest(cams, "cams") if cams is not None else None
    doc = open_episodes(episodes, root)[0] if episodes is not None else None
    inputs = [checkpoint] + [
        path for path in (episodes, cams, support, query, support_masks) if path and Path(path).exists()
    ]

    # 3. the artifact (a finished one is up to date; an unfinished one skips the jobs it has written)
    with open_artifact(
        out_dir,
        kind="refine",
        stage="refine",
        params=p,
        resolved=_resolved(run, benchmark=doc is not None, label=label, root=root),
        inputs=inputs,
        overwrite=overwrite,
    ) as art:
        if art.up_to_date:
            return art.path
        if doc is not None:
            jobs = _benchmark_jobs(doc, root, cams, cam_artifact, run)
        else:
            jobs = _adhoc_jobs(support, query, label, support_masks, cams, cam_artifact, run)

        # 4. every job not written yet, then the manifest
        cache_stats = _run_jobs(art, jobs, run, on_progress)
        return art.finish(
            outputs={
                "predictions": "pred" if doc is not None else "masks",
                "steps": "steps",
                "overlays": "overlays",
                "episodes": len(jobs),
                "feature_cache": cache_stats,
            },
            label_map={"0": "background", "1": label or "foreground"},
            device=devices.describe(run.dev),
        )


def _check_inputs(p: RefineParams, episodes, query, support, label, support_masks) -> None:
    """One mode, and what that mode needs: an error naming the missing option otherwise."""
    if (episodes is None) == (query is None):
        raise FssegError("pass either --episodes (benchmark mode) or --query (ad-hoc mode)")
    if query is not None and not (support or p.zero_shot):
        raise FssegError("--support DIR is needed with --query (or --zero-shot)")
    if query is not None and support_masks is None and not label:
        raise FssegError(
            "--label is needed when the supports have no --support-masks; pass the class to find"
        )


def _start(p: RefineParams, checkpoint: str | Path, *, fixed_support: bool) -> Run:
    """Seeded once, before anything is built; the device, the processes, the precision, the model."""
    devices.seed_everything(p.seed)
    dev = devices.resolve_device(p.device)
    if dev.type == "cpu":
        devices.keep_freed_memory()
    distributed.init_distributed(dev.type)  # under torchrun: join, then shard the items
    precision = devices.stage_precision(p, dev)
    model, method, backbone = load_refiner(checkpoint, dev)
    return Run(model, method, backbone, dev, precision, fixed_support, p)


def _resolved(run: Run, *, benchmark: bool, label: str | None, root: str | Path | None) -> dict[str, Any]:
    """What the run settled beyond its parameters, for the manifest."""
    return {
        "mode": "benchmark" if benchmark else "ad-hoc",
        "method": run.method,
        "backbone": run.backbone,
        "supervision": "mask" if run.fixed_support else "label",
        "label": label,
        "precision": run.precision,
        "root": str(root) if root else None,
    }


def _run_jobs(art, jobs: list[Job], run: Run, on_progress) -> dict[str, int]:
    """Every job not written yet, each image's backbone features computed once (LRU); the cache's stats."""
    cache = TensorCache(run.p.feature_cache_mb)

    def work(job: Job) -> None:
        with torch.no_grad(), devices.autocast(run.dev, run.precision):
            _run_job(art, job, run, cache)

    run_items(art, jobs, done=lambda j: art.has(j.output), work=work, on_progress=on_progress)
    stats = cache.stats()
    log.info("feature cache: %(hits)d hits, %(misses)d misses, %(entries)d images, %(bytes)d bytes", stats)
    return stats


def _run_job(art, job: Job, run: Run, cache: TensorCache) -> None:
    """Refine a query with each of its supports: the steps, the overlay, the probabilities if asked,
    and last the voted mask (its file marks the job done)."""
    p = run.p
    size = p.img_size
    q_image, q_initial = job.query.load()
    q_levels = cache(job.query.key, lambda: run.features(q_image))
    q_mask = initial_mask(q_initial, size, pixel=False).to(run.dev)
    shape = q_image.shape[:2] if p.mask_size == "original" else (size, size)
    shot_masks: list[np.ndarray] = []
    probs = np.zeros(shape, np.float32)
    tiles: list[list[np.ndarray]] = []
    for k, shot in enumerate(job.supports or [job.query]):
        s_image, s_initial = shot.load()
        s_levels = cache(shot.key, lambda img=s_image: run.features(img))
        q_steps, s_steps = refine_one(
            run.model,
            run.method,
            p.refiner,
            q_levels,
            s_levels,
            q_mask,
            initial_mask(s_initial, size, pixel=run.fixed_support and not p.zero_shot).to(run.dev),
            steps=p.steps,
            fixed_support=run.fixed_support,
            zero_shot=p.zero_shot,
        )
        shot_masks.append(final_mask(q_steps[-1], shape))
        if p.save_probs:
            probs += _fg(q_steps[-1], shape) / max(len(job.supports), 1)
        for t, (lq, ls) in enumerate(zip(q_steps, s_steps, strict=True), 1):
            write_label(art.file(f"steps/t{t}/query/{job.id}_s{k}.png"), final_mask(lq, shape))
            if ls is not None and not p.zero_shot:
                write_label(
                    art.file(f"steps/t{t}/support/{job.id}_s{k}.png"), final_mask(ls, s_image.shape[:2])
                )
        if k == 0:
            tiles = _evolution((q_image, q_initial), (s_image, s_initial), q_steps, s_steps, p.zero_shot)
    write_jpeg(art.file(f"overlays/{job.id}.jpg"), _grid(tiles))
    if p.save_probs:
        from stages.core.imageio import save_float_map

        save_float_map(art.file(f"probs/{job.id}.npy"), probs)
    write_label(art.file(job.output), vote(shot_masks))  # last: marks the job done


def _evolution(query, support, q_steps, s_steps, zero_shot: bool) -> list[list[np.ndarray]]:
    """Rows of overlay tiles: support (initial mask as heat, then each step) and query (likewise)."""

    def row(image, initial, step_logits):
        import cv2

        initial = cv2.resize(initial.astype(np.float32), image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        tiles = [overlay(image, heatmap=initial, alpha=0.45)]
        for logits in step_logits:
            mask = final_mask(logits, image.shape[:2]) if logits is not None else initial >= 0.5
            tiles.append(overlay(image, mask=mask, alpha=0.45))
        return tiles

    q_row = row(*query, q_steps)
    return [q_row] if zero_shot else [row(*support, s_steps), q_row]


def _grid(rows: list[list[np.ndarray]], side: int = 220) -> np.ndarray:
    """Tiles fitted into side x side squares, captioned: rows support / query, columns initial / step t."""
    import cv2

    names = ["support", "query"] if len(rows) == 2 else ["query"]

    def fit(img, caption):
        h, w = img.shape[:2]
        scale = side / max(h, w)
        img = cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
        canvas = np.full((side, side, 3), 255, np.uint8)
        canvas[: img.shape[0], : img.shape[1]] = img
        cv2.rectangle(canvas, (0, side - 18), (side, side), (255, 255, 255), -1)
        cv2.putText(canvas, caption, (4, side - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        return canvas

    return np.vstack(
        [
            np.hstack([fit(t, f"{name}: {'initial' if k == 0 else f'step {k}'}") for k, t in enumerate(row)])
            for name, row in zip(names, rows, strict=True)
        ]
    )


FLAT_PRIOR = 0.5  # a query without a CAM under pixel-mask supervision starts from this flat mask


def _cam_lookup(cams_dir, artifact, compute: Callable[[np.ndarray, str], np.ndarray | None] | None):
    """A function (cam id, image, label, optional) -> CAM in [0, 1] at the size it was stored or
    computed at (`initial_mask` brings it to the model's size: a `clip-cam --cam-size 50` CAM
    goes in as it is), from an artifact, else computed. With `optional`, a CAM that does not
    exist (not in the artifact, or a label the CAM backend does not know) gives a flat
    FLAT_PRIOR map at the image's size instead of an error."""

    def get(cam_id: str, image: np.ndarray, label: str, optional: bool = False) -> np.ndarray:
        if artifact is not None:
            path = Path(cams_dir) / "cams" / f"{cam_id}.npy"
            cam = load_float_map(path) if path.is_file() else None
            if cam is None and not optional:
                raise FssegError(
                    f"no CAM {cam_id} in {cams_dir}; run `fsseg clip-cam` over the same images "
                    f"(for a dataset: --dataset with the same split)"
                )
        else:
            cam = compute(image, label)
            if cam is None and not optional:
                raise _unknown_label(label)
        return np.full(image.shape[:2], FLAT_PRIOR, np.float32) if cam is None else cam

    return get


def _unknown_label(*labels: str) -> FssegError:
    return FssegError(
        f"the offline imagenet CAM backend knows no {', '.join(map(repr, labels))}, so their supports have "
        f"no initial mask; pass --cams from `fsseg clip-cam --backend clip`, or support masks "
        f"(--supervision mask)"
    )


def _computer(
    labels: list[str], backend: str, dev, *, required: Sequence[str] = ()
) -> Callable[[np.ndarray, str], np.ndarray | None]:
    """CAMs computed on the fly, scored against the class list `labels`; None for a label the
    chosen backend does not know (an error at once for the `required` labels: label supervision
    needs their CAMs)."""
    from stages.models import cam as cams
    from stages.models.imagenet_labels import imagenet_classes

    chosen = cams.resolve_backend(backend, "RN50", "openai")

    def known(label: str) -> bool:
        try:
            return chosen == "clip" or bool(imagenet_classes(label))
        except FssegError:
            return False

    usable = [label for label in labels if known(label)]
    missing = [label for label in required if label not in usable]
    if missing:
        raise _unknown_label(*missing)
    if not usable:
        return lambda image, label: None
    engine = cams.LabelCams.build(
        chosen, usable, score="softmax" if len(usable) > 1 else "cosine", device=dev
    )
    log.info(
        "computing initial masks with the %s CAM backend (pass --cams to reuse a clip-cam artifact)", chosen
    )
    return lambda image, label: engine([image], [label])[0] if label in usable else None


def _benchmark_jobs(doc, root, cams_dir, artifact, run: Run) -> list[Job]:
    fixed_support, zero_shot, backend, dev = run.fixed_support, run.p.zero_shot, run.p.cam_backend, run.dev
    ds = open_dataset(doc["dataset"], root or doc["root"], doc["split"])
    if doc["protocol"] == "gfss":
        raise FssegError("refine scores fss episodes; these are gfss episodes (use finetune-episode)")
    names = doc["class_names"]
    compute = (
        None
        if artifact is not None
        else _computer(
            [n for c, n in enumerate(names) if c != doc["background"]],
            backend,
            dev,
            required=() if fixed_support else sorted({names[ep["class"]] for ep in doc["episodes"]}),
        )
    )
    cam = _cam_lookup(cams_dir, artifact, compute)

    @lru_cache(maxsize=64)
    def image(sample_id: str) -> np.ndarray:
        return read_image(ds.sample(sample_id).image)

    def label(sample_id: str) -> np.ndarray:
        sample = ds.sample(sample_id)
        return checked_label(ds, sample, ds.load_label(sample), image(sample_id).shape)

    def query_shot(qid: str, c: int) -> Shot:
        return Shot(qid, lambda: (image(qid), cam(f"{qid}__{c}", image(qid), names[c], fixed_support)))

    def support_shot(sid: str, c: int) -> Shot:
        if fixed_support:
            return Shot(sid, lambda: (image(sid), (label(sid) == c).astype(np.float32)))
        return Shot(sid, lambda: (image(sid), cam(f"{sid}__{c}", image(sid), names[c])))

    return [
        Job(
            f"{i:05d}",
            query_shot(ep["query"], ep["class"]),
            [] if zero_shot else [support_shot(sid, ep["class"]) for sid in ep["support"]],
            f"pred/{i:05d}.png",
        )
        for i, ep in enumerate(doc["episodes"])
    ]


def _adhoc_jobs(support, query, label, support_masks, cams_dir, artifact, run: Run) -> list[Job]:
    zero_shot, backend, dev = run.p.zero_shot, run.p.cam_backend, run.dev
    compute = (
        None
        if artifact is not None or (support_masks is not None and not label)
        else _computer([label or "object"], backend, dev, required=[label] if support_masks is None else [])
    )
    cam = _cam_lookup(cams_dir, artifact, compute)

    def support_shot(path: Path) -> Shot:
        def load():
            img = read_image(path)
            if support_masks is None:
                return img, cam(path.stem, img, label)
            mask_path = support_mask_path(support_masks, path)
            mask = read_support_mask(mask_path, path, img.shape[:2]).astype(np.float32)
            return img, mask

        return Shot(f"s:{path}", load)

    def query_shot(path: Path) -> Shot:
        def load():
            img = read_image(path)
            if label or artifact is not None:
                return img, cam(path.stem, img, label, support_masks is not None)
            return img, np.full(img.shape[:2], FLAT_PRIOR, np.float32)  # no prior for the query

        return Shot(f"q:{path}", load)

    supports = [] if zero_shot or not support else [support_shot(p) for p in list_images(support)]
    return [Job(p.stem, query_shot(p), supports, f"masks/{p.stem}.png") for p in list_images(query)]
