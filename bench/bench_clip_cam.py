"""Grad-CAM over 64 CamVid images with open_clip RN50 (random weights), CPU, each way in its own process.

(a) pytorch-grad-cam the way the IMR authors' script runs it: a new GradCAM object per image,
    batch 1, CLIP parameters requiring gradients (as loaded);
(b) pytorch-grad-cam batched (16 images per call, one GradCAM object);
(c) fsseg (`stages.models.cam.LabelCams`, what clip-cam runs, 16 per batch: input resize, one forward/backward
    recorded from layer4 on, CAM, upsampling to the original 480x360);
floor: the bare model work any Grad-CAM needs on the same batches: the image encoder forward
    and the backward from the score to layer4's output, nothing else.
Every variant sees the same images, already decoded in memory, resized to 224x224 whole (no
crop). Prints images/s, peak RSS, the ratios, and the fp32-vs-bf16 agreement of fsseg's maps.
Usage: python bench/bench_clip_cam.py
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
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CAMVID = ROOT.parent / "shared" / "data" / "camvid" / "val"
N_IMAGES, BATCH, SIZE = 64, 16, 224
LABELS = ["car", "road", "building", "tree", "sky", "person", "bicycle"]


def load_images() -> list[np.ndarray]:
    from stages.core.imageio import read_image

    return [read_image(p) for p in sorted(CAMVID.glob("*.png"))[:N_IMAGES]]


def setup():
    from stages.models import cam as cams

    torch.manual_seed(0)
    model, tokenizer = cams.load_clip("RN50", "none", torch.device("cpu"))
    text = cams.text_embeddings(model, tokenizer, LABELS, cams.TEMPLATES, "cpu")
    return cams, model, cams.clip_scorer(model, text, score="softmax")


def resized(images: list[np.ndarray]) -> torch.Tensor:
    return torch.stack(
        [
            F.interpolate(
                torch.from_numpy(im).permute(2, 0, 1)[None].float(),
                size=(SIZE, SIZE),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[0]
            .round()
            .to(torch.uint8)
            for im in images
        ]
    )


def run_variant(name: str) -> dict:
    torch.set_num_threads(2)
    images = load_images()
    cams, model, scorer = setup()
    target = 0  # "car"
    start = time.perf_counter()
    if name in ("a", "b"):
        from pytorch_grad_cam import GradCAM

        for p in scorer.network.parameters():
            p.requires_grad_(True)
        wrapper = torch.nn.Sequential(scorer.network)
        wrapper.forward = lambda x: scorer.score(scorer.network(x))
        batch = 1 if name == "a" else BATCH
        engine = None
        for i in range(0, len(images), batch):
            x = cams.normalise_batch(resized(images[i : i + batch]), scorer.mean, scorer.std)
            if engine is None or name == "a":
                engine = GradCAM(model=wrapper, target_layers=[scorer.target])
            engine(input_tensor=x, targets=[lambda o: o[target]] * len(x))
    elif name == "c":
        from stages.clip_cam import CamItem, _batch_cams

        for i in range(0, len(images), BATCH):
            good = [(CamItem(str(k), Path("x"), "car"), im) for k, im in enumerate(images[i : i + BATCH])]
            _batch_cams(
                scorer,
                good,
                {t: j for j, t in enumerate(LABELS)},
                "gradcam",
                SIZE,
                torch.device("cpu"),
                "fp32",
            )
    elif name == "floor":
        visual = model.visual
        for i in range(0, len(images), BATCH):
            x = cams.normalise_batch(resized(images[i : i + BATCH]), scorer.mean, scorer.std)
            with torch.no_grad():
                feats = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(x)))))
            feats.requires_grad_(True)
            scores = scorer.score(visual.attnpool(feats))[:, target]
            torch.autograd.grad(scores.sum(), feats)
    elif name == "bf16":
        from stages.models.imagenet_labels import imagenet_classes

        # random-weight RN50 Grad-CAM maps are all zero (ReLU of negative sums), so agreement is
        # measured where maps have content: RN50 random with LayerCAM, and Lite0's real weights
        setups = {
            "RN50 random, layercam": (scorer, "layercam", LABELS),
            "Lite0 ImageNet, gradcam": (cams.imagenet_scorer([imagenet_classes("car")]), "gradcam", ["car"]),
        }
        out = {}
        for label, (sc, method, labels) in setups.items():
            fp32 = cams.LabelCams(sc, labels, method, SIZE, torch.device("cpu"), "fp32")
            bf16 = cams.LabelCams(sc, labels, method, SIZE, torch.device("cpu"), "bf16")
            corr = []
            for i in range(0, len(images), BATCH):
                chunk = images[i : i + BATCH]
                corr += [
                    np.corrcoef(a.ravel(), b.ravel())[0, 1]
                    for a, b in zip(
                        fp32(chunk, ["car"] * len(chunk)), bf16(chunk, ["car"] * len(chunk)), strict=True
                    )
                ]
            out[label] = {"mean": float(np.mean(corr)), "min": float(np.min(corr)), "n": len(corr)}
        return out
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--variant":
        print(json.dumps(run_variant(sys.argv[2])))
        return
    if not CAMVID.is_dir():
        print(f"skip: {CAMVID} is absent")
        return

    def child(name: str) -> dict:
        out = subprocess.run(
            [sys.executable, __file__, "--variant", name], capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    results = {name: child(name) for name in ("a", "b", "c", "floor")}
    agreement = child("bf16")
    names = {
        "a": "pytorch-grad-cam, new object per image, batch 1",
        "b": "pytorch-grad-cam batched (16)",
        "c": "fsseg clip-cam (16 per batch)",
        "floor": "floor: forward + backward to layer4",
    }
    print(
        f"Grad-CAM, {N_IMAGES} CamVid images (480x360 -> {SIZE}x{SIZE} whole), open_clip RN50 random weights, "
        f"CPU, 2 threads"
    )
    for key, label in names.items():
        r = results[key]
        print(f"  ({key}) {label:<50} {N_IMAGES / r['seconds']:7.1f} img/s  peak RSS {r['rss_mb']:7.0f} MB")
    a, b, c, floor = (results[k]["seconds"] for k in ("a", "b", "c", "floor"))
    print(
        f"  fsseg speed-up over (a) {a / c:5.2f}x   over (b) {b / c:5.2f}x   fsseg time / floor {c / floor:5.2f}x"
    )
    for label, r in agreement.items():
        print(
            f"  bf16 vs fp32 fsseg CAM correlation ({label}): mean {r['mean']:.4f}, min {r['min']:.4f} "
            f"over {r['n']} maps"
        )


if __name__ == "__main__":
    main()
