"""finetune-episode: fsseg's batched, cached classifiers vs the one-episode-at-a-time uncached loop.

200 one-shot FSS episodes of CamVid val (fold 2), PSPNet-Lite0 (ImageNet backbone, untrained
head: speed does not depend on it), 100 SGD steps per episode, input 224x224 with the support
loss at 56x56 (the CamVid experiment's settings; the report's 473 makes the one-at-a-time loop
take many minutes on a 2-core CPU), CPU. Both runs go
through `run_finetune_episode` with the same seed: (a) `batch_episodes=1, feature_cache_mb=0`,
fp32 (the report's structure: every episode recomputes its features and trains alone), (b)
fsseg's defaults (`batch_episodes=50`, features cached per image, `--precision auto`). Each run in its own process for
peak RSS. Prints episodes/s, peak RSS, the speed-up, and the mean IoU between their predictions;
on the CPU, and on the first CUDA GPU when there is one.
Usage: python bench/bench_finetune.py [N_EPISODES [IMG_SIZE [LABEL_SIZE]]]
       (QUICK=1: 4 episodes, 64x64 input, loss at 16x16, 5 SGD steps)
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import bench_devices, print_hardware, quick, run_children, synchronize, threads  # noqa: E402

CAMVID = ROOT.parent / "shared" / "data" / "camvid"
STEPS = 5 if quick() else 100


def setup(folder: Path, n: int) -> tuple[Path, Path]:
    import torch

    from stages.core.checkpoints import save_checkpoint
    from stages.core.datasets import open_dataset
    from stages.core.episodes import make_episodes, write_episodes
    from stages.models.backbones import load_backbone_weights
    from stages.models.pspnet import PSPNet

    ds = open_dataset("camvid", CAMVID, "val")
    doc = make_episodes(ds, fold=2, shots=1, n=n, seed=0)
    write_episodes(folder / "episodes.json", doc)
    torch.manual_seed(0)
    kwargs = {"backbone": "efficientnet_lite0", "num_classes": len(doc["base_classes"]) + 1}
    model = load_backbone_weights(PSPNet(**kwargs), "imagenet")
    save_checkpoint(
        folder / "psp.pt",
        model,
        model_name="pspnet",
        model_kwargs=kwargs,
        extra={"base_classes": doc["base_classes"]},
    )
    return folder / "episodes.json", folder / "psp.pt"


def run(folder: Path, mode: str, img_size: int, label_size: int, device: str) -> dict:
    import torch

    from stages.core.artifacts import read_manifest
    from stages.finetune_episode import run_finetune_episode

    torch.set_num_threads(threads())
    # the peer: one episode at a time, nothing cached, fp32; fsseg: its defaults
    peer = {"batch_episodes": 1, "feature_cache_mb": 0, "precision": "fp32"}
    start = time.perf_counter()
    out = run_finetune_episode(
        folder / device / mode,
        checkpoint=folder / "psp.pt",
        episodes=folder / "episodes.json",
        mode="fss",
        steps=STEPS,
        img_size=img_size,
        label_size=label_size,
        device=device,
        **(peer if mode == "one-at-a-time" else {}),
    )
    synchronize(device)
    return {
        "seconds": time.perf_counter() - start,
        "precision": read_manifest(out)["resolved"]["precision"],
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    if len(sys.argv) > 6 and sys.argv[1] == "--run":  # --run MODE[,MODE] FOLDER IMG_SIZE LABEL_SIZE DEVICE
        folder, sizes, device = Path(sys.argv[3]), (int(sys.argv[4]), int(sys.argv[5])), sys.argv[6]
        print(json.dumps({mode: run(folder, mode, *sizes, device) for mode in sys.argv[2].split(",")}))
        return
    if not CAMVID.is_dir():
        print(f"skip: {CAMVID} is absent")
        return
    print_hardware()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4 if quick() else 200
    img_size = int(sys.argv[2]) if len(sys.argv) > 2 else 64 if quick() else 224
    label_size = int(sys.argv[3]) if len(sys.argv) > 3 else 16 if quick() else 56
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["FSSEG_CACHE"] = str(folder / "cache")
        setup(folder, n)
        for device in bench_devices():
            modes = ["one-at-a-time", "batched"]
            results = run_children(__file__, "--run", modes, tmp, str(img_size), str(label_size), device)
            ious = []
            for png in sorted((folder / device / "batched" / "pred").glob("*.png")):
                from PIL import Image

                a = np.asarray(Image.open(png)) > 0
                b = np.asarray(Image.open(folder / device / "one-at-a-time" / "pred" / png.name)) > 0
                ious.append(1.0 if not (a | b).any() else (a & b).sum() / (a | b).sum())
            where = f"CPU {threads()} thread{'s' if threads() > 1 else ''}" if device == "cpu" else device
            print(
                f"finetune-episode, {n} 1-shot CamVid episodes, PSPNet-Lite0, {STEPS} SGD steps, input "
                f"{img_size}x{img_size}, support loss at {label_size}x{label_size}, {where}"
            )
            for mode, r in results.items():
                print(
                    f"  {mode:<14} {n / r['seconds']:7.2f} episodes/s  peak RSS {r['rss_mb']:6.0f} MB  "
                    f"precision {r['precision']}"
                )
            speed = results["one-at-a-time"]["seconds"] / results["batched"]["seconds"]
            print(
                f"  speed-up {speed:5.2f}x   mean IoU between the two runs' predictions {np.mean(ious):.4f}"
            )


if __name__ == "__main__":
    main()
