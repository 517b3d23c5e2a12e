"""IMR-HSNet refinement: the authors' loop structure vs fsseg's caches and bf16, each mode in its
own process.

50 one-shot episodes over 10 CamVid val images (so supports and queries recur), ResNet50 with
random weights, 400x400, 2 refinement steps, CPU, fsseg's forward (the authors' function, see
tests/test_parity.py). Initial masks: seeded random 50x50 blobs (the authors feed 50x50 CAMs).
Every mode reads the images with the authors' preprocessing (PIL bilinear resize). Modes:
  authors      the peer: the authors' loop structure, one episode at a time, the backbone run for
               every image of every episode, features masked and correlated afresh at every
               step, nothing cached, fp32
  cache-fp32   fsseg refine's defaults: backbone features cached per image (LRU) and the
               correlation dot products of a pair computed once and rescaled at every step
  plain-bf16   as authors, under bf16 autocast
  cache-bf16   fsseg refine --precision bf16
Prints episodes/s, peak RSS, speed-up over the peer, and the agreement of the final query masks
(the authors' rule: argmax of the logits upsampled to 400) with the peer's: max |logit
difference| and mask IoU.
Usage: python bench/bench_refine.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CAMVID = ROOT.parent / "shared" / "data" / "camvid" / "val"
N_EPISODES, N_IMAGES, SIZE = 50, 10, 400
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


def run_mode(mode: str, out: Path) -> dict:
    from stages.core import devices
    from stages.core.imageio import read_image
    from stages.models.hsnet import IMRHSNet, final_mask
    from stages.refine import FeatureCache, _to_tensor

    torch.set_num_threads(2)
    cached, precision = MODES[mode]
    torch.manual_seed(0)
    model = IMRHSNet(backbone="resnet50", backbone_weights=None).eval()
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
    masks = {name: blob(rng) for name in images}
    cpu = torch.device("cpu")
    cache = FeatureCache(model.backbone, 64 if cached else 0)
    logits_out, masks_out = [], []
    start = time.perf_counter()
    with torch.no_grad(), devices.autocast(cpu, precision):
        for q, s in episodes:
            q_levels = cache(q, lambda q=q: _to_tensor(images[q], SIZE, "resnet50", cpu))
            s_levels = cache(s, lambda s=s: _to_tensor(images[s], SIZE, "resnet50", cpu))
            logits, _ = model.refine(
                q_levels, s_levels, masks[q], masks[s], steps=2, reuse_correlation=cached
            )
            logits_out.append(logits[-1].float()[0].numpy())
            masks_out.append(final_mask(logits[-1], (SIZE, SIZE)))
    seconds = time.perf_counter() - start
    np.save(out / f"{mode}.npy", np.stack(logits_out))
    np.save(out / f"{mode}-masks.npy", np.stack(masks_out))
    return {"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--mode":
        print(json.dumps(run_mode(sys.argv[2], Path(sys.argv[3]))))
        return
    if not CAMVID.is_dir():
        print(f"skip: {CAMVID} is absent")
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # bf16 units (AVX-512 BF16 / AMX)
        if not bf16:
            print(
                "this CPU has no bf16 units: bf16 convolutions take torch's slow path, so the bf16 modes are skipped"
            )
        for mode in [m for m in MODES if bf16 or MODES[m][1] != "bf16"]:
            proc = subprocess.run(
                [sys.executable, __file__, "--mode", mode, tmp], capture_output=True, text=True, check=True
            )
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        reference = np.load(Path(tmp) / "authors.npy")
        reference_masks = np.load(Path(tmp) / "authors-masks.npy").astype(bool)
        print(
            f"IMR-HSNet refinement, {N_EPISODES} 1-shot episodes over {N_IMAGES} CamVid images, ResNet50 random "
            f"weights, {SIZE}x{SIZE}, 2 steps, CPU 2 threads"
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
