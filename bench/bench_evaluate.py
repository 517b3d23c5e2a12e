"""Semantic evaluation at CamVid scale: fsseg's bincount confusion matrix vs torchmetrics.

Both sides get the same label maps, loaded once (CamVid val ground truth against a seeded,
perturbed copy, so the scores are not trivial); each updates image by image and ends with
mIoU. Prints the time of each (best of 3), the ratio, and both mIoU values. No model runs, so
there are no GPU rows. QUICK=1: 8 label maps, timed once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import print_hardware, quick, threads  # noqa: E402
from stages.core.imageio import read_label  # noqa: E402
from stages.core.metrics import ConfusionMatrix  # noqa: E402

VALANNOT = ROOT.parent / "shared" / "data" / "camvid" / "valannot"
N_CLASSES, IGNORE = 11, 11


def load_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    pairs = []
    for path in sorted(VALANNOT.glob("*.png"))[: 8 if quick() else None]:
        gt = read_label(path)
        pred = np.where(rng.random(gt.shape) < 0.2, rng.integers(0, N_CLASSES, gt.shape), gt)
        pred = np.where(pred == IGNORE, 0, pred).astype(np.uint8)
        pairs.append((pred, gt))
    return pairs


def best_of(fn, repeats: int = 3) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def fsseg_miou(pairs) -> float:
    total = ConfusionMatrix(N_CLASSES)
    for pred, gt in pairs:
        total.update(pred, gt, IGNORE)
    return total.miou() * 100


def torchmetrics_miou(pairs) -> float:
    from torchmetrics.classification import MulticlassJaccardIndex

    metric = MulticlassJaccardIndex(num_classes=N_CLASSES, ignore_index=IGNORE, average="macro")
    for pred, gt in pairs:
        metric.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(gt.astype(np.int64)))
    return float(metric.compute()) * 100


def main() -> None:
    if not VALANNOT.is_dir():
        print(f"skip: {VALANNOT} is absent")
        return
    print_hardware()
    torch.set_num_threads(threads())
    pairs = load_pairs()
    repeats = 1 if quick() else 3
    import torchmetrics.classification  # noqa: F401  (imported before the clock starts)

    t_peer, m_peer = best_of(lambda: torchmetrics_miou(pairs), repeats)
    t_ours, m_ours = best_of(lambda: fsseg_miou(pairs), repeats)
    print(f"semantic mIoU, {len(pairs)} CamVid val label maps (480x360), 11 classes, ignore 11")
    print(f"  torchmetrics MulticlassJaccardIndex  {t_peer * 1000:8.1f} ms   mIoU {m_peer:.6f}")
    print(f"  fsseg ConfusionMatrix (bincount)     {t_ours * 1000:8.1f} ms   mIoU {m_ours:.6f}")
    print(
        f"  speed ratio (torchmetrics / fsseg)   {t_peer / t_ours:8.2f}x   |mIoU diff| {abs(m_peer - m_ours):.2e}"
    )


if __name__ == "__main__":
    main()
