"""IMR-HSNet refinement: the authors' loop structure vs fsseg's caches and bf16, each mode in its
own process.

50 one-shot episodes over 10 CamVid val images (so supports and queries recur), ResNet50 with
random weights, 400x400, 2 refinement steps, CPU, fsseg's forward (the authors' function, see
tests/test_parity.py). Initial masks: seeded random 50x50 blobs (the authors feed 50x50 CAMs).
Every mode reads the images with the authors' preprocessing (PIL bilinear resize). Modes:
  authors      the peer: the authors' loop structure, one episode at a time, the backbone run for
               every image of every episode, features masked and correlated afresh at every
               step, nothing cached, fp32
  cache-fp32   fsseg refine's defaults: backbone features cached per image (LRU, the default
               --feature-cache-mb), the correlation dot products of a pair computed once and
               rescaled at every step, glibc keeping freed memory (devices.keep_freed_memory)
  plain-bf16   as authors, under bf16 autocast
  cache-bf16   fsseg refine --precision bf16
Prints episodes/s, peak RSS, speed-up over the peer, and the agreement of the final query masks
(the authors' rule: argmax of the logits upsampled to 400) with the peer's: max |logit
difference| and mask IoU. The bf16 modes run where `--precision auto` picks bf16 (a CPU with bf16
units, a GPU with native bf16): elsewhere bf16 convolutions take a slow path. On the CPU, and on
the first CUDA GPU when there is one.
Usage: python bench/bench_refine.py     (QUICK=1: 3 episodes over 2 images, the tiny backbone)
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import bench_devices, print_hardware, quick, run_children, synchronize, threads  # noqa: E402
from stages.params import RefineParams  # noqa: E402

CAMVID = ROOT.parent / "shared" / "data" / "camvid" / "val"
N_EPISODES, N_IMAGES, SIZE = (3, 2, 96) if quick() else (50, 10, 400)
BACKBONE = "tiny" if quick() else "resnet50"
CACHE_MB = RefineParams().feature_cache_mb  # fsseg refine's default (a 400-px ResNet50 pyramid: ~40 MB)
MODES = {
    "authors": (False, "fp32"),
    "cache-fp32": (True, "fp32"),
    "plain-bf16": (False, "bf16"),
    "cache-bf16": (True, "bf16"),
}


def blob(rng: np.random.Generator) -> torch.Tensor:
    yy, xx = np.mgrid[0:50, 0:50] / 50.0
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
    return torch.from_numpy(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)).astype(np.float32))[
        None, None
    ]


def run_mode(mode: str, out: Path, device: str) -> dict:
    from stages.core import devices
    from stages.core.cache import TensorCache
    from stages.core.imageio import read_image
    from stages.models import build
    from stages.models.hsnet import final_mask
    from stages.refine import _to_tensor

    torch.set_num_threads(threads())
    cached, precision = MODES[mode]
    if cached and device == "cpu":
        devices.keep_freed_memory()  # as fsseg refine does
    torch.manual_seed(0)
    model = build("imr_hsnet", tiny=BACKBONE == "tiny", backbone=BACKBONE).eval()
    with torch.no_grad():  # random weights with some spread, so that masks are not trivially empty
        for name, p in model.named_parameters():
            if not name.startswith("backbone."):
                p.add_(torch.randn_like(p) * 0.02)
    files = sorted(CAMVID.glob("*.png"))[:N_IMAGES]
    images = {f.stem: read_image(f) for f in files}
    rng = np.random.default_rng(0)
    episodes = [
        (files[int(q)].stem, files[int(s)].stem) for q, s in rng.integers(0, N_IMAGES, (N_EPISODES, 2))
    ]
    dev = torch.device(device)
    model.to(dev)
    masks = {name: blob(rng).to(dev) for name in images}
    cache = TensorCache(CACHE_MB if cached else 0)

    def features(name: str):
        return cache(name, lambda: model.backbone(_to_tensor(images[name], SIZE, BACKBONE, dev)))

    logits_out, masks_out = [], []
    start = time.perf_counter()
    with torch.no_grad(), devices.autocast(dev, precision):
        for q, s in episodes:
            logits, _ = model.refine(
                features(q), features(s), masks[q], masks[s], steps=2, reuse_correlation=cached
            )
            logits_out.append(logits[-1].float()[0].cpu().numpy())
            masks_out.append(final_mask(logits[-1], (SIZE, SIZE)))
    synchronize(device)
    seconds = time.perf_counter() - start
    np.save(out / f"{mode}.npy", np.stack(logits_out))
    np.save(out / f"{mode}-masks.npy", np.stack(masks_out))
    return {"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    if len(sys.argv) > 4 and sys.argv[1] == "--mode":  # --mode MODE[,MODE] OUT DEVICE
        out, device = Path(sys.argv[3]), sys.argv[4]
        print(json.dumps({mode: run_mode(mode, out, device) for mode in sys.argv[2].split(",")}))
        return
    if not CAMVID.is_dir():
        print(f"skip: {CAMVID} is absent")
        return
    import tempfile

    from stages.core.devices import resolve_precision

    print_hardware()
    for device in bench_devices():
        with tempfile.TemporaryDirectory() as tmp:
            bf16 = resolve_precision("auto", torch.device(device)) == "bf16"
            if not bf16:
                print(
                    f"{device}: no fast bf16 here (bf16 convolutions take a slow path), so the bf16 modes are skipped"
                )
            modes = [mode for mode in MODES if bf16 or MODES[mode][1] != "bf16"]
            results = run_children(__file__, "--mode", modes, tmp, device)
            reference = np.load(Path(tmp) / "authors.npy")
            reference_masks = np.load(Path(tmp) / "authors-masks.npy").astype(bool)
            where = f"CPU {threads()} thread{'s' if threads() > 1 else ''}" if device == "cpu" else device
            print(
                f"IMR-HSNet refinement, {N_EPISODES} 1-shot episodes over {N_IMAGES} CamVid images, {BACKBONE} "
                f"random weights, {SIZE}x{SIZE}, 2 steps, {where}"
            )
            base, base_rss = results["authors"]["seconds"], results["authors"]["rss_mb"]
            for mode, r in results.items():
                logits = np.load(Path(tmp) / f"{mode}.npy")
                masks = np.load(Path(tmp) / f"{mode}-masks.npy").astype(bool)
                iou = (masks & reference_masks).sum() / max((masks | reference_masks).sum(), 1)
                print(
                    f"  {mode:<11} {N_EPISODES / r['seconds']:6.3f} episodes/s  peak RSS {r['rss_mb']:6.0f} MB "
                    f"({r['rss_mb'] / base_rss:4.2f}x)  speed-up {base / r['seconds']:5.2f}x  "
                    f"max|dlogit| {np.abs(logits - reference).max():.2e}  mask IoU {iou:.4f}"
                )


if __name__ == "__main__":
    main()
