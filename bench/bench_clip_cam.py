"""Grad-CAM over 64 CamVid images with open_clip RN50 (random weights), CPU, each way in its own process.

(a) pytorch-grad-cam the way the IMR authors' script runs it: a new GradCAM object per image,
    batch 1, CLIP parameters requiring gradients (as loaded);
(b) pytorch-grad-cam batched (16 images per call, one GradCAM object);
(c) fsseg (`stages.models.cam.LabelCams`, what clip-cam runs, 16 per batch, fp32: input resize, one
    forward/backward recorded from layer4 on, CAM, upsampling to the original 480x360);
floor: the bare model work any Grad-CAM needs on the same batches: the image encoder forward
    and the backward from the score to layer4's output, nothing else.
Every variant sees the same images, already decoded in memory, resized to 224x224 whole (no
crop). Prints images/s, peak RSS, the ratios, and the fp32-vs-bf16 agreement of fsseg's maps
(where `--precision auto` picks bf16: elsewhere bf16 takes a slow path); on the CPU, and on the
first CUDA GPU when there is one.
Usage: python bench/bench_clip_cam.py     (QUICK=1: 4 images, batches of 2, all variants in one process)
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import bench_devices, print_hardware, quick, run_children, synchronize, threads  # noqa: E402

CAMVID = ROOT.parent / "shared" / "data" / "camvid" / "val"
N_IMAGES, BATCH, SIZE = (4, 2, 64) if quick() else (64, 16, 224)
MODEL = "a tiny ResNet CLIP (random weights)" if quick() else "open_clip RN50 random weights"
VARIANTS = ("a", "b", "c", "floor")
LABELS = ["car", "road", "building", "tree", "sky", "person", "bicycle"]


def load_images() -> list[np.ndarray]:
    from stages.core.imageio import read_image

    return [read_image(p) for p in sorted(CAMVID.glob("*.png"))[:N_IMAGES]]


def setup(device: torch.device):
    from stages.models import cam as cams

    torch.manual_seed(0)
    if quick():  # open_clip's ModifiedResNet, as RN50, a few channels wide at the quick input size
        import open_clip

        model = open_clip.model.CLIP(
            embed_dim=32,
            vision_cfg={"layers": (1, 1, 1, 1), "width": 8, "image_size": SIZE},
            text_cfg={"width": 32, "heads": 2, "layers": 1},
        )
        model = model.to(device).eval().requires_grad_(False)
        tokenizer = open_clip.get_tokenizer("RN50")
    else:
        model, tokenizer = cams.load_clip("RN50", "none", device)
    text = cams.text_embeddings(model, tokenizer, LABELS, cams.TEMPLATES, device)
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


def run_variant(name: str, device: torch.device) -> dict:
    torch.set_num_threads(threads())
    images = load_images()
    cams, model, scorer = setup(device)
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
            x = cams.normalise_batch(resized(images[i : i + batch]).to(device), scorer.mean, scorer.std)
            if engine is None or name == "a":
                engine = GradCAM(model=wrapper, target_layers=[scorer.target])
            engine(input_tensor=x, targets=[lambda o: o[target]] * len(x))
    elif name == "c":
        compute = cams.LabelCams(scorer, LABELS, "gradcam", SIZE, device, "fp32")
        for i in range(0, len(images), BATCH):
            chunk = images[i : i + BATCH]
            compute(chunk, [LABELS[target]] * len(chunk))
    elif name == "floor":
        visual = model.visual
        for i in range(0, len(images), BATCH):
            x = cams.normalise_batch(resized(images[i : i + BATCH]).to(device), scorer.mean, scorer.std)
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
            f"{'tiny CLIP' if quick() else 'RN50'} random, layercam": (scorer, "layercam", LABELS),
            "Lite0 ImageNet, gradcam": (
                cams.imagenet_scorer([imagenet_classes("car")]).to(device),
                "gradcam",
                ["car"],
            ),
        }
        out = {}
        for label, (sc, method, labels) in setups.items():
            fp32 = cams.LabelCams(sc, labels, method, SIZE, device, "fp32")
            bf16 = cams.LabelCams(sc, labels, method, SIZE, device, "bf16")
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
    synchronize(device.type)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        result["gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--variant":
        # one or more variants (comma-separated) in this process, each on a fresh model
        names, device = sys.argv[2].split(","), torch.device(sys.argv[3])
        print(json.dumps({name: run_variant(name, device) for name in names}))
        return
    if not CAMVID.is_dir():
        print(f"skip: {CAMVID} is absent")
        return
    from stages.core.devices import resolve_precision

    print_hardware()
    for device in bench_devices():
        # bf16 where it is fast; on other CPUs bf16 convolutions take a slow path (the agreement
        # maps alone took ~30 min on the 2-core AVX2 machine), except in quick mode, where they are tiny
        bf16 = quick() or resolve_precision("auto", torch.device(device)) == "bf16"
        if not bf16:
            print(f"{device}: no fast bf16 here, so the bf16 agreement is skipped")
        report(run_children(__file__, "--variant", [*VARIANTS, *(["bf16"] if bf16 else [])], device), device)


def report(results: dict, device: str) -> None:
    names = {
        "a": "pytorch-grad-cam, new object per image, batch 1",
        "b": f"pytorch-grad-cam batched ({BATCH})",
        "c": f"fsseg clip-cam ({BATCH} per batch)",
        "floor": "floor: forward + backward to layer4",
    }
    where = f"CPU, {threads()} thread{'s' if threads() > 1 else ''}" if device == "cpu" else device
    print(f"Grad-CAM, {N_IMAGES} CamVid images (480x360 -> {SIZE}x{SIZE} whole), {MODEL}, {where}")
    for key, label in names.items():
        r = results[key]
        gpu = f"  GPU peak {r['gpu_mb']:7.0f} MB" if "gpu_mb" in r else ""
        print(
            f"  ({key}) {label:<50} {N_IMAGES / r['seconds']:7.1f} img/s  peak RSS {r['rss_mb']:7.0f} MB{gpu}"
        )
    a, b, c, floor = (results[k]["seconds"] for k in VARIANTS)
    print(
        f"  fsseg speed-up over (a) {a / c:5.2f}x   over (b) {b / c:5.2f}x   fsseg time / floor {c / floor:5.2f}x"
    )
    for label, r in results.get("bf16", {}).items():
        print(
            f"  bf16 vs fp32 fsseg CAM correlation ({label}): mean {r['mean']:.4f}, min {r['min']:.4f} "
            f"over {r['n']} maps"
        )


if __name__ == "__main__":
    main()
