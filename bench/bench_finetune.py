"""finetune-episode: fsseg's batched, cached classifiers vs the one-episode-at-a-time uncached loop.

200 one-shot FSS episodes of CamVid val (fold 2), PSPNet-Lite0 (ImageNet backbone, untrained
head: speed does not depend on it), 100 SGD steps per episode, input 224x224 with the support
loss at 56x56 (the CamVid experiment's settings; the report's 473 makes the one-at-a-time loop
take many minutes on a 2-core CPU), CPU. Both runs go
through `run_finetune_episode` with the same seed: (a) `batch_episodes=1, feature_cache=0` (the
report's structure: every episode recomputes its features and trains alone), (b) fsseg's
defaults (`batch_episodes=50`, features cached per image). Each run in its own process for
peak RSS. Prints episodes/s, peak RSS, the speed-up, and the mean IoU between their predictions.
Usage: python bench/bench_finetune.py [N_EPISODES [IMG_SIZE [LABEL_SIZE]]]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CAMVID = ROOT.parent / "shared" / "data" / "camvid"


def setup(folder: Path, n: int) -> tuple[Path, Path]:
    import torch

    from stages.core.checkpoints import save_checkpoint
    from stages.core.datasets import open_dataset
    from stages.core.episodes import make_episodes, write_episodes
    from stages.models.pspnet import PSPNet

    ds = open_dataset("camvid", CAMVID, "val")
    doc = make_episodes(ds, fold=2, shots=1, n=n, seed=0)
    write_episodes(folder / "episodes.json", doc)
    torch.manual_seed(0)
    kwargs = {
        "backbone": "efficientnet_lite0",
        "backbone_weights": None,
        "num_classes": len(doc["base_classes"]) + 1,
    }
    model = PSPNet(**(kwargs | {"backbone_weights": "imagenet"}))
    save_checkpoint(
        folder / "psp.pt",
        model,
        model_name="pspnet",
        model_kwargs=kwargs,
        extra={"base_classes": doc["base_classes"]},
    )
    return folder / "episodes.json", folder / "psp.pt"


def run(folder: Path, mode: str, img_size: int, label_size: int) -> dict:
    import torch

    from stages.finetune_episode import run_finetune_episode

    torch.set_num_threads(2)
    batch, cache = (1, 0) if mode == "one-at-a-time" else (50, 512)
    start = time.perf_counter()
    run_finetune_episode(
        folder / mode,
        checkpoint=folder / "psp.pt",
        episodes=folder / "episodes.json",
        mode="fss",
        batch_episodes=batch,
        feature_cache=cache,
        img_size=img_size,
        label_size=label_size,
        device="cpu",
    )
    return {
        "seconds": time.perf_counter() - start,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    if len(sys.argv) > 5 and sys.argv[1] == "--run":
        print(json.dumps(run(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
        return
    if not CAMVID.is_dir():
        print(f"skip: {CAMVID} is absent")
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    img_size = int(sys.argv[2]) if len(sys.argv) > 2 else 224
    label_size = int(sys.argv[3]) if len(sys.argv) > 3 else 56
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["FSSEG_CACHE"] = str(folder / "cache")
        setup(folder, n)
        results = {}
        for mode in ("one-at-a-time", "batched"):
            proc = subprocess.run(
                [sys.executable, __file__, "--run", tmp, mode, str(img_size), str(label_size)],
                capture_output=True,
                text=True,
                check=True,
                env=os.environ,
            )
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        ious = []
        for png in sorted((folder / "batched" / "pred").glob("*.png")):
            from PIL import Image

            a = np.asarray(Image.open(png)) > 0
            b = np.asarray(Image.open(folder / "one-at-a-time" / "pred" / png.name)) > 0
            ious.append(1.0 if not (a | b).any() else (a & b).sum() / (a | b).sum())
    print(
        f"finetune-episode, {n} 1-shot CamVid episodes, PSPNet-Lite0, 100 SGD steps, input {img_size}x{img_size}, "
        f"support loss at {label_size}x{label_size}, CPU 2 threads"
    )
    for mode, r in results.items():
        print(f"  {mode:<14} {n / r['seconds']:7.2f} episodes/s  peak RSS {r['rss_mb']:6.0f} MB")
    speed = results["one-at-a-time"]["seconds"] / results["batched"]["seconds"]
    print(f"  speed-up {speed:5.2f}x   mean IoU between the two runs' predictions {np.mean(ious):.4f}")


if __name__ == "__main__":
    main()
