"""Longer checks on the real data in ../shared/data (`make test-real`; skipped when it is absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.core.datasets import open_dataset
from tests.conftest import run_fsseg, shared_data

pytestmark = pytest.mark.slow


def test_camvid_val_cams_follow_the_labels(tmp_path):
    """Every (image, class) of CamVid val with an ImageNet counterpart gets a CAM, and the Car CAMs
    are hotter on car pixels than elsewhere (the offline backend's real weights at work)."""
    root = shared_data("camvid")
    env = {"FSSEG_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "cams"
    run_fsseg(
        "clip-cam",
        "--dataset",
        "camvid",
        "--root",
        root,
        "--split",
        "val",
        "--backend",
        "imagenet",
        "--out",
        out,
        "-q",
        env=env,
        check=True,
    )
    ds = open_dataset("camvid", root, "val")
    items = json.loads((out / "manifest.json").read_text())["outputs"]["items"]
    with_counterpart = {2, 6, 7, 8, 10}  # Pole, SignSymbol, Fence, Car, Bicyclist
    expected = {
        f"{s.id}__{c}" for s in ds.samples() for c in np.unique(ds.load_label(s)) if c in with_counterpart
    }
    assert set(items) == expected
    inside, outside = [], []
    for sample in ds.samples():
        label = ds.load_label(sample)
        if (label == 8).sum() < 2000:
            continue
        cam = np.load(out / "cams" / f"{sample.id}__8.npy").astype(np.float32)
        inside.append(cam[label == 8].mean())
        outside.append(cam[(label != 8) & (label != 11)].mean())
    assert len(inside) > 20 and np.mean(inside) > 1.5 * np.mean(outside)


def test_cityscapes_panoptic_ground_truth_round_trips(tmp_path):
    """The real Cityscapes frame's instanceIds -> fsseg's panoptic forms -> PQ 100 against the
    original gtFine files (the Cityscapes-form and COCO writers keep every segment)."""
    root = shared_data("cityscapes-mini")
    run_fsseg("data", "panoptic-gt", "cityscapes", "--root", root, "--split", "val", "--out", tmp_path / "gt",
              check=True)  # fmt: skip
    proc = run_fsseg("evaluate", "--task", "panoptic", "--dataset", "cityscapes", "--pred", tmp_path / "gt",
                     "--gt", root / "gtFine" / "val", "--out", tmp_path / "ev", check=True)  # fmt: skip
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["pq"] == pytest.approx(100.0) and metrics["things"]["n"] >= 1, proc.stdout


def test_camvid_label_gen_and_pseudo_labels_beat_chance(tmp_path):
    """label-gen on 5 CamVid train images (Lite0 real weights, short schedule), pseudo-labels of
    val: the semantic mIoU is far above chance and the panoptic artifact scores."""
    root = shared_data("camvid")
    common = ("--backbone", "efficientnet_lite0", "--device", "cpu", "-q")
    run_fsseg("label-gen", "camvid", "--root", root, "--k", "5", "--views", "2", "--epochs-semantic", "10",
              "--epochs-boundary", "5", *common, "--out", tmp_path / "heads", check=True)  # fmt: skip
    run_fsseg("pseudo-label", "camvid", "--root", root, "--heads", tmp_path / "heads", "--split", "val",
              "--min-segment", "40", "--device", "cpu", "-q", "--out", tmp_path / "pl", check=True)  # fmt: skip
    run_fsseg("evaluate", "--task", "semantic", "--pred", tmp_path / "pl" / "semantic", "--gt", root / "valannot",
              "--num-classes", "11", "--ignore-index", "11", "--out", tmp_path / "ev", "-q", check=True)  # fmt: skip
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["miou"] > 25
    run_fsseg(
        "data",
        "panoptic-gt",
        "camvid",
        "--root",
        root,
        "--split",
        "val",
        "--out",
        tmp_path / "gt",
        check=True,
    )
    run_fsseg("evaluate", "--task", "panoptic", "--dataset", "camvid", "--pred", tmp_path / "pl", "--gt",
              tmp_path / "gt", "--out", tmp_path / "pq", "-q", check=True)  # fmt: skip
    assert json.loads((tmp_path / "pq" / "metrics.json").read_text())["stuff"]["pq"] > 20
