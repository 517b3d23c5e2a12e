"""How well `fsseg clip-cam`'s presence score tells a present label from an absent one, on real
COCO and VOC photos (offline imagenet backend: EfficientNet-Lite0).

Pairs: every image x every class the imagenet backend knows (61 of COCO's 80, 19 of VOC's 20).
A pair is present when the class has a non-crowd annotation in the image (COCO) or pixels in its
class mask (VOC); a class shown only by crowd regions is left out (neither present nor absent).

1. One forward pass per image, on the network input clip-cam uses, gives every label's raw
   presence m (the largest logit among its n ImageNet classes) and, for comparison, the softmax
   mass of its classes.
2. On COCO-mini train2017 only: for each penalty 0, 0.1, ..., 1, fit the logistic calibration
   sigmoid(slope * (m - penalty * ln n) + bias) and find the threshold with the best Youden's J
   (recall + specificity - 1, which does not depend on how many pairs are present) on a 0.01
   grid; keep the penalty under which the worst label keeps the fewest of its absent pairs (the
   penalty offsets the higher maximum of labels with many classes, such as dog's 118). These are
   the values clip-cam ships, rounded (stages.models.cam.IMAGENET_PRESENCE,
   stages.params.IMAGENET_MIN_SCORE).
3. The shipped calibration and threshold scored on each set: train2017 is the calibration data;
   val2017 and VOC were not used to choose anything.

Usage: python examples/clip_cam_presence.py --coco ../shared/data/coco-mini --voc ../shared/data/voc-mini
Prints the fitted values beside the shipped ones, then a markdown table (one CPU minute).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from stages.core.datasets import open_dataset
from stages.core.datasets.readers import COCO_CLASSES, VOC_CLASSES
from stages.core.errors import FssegError
from stages.core.imageio import read_image
from stages.models import cam as cams
from stages.models.imagenet_labels import imagenet_classes
from stages.params import IMAGENET_MIN_SCORE

LARGE = 0.10  # "large object": the class covers at least this fraction of the image


def known_labels(names: list[str]) -> dict[str, list[int]]:
    """The labels of `names` that the imagenet backend knows, with their ImageNet classes."""
    known = {}
    for name in names:
        try:
            known[name] = imagenet_classes(name)
        except FssegError:
            pass
    return known


def coco_truth(root: Path, split: str) -> tuple[list[Path], list[dict[str, float]], list[set[str]]]:
    """Per image: its file, the annotated area fraction of each class (non-crowd), and the classes
    shown by crowd regions only."""
    doc = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    order = {img["id"]: i for i, img in enumerate(doc["images"])}
    areas: list[dict[str, float]] = [{} for _ in order]
    crowd: list[set[str]] = [set() for _ in order]
    for ann in doc["annotations"]:
        i, name = order[ann["image_id"]], names[ann["category_id"]]
        if ann.get("iscrowd"):
            crowd[i].add(name)
        else:
            img = doc["images"][i]
            areas[i][name] = areas[i].get(name, 0.0) + ann["area"] / (img["height"] * img["width"])
    files = [root / split / img["file_name"] for img in doc["images"]]
    return files, areas, [c - set(a) for c, a in zip(crowd, areas, strict=True)]


def voc_truth(root: Path) -> tuple[list[Path], list[dict[str, float]], list[set[str]]]:
    ds = open_dataset("pascal", root, None)
    scan, samples = ds.scan(), ds.samples()
    areas = [
        {VOC_CLASSES[c]: n / sum(scan[s.id].values()) for c, n in scan[s.id].items() if 0 < c < 21}
        for s in samples
    ]
    return [s.image for s in samples], areas, [set() for _ in samples]


@torch.no_grad()
def label_scores(files: list[Path], labels: dict[str, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(raw presence, softmax mass), each (images, labels), from one forward pass per image."""
    scorer = cams.imagenet_scorer(list(labels.values()), calibration=None)
    engine = cams.LabelCams(scorer, list(labels), "gradcam", 224, torch.device("cpu"))
    selector = torch.zeros(len(labels), 1000)
    for row, classes in enumerate(labels.values()):
        selector[row, classes] = 1.0
    raw, mass = [], []
    for start in range(0, len(files), 16):
        batch = engine.input_batch([read_image(f) for f in files[start : start + 16]])
        logits = scorer.network(cams.normalise_batch(batch, scorer.mean, scorer.std)).float()
        raw.append(scorer.presence(logits))
        mass.append(logits.softmax(-1) @ selector.T)
    return torch.cat(raw).numpy(), torch.cat(mass).numpy()


