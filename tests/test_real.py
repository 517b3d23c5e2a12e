"""Longer checks on the real data in ../shared/data (`make test-real`; skipped when it is absent)."""

from __future__ import annotations

import json

import cv2
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


# -- COCO 2017 on real annotations (coco-mini: 80 train + 79 val images, 1,363 instances) --------


@pytest.fixture(scope="module")
def coco_cache(tmp_path_factory):
    """One mask cache for the COCO checks: the masks are rendered once, by the first test."""
    return tmp_path_factory.mktemp("coco-cache")


@pytest.fixture
def coco(coco_cache, monkeypatch):
    monkeypatch.setenv("FSSEG_CACHE", str(coco_cache))
    return shared_data("coco-mini")


def test_coco_mini_masks_hold_the_annotations(coco):
    """Both splits read without --split help or pycocotools; the decoded polygons cover the pixel
    areas the JSON states; crowd regions are 255 wherever no smaller object lies on them."""
    from stages.core.datasets.coco_masks import segmentation_mask
    from stages.core.datasets.readers import COCO_CLASSES

    assert open_dataset("coco", coco).split == "val2017"  # the default, as the folder has no 2014
    train, val = open_dataset("coco", coco, "train2017"), open_dataset("coco", coco, "val2017")
    assert len(train.samples()) == 80 and len(val.samples()) == 79  # the images the JSON files list
    assert len(list((coco / "val2017").glob("*.jpg"))) == 159  # 80 more that no annotation names
    assert val.class_names == ["background", *COCO_CLASSES] and val.fold_classes(0)[:3] == [1, 5, 9]
    crowds, polygons = 0, []
    for ds in (train, val):
        for sample in ds.samples():
            info = ds._images[sample.id]
            label = ds.load_label(sample)
            assert label.shape == (info["height"], info["width"])
            anns = sorted(ds.annotations(sample), key=lambda a: -a["area"])
            masks = [segmentation_mask(a["segmentation"], *label.shape) for a in anns]
            crowd_union = np.zeros(label.shape, bool)
            for i, (ann, mask) in enumerate(zip(anns, masks, strict=True)):
                if ann["iscrowd"]:  # crowd: RLE; what no later (smaller) object covers is 255
                    crowds += 1
                    crowd_union |= mask
                    covered = np.zeros_like(mask)
                    for later in masks[i + 1 :]:
                        covered |= later
                    assert (label[mask & ~covered] == 255).all() and (mask & ~covered).any()
                else:
                    polygons.append((ann["area"], int(mask.sum())))
            assert ((label == 255) <= crowd_union).all()  # 255 nowhere else
    assert crowds == 13 and len(polygons) == 1363 - 13
    stated, decoded = np.array(polygons, dtype=np.float64).T
    big = stated >= 1000  # the JSON's area is the polygon's area; pixels differ along the outline
    assert (np.abs(decoded - stated)[big] / stated[big]).max() < 0.02
    assert abs(decoded.sum() - stated.sum()) / stated.sum() < 0.002
    # a known object, counted with pycocotools when these tests were written: the refrigerator of
    # val image 000000000802 (one polygon, area 52333.23 in the JSON, nothing in front of it)
    fridge = val.load_label(val.sample("000000000802")) == val.class_id("refrigerator")
    assert fridge.sum() == 52336
    assert sum(int((val.load_label(s) == 255).sum()) for s in val.samples()) == 195256
    assert sum(int((train.load_label(s) == 255).sum()) for s in train.samples()) == 151818


def test_coco_mini_masks_equal_pycocotools(coco):
    """Every one of the 1,363 real annotations (polygons and crowd RLE) decodes to the pixels
    pycocotools gives (it is not a dependency of the reader; this compares where it is installed)."""
    mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools is not installed")
    from stages.core.datasets.coco_masks import segmentation_mask

    checked = 0
    for split in ("train2017", "val2017"):
        doc = json.loads((coco / "annotations" / f"instances_{split}.json").read_text())
        sizes = {i["id"]: (i["height"], i["width"]) for i in doc["images"]}
        for ann in doc["annotations"]:
            h, w = sizes[ann["image_id"]]
            rles = mask_utils.frPyObjects(ann["segmentation"], h, w)
            ref = mask_utils.decode(mask_utils.merge(rles) if isinstance(rles, list) else rles)
            np.testing.assert_array_equal(segmentation_mask(ann["segmentation"], h, w), ref.astype(bool))
            checked += 1
    assert checked == 1363


