"""FSS, GFSS and panoptic metrics: hand-computed cases and parity with cityscapesScripts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from stages.core.metrics import FssMeter, PanopticImage, PanopticQuality, gfss_summary
from stages.core.panoptic import id_to_rgb
from tests.conftest import run_fsseg


def test_fss_meter_by_hand():
    meter = FssMeter()
    meter.update(np.array([[1, 0, 0], [1, 1, 0]]), np.array([[1, 1, 0], [0, 255, 0]]), class_id=1)
    meter.update(np.array([[1, 1], [0, 0]]), np.array([[1, 1], [1, 1]]), class_id=1)
    other = FssMeter()
    other.update(np.array([[0, 0], [1, 1]]), np.array([[0, 0], [1, 1]]), class_id=2)
    total = meter + other
    assert total.class_iou() == {1: pytest.approx(3 / 7), 2: 1.0}
    assert total.miou() == pytest.approx((3 / 7 + 1) / 2)
    assert total.fb_iou() == pytest.approx((4 / 8 + 5 / 9) / 2)  # bg 4/8, fg 5/9 summed over classes
    assert total.episode_mean_fg_iou() == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)


def test_gfss_summary_by_hand():
    out = gfss_summary(np.array([0.5, 0.7]), np.array([0.2, np.nan]))
    assert out == pytest.approx({"base_miou": 0.6, "novel_miou": 0.2, "mean_miou": 0.4, "harmonic_miou": 0.3})


# --------------------------------------------------------------------------- panoptic parity
CATEGORIES = [
    {"id": 7, "name": "road", "isthing": 0},
    {"id": 23, "name": "sky", "isthing": 0},
    {"id": 21, "name": "vegetation", "isthing": 0},  # never present anywhere: an empty class
    {"id": 24, "name": "person", "isthing": 1},
    {"id": 26, "name": "car", "isthing": 1},
    {"id": 28, "name": "bus", "isthing": 1},  # only in predictions: pure false positives
]


def _fixture(rng, h=60, w=80):
    """A ground truth with stuff, instances, a crowd region and void, and a perturbed prediction."""
    gt = np.zeros((h, w), np.int64)
    gt[:20] = 1  # sky
    gt[40:] = 2  # road
    gt_segments = {1: (23, 0), 2: (7, 0)}
    next_id = 3
    for _ in range(rng.integers(2, 5)):
        y, x = rng.integers(18, 38), rng.integers(0, 70)
        hh, ww = rng.integers(4, 14), rng.integers(4, 12)
        gt[y : y + hh, x : x + ww] = next_id
        gt_segments[next_id] = (int(rng.choice([24, 26])), 0)
        next_id += 1
    gt[22:26, 60:70] = next_id  # crowd of cars
    gt_segments[next_id] = (26, 1)
    next_id += 1
    gt[rng.integers(0, h, 30), rng.integers(0, w, 30)] = 0  # void speckle
    gt[:, :3] = 0  # void border

    pred = np.zeros_like(gt)
    pred_segments = {}
    shift = int(rng.integers(-3, 4))
    for gid, (cat, crowd) in gt_segments.items():
        if crowd or rng.random() < 0.2:
            continue  # missed -> FN (crowd: nothing predicted)
        pid = gid + 100
        pred[np.roll(gt == gid, shift, axis=1)] = pid
        pred_segments[pid] = cat if rng.random() > 0.15 else (24 if cat == 26 else cat)  # a few wrong classes
    pred[22:26, 58:70] = 500  # a car mostly on the crowd region: not a false positive
    pred_segments[500] = 26
    pred[:10, :3] = 501  # a bus segment entirely on void: not a false positive
    pred_segments[501] = 28
    pred[45:48, 10:22] = 502  # a bus segment on the road: a false positive
    pred_segments[502] = 28
    return gt, gt_segments, pred, pred_segments


def _write_coco(folder, name, entries, with_area):
    (folder / name).mkdir(parents=True)
    annotations = []
    for i, (ids, segments) in enumerate(entries):
        file_name = f"img{i}.png"
        Image.fromarray(id_to_rgb(ids)).save(folder / name / file_name)
        infos = []
        for sid, value in segments.items():
            cat, crowd = value if isinstance(value, tuple) else (value, 0)
            area = int((ids == sid).sum())
            if area == 0:
                continue
            info = {"id": int(sid), "category_id": cat, "iscrowd": crowd}
            if with_area:
                info["area"] = area
            infos.append(info)
        annotations.append({"image_id": f"img{i}", "file_name": file_name, "segments_info": infos})
    doc = {
        "annotations": annotations,
        "categories": CATEGORIES,
        "images": [{"id": a["image_id"]} for a in annotations],
    }
    (folder / f"{name}.json").write_text(json.dumps(doc))
    return annotations


def test_panoptic_matches_cityscapesscripts(tmp_path, capsys):
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as peer

    rng = np.random.default_rng(7)
    fixtures = [_fixture(rng) for _ in range(6)]
    gt_ann = _write_coco(tmp_path / "gt", "panoptic", [(g, gs) for g, gs, _, _ in fixtures], with_area=True)
    pred_ann = _write_coco(
        tmp_path / "pred", "panoptic", [(p, ps) for _, _, p, ps in fixtures], with_area=False
    )
    categories = {c["id"]: c for c in CATEGORIES}
    stat = peer.pq_compute_single_core(
        0,
        list(zip(gt_ann, pred_ann, strict=True)),
        str(tmp_path / "gt" / "panoptic"),
        str(tmp_path / "pred" / "panoptic"),
        categories,
    )
    expected = peer.average_pq(stat, categories)
    capsys.readouterr()

    ours = PanopticQuality()
    for gt, gt_segments, pred, pred_segments in fixtures:
        g = PanopticImage(
            gt,
            {k: v[0] for k, v in gt_segments.items()},
            frozenset(k for k, v in gt_segments.items() if v[1]),
        )
        ours.update(g, PanopticImage(pred, pred_segments))
    got = ours.results({c["id"]: bool(c["isthing"]) for c in CATEGORIES})
    for ours_key, peer_key in (("all", "All"), ("things", "Things"), ("stuff", "Stuff")):
        for k in ("pq", "sq", "rq"):
            assert got[ours_key][k] == pytest.approx(expected[peer_key][k], abs=1e-9), (ours_key, k)
        assert got[ours_key]["n"] == expected[peer_key]["n"]
    for cat, row in got["per_class"].items():
        if row is None:
            assert expected["per_class"][cat] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
        else:
            for k in ("pq", "sq", "rq"):
                assert row[k] == pytest.approx(expected["per_class"][cat][k], abs=1e-9)
    assert got["per_class"][21] is None and got["per_class"][28]["fp"] == 6  # one real FP per image
    assert got["things"]["n"] == 3 and expected["Things"]["n"] == 3

    # the same numbers through the command line (COCO panoptic folders)
    run_fsseg(
        "evaluate",
        "--task",
        "panoptic",
        "--format",
        "coco",
        "--pred",
        tmp_path / "pred",
        "--gt",
        tmp_path / "gt",
        "--out",
        tmp_path / "ev",
        check=True,
    )
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["pq"] == pytest.approx(100 * expected["All"]["pq"], abs=1e-7)
    assert metrics["things"]["rq"] == pytest.approx(100 * expected["Things"]["rq"], abs=1e-7)
    assert (tmp_path / "ev" / "pq_breakdown.png").is_file()


def test_cityscapes_form_crowd_and_void(tmp_path):
    """instanceIds: 26001/26002 are cars, 26 alone is a crowd of cars, 7 road, 0 void."""
    gt = np.full((10, 10), 7, np.uint16)
    gt[:3] = 0
    gt[3:6, :4] = 26001
    gt[3:6, 5:9] = 26002
    gt[7:, 7:] = 26
    pred = gt.copy()
    pred[7:, 7:] = 26003  # a car predicted on the crowd: ignored
    pred[:3] = 7  # road predicted on void: does not hurt
    pred[3:6, 5:9] = 24001  # a person where a car is: FP person + FN car
    for folder, arr in (("gt", gt), ("pred", pred)):
        (tmp_path / folder).mkdir()
        Image.fromarray(arr).save(
            tmp_path / folder / f"x_{'gtFine_' if folder == 'gt' else ''}instanceIds.png"
        )
    run_fsseg(
        "evaluate",
        "--task",
        "panoptic",
        "--pred",
        tmp_path / "pred",
        "--gt",
        tmp_path / "gt",
        "--out",
        tmp_path / "ev",
        check=True,
    )
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    rows = {r["name"]: r for r in metrics["per_class"]}
    assert rows["road"]["pq"] == pytest.approx(100.0)
    assert (rows["car"]["tp"], rows["car"]["fp"], rows["car"]["fn"]) == (1, 0, 1)
    assert (rows["person"]["tp"], rows["person"]["fp"]) == (0, 1)
    assert metrics["stuff"]["n"] == 1 and metrics["things"]["n"] == 2


def _two_crowds_of_one_category():
    """10x10, road (7) around: a car (id 2, rows 0-1 x 0-4), two crowds of cars: A (id 10, rows
    5-6 x 0-4, 10 px) and B (id 11, row 8 x 0-4, 5 px), void at row 9 x 0-4. The prediction
    has the car exactly and one more car (id 103, 10 px) unmatched: 1 px on void, 5 on crowd A,
    2 on crowd B, 2 on road."""
    gt = np.ones((10, 10), np.int64)
    gt[0:2, 0:5] = 2
    gt[5:7, 0:5] = 10
    gt[8, 0:5] = 11
    gt[9, 0:5] = 0
    pred = np.full((10, 10), 101, np.int64)
    pred[0:2, 0:5] = 102
    pred[9, 0] = pred[5, 0:5] = pred[8, 0:2] = pred[3, 0:2] = 103
    return gt, pred, {101: 7, 102: 26, 103: 26}


@pytest.mark.parametrize("crowd_order", [(10, 11), (11, 10)])
def test_only_the_last_listed_crowd_segment_of_a_category_counts(tmp_path, capsys, crowd_order):
    """panopticapi / cityscapesScripts keep one crowd segment per category, the last one listed:
    the unmatched car is a false positive when crowd B (2 px) counts, (1 + 2) / 10 = 0.3, and is
    not when crowd A (5 px) counts, (1 + 5) / 10 = 0.6. Summing both crowds (fsseg before) gave
    (1 + 5 + 2) / 10 = 0.8 and never a false positive."""
    gt, pred, pred_segments = _two_crowds_of_one_category()
    gt_segments = {1: (7, 0), 2: (26, 0)} | {c: (26, 1) for c in crowd_order}
    car_fp = crowd_order[-1] == 11
    # road: 68 px shared; union 80 (pred) + 70 (gt) - 68 - 4 (pred road on void) = 78
    road_pq = 68 / 78
    car = {"pq": 1 / 1.5, "sq": 1.0, "rq": 1 / 1.5} if car_fp else {"pq": 1.0, "sq": 1.0, "rq": 1.0}
    expected_all_pq = (road_pq + car["pq"]) / 2  # 0.769231 or 0.935897

    gt_ann = _write_coco(tmp_path / "gt", "panoptic", [(gt, gt_segments)], with_area=True)
    pred_ann = _write_coco(tmp_path / "pred", "panoptic", [(pred, pred_segments)], with_area=False)
    from stages.core.panoptic import read_coco_png

    g = read_coco_png(tmp_path / "gt" / "panoptic" / "img0.png", gt_ann[0]["segments_info"])
    assert g.crowd == {10, 11} and g.crowd_of == {26: crowd_order[-1]}
    ours = PanopticQuality().update(g, PanopticImage(pred, pred_segments))
    got = ours.results({c["id"]: bool(c["isthing"]) for c in CATEGORIES})
    assert (got["per_class"][26]["tp"], got["per_class"][26]["fp"], got["per_class"][26]["fn"]) == (
        1,
        int(car_fp),
        0,
    )
    assert got["per_class"][7]["pq"] == pytest.approx(road_pq, abs=1e-12)
    for k in ("pq", "sq", "rq"):
        assert got["per_class"][26][k] == pytest.approx(car[k], abs=1e-12)
    assert got["all"]["pq"] == pytest.approx(expected_all_pq, abs=1e-12)

    # without a listing order (PanopticImage built by hand), the highest crowd id counts: crowd B
    by_hand = PanopticImage(gt, {k: v[0] for k, v in gt_segments.items()}, frozenset(crowd_order))
    assert by_hand.crowd_of == {26: 11}

    # the command line reads the JSON in list order
    run_fsseg(
        "evaluate", "--task", "panoptic", "--format", "coco", "--pred", tmp_path / "pred",
        "--gt", tmp_path / "gt", "--out", tmp_path / "ev", check=True,
    )  # fmt: skip
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["pq"] == pytest.approx(100 * expected_all_pq, abs=1e-9)
    rows = {r["name"]: r for r in metrics["per_class"]}
    assert (rows["car"]["tp"], rows["car"]["fp"]) == (1, int(car_fp))

    try:  # the reference's own numbers, where cityscapesScripts is installed
        from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as peer
    except ImportError:
        return
    categories = {c["id"]: c for c in CATEGORIES}
    stat = peer.pq_compute_single_core(
        0, list(zip(gt_ann, pred_ann, strict=True)), str(tmp_path / "gt" / "panoptic"),
        str(tmp_path / "pred" / "panoptic"), categories,
    )  # fmt: skip
    expected = peer.average_pq(stat, categories)
    capsys.readouterr()
    assert expected["All"]["pq"] == pytest.approx(expected_all_pq, abs=1e-12)
    assert expected["per_class"][26]["pq"] == pytest.approx(car["pq"], abs=1e-12)
