"""`fsseg evaluate --task semantic`: hand-computed numbers, an independent recomputation on
real CamVid labels, reruns, and one-line errors that leave earlier outputs intact; COCO panoptic
inputs paired by image_id, and their one-line errors."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from stages.core.imageio import read_label
from stages.core.metrics import ConfusionMatrix
from tests.conftest import error_line, run_fsseg, shared_data


def _save(folder, name, arr):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(folder / name)


@pytest.fixture
def toy(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _save(gt, "a.png", [[0, 0, 1], [1, 2, 255]])
    _save(pred, "a.png", [[0, 1, 1], [1, 2, 0]])
    _save(gt, "b.png", [[2, 2, 2], [0, 1, 1]])
    _save(pred, "b.png", [[2, 2, 0], [0, 1, 2]])
    return pred, gt


def test_hand_computed_toy(toy, tmp_path):
    pred, gt = toy
    run_fsseg(
        "evaluate",
        "--pred",
        pred,
        "--gt",
        gt,
        "--num-classes",
        3,
        "--out",
        tmp_path / "ev",
        "--class-names",
        "bg,cat,dog",
        check=True,
    )
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    # IoU: bg 2/4, cat 3/5, dog 3/5; 8 of 11 scored pixels right
    per_class = {row["name"]: row for row in metrics["per_class"]}
    assert per_class["bg"]["iou"] == pytest.approx(50.0)
    assert per_class["cat"]["iou"] == pytest.approx(60.0)
    assert metrics["miou"] == pytest.approx(100 * (0.5 + 0.6 + 0.6) / 3, abs=1e-3)
    assert metrics["pixel_accuracy"] == pytest.approx(100 * 8 / 11, abs=1e-3)
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 3, 1], [1, 0, 3]]
    csv_lines = (tmp_path / "ev" / "per_class.csv").read_text().splitlines()
    assert csv_lines[0] == "class_id,name,iou,accuracy,gt_pixels,pred_pixels" and csv_lines[1].startswith(
        "0,bg,50.0"
    )
    for png in ("per_class.png", "confusion_matrix.png"):
        assert Image.open(tmp_path / "ev" / png).size[0] > 300
    manifest = json.loads((tmp_path / "ev" / "manifest.json").read_text())
    assert manifest["kind"] == "metrics" and manifest["label_map"]["1"] == "cat"


def test_confusion_matrix_is_summable():
    rng = np.random.default_rng(0)
    gt, pred = rng.integers(0, 4, (2, 30, 30)), rng.integers(0, 4, (2, 30, 30))
    both = ConfusionMatrix(4).update(pred.ravel(), gt.ravel())
    parts = ConfusionMatrix(4).update(pred[0], gt[0]) + ConfusionMatrix(4).update(pred[1], gt[1])
    np.testing.assert_array_equal(both.matrix, parts.matrix)


def test_rerun_is_up_to_date_and_errors_keep_outputs(toy, tmp_path):
    pred, gt = toy
    out = tmp_path / "ev"
    run_fsseg("evaluate", "--pred", pred, "--gt", gt, "--num-classes", 3, "--out", out, check=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run_fsseg("evaluate", "--pred", pred, "--gt", gt, "--num-classes", 3, "--out", out, check=True)
    assert "up to date" in again.stderr
    # corrupt one prediction: inputs changed, so the finished artifact is protected ...
    (pred / "b.png").write_bytes(b"\x89PNG broken")
    refused = run_fsseg("evaluate", "--pred", pred, "--gt", gt, "--num-classes", 3, "--out", out)
    assert "--overwrite" in error_line(refused)
    # ... and with --overwrite the corrupt file is named and the old artifact comes back
    proc = run_fsseg("evaluate", "--pred", pred, "--gt", gt, "--num-classes", 3, "--out", out, "--overwrite")
    line = error_line(proc)
    assert "b.png" in line and "not a readable image" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".ev.replaced-*"))


@pytest.mark.parametrize(
    "case,expected",
    [
        ("size", "is 2x1 but ground truth"),
        ("gt_id", r"label id\(s\) 7 outside 0\.\.2"),
        ("pred_id", r"prediction .* has label id\(s\) 9 outside 0\.\.2"),
        ("missing", "1 of 2 predictions are missing.*--missing-as-empty"),
        ("no_gt", "ground-truth folder not found"),
        ("out_is_file", "is a file"),
    ],
)
def test_user_errors_are_one_line(toy, tmp_path, case, expected):
    pred, gt = toy
    out = tmp_path / "ev"
    if case == "size":
        _save(pred, "a.png", [[0, 1]])
    elif case == "gt_id":
        _save(gt, "a.png", [[0, 7, 1], [1, 2, 255]])
    elif case == "pred_id":
        _save(pred, "b.png", [[2, 9, 0], [0, 1, 2]])
    elif case == "missing":
        (pred / "b.png").unlink()
    elif case == "no_gt":
        shutil.rmtree(gt)
    elif case == "out_is_file":
        out.write_text("keep me")
    proc = run_fsseg("evaluate", "--pred", pred, "--gt", gt, "--num-classes", 3, "--out", out)
    assert re.search(expected, error_line(proc)), proc.stderr
    if case == "out_is_file":
        assert out.read_text() == "keep me"
    else:
        assert not out.exists()  # a failed first run leaves nothing behind


def test_debug_env_shows_traceback(toy, tmp_path):
    pred, gt = toy
    (pred / "b.png").unlink()
    proc = run_fsseg(
        "evaluate",
        "--pred",
        pred,
        "--gt",
        gt,
        "--num-classes",
        3,
        "--out",
        tmp_path / "x",
        env={"FSSEG_DEBUG": "1"},
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def _independent_miou(pred_dir, gt_dir, n, ignore):
    """Per-class boolean masks, no confusion matrix: a different route to the same numbers."""
    inter, union = np.zeros(n), np.zeros(n)
    for gt_path in sorted(gt_dir.glob("*.png")):
        gt = np.array(Image.open(gt_path))
        pred = np.array(Image.open(pred_dir / gt_path.name))
        valid = gt != ignore
        for c in range(n):
            g, p = (gt == c) & valid, (pred == c) & valid
            inter[c] += (g & p).sum()
            union[c] += (g | p).sum()
    present = union > 0
    return 100 * float(np.mean(inter[present] / union[present]))


def test_camvid_identity_and_perturbed(tmp_path):
    valannot = shared_data("camvid") / "valannot"
    out = tmp_path / "same"
    proc = run_fsseg(
        "evaluate",
        "--task",
        "semantic",
        "--pred",
        valannot,
        "--gt",
        valannot,
        "--num-classes",
        11,
        "--ignore-index",
        11,
        "--out",
        out,
        check=True,
    )
    assert "mIoU 100.00" in proc.stdout
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 101
    # a prediction folder that differs: noise, a stripe of road, and void ids where the gt is void
    pred = tmp_path / "pred"
    pred.mkdir()
    rng = np.random.default_rng(0)
    for path in sorted(valannot.glob("*.png")):
        gt = read_label(path)
        noisy = gt.copy()
        flip = rng.random(gt.shape) < 0.15
        noisy[flip] = rng.integers(0, 11, int(flip.sum()))
        noisy[:, :50] = 3
        noisy[gt == 11] = np.where(rng.random(int((gt == 11).sum())) < 0.5, 11, 0)
        Image.fromarray(noisy).save(pred / path.name)
    run_fsseg(
        "evaluate",
        "--pred",
        pred,
        "--gt",
        valannot,
        "--num-classes",
        11,
        "--ignore-index",
        11,
        "--out",
        tmp_path / "diff",
        check=True,
    )
    got = json.loads((tmp_path / "diff" / "metrics.json").read_text())["miou"]
    assert got == pytest.approx(_independent_miou(pred, valannot, 11, 11), abs=1e-3)
    assert 20 < got < 95


def test_semantic_miou_matches_torchmetrics():
    import torch
    from torchmetrics.classification import MulticlassJaccardIndex

    rng = np.random.default_rng(3)
    gt = rng.integers(0, 6, (4, 40, 50))
    gt[:, :5] = 255
    pred = np.where(rng.random(gt.shape) < 0.4, rng.integers(0, 6, gt.shape), gt)
    pred[gt == 255] = 0
    ours = ConfusionMatrix(6)
    for p, g in zip(pred, gt, strict=True):
        ours.update(p, g, 255)
    peer = MulticlassJaccardIndex(num_classes=6, ignore_index=255, average="none")
    peer.update(torch.from_numpy(pred), torch.from_numpy(gt))
    np.testing.assert_allclose(ours.iou(), peer.compute().double().numpy(), rtol=0, atol=1e-6)


def _episode_predictions(tmp_path, protocol, perfect_from=0):
    from stages.core.datasets import open_dataset
    from stages.core.episodes import make_episodes, write_episodes
    from tests.conftest import make_voc_tree

    ds = open_dataset("pascal", make_voc_tree(tmp_path / "VOC2012"), "all")
    doc = make_episodes(ds, fold=0, shots=1, n=4, seed=0, protocol=protocol, min_area=1000)
    write_episodes(tmp_path / "episodes.json", doc)
    pred = tmp_path / "pred"
    pred.mkdir()
    for i, ep in enumerate(doc["episodes"]):
        label = ds.load_label(ds.sample(ep["query"]))
        fg = (label == ep["class"]) if i >= perfect_from else np.zeros_like(label, bool)
        Image.fromarray(fg.astype(np.uint8)).save(pred / f"{i:05d}.png")
        if ep.get("base_query"):
            base = ds.load_label(ds.sample(ep["base_query"]))
            base = np.where(np.isin(base, doc["novel_classes"]) | (base == 255), 0, base)
            Image.fromarray(base.astype(np.uint8)).save(pred / f"{i:05d}_base.png")
    return tmp_path / "episodes.json", pred


def test_fss_by_hand(tmp_path):
    episodes, pred = _episode_predictions(tmp_path, "fss", perfect_from=1)  # episode 0 predicts nothing
    run_fsseg(
        "evaluate",
        "--task",
        "fss",
        "--pred",
        pred,
        "--episodes",
        episodes,
        "--out",
        tmp_path / "ev",
        check=True,
    )
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    # class 1: episodes 0 (empty) and 2 (perfect), 1560 fg pixels each -> 1560/3120; class 2 perfect
    assert m["miou"] == pytest.approx(75.0)
    assert m["fb_iou"] == pytest.approx(100 * (4680 / 6240 + 9888 / 11448) / 2)
    assert m["episode_mean_fg_iou"] == pytest.approx(75.0)
    assert m["classes_without_episodes"] == ["bird", "boat", "bottle"]
    (pred / "00000.png").unlink()
    proc = run_fsseg(
        "evaluate", "--task", "fss", "--pred", pred, "--episodes", episodes, "--out", tmp_path / "ev2"
    )
    assert "1 of 4 predictions are missing" in error_line(proc)
    run_fsseg(
        "evaluate",
        "--task",
        "fss",
        "--pred",
        pred,
        "--episodes",
        episodes,
        "--out",
        tmp_path / "ev2",
        "--missing-as-empty",
        check=True,
    )
    assert json.loads((tmp_path / "ev2" / "metrics.json").read_text())["miou"] == pytest.approx(75.0)


def test_gfss_binary_perfect_and_wrong_protocol(tmp_path):
    episodes, pred = _episode_predictions(tmp_path, "gfss-binary")
    run_fsseg(
        "evaluate",
        "--task",
        "gfss",
        "--pred",
        pred,
        "--episodes",
        episodes,
        "--out",
        tmp_path / "ev",
        check=True,
    )
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["base_miou"] == pytest.approx(100.0) and m["novel_miou"] == pytest.approx(100.0)
    assert m["harmonic_miou"] == pytest.approx(100.0)
    proc = run_fsseg(
        "evaluate",
        "--task",
        "fss",
        "--pred",
        pred,
        "--episodes",
        tmp_path / "nope.json",
        "--out",
        tmp_path / "x",
    )
    assert "episodes file not found" in error_line(proc)


# ----------------------------------------------------------------------------- COCO panoptic inputs
# 133 categories as in COCO panoptic: road (7, stuff), car (26, thing) and 131 others, ids 200..330
COCO_CATEGORIES = [{"id": 7, "name": "road", "isthing": 0}, {"id": 26, "name": "car", "isthing": 1}] + [
    {"id": i, "name": f"other{i}", "isthing": 0} for i in range(200, 331)
]


def _coco_image(car_cols):
    """6x8 ids: road (1) above, a car (2) in rows 3-5 at `car_cols`, void (0) elsewhere below."""
    ids = np.zeros((6, 8), np.uint32)
    ids[:3] = 1
    ids[3:, car_cols] = 2
    return ids


def _write_panoptic(folder, annotations, images, categories):
    from stages.core.panoptic import id_to_rgb

    (folder / "panoptic").mkdir(parents=True)
    for file_name, ids in images.items():
        Image.fromarray(id_to_rgb(ids)).save(folder / "panoptic" / file_name)
    doc = {"annotations": annotations} | ({"categories": categories} if categories else {})
    (folder / "panoptic.json").write_text(json.dumps(doc))


@pytest.fixture
def coco_pair(tmp_path):
    """Two images; the prediction lists them in the other order, under other file names and
    segment ids, and without `categories`: equal to the ground truth when paired by image_id."""
    gt_images = {"a.png": _coco_image(slice(0, 3)), "b.png": _coco_image(slice(5, 8))}
    segments = [{"id": 1, "category_id": 7, "iscrowd": 0}, {"id": 2, "category_id": 26, "iscrowd": 0}]
    gt_ann = [
        {"image_id": 1, "file_name": "a.png", "segments_info": segments},
        {"image_id": 2, "file_name": "b.png", "segments_info": segments},
    ]
    _write_panoptic(tmp_path / "gt", gt_ann, gt_images, COCO_CATEGORIES)
    pred_images = {"pred_2.png": gt_images["b.png"] * 5, "pred_1.png": gt_images["a.png"] * 5}
    pred_ann = [
        {"image_id": i, "file_name": f"pred_{i}.png", "segments_info": [
            {"id": 5, "category_id": 7}, {"id": 10, "category_id": 26}]}
        for i in (2, 1)
    ]  # fmt: skip
    return tmp_path / "pred", tmp_path / "gt", pred_ann, pred_images


def _panoptic_eval(pred, gt, out, *extra):
    return run_fsseg(
        "evaluate", "--task", "panoptic", "--format", "coco", "--pred", pred, "--gt", gt, "--out", out, *extra
    )


def test_coco_panoptic_pairs_by_image_id_without_prediction_categories(coco_pair, tmp_path):
    pred, gt, pred_ann, pred_images = coco_pair
    _write_panoptic(pred, pred_ann, pred_images, None)
    _panoptic_eval(pred, gt, tmp_path / "ev").check_returncode()
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["pq"] == pytest.approx(100.0) and metrics["num_images"] == 2
    rows = {r["name"]: r for r in metrics["per_class"]}
    assert (rows["car"]["tp"], rows["car"]["fp"], rows["car"]["fn"]) == (2, 0, 0)


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing", r"^error: 1 of 2 ground-truth images have no prediction in \S*panoptic\.json "
         r"\(paired by image_id\): image_id 2 \(b\.png\); .*--missing-as-empty"),
        ("id_type", r"image_id 1 \(a\.png\), image_id 2 \(b\.png\) \(the prediction writes image_id '1' where the "
         r"ground truth has 1: write the ground truth's image_id values\)"),
        ("absent", r"pred_1\.png: segment 99 is listed in segments_info but absent from the PNG; drop it from "
         r"segments_info or draw it in the PNG"),
        ("unknown_category", r"pred_1\.png: segment 10 has category_id 999, which is not among the ground "
         r"truth's 133 categories \(ids 7\.\.330\); use the ground truth's category ids"),
        ("unlisted", r"pred_1\.png: segment id 10 is in the PNG but not in its segments_info in \S*panoptic\.json"),
        ("duplicate", r"panoptic\.json has two annotations for image_id 1; keep one per image"),
    ],
)  # fmt: skip
def test_coco_panoptic_errors_are_one_short_line(coco_pair, tmp_path, case, expected):
    pred, gt, pred_ann, pred_images = coco_pair
    first = pred_ann[1]  # image_id 1
    if case == "missing":
        pred_ann.remove(pred_ann[0])
    elif case == "id_type":
        for a in pred_ann:
            a["image_id"] = str(a["image_id"])
    elif case == "absent":
        first["segments_info"] = [*first["segments_info"], {"id": 99, "category_id": 26}]
    elif case == "unknown_category":
        first["segments_info"] = [first["segments_info"][0], {"id": 10, "category_id": 999}]
    elif case == "unlisted":
        first["segments_info"] = first["segments_info"][:1]
    elif case == "duplicate":
        pred_ann.append(dict(first))
    _write_panoptic(pred, pred_ann, pred_images, None)
    line = error_line(_panoptic_eval(pred, gt, tmp_path / "ev"))
    assert re.search(expected, line), line
    assert "200, 201" not in line and len(line) < 400, line  # never the list of every category id
    assert not (tmp_path / "ev").exists()
    if case == "missing":  # counted as an empty prediction when asked: road and car missed in b.png
        _panoptic_eval(pred, gt, tmp_path / "ev", "--missing-as-empty").check_returncode()
        metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
        rows = {r["name"]: r for r in metrics["per_class"]}
        assert metrics["num_missing"] == 1 and (rows["car"]["tp"], rows["car"]["fn"]) == (1, 1)