def test_coco_mini_data_check(coco, coco_cache):
    env = {"FSSEG_CACHE": str(coco_cache)}
    for split, n in ((None, 79), ("train2017", 80)):
        args = ("--split", split) if split else ()
        proc = run_fsseg("data", "check", "coco", "--root", coco, *args, env=env)
        out = " ".join(proc.stdout.split())
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"(split {split or 'val2017'}): {n} samples, 81 classes" in out and "no problems found" in out


def test_coco_mini_episodes_use_the_classes_with_two_images(coco, coco_cache, tmp_path):
    """COCO-20i episodes of every fold on val2017: exactly the fold's classes that at least two
    images show over --min-area (counted here from the masks), query and support distinct."""
    ds = open_dataset("coco", coco, "val2017")
    images_of: dict[int, set[str]] = {}
    for sample in ds.samples():
        counts = np.bincount(ds.load_label(sample).ravel(), minlength=256)
        for c in np.nonzero(counts[1:81] >= 2048)[0] + 1:
            images_of.setdefault(int(c), set()).add(sample.id)
    used_per_fold = []
    for fold in range(4):
        out = tmp_path / f"fold{fold}.json"
        run_fsseg("data", "episodes", "coco", "--root", coco, "--fold", fold, "--shots", 1, "--n", 300,
                  "--out", out, "-q", env={"FSSEG_CACHE": str(coco_cache)}, check=True)  # fmt: skip
        doc = json.loads(out.read_text())
        assert doc["split"] == "val2017" and len(doc["episodes"]) == 300
        eligible = {c for c in ds.fold_classes(fold) if len(images_of.get(c, ())) >= 2}
        used = {e["class"] for e in doc["episodes"]}
        assert used == eligible
        for e in doc["episodes"]:
            assert e["query"] in images_of[e["class"]] and e["support"][0] in images_of[e["class"]]
            assert e["support"] != [e["query"]]
        used_per_fold.append(len(used))
    assert used_per_fold == [7, 9, 11, 8]


def test_coco_mini_clip_cam_dataset_mode(coco, coco_cache, tmp_path):
    """clip-cam --dataset coco (offline ImageNet backend): one CAM per (val image, class present)
    for every class the backend knows, and the CAMs are hotter on their objects than elsewhere."""
    from stages.core.errors import FssegError
    from stages.models.imagenet_labels import imagenet_classes

    out = tmp_path / "cams"
    run_fsseg("clip-cam", "--dataset", "coco", "--root", coco, "--backend", "imagenet", "--cam-size", 50,
              "--device", "cpu", "--out", out, "-q", env={"FSSEG_CACHE": str(coco_cache)}, check=True)  # fmt: skip
    ds = open_dataset("coco", coco)

    def known(c: int) -> bool:
        try:
            return bool(imagenet_classes(ds.class_names[c]))
        except FssegError:
            return False

    labels = {s.id: ds.load_label(s) for s in ds.samples()}
    present = {(i, int(c)) for i, label in labels.items() for c in np.unique(label) if 0 < c < 81}
    expected = {f"{i}__{c}" for i, c in present if known(c)}
    items = json.loads((out / "manifest.json").read_text())["outputs"]["items"]
    assert set(items) == expected and len(expected) > 150
    assert any(not known(c) for _, c in present)  # person has no ImageNet class: skipped, not failed
    inside, outside = [], []
    for key in sorted(expected):
        cam = np.load(out / "cams" / f"{key}.npy").astype(np.float32)
        assert cam.shape == (50, 50) and 0 <= cam.min() and cam.max() <= 1
        image_id, c = key.split("__")
        label = cv2.resize(labels[image_id], (50, 50), interpolation=cv2.INTER_NEAREST)
        on, off = label == int(c), (label != int(c)) & (label != 255)
        if on.sum() >= 20 and off.sum() >= 20:
            inside.append(cam[on].mean())
            outside.append(cam[off].mean())
    assert len(inside) > 100 and np.mean(inside) > 1.5 * np.mean(outside)
    assert np.mean(np.array(inside) > np.array(outside)) > 0.7
