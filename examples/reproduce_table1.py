"""`make reproduce-table1`: IMR-HSNet Table 1 (PASCAL-5i, 1-shot, image-label supervision, ResNet50)
through the fsseg stages, printed beside the paper's numbers.

Chain, per fold 0-3: clip-cam over VOC (train and val, the dataset's class names, softmax over
the VOC prompts as the authors do) -> pretrain --method imr-hsnet (or CHECKPOINTS=dir with the
authors' released checkpoints, one file per fold named *fold<N>*.pt/.pth) -> data episodes
(1000 one-shot episodes, seed 0) -> refine (supports described by their label only) ->
evaluate --task fss. Then one table: fold, fsseg mIoU, paper mIoU, difference.

Settings (environment, or make variables):
  DATA=path/to/VOCdevkit/VOC2012   with SegmentationClassAug/ (and ImageSets/Segmentation/ lists)
  TRAIN_SPLIT=train_aug            training list (name under ImageSets/Segmentation or a file)
  VAL_SPLIT=val                    episodes list (e.g. a file of `name__classid` pairs)
  DEVICE=cuda  CHECKPOINTS=dir  OUT=runs/reproduce-table1  EPISODES=1000
  QUICK=1: the same chain on a synthetic dataset in the PASCAL layout that this script writes
  (20 classes as coloured shapes on textured backgrounds, 64x64), tiny models, CAMs from a CLIP
  RN50 with random weights, 20 episodes per fold, CPU: a few minutes. It checks the chain, not
  the numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FSSEG = str(Path(sys.executable).parent / "fsseg")
PAPER = {0: 62.6, 1: 69.1, 2: 56.1, 3: 56.7}  # IMR-HSNet, ResNet50, image-level labels (Table 1)
PAPER_MEAN = 61.1


def fsseg(*args: object) -> None:
    """Run one stage; on failure show its error line and stop."""
    cmd = [FSSEG, *map(str, args)]
    print("$ fsseg " + " ".join(map(str, args)), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(proc.returncode)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def synthetic_voc(root: Path, per_class: int = 6, size: int = 64) -> Path:
    """A small dataset in the PASCAL layout: each image holds one object of a class (a filled
    shape in the class's colour) on a textured background; border pixels are 255 as in VOC."""
    import numpy as np
    from PIL import Image

    if (root / "ImageSets" / "Segmentation" / "val.txt").is_file():
        return root
    rng = np.random.default_rng(0)
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    colours = rng.integers(30, 226, (21, 3))
    ids = {"train": [], "val": []}
    yy, xx = np.mgrid[0:size, 0:size]
    for c in range(1, 21):
        for k in range(per_class):
            cy, cx, r = rng.integers(20, 44), rng.integers(20, 44), rng.integers(10, 18)
            inside = (
                (yy - cy) ** 2 + (xx - cx) ** 2 < r**2 if c % 2 else (abs(yy - cy) < r) & (abs(xx - cx) < r)
            )
            label = np.where(inside, c, 0).astype(np.uint8)
            edge = inside ^ (
                (yy - cy) ** 2 + (xx - cx) ** 2 < (r - 1) ** 2
                if c % 2
                else (abs(yy - cy) < r - 1) & (abs(xx - cx) < r - 1)
            )
            label[edge] = 255
            background = rng.integers(0, 255, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1)
            image = np.where(inside[..., None], colours[c] + rng.normal(0, 10, (size, size, 3)), background)
            name = f"2007_{c:02d}{k:04d}"
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(
                root / "JPEGImages" / f"{name}.jpg", quality=95
            )
            Image.fromarray(label).save(root / "SegmentationClassAug" / f"{name}.png")
            ids["val" if k >= per_class - 2 else "train"].append(name)
    for split, names in ids.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def checkpoint_for(folder: Path, fold: int) -> Path:
    found = sorted(p for p in folder.iterdir() if f"fold{fold}" in p.name and p.suffix in (".pt", ".pth"))
    if not found:
        fail(f"CHECKPOINTS={folder} has no file named like *fold{fold}*.pt or .pth; put the authors' checkpoint "
             f"of fold {fold} there")  # fmt: skip
    return found[0]


def main() -> None:
    quick = os.environ.get("QUICK", "") not in ("", "0")
    out = Path(os.environ.get("OUT") or ("runs/reproduce-table1-quick" if quick else "runs/reproduce-table1"))
    device = os.environ.get("DEVICE") or ("cpu" if quick else "auto")
    checkpoints = Path(os.environ["CHECKPOINTS"]) if os.environ.get("CHECKPOINTS") else None
    n_episodes = int(os.environ.get("EPISODES") or (20 if quick else 1000))
    train_split = os.environ.get("TRAIN_SPLIT") or ("train" if quick else "train_aug")
    val_split = os.environ.get("VAL_SPLIT") or "val"
    if quick:
        data = synthetic_voc(out / "synthetic-VOC2012")
        # CLIP RN50 with random weights: every VOC class has a prompt (the offline ImageNet backend
        # knows no "person"); LayerCAM, as Grad-CAM maps of a random RN50 are all zero
        cam = ["--backend", "clip", "--model", "RN50", "--pretrained", "none", "--method", "layercam", "--classes", "voc"]
        train = ["--backbone", "tiny", "--backbone-weights", "random", "--tiny", "--img-size", "64", "--epochs", "1",
                 "--batch-size", "4", "--episodes-per-epoch", "8", "--min-area", "64"]  # fmt: skip
        size, min_area = "64", "64"
    else:
        if not os.environ.get("DATA"):
            fail("set DATA=path/to/VOCdevkit/VOC2012 (JPEGImages/ and SegmentationClassAug/ from the SBD-augmented "
                 "masks); or run the synthetic check with QUICK=1")  # fmt: skip
        data = Path(os.environ["DATA"])
        if not (data / "SegmentationClassAug").is_dir() or not (data / "JPEGImages").is_dir():
            fail(f"{data} is not a VOC2012 folder with JPEGImages/ and SegmentationClassAug/: download VOC2012 and "
                 f"the SBD augmented masks (SegmentationClassAug) into it")  # fmt: skip
        sys.path.insert(0, str(ROOT))
        from stages.core.weights import weight_report

        clip = next(w for w in weight_report() if w.name.startswith("open_clip RN50"))
        if clip.location is None:
            fail(f"CLIP RN50 (openai) weights are not in the local cache ({clip.expected}); fetch them once with "
                 f"`python -c \"import open_clip; open_clip.create_model_and_transforms('RN50', pretrained='openai')\"`")  # fmt: skip
        cam = ["--backend", "clip", "--model", "RN50", "--pretrained", "openai", "--classes", "voc"]
        train = ["--backbone", "resnet50"]
        size, min_area = "400", "2048"
    out.mkdir(parents=True, exist_ok=True)
    dev = ["--device", device]
    fsseg("clip-cam", "--dataset", "pascal", "--root", data, "--split", val_split, *cam, *dev, "-q",
          "--out", out / "cams-val")  # fmt: skip
    if checkpoints is None:
        fsseg("clip-cam", "--dataset", "pascal", "--root", data, "--split", train_split, *cam, *dev, "-q",
              "--out", out / "cams-train")  # fmt: skip
    results = {}
    for fold in range(4):
        f = out / f"fold{fold}"
        if checkpoints is None:
            fsseg("pretrain", "--method", "imr-hsnet", "--dataset", "pascal", "--root", data, "--split", train_split,
                  "--fold", fold, "--cams", out / "cams-train", *train, *dev, "-q", "--out", f / "imr")  # fmt: skip
            ckpt = f / "imr" / "checkpoints" / "best.pt"
        else:
            ckpt = checkpoint_for(checkpoints, fold)
        fsseg("data", "episodes", "pascal", "--root", data, "--split", val_split, "--fold", fold, "--shots", 1,
              "--n", n_episodes, "--seed", 0, "--min-area", min_area, "--out", f / "episodes.json")  # fmt: skip
        fsseg("refine", "--checkpoint", ckpt, "--episodes", f / "episodes.json", "--cams", out / "cams-val",
              "--supervision", "label", "--img-size", size, *dev, "-q", "--out", f / "refine")  # fmt: skip
        fsseg("evaluate", "--task", "fss", "--pred", f / "refine", "--episodes", f / "episodes.json", "-q",
              "--out", f / "eval")  # fmt: skip
        results[fold] = json.loads((f / "eval" / "metrics.json").read_text())["miou"]
    title = "QUICK (synthetic data, tiny models: checks the chain, not the numbers)" if quick else "PASCAL-5i"
    print(
        f"\nIMR-HSNet Table 1, 1-shot, image-level labels, mIoU (%): {title}; {n_episodes} episodes per fold, seed 0"
    )
    print(f"{'fold':>6} {'fsseg':>7} {'paper':>7} {'diff':>7}")
    for fold, miou in results.items():
        print(f"{fold:>6} {miou:7.1f} {PAPER[fold]:7.1f} {miou - PAPER[fold]:+7.1f}")
    mean = sum(results.values()) / 4
    print(f"{'mean':>6} {mean:7.1f} {PAPER_MEAN:7.1f} {mean - PAPER_MEAN:+7.1f}")
    (out / "table1.json").write_text(json.dumps({"fsseg": results, "paper": PAPER, "quick": quick}, indent=1))


if __name__ == "__main__":
    main()
