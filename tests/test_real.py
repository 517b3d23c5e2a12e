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