def pairs(truth, labels: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Flattened image x label pairs: raw presence (max logit), softmax mass, the label's name and
    number of ImageNet classes, present, large; crowd-only pairs left out."""
    files, areas, crowd_only = truth
    raw, mass = label_scores(files, labels)
    grid = [(i, name) for i in range(len(files)) for name in labels]
    keep = np.array([name not in crowd_only[i] for i, name in grid])
    out = {
        "raw": raw.ravel(),
        "mass": mass.ravel(),
        "label": np.array([name for _, name in grid]),
        "n": np.array([len(labels[name]) for _, name in grid], np.float32),
        "present": np.array([name in areas[i] for i, name in grid]),
        "large": np.array([areas[i].get(name, 0.0) >= LARGE for i, name in grid]),
    }
    return {k: v[keep] for k, v in out.items()} | {"images": len(files)}


def presence(d: dict, calibration: tuple[float, float, float]) -> np.ndarray:
    return cams.imagenet_presence(torch.from_numpy(d["raw"]), torch.from_numpy(d["n"]), calibration).numpy()


def youden(score: np.ndarray, present: np.ndarray) -> tuple[float, float]:
    """(best recall + specificity - 1, its threshold) over thresholds 0.01, 0.02, ..., 0.99."""
    grid = np.round(np.arange(0.01, 1.0, 0.01), 2)
    j = [((score >= t) & present).sum() / present.sum() - ((score >= t) & ~present).sum() / (~present).sum()
         for t in grid]  # fmt: skip
    return float(max(j)), float(grid[int(np.argmax(j))])


def absent_kept(d: dict, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Per label: the share of its absent pairs judged present (they would keep a mask)."""
    kept = score >= threshold
    return {name: float(kept[(d["label"] == name) & ~d["present"]].mean()) for name in np.unique(d["label"])}


def fit(d: dict) -> list[tuple[tuple[float, float, float], float, float, float]]:
    """For each penalty 0, 0.1, ..., 1: logistic regression of `present` on m - penalty * ln n
    (Newton steps), and its Youden-best threshold. Returns (calibration, threshold, J, the
    largest share of one label's absent pairs judged present) per penalty."""
    y = d["present"].astype(np.float64)
    candidates = []
    for penalty in np.round(np.arange(0.0, 1.01, 0.1), 1):
        x = np.stack([d["raw"] - penalty * np.log(d["n"]), np.ones_like(d["raw"])], 1).astype(np.float64)
        w = np.array([0.0, np.log(y.mean() / (1 - y.mean()))])
        for _ in range(25):
            p = 1.0 / (1.0 + np.exp(-x @ w))
            w -= np.linalg.solve((x * (p * (1 - p))[:, None]).T @ x, x.T @ (p - y))
        calibration = (float(penalty), float(w[0]), float(w[1]))
        score = presence(d, calibration)
        j, threshold = youden(score, d["present"])
        candidates.append((calibration, threshold, j, max(absent_kept(d, score, threshold).values())))
    return candidates


def auroc(score: np.ndarray, present: np.ndarray) -> float:
    """P(a present pair scores above an absent one), ties counted half."""
    return mannwhitneyu(score[present], score[~present]).statistic / (present.sum() * (~present).sum())


def row(name: str, d: dict, threshold: float) -> str:
    score = presence(d, cams.IMAGENET_PRESENCE)
    kept, present, large = score >= threshold, d["present"], d["large"]
    cells = [
        name, d["images"], f"{len(present)} ({present.sum()})", f"{auroc(score, present):.3f}",
        f"{auroc(d['raw'], present):.3f}", f"{auroc(d['mass'], present):.3f}",
        f"{(kept & present).sum() / max(kept.sum(), 1):.3f}", f"{(kept & present).sum() / present.sum():.3f}",
        f"{(kept & large).sum() / max(large.sum(), 1):.3f} ({large.sum()})",
        f"{(~kept & ~present).sum() / (~present).sum():.3f}",
    ]  # fmt: skip
    return "| " + " | ".join(map(str, cells)) + " |"


def kept_without(d: dict, label: str, calibration: tuple[float, float, float], threshold: float) -> float:
    """The share of the photos without `label` that keep a mask for it."""
    return absent_kept(d, presence(d, calibration), threshold)[label]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coco", type=Path, required=True, help="COCO-mini root (train2017, val2017)")
    parser.add_argument("--voc", type=Path, required=True, help="VOC root (JPEGImages, SegmentationClass)")
    args = parser.parse_args()
    coco_labels, voc_labels = known_labels(COCO_CLASSES), known_labels(VOC_CLASSES[1:])
    sets = {
        "COCO-mini train2017 (calibration)": pairs(coco_truth(args.coco, "train2017"), coco_labels),
        "COCO-mini val2017": pairs(coco_truth(args.coco, "val2017"), coco_labels),
        "VOC-mini": pairs(voc_truth(args.voc), voc_labels),
    }
    held_out = [sets["COCO-mini val2017"], sets["VOC-mini"]]
    sets["val2017 + VOC-mini"] = {
        k: np.concatenate([d[k] for d in held_out]) for k in held_out[0] if k != "images"
    }
    sets["val2017 + VOC-mini"]["images"] = sum(d["images"] for d in held_out)
    candidates = fit(sets["COCO-mini train2017 (calibration)"])
    # the penalty is there to treat labels alike: keep the one whose worst label keeps the fewest
    # absent pairs (ties: the best J)
    (penalty, slope, bias), threshold, j, worst = min(candidates, key=lambda c: (round(c[3], 6), -c[2]))
    print(f"labels known: {len(coco_labels)} of COCO's 80, {len(voc_labels)} of VOC's 20")
    print(
        f"fitted on train2017: penalty {penalty:.1f}, slope {slope:.3f}, bias {bias:.3f}, --min-score "
        f"{threshold:.2f} (Youden's J {j:.3f}; the worst label keeps {worst:.2f} of its absent pairs)"
    )
    print(
        f"shipped:             penalty {cams.IMAGENET_PRESENCE[0]}, slope {cams.IMAGENET_PRESENCE[1]}, "
        f"bias {cams.IMAGENET_PRESENCE[2]}, --min-score {IMAGENET_MIN_SCORE}\n"
    )
    print(f"Presence judged at --min-score {IMAGENET_MIN_SCORE} (positive = judged present):\n")
    print(
        "| set | images | pairs (present) | AUROC | AUROC, max logit | AUROC, softmax mass | precision | recall "
        f"| recall, objects >= {LARGE:.0%} of the image (n) | absent pairs judged absent |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, d in sets.items():
        print(row(name, d, IMAGENET_MIN_SCORE))
    held = sets["val2017 + VOC-mini"]
    rates = absent_kept(held, presence(held, cams.IMAGENET_PRESENCE), IMAGENET_MIN_SCORE)
    worst_five = sorted(rates.items(), key=lambda kv: -kv[1])[:5]
    print(
        "\nshare of a label's absent pairs judged present, val2017 + VOC-mini, worst five: "
        + ", ".join(f"{name} {rate:.2f}" for name, rate in worst_five)
    )
    val = sets["COCO-mini val2017"]
    unpenalised, threshold0 = candidates[0][0], candidates[0][1]
    with_penalty = kept_without(val, "dog", cams.IMAGENET_PRESENCE, IMAGENET_MIN_SCORE)
    without = kept_without(val, "dog", unpenalised, threshold0)
    print(
        f"dog-free val2017 photos that keep a dog mask: {with_penalty:.2f}; without the penalty "
        f"(fitted the same way, --min-score {threshold0:.2f}): {without:.2f}"
    )


if __name__ == "__main__":
    main()
