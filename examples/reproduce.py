"""`make reproduce-table1 | reproduce-gfss | reproduce-spino`: the seeds' headline experiments
through the fsseg stages, printed beside the published numbers.

table1 (IMR-HSNet Table 1: PASCAL-5i, 1-shot, image-label supervision, ResNet50), per fold 0-3:
  clip-cam over VOC (train and val, the VOC class names, softmax over their prompts as the authors
  do) -> pretrain --method imr-hsnet (or CHECKPOINTS=dir with the authors' released checkpoints,
  one file per fold named *fold<N>*.pt/.pth) -> data episodes (1000 one-shot episodes, seed 0) ->
  refine (supports described by their label only) -> evaluate --task fss.
gfss (the GFSS report's Table 4 protocol: PASCAL-5i, base mIoU from an extra base image, novel
  mIoU from the query), per fold: pretrain --method pspnet (lambda 0) -> data episodes
  --protocol gfss-binary (1- and 5-shot) -> finetune-episode --mode gfss with gamma 0 (B) and 10
  (DL) -> evaluate --task gfss.
spino (SPINO on Cityscapes, k=10): label-gen on the paper's ten train images (DINOv2 ViT-B/14)
  -> pseudo-labels of val, scored (mIoU, PQ) against gtFine -> pseudo-labels of train ->
  train-panoptic with mixed batches -> val predictions, scored.

Settings (environment, or make variables):
  DATA=dataset folder (VOCdevkit/VOC2012 with SegmentationClassAug/; or the Cityscapes root)
  TRAIN_SPLIT, VAL_SPLIT (PASCAL lists under ImageSets/Segmentation, or files; default
  train_aug / val), DEVICE=cuda, CHECKPOINTS=dir (table1), OUT=runs/reproduce-NAME, EPISODES.
  QUICK=1: the same chain on a small synthetic dataset in the real layout that this script
  writes (PASCAL: 20 classes as coloured shapes on textured backgrounds, 64x64; Cityscapes:
  street scenes with cars and people, 112x224), tiny models with random weights (SPINO: the
  offline Lite0 features), few episodes,
  CPU: minutes. It checks the chain, not the numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FSSEG = str(Path(sys.executable).parent / "fsseg")
# IMR-HSNet Table 1, ResNet50, image-level labels
TABLE1 = {0: 62.6, 1: 69.1, 2: 56.1, 3: 56.7, "mean": 61.1}
# GFSS report Table 4, PASCAL-5i: (shots, method) -> (base per fold + mean, novel per fold + mean)
TABLE4 = {
    (1, "B"): ([44.8, 54.9, 61.6, 56.9, 54.5], [58.8, 64.8, 59.5, 47.8, 57.7]),
    (1, "DL"): ([65.4, 70.4, 71.4, 71.4, 69.6], [59.1, 61.0, 56.4, 47.1, 55.9]),
    (5, "B"): ([35.6, 55.1, 61.3, 54.6, 51.6], [62.7, 71.7, 72.1, 60.9, 66.9]),
    (5, "DL"): ([59.9, 70.7, 71.6, 72.0, 68.6], [62.6, 72.2, 71.1, 61.0, 66.7]),
}
CITYSCAPES_K10 = "12,324,450,608,742,768,798,836,1300,2892"


def fsseg(*args: object) -> None:
    """Run one stage; on failure show its error line and stop."""
    print("$ fsseg " + " ".join(map(str, args)), flush=True)
    proc = subprocess.run(
        [FSSEG, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(proc.returncode)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


class Settings:
    def __init__(self, name: str):
        self.quick = os.environ.get("QUICK", "") not in ("", "0")
        self.out = Path(os.environ.get("OUT") or f"runs/reproduce-{name}{'-quick' if self.quick else ''}")
        self.device = ["--device", os.environ.get("DEVICE") or ("cpu" if self.quick else "auto")]
        self.episodes = int(os.environ.get("EPISODES") or (20 if self.quick else 1000))
        self.train_split = os.environ.get("TRAIN_SPLIT") or ("train" if self.quick else "train_aug")
        self.val_split = os.environ.get("VAL_SPLIT") or "val"
        self.data = Path(os.environ["DATA"]) if os.environ.get("DATA") else None


def voc_data(cfg: Settings, per_class: int = 6, val_per_class: int = 2) -> Path:
    if cfg.quick:
        return synthetic_voc(cfg.out / "synthetic-VOC2012", per_class, val_per_class)
    if cfg.data is None:
        fail("set DATA=path/to/VOCdevkit/VOC2012 (JPEGImages/ and SegmentationClassAug/ from the SBD-augmented "
             "masks); or run the synthetic check with QUICK=1")  # fmt: skip
    if not (cfg.data / "SegmentationClassAug").is_dir() or not (cfg.data / "JPEGImages").is_dir():
        fail(f"{cfg.data} is not a VOC2012 folder with JPEGImages/ and SegmentationClassAug/: download VOC2012 and "
             f"the SBD augmented masks (SegmentationClassAug) into it")  # fmt: skip
    return cfg.data


def synthetic_voc(root: Path, per_class: int, val_per_class: int, size: int = 64) -> Path:
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
            ids["val" if k >= per_class - val_per_class else "train"].append(name)
    for split, names in ids.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def checkpoint_for(folder: Path, fold: int) -> Path:
    found = sorted(p for p in folder.iterdir() if f"fold{fold}" in p.name and p.suffix in (".pt", ".pth"))
    if not found:
        fail(f"CHECKPOINTS={folder} has no file named like *fold{fold}*.pt or .pth; put the authors' checkpoint "
             f"of fold {fold} there")  # fmt: skip
    return found[0]


def table1() -> None:
    cfg = Settings("table1")
    data = voc_data(cfg)
    checkpoints = Path(os.environ["CHECKPOINTS"]) if os.environ.get("CHECKPOINTS") else None
    if cfg.quick:
        # CLIP RN50 with random weights: every VOC class has a prompt (the offline ImageNet backend
        # knows no "person"); LayerCAM, as Grad-CAM maps of a random RN50 are all zero
        cam = [
            "--backend",
            "clip",
            "--model",
            "RN50",
            "--pretrained",
            "none",
            "--method",
            "layercam",
            "--classes",
            "voc",
        ]
        train = ["--backbone", "tiny", "--backbone-weights", "random", "--tiny", "--img-size", "64", "--epochs", "1",
                 "--batch-size", "4", "--episodes-per-epoch", "8", "--min-area", "64"]  # fmt: skip
        size, min_area = "64", "64"
    else:
        sys.path.insert(0, str(ROOT))
        from stages.core.weights import weight_report

        clip = next(w for w in weight_report() if w.name.startswith("open_clip RN50"))
        if clip.location is None:
            fail(f"CLIP RN50 (openai) weights are not in the local cache ({clip.expected}); fetch them once with "
                 f"`python -c \"import open_clip; open_clip.create_model_and_transforms('RN50', pretrained='openai')\"`")  # fmt: skip
        cam = ["--backend", "clip", "--model", "RN50", "--pretrained", "openai", "--classes", "voc"]
        train = ["--backbone", "resnet50"]
        size, min_area = "400", "2048"
    out, dev = cfg.out, cfg.device
    out.mkdir(parents=True, exist_ok=True)
    cam += ["--cam-size", str(int(size) // 8)]  # the authors' CAMs: the finest feature size (50 at 400)
    fsseg("clip-cam", "--dataset", "pascal", "--root", data, "--split", cfg.val_split, *cam, *dev, "-q",
          "--out", out / "cams-val")  # fmt: skip
    if checkpoints is None:
        fsseg("clip-cam", "--dataset", "pascal", "--root", data, "--split", cfg.train_split, *cam, *dev, "-q",
              "--out", out / "cams-train")  # fmt: skip
    results = {}
    for fold in range(4):
        f = out / f"fold{fold}"
        if checkpoints is None:
            fsseg("pretrain", "--method", "imr-hsnet", "--dataset", "pascal", "--root", data, "--split",
                  cfg.train_split, "--fold", fold, "--cams", out / "cams-train", *train, *dev, "-q",
                  "--out", f / "imr")  # fmt: skip
            ckpt = f / "imr" / "checkpoints" / "best.pt"
        else:
            ckpt = checkpoint_for(checkpoints, fold)
        fsseg("data", "episodes", "pascal", "--root", data, "--split", cfg.val_split, "--fold", fold, "--shots", 1,
              "--n", cfg.episodes, "--seed", 0, "--min-area", min_area, "--out", f / "episodes.json")  # fmt: skip
        # the authors' test protocol: masks and ground truth at the network input size
        fsseg("refine", "--checkpoint", ckpt, "--episodes", f / "episodes.json", "--cams", out / "cams-val",
              "--supervision", "label", "--img-size", size, "--mask-size", "input", *dev, "-q",
              "--out", f / "refine")  # fmt: skip
        fsseg("evaluate", "--task", "fss", "--pred", f / "refine", "--episodes", f / "episodes.json",
              "--resize-gt", size, "-q", "--out", f / "eval")  # fmt: skip
        results[fold] = metrics(f / "eval")["miou"]
    results["mean"] = sum(results.values()) / 4
    print(f"\nIMR-HSNet Table 1, 1-shot, image-level labels, mIoU (%): {_title(cfg, 'PASCAL-5i')}; "
          f"{cfg.episodes} episodes per fold, seed 0")  # fmt: skip
    print(f"{'fold':>6} {'fsseg':>7} {'paper':>7} {'diff':>7}")
    for fold, miou in results.items():
        print(f"{fold:>6} {miou:7.1f} {TABLE1[fold]:7.1f} {miou - TABLE1[fold]:+7.1f}")
    (out / "table1.json").write_text(
        json.dumps({"fsseg": results, "paper": TABLE1, "quick": cfg.quick}, indent=1)
    )


def _title(cfg: Settings, real: str) -> str:
    return "QUICK (synthetic data, tiny models: checks the chain, not the numbers)" if cfg.quick else real


def gfss() -> None:
    cfg = Settings("gfss")
    data = voc_data(cfg, per_class=10, val_per_class=6)  # 5-shot episodes need 6 val images per class
    if cfg.quick:
        train = ["--backbone", "tiny", "--backbone-weights", "random", "--img-size", "64", "--epochs", "1",
                 "--batch-size", "4"]  # fmt: skip
        tune, min_area = ["--img-size", "64", "--steps", "10"], "64"
    else:
        train, tune, min_area = ["--backbone", "resnet50"], [], "2048"
    out, dev = cfg.out, cfg.device
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for fold in range(4):
        f = out / f"fold{fold}"
        fsseg("pretrain", "--method", "pspnet", "--dataset", "pascal", "--root", data, "--split", cfg.train_split,
              "--fold", fold, *train, *dev, "-q", "--out", f / "pspnet")  # fmt: skip
        for shots in (1, 5):
            episodes = f / f"gfss-{shots}shot.json"
            fsseg("data", "episodes", "pascal", "--root", data, "--split", cfg.val_split, "--fold", fold, "--shots",
                  shots, "--n", cfg.episodes, "--seed", 0, "--min-area", min_area, "--protocol", "gfss-binary",
                  "--out", episodes)  # fmt: skip
            for method, gamma in (("B", 0), ("DL", 10)):
                run = f / f"{method}-{shots}shot"
                fsseg("finetune-episode", "--checkpoint", f / "pspnet" / "checkpoints" / "best.pt", "--mode", "gfss",
                      "--gamma", gamma, "--episodes", episodes, *tune, *dev, "-q", "--out", run)  # fmt: skip
                fsseg(
                    "evaluate",
                    "--task",
                    "gfss",
                    "--pred",
                    run,
                    "--episodes",
                    episodes,
                    "-q",
                    "--out",
                    run / "eval",
                )
                m = metrics(run / "eval")
                rows.setdefault((shots, method), ([], []))
                rows[(shots, method)][0].append(m["base_miou"])
                rows[(shots, method)][1].append(m["novel_miou"])
    print(f"\nGFSS report Table 4, PASCAL-5i, binary protocol (base: extra base image; novel: query), mIoU (%): "
          f"{_title(cfg, 'PASCAL-5i')}; {cfg.episodes} episodes per fold and shot, seed 0 (the report: 20,000)")  # fmt: skip
    print(
        f"{'shots':>5} {'method':>6} {'':>5} "
        + " ".join(f"{h:>17}" for h in ("fold 0", "fold 1", "fold 2", "fold 3", "mean"))
    )
    table = {}
    for (shots, method), (base, novel) in rows.items():
        for name, ours, paper in (
            ("base", base, TABLE4[(shots, method)][0]),
            ("novel", novel, TABLE4[(shots, method)][1]),
        ):
            ours = [*ours, sum(ours) / 4]
            cells = " ".join(f"{o:5.1f} ({p:4.1f} {o - p:+5.1f})" for o, p in zip(ours, paper, strict=True))
            print(f"{shots:>5} {method:>6} {name:>5} {cells}")
            table[f"{shots}-shot {method} {name}"] = ours
    print("cells: fsseg (paper, difference)")
    (out / "table4.json").write_text(json.dumps({"fsseg": table, "quick": cfg.quick}, indent=1))


def synthetic_cityscapes(root: Path, n_train: int = 12, n_val: int = 4) -> Path:
    """Street scenes in the Cityscapes layout: road, sidewalk, building, sky; cars (some touching)
    and people as thing instances with labelId*1000+k instance ids."""
    import numpy as np
    from PIL import Image

    if (root / "gtFine" / "val").is_dir():
        return root
    rng = np.random.default_rng(0)
    colours = {7: (128, 64, 128), 8: (244, 35, 232), 11: (70, 70, 70), 23: (70, 130, 180), 26: (0, 0, 142),
               24: (220, 20, 60)}  # fmt: skip
    h, w = 112, 224
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            labels = np.full((h, w), 11, np.uint8)  # building
            labels[: h // 4] = 23  # sky
            labels[h // 2 :] = 7  # road
            labels[h // 2 : h // 2 + 8] = 8  # sidewalk
            inst = labels.astype(np.uint16)
            for k in range(2 + i % 2):  # cars, the last two touching on odd images
                x = 20 + k * (44 if i % 2 and k else 60)
                labels[70:95, x : x + 44], inst[70:95, x : x + 44] = 26, 26000 + k
            labels[55:85, 190:198], inst[55:85, 190:198] = 24, 24000  # a person
            rgb = np.zeros((h, w, 3), np.float64)
            for v, c in colours.items():
                rgb[labels == v] = c
            rgb += rng.normal(0, 6, rgb.shape)
            city = "synth"
            stem = f"{city}_{i:06d}_000019"
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            )
            Image.fromarray(labels).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(inst).save(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png")
    return root


def spino() -> None:
    cfg = Settings("spino")
    if cfg.quick:
        data = synthetic_cityscapes(cfg.out / "synthetic-cityscapes")
        # EfficientNet-Lite0's offline ImageNet weights: real features, so the tiny run gives real numbers
        heads = ["--indices", "0,3,5", "--backbone", "efficientnet_lite0", "--views", "2", "--epochs-semantic", "20",
                 "--epochs-boundary", "15"]  # fmt: skip
        panoptic = ["--backbone", "efficientnet_lite0", "--tiny", "--epochs", "60", "--batch-size", "4"]
        fusion = ["--min-segment", "30"]
    else:
        if (
            cfg.data is None
            or not (cfg.data / "gtFine" / "val").is_dir()
            or not (cfg.data / "leftImg8bit").is_dir()
        ):
            fail("set DATA=path/to/cityscapes holding leftImg8bit/{train,val}/ and gtFine/{train,val}/ (from "
                 "cityscapes-dataset.com: leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip); or QUICK=1")  # fmt: skip
        data = cfg.data
        heads = ["--indices", CITYSCAPES_K10, "--backbone", "dinov2_vitb14"]
        panoptic = ["--backbone", "dinov2_vitb14"]
        fusion = []
    out, dev = cfg.out, cfg.device
    out.mkdir(parents=True, exist_ok=True)
    fsseg("data", "panoptic-gt", "cityscapes", "--root", data, "--split", "val", "--out", out / "gt-val")
    fsseg(
        "label-gen",
        "cityscapes",
        "--root",
        data,
        "--split",
        "train",
        *heads,
        *dev,
        "-q",
        "--out",
        out / "heads",
    )
    fsseg("pseudo-label", "cityscapes", "--root", data, "--heads", out / "heads", "--split", "val", *fusion, *dev,
          "-q", "--out", out / "pseudo-val")  # fmt: skip
    fsseg("pseudo-label", "cityscapes", "--root", data, "--heads", out / "heads", *fusion, *dev, "-q",
          "--out", out / "pseudo-train")  # fmt: skip
    fsseg(
        "train-panoptic", "--pseudo", out / "pseudo-train", *panoptic, *dev, "-q", "--out", out / "panoptic"
    )
    fsseg("predict-panoptic", "--checkpoint", out / "panoptic" / "checkpoints" / "best.pt", "--dataset",
          "cityscapes", "--root", data, "--split", "val", *dev, "-q", "--out", out / "panoptic-val")  # fmt: skip
    rows = {}
    for name, run in (("pseudo-labels", "pseudo-val"), ("train-panoptic on pseudo-labels", "panoptic-val")):
        fsseg("evaluate", "--task", "semantic", "--pred", out / run / "semantic", "--gt", out / "gt-val" / "semantic",
              "--num-classes", 19, "--out", out / run / "eval-semantic", "-q")  # fmt: skip
        fsseg("evaluate", "--task", "panoptic", "--dataset", "cityscapes", "--pred", out / run, "--gt", out / "gt-val",
              "--out", out / run / "eval-panoptic", "-q")  # fmt: skip
        pan = metrics(out / run / "eval-panoptic")
        rows[name] = [metrics(out / run / "eval-semantic")["miou"], pan["pq"], pan["sq"], pan["rq"],
                      pan["things"]["pq"], pan["stuff"]["pq"]]  # fmt: skip
    k = len(heads[1].split(","))
    print(f"\nSPINO, Cityscapes val, k={k} annotated train images (%): {_title(cfg, 'Cityscapes')}")
    print(f"{'':34s} {'mIoU':>6} {'PQ':>6} {'SQ':>6} {'RQ':>6} {'PQ_th':>6} {'PQ_st':>6}")
    for name, values in rows.items():
        print(f"{name:34s} " + " ".join(f"{v:6.1f}" if v is not None else f"{'-':>6}" for v in values))
    print("reference (methods.md): Panoptic-DeepLab R50 fully supervised on Cityscapes val, PQ 58.6-59.8")
    (out / "spino.json").write_text(json.dumps({"fsseg": rows, "quick": cfg.quick}, indent=1))


if __name__ == "__main__":
    experiments = {"table1": table1, "gfss": gfss, "spino": spino}
    if len(sys.argv) != 2 or sys.argv[1] not in experiments:
        fail(f"usage: python examples/reproduce.py {'|'.join(experiments)}")
    experiments[sys.argv[1]]()
