"""SPINO label generation: fsseg's default (heads at patch resolution, logits upsampled) vs the
authors' mode (features upsampled x14 before the heads), and the fusion time.

One 1024x2048 image (a smooth synthetic street-like picture), DINOv2 ViT-S/14 with random weights
(seed 0), heads with random weights (seed 0, 19 classes), single scale, fp32 (fsseg's mode also
in bf16), CPU. Each mode runs in its own process (peak RSS) through
`stages.pseudo_label.predict_maps`, the code pseudo-label runs. Prints seconds (backbone and heads apart), peak RSS, the ratios, and the agreement of the
two outputs (mIoU of the semantic maps, one taken as reference; boundary-map agreement).
Fusion: `fuse_panoptic` on a 1024x2048 map with 40 segments (32 cars in 16 touching pairs, 8
stuff bands) and a predicted boundary map.
With `--heads DIR` (a trained label-gen artifact) it also runs those heads in both modes over
the validation split of their dataset and prints each mode's mIoU against the ground truth and
their agreement: the difference of the modes on real features (heads trained in the default mode).
On the CPU, and on the first CUDA GPU when there is one.
Usage: python bench/bench_spino.py [--heads DIR [--split val] [--limit N]]
       (QUICK=1: one 112x224 image, the tiny ViT)
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import bench_devices, print_hardware, quick, run_children, synchronize  # noqa: E402

H, W = (112, 224) if quick() else (1024, 2048)
BACKBONE, BACKBONE_NAME = ("tiny", "a tiny ViT") if quick() else ("dinov2_vits14", "DINOv2 ViT-S/14")


def image() -> np.ndarray:
    import cv2

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
    return cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)


def run(mode: str, out: Path, device: str) -> dict:
    import torch

    from stages.models.spino import DenseFeatures, LabelGenHeads
    from stages.pseudo_label import predict_maps

    if quick():  # tiny ops would mostly wait for a second thread on a busy machine
        torch.set_num_threads(1)
    torch.manual_seed(0)
    features = DenseFeatures(name=BACKBONE).to(device)
    torch.manual_seed(0)
    heads = LabelGenHeads(
        in_channels=features.out_channels, num_classes=19, upsample_features=mode == "authors"
    )
    heads = heads.eval().to(device)
    precision = "bf16" if mode == "bf16" else "fp32"
    picture = image()
    timings = {}

    def timed_features(x):
        start = time.perf_counter()
        f = features.__class__.forward(features, x)
        synchronize(device)
        timings["backbone_s"] = time.perf_counter() - start
        return f

    features.forward = timed_features
    start = time.perf_counter()
    semantic, boundary = predict_maps(features, heads, picture, size=None, scales=(1.0,), device=torch.device(device),
                                      precision=precision)  # fmt: skip
    synchronize(device)
    timings["total_s"] = time.perf_counter() - start
    timings["heads_s"] = timings["total_s"] - timings["backbone_s"]
    timings["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(out / f"{mode}_semantic.npy", semantic.astype(np.uint8))
    np.save(out / f"{mode}_boundary.npy", boundary > 0.5)
    return timings


def fusion_seconds() -> tuple[float, int]:
    from stages.core.panoptic import fuse_panoptic

    semantic = np.zeros((1024, 2048), np.int64)  # 0.1 s: also in quick mode
    for i in range(8):  # 8 stuff bands: classes 0..7
        semantic[i * 128 : (i + 1) * 128] = i
    boundary = np.zeros(semantic.shape, bool)
    for row in range(4):
        for col in range(4):  # 16 blobs of two touching cars each, split by a predicted boundary
            y, x = 100 + row * 230, 100 + col * 480
            semantic[y : y + 120, x : x + 300] = 13
            boundary[y : y + 120, x + 148 : x + 152] = True
    fuse_panoptic(semantic[:64, :64], boundary[:64, :64], (13,), min_size=500)  # imports scipy: not timed
    start = time.perf_counter()
    fused, instances = fuse_panoptic(semantic, boundary, tuple(range(11, 19)), min_size=500)
    seconds = time.perf_counter() - start
    return seconds, int(instances.max()) + len(np.unique(fused[instances == 0]))


def main() -> None:
    import torch

    from stages.core.devices import resolve_precision
    from stages.core.metrics import ConfusionMatrix

    print_hardware()
    for device in bench_devices():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            timings = run_children(__file__, "--mode", ["default", "authors", "bf16"], str(out), device)
            a, b, c = (timings[m] for m in ("default", "authors", "bf16"))
            sem_a, sem_b = np.load(out / "default_semantic.npy"), np.load(out / "authors_semantic.npy")
            sem_c = np.load(out / "bf16_semantic.npy")
            bnd_a, bnd_b = np.load(out / "default_boundary.npy"), np.load(out / "authors_boundary.npy")
        cm = ConfusionMatrix(19)
        cm.update(sem_a, sem_b, 255)
        where = "CPU" if device == "cpu" else device
        print(
            f"one {H}x{W} image, {BACKBONE_NAME} (random weights), single scale, {where} (fp32 unless marked)"
        )
        print(f"{'mode':34s} {'backbone s':>10s} {'heads s':>9s} {'total s':>9s} {'peak RSS MB':>12s}")
        rows = (("authors (features upsampled x14)", b), ("fsseg default (logits upsampled)", a),
                ("fsseg default, --precision bf16", c))  # fmt: skip
        for name, r in rows:
            print(
                f"{name:34s} {r['backbone_s']:10.2f} {r['heads_s']:9.2f} {r['total_s']:9.2f} {r['peak_rss_mb']:12.0f}"
            )
        print(f"heads stage: {b['heads_s'] / a['heads_s']:.1f}x faster")
        print(
            f"end to end:  {b['total_s'] / a['total_s']:.2f}x faster, peak RSS {a['peak_rss_mb'] / b['peak_rss_mb']:.2f}x"
        )
        fast = resolve_precision("auto", torch.device(device)) == "bf16"
        units = "fast bf16 here" if fast else "no fast bf16 here: slow path"
        print(f"with --precision bf16 ({units}): {b['total_s'] / c['total_s']:.2f}x faster than the authors' fp32, "
              f"pixel agreement with fsseg fp32 {100 * (sem_a == sem_c).mean():.2f}%")  # fmt: skip
        print(f"agreement: semantic mIoU {100 * cm.miou():.2f} (pixel agreement {100 * (sem_a == sem_b).mean():.2f}%), "
              f"boundary pixel agreement {100 * (bnd_a == bnd_b).mean():.2f}%")  # fmt: skip
    seconds, segments = fusion_seconds()
    print(f"fusion: {seconds:.3f} s for one 1024x2048 map with {segments} segments (target <= 0.5 s)")


def real_heads(heads_dir: Path, split: str, limit: int | None) -> None:
    import torch

    from stages.core.artifacts import read_manifest
    from stages.core.checkpoints import build_from_checkpoint
    from stages.core.datasets import open_dataset
    from stages.core.metrics import ConfusionMatrix
    from stages.models.backbones import load_backbone_weights
    from stages.models.spino import DenseFeatures
    from stages.pseudo_label import predict_maps

    manifest = read_manifest(heads_dir, "label-gen")
    made = manifest.get("resolved") or manifest["params"]  # artifacts before fsseg recorded `resolved`
    ds = open_dataset(made["dataset"], made["root"], split)
    heads, ckpt = build_from_checkpoint(heads_dir / "heads.pt")
    heads.eval()
    features = load_backbone_weights(DenseFeatures(name=ckpt["backbone"]), ckpt["backbone_weights"])
    n = ds.num_classes
    cms = {"default": ConfusionMatrix(n), "authors": ConfusionMatrix(n)}
    agree, seconds = ConfusionMatrix(n), {"default": 0.0, "authors": 0.0}
    samples = ds.samples()[: limit or None]
    for sample in samples:
        image, label = ds.load_image(sample), ds.load_label(sample)
        preds = {}
        for mode in ("default", "authors"):
            heads.upsample_features = mode == "authors"
            start = time.perf_counter()
            preds[mode], _ = predict_maps(features, heads, image, size=ckpt["size"], scales=(1.0,),
                                          device=torch.device("cpu"), precision="fp32")  # fmt: skip
            seconds[mode] += time.perf_counter() - start
            cms[mode].update(preds[mode], label, ds.ignore_index)
        agree.update(preds["default"], preds["authors"], 255)
    print(f"\ntrained heads {heads_dir} ({ckpt['backbone']}), {len(samples)} {ds.name} {split} images:")
    for mode, cm in cms.items():
        print(
            f"  {mode:8s} mIoU vs ground truth {100 * cm.miou():6.2f}   {seconds[mode] / len(samples):6.3f} s/image"
        )
    print(f"  agreement of the two modes: mIoU {100 * agree.miou():.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--mode":  # --mode MODE[,MODE] OUT [DEVICE]
        out, device = Path(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "cpu"
        print(json.dumps({mode: run(mode, out, device) for mode in sys.argv[2].split(",")}))
    elif len(sys.argv) > 1 and sys.argv[1] == "--heads":
        args = dict(zip(sys.argv[1::2], sys.argv[2::2], strict=False))
        real_heads(
            Path(args["--heads"]),
            args.get("--split", "val"),
            int(args["--limit"]) if "--limit" in args else None,
        )
    else:
        main()
