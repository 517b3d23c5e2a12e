"""PQ evaluation of Cityscapes-sized pairs: fsseg vs cityscapesScripts' evaluator, one process.

Synthetic Cityscapes-like panoptic pairs (1024x2048, ~40 segments: stuff bands, car and person
instances, a crowd region, void; the prediction shifted, with missed, split and false segments)
are written once as COCO panoptic PNG + JSON. Both evaluators then read the same files:
cityscapesScripts through `pq_compute_single_core` (its per-process worker, one core) and its
default `pq_compute_multi_core` (a process per core); fsseg through `read_coco_png` +
`PanopticQuality.update` in one thread and in two threads of the one process (what `fsseg
evaluate` does with its default --num-workers 2). Prints times, ratios and the PQ values. No model
runs, so there are no GPU rows.
Usage: python bench/bench_panoptic.py [N_PAIRS]     (QUICK=1: 2 pairs)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import print_hardware, quick  # noqa: E402
from stages.core.metrics import PanopticImage, PanopticQuality  # noqa: E402
from stages.core.panoptic import id_to_rgb, read_coco_png  # noqa: E402

H, W = 1024, 2048
CATEGORIES = [
    {"id": 7, "name": "road", "isthing": 0}, {"id": 8, "name": "sidewalk", "isthing": 0},
    {"id": 11, "name": "building", "isthing": 0}, {"id": 21, "name": "vegetation", "isthing": 0},
    {"id": 23, "name": "sky", "isthing": 0}, {"id": 24, "name": "person", "isthing": 1},
    {"id": 26, "name": "car", "isthing": 1},
]  # fmt: skip


def make_pair(rng: np.random.Generator):
    gt = np.zeros((H, W), np.uint32)
    segments = {}
    for sid, (y0, y1) in zip(
        (23, 11, 21, 8, 7), ((0, 200), (200, 420), (420, 520), (520, 640), (640, 1000)), strict=True
    ):
        gt[y0:y1] = sid
        segments[sid] = (sid, 0)
    for k in range(35):
        cat = 26 if k % 3 else 24
        y, x = int(rng.integers(380, 900)), int(rng.integers(0, W - 200))
        h, w = (
            (int(rng.integers(60, 160)), int(rng.integers(80, 260)))
            if cat == 26
            else (int(rng.integers(80, 200)), int(rng.integers(30, 70)))
        )
        sid = cat * 1000 + k
        gt[y : y + h, x : x + w] = sid
        segments[sid] = (cat, 0)
    gt[700:760, 1800:2000] = 26  # a crowd of cars
    segments[26] = (26, 1)
    gt[1000:] = 0  # ego-vehicle void band
    pred = np.roll(gt, int(rng.integers(-12, 13)), axis=1)
    pred_segments = {}
    for sid, (cat, crowd) in segments.items():
        if crowd or rng.random() < 0.1:
            pred[pred == sid] = 0 if crowd else pred[pred == sid]
            continue
        pred_segments[sid + 500] = cat
    remap = np.zeros(int(pred.max()) + 1, np.uint32)
    for sid in segments:
        remap[sid] = sid + 500 if sid + 500 in pred_segments else 0
    pred = remap[pred]
    for k in range(4):  # false positives
        y, x = int(rng.integers(650, 900)), int(rng.integers(0, W - 100))
        pred[y : y + 50, x : x + 90] = 90000 + k
        pred_segments[90000 + k] = 24
    return gt, segments, pred, pred_segments


def write_dataset(folder: Path, n: int) -> tuple[list, list]:
    rng = np.random.default_rng(0)
    (folder / "gt").mkdir()
    (folder / "pred").mkdir()
    gt_anns, pred_anns = [], []
    for i in range(n):
        gt, segs, pred, pred_segs = make_pair(rng)
        name = f"frame_{i:04d}.png"
        cv2.imwrite(str(folder / "gt" / name), id_to_rgb(gt)[..., ::-1])
        cv2.imwrite(str(folder / "pred" / name), id_to_rgb(pred)[..., ::-1])
        gt_ids, gt_counts = np.unique(gt, return_counts=True)
        areas = dict(zip(gt_ids.tolist(), gt_counts.tolist(), strict=True))
        gt_anns.append(
            {
                "image_id": name,
                "file_name": name,
                "segments_info": [
                    {"id": s, "category_id": c, "iscrowd": cr, "area": areas[s]}
                    for s, (c, cr) in segs.items()
                    if s in areas
                ],
            }
        )
        present = set(np.unique(pred).tolist())
        pred_anns.append(
            {
                "image_id": name,
                "file_name": name,
                "segments_info": [{"id": s, "category_id": c} for s, c in pred_segs.items() if s in present],
            }
        )
    return gt_anns, pred_anns


def main() -> None:
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as peer

    print_hardware()
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 2 if quick() else 200
    categories = {c["id"]: c for c in CATEGORIES}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gt_anns, pred_anns = write_dataset(folder, n)
        (folder / "gt.json").write_text(json.dumps({"annotations": gt_anns, "categories": CATEGORIES}))

        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            stat = peer.pq_compute_single_core(
                0,
                list(zip(gt_anns, pred_anns, strict=True)),
                str(folder / "gt"),
                str(folder / "pred"),
                categories,
            )
        t_peer = time.perf_counter() - start
        peer_pq = peer.average_pq(stat, categories)["All"]["pq"]

        def score(pair) -> PanopticQuality:
            g, p = pair
            gt = read_coco_png(folder / "gt" / g["file_name"], g["segments_info"])
            pred = read_coco_png(folder / "pred" / p["file_name"], p["segments_info"])
            return PanopticQuality().update(gt, PanopticImage(pred.ids, pred.categories))

        pairs = list(zip(gt_anns, pred_anns, strict=True))
        timings = {}
        for workers in (1, 2):
            start = time.perf_counter()
            ours = PanopticQuality()
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for part in pool.map(score, pairs):
                    ours = ours + part
            timings[workers] = time.perf_counter() - start
        our_pq = ours.results({c["id"]: bool(c["isthing"]) for c in CATEGORIES})["all"]["pq"]

        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            multi = peer.pq_compute_multi_core(pairs, str(folder / "gt"), str(folder / "pred"), categories)
        t_multi = time.perf_counter() - start
        multi_pq = peer.average_pq(multi, categories)["All"]["pq"]

    print(
        f"panoptic quality, {n} synthetic Cityscapes-sized pairs ({H}x{W}, ~40 segments), one process, "
        f"{os.cpu_count()} cores"
    )

    def row(name: str, seconds: float, pq: float) -> None:
        print(f"  {name:<52} {seconds:7.2f} s  ({1000 * seconds / n:6.1f} ms/pair)  PQ {100 * pq:.9f}")

    row("cityscapesScripts pq_compute_single_core (1 core)", t_peer, peer_pq)
    row("fsseg PanopticQuality, 1 thread", timings[1], our_pq)
    row("fsseg PanopticQuality, 2 threads (evaluate default)", timings[2], our_pq)
    row("cityscapesScripts pq_compute_multi_core (all cores)", t_multi, multi_pq)
    print(f"  ratio single core / fsseg 1 thread                 {t_peer / timings[1]:7.2f}x")
    print(f"  ratio single core / fsseg 2 threads (one process)  {t_peer / timings[2]:7.2f}x")
    print(f"  ratio multi core / fsseg 2 threads                 {t_multi / timings[2]:7.2f}x")
    print(f"  |PQ diff| {max(abs(peer_pq - our_pq), abs(multi_pq - our_pq)):.1e}")


if __name__ == "__main__":
    main()
