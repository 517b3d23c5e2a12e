"""`fsseg evaluate --task semantic`: hand-computed numbers, an independent recomputation on
real CamVid labels, reruns, and one-line errors that leave earlier outputs intact."""

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
