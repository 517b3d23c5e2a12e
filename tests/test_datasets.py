"""Dataset readers on small trees in their real layouts, and on the real samples in ../shared/data."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from stages.core.datasets import open_dataset
from stages.core.datasets.readers import CITYSCAPES_TRAIN_IDS, VOC_CLASSES
from stages.core.errors import FssegError
from stages.core.imageio import read_label, write_label
from tests.conftest import run_fsseg, shared_data


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSSEG_CACHE", str(tmp_path / "cache"))


def _img(path, h=40, w=60, value=120):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def _lbl(path, arr, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(arr)
    if mode == "P":
        write_label(path, arr.astype(np.uint8))
    elif arr.dtype == np.uint16:
        Image.fromarray(arr).save(path)
    else:
        Image.fromarray(arr.astype(np.uint8)).save(path)


def _pascal_tree(root, palette=False):
    folder = "SegmentationClass" if palette else "SegmentationClassAug"
    for i, (cls, area) in enumerate([(1, 900), (1, 100), (7, 1200), (12, 2400)]):
        label = np.zeros((40, 60), np.uint8)
        label.ravel()[:area] = cls
        label[-1, :] = 255
        _img(root / "JPEGImages" / f"2008_{i:06d}.jpg")
        _lbl(root / folder / f"2008_{i:06d}.png", label, "P" if palette else "L")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2008_000000\n2008_000001\n2008_000002\n")


@pytest.mark.parametrize("palette", [False, True])
def test_pascal_tree(tmp_path, palette):
    _pascal_tree(tmp_path, palette)
    ds = open_dataset("pascal", tmp_path)
    assert ds.split == "val" and [s.id for s in ds.samples()] == ["2008_000000", "2008_000001", "2008_000002"]
    assert ds.class_names == VOC_CLASSES and ds.ignore_index == 255
    label = ds.load_label(ds.samples()[0])
    assert (label == 1).sum() == 900 and (label == 255).sum() == 60
    assert ds.fold_classes(0) == [1, 2, 3, 4, 5] and ds.fold_classes(3) == [16, 17, 18, 19, 20]
    assert ds.pairs(ds.fold_classes(0), min_area=500) == [("2008_000000", 1)]
    assert ds.pairs(ds.fold_classes(0), min_area=50) == [("2008_000000", 1), ("2008_000001", 1)]
    assert open_dataset("pascal", tmp_path, "all").samples()[-1].id == "2008_000003"
    with pytest.raises(FssegError, match="out of range"):
        ds.fold_classes(4)


def test_pascal_published_pair_list(tmp_path):
    _pascal_tree(tmp_path)
    lst = tmp_path / "fold0.txt"
    lst.write_text("2008_000001__1\n2008_000002__7\n")
    ds = open_dataset("pascal", tmp_path, str(lst))
    assert [s.id for s in ds.samples()] == ["2008_000001", "2008_000002"]
    assert ds.pairs([1, 2, 3, 4, 5], min_area=10**6) == [("2008_000001", 1)]  # the list decides, not the area


def test_coco_json_and_png_layouts(tmp_path):
    _img(tmp_path / "val2014" / "COCO_val2014_000000000001.jpg", 20, 30)
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 18,
            "iscrowd": 0,
            "area": 100.0,
            "bbox": [0, 0, 10, 10],
            "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]],
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 1,
            "area": 40.0,
            "bbox": [20, 10, 4, 10],
            "segmentation": {"size": [20, 30], "counts": [410, 10, 10, 10, 10, 10, 10, 10, 120]},
        },
    ]
    cats = [
        {"id": cid, "name": n, "supercategory": "x"}
        for cid, n in [(1, "person"), (18, "dog"), (90, "toothbrush")]
    ]
    doc = {
        "images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg", "height": 20, "width": 30}],
        "annotations": anns,
        "categories": cats,
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2014.json").write_text(json.dumps(doc))
    ds = open_dataset("coco", tmp_path, "val2014")
    assert ds.class_names == ["background", "person", "dog", "toothbrush"]
    label = ds.load_label(ds.samples()[0])
    assert set(np.unique(label)) == {0, 2, 255}
    assert (label == 2).sum() == 100 and (label[:10, :10] == 2).all()  # the 10x10 square polygon
    assert (label == 255).sum() == 40 and (label[10:20, 20:24] == 255).all()  # the crowd RLE's box
    assert ds.samples()[0].label.is_file()  # rendered once, cached
    assert ds.fold_classes(1) == [
        2,
        6,
        10,
        14,
        18,
        22,
        26,
        30,
        34,
        38,
        42,
        46,
        50,
        54,
        58,
        62,
        66,
        70,
        74,
        78,
    ]
    png_root = tmp_path / "hsnet"
    _img(png_root / "train2014" / "COCO_train2014_000000000009.jpg")
    _lbl(png_root / "annotations" / "train2014" / "COCO_train2014_000000000009.png", np.full((40, 60), 17))
    png = open_dataset("coco", png_root, "train2014")
    assert png.class_names[17] == "dog" and png.load_label(png.samples()[0]).max() == 17


def test_coco_rle_decoding_by_hand():
    """Run lengths are column-major and start with 0s; the compressed string form (6 bits a
    character, counts after the second stored as differences) decodes to the same runs."""
    from stages.core.datasets.coco_masks import rle_decode, rle_string_counts

    expected = np.array([[0, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0]], bool)  # columns 0111, 1101, 1000
    np.testing.assert_array_equal(rle_decode([1, 5, 1, 2, 3], 4, 3), expected)
    assert rle_string_counts("151M2") == [1, 5, 1, 2, 3]  # 'M': 2 - 5 = -3, sign-extended
    np.testing.assert_array_equal(rle_decode("151M2", 4, 3), expected)
    assert rle_string_counts("T3") == [100]  # two characters: 4 + 3 * 32
    assert rle_string_counts("j<::00000^3") == [410, 10, 10, 10, 10, 10, 10, 10, 120]
    assert rle_decode([0, 12], 4, 3).all() and not rle_decode([12], 4, 3).any()
    with pytest.raises(FssegError, match="cover 11 pixels but its size is 4x3 = 12"):
        rle_decode([1, 5, 1, 2, 2], 4, 3)


def test_coco_polygons_by_hand():
    """Polygons cover the pixels whose centres they enclose (pycocotools' rule): an axis-aligned
    rectangle on integer corners covers exactly its w x h pixels, parts of one object are OR-ed."""
    from stages.core.datasets.coco_masks import polygon_mask, segmentation_mask

    rect = polygon_mask([1, 1, 5, 1, 5, 4, 1, 4], 6, 7)  # x 1..5, y 1..4
    expected = np.zeros((6, 7), bool)
    expected[1:4, 1:5] = True
    np.testing.assert_array_equal(rect, expected)
    frac = polygon_mask([2.3, 1.7, 6.6, 1.7, 6.6, 5.2, 2.3, 5.2], 8, 9)  # centres x 3..6 ... y 2..4
    assert frac.sum() == 15 and frac[2:5, 2:7].all()
    assert polygon_mask([0, 0, 10, 0, 10, 10, 0, 10], 20, 30).sum() == 100
    assert (
        polygon_mask([0, 0, 8, 0, 0, 8], 10, 10).sum() == 28
    )  # right triangle, legs 8: 36 - 8 on the diagonal
    two = segmentation_mask([[1, 1, 5, 1, 5, 4, 1, 4], [0, 5, 2, 5, 2, 6, 0, 6]], 6, 7)
    assert two.sum() == 12 + 2 and two[5, :2].all()
    clipped = polygon_mask([-3, -3, 4, -3, 4, 30, -3, 30], 6, 7)  # beyond the image: clipped
    assert clipped.sum() == 4 * 6 and clipped[:, :4].all()
    with pytest.raises(FssegError, match="differs from its image's 6x7"):
        segmentation_mask({"size": [7, 6], "counts": [42]}, 6, 7)


def test_coco_masks_equal_pycocotools_on_random_polygons():
    """The numpy rasteriser gives pycocotools' pixels exactly (random polygons, fractional and
    integer vertices, repeated vertices, vertices outside the image), and the same RLE strings."""
    mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools is not installed")
    from stages.core.datasets.coco_masks import rle_decode, segmentation_mask

    rng = np.random.default_rng(0)
    for i in range(300):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        pts = rng.uniform(-5, max(h, w) + 5, 2 * int(rng.integers(3, 9)))
        if i % 3 == 0:
            pts = np.round(pts)
        if i % 5 == 0:
            pts[2:4] = pts[0:2]
        polys = [[float(v) for v in pts]]
        ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(bool)
        np.testing.assert_array_equal(segmentation_mask(polys, h, w), ref, err_msg=str((h, w, polys)))
        encoded = mask_utils.encode(np.asfortranarray(ref.astype(np.uint8)))["counts"].decode()
        np.testing.assert_array_equal(rle_decode(encoded, h, w), ref)


def _coco_tree_2017(root, annotations, images=(("a.jpg", 1), ("b.jpg", 2), ("c.jpg", 3))):
    for name, _ in images:
        _img(root / "val2017" / name, 20, 30)
    doc = {
        "images": [{"id": i, "file_name": n, "height": 20, "width": 30} for n, i in images],
        "annotations": [
            {"id": k, "iscrowd": 0, "bbox": [0, 0, 1, 1], **a} for k, a in enumerate(annotations, 1)
        ],
        "categories": [{"id": cid, "name": n} for cid, n in [(1, "person"), (2, "bicycle"), (3, "car")]],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(doc))
    return path


def _square(x, y, side):
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


def test_coco_2017_layout_default_split_layers_and_pairs(tmp_path, caplog):
    """A COCO 2017 tree needs no --split; smaller objects stay on top of larger ones, a crowd
    region under an object stays the object; classes in one image only make no pairs."""
    anns = [
        {"image_id": 1, "category_id": 1, "area": 400.0, "segmentation": _square(0, 0, 20)},
        {"image_id": 1, "category_id": 3, "area": 16.0, "segmentation": _square(2, 2, 4)},
        {"image_id": 1, "category_id": 2, "iscrowd": 1, "area": 100.0,
         "segmentation": {"size": [20, 30], "counts": [500, 100]}},  # columns 25..29
        {"image_id": 2, "category_id": 1, "area": 100.0, "segmentation": _square(0, 0, 10)},
        {"image_id": 2, "category_id": 2, "area": 9.0, "segmentation": _square(10, 10, 3)},
    ]  # fmt: skip
    _coco_tree_2017(tmp_path, anns)
    ds = open_dataset("coco", tmp_path)
    assert ds.split == "val2017" and [s.id for s in ds.samples()] == ["a", "b", "c"]
    a, b, c = (ds.load_label(s) for s in ds.samples())
    assert (a == 1).sum() == 400 - 16 and (a[2:6, 2:6] == 3).all() and (a == 255).sum() == 100
    assert (a[:, 25:] == 255).all() and (b == 2).sum() == 9 and not c.any()  # c: no annotations
    with caplog.at_level("WARNING"):
        assert ds.pairs([1, 2, 3]) == [("a", 1), ("b", 1)]  # bicycle (b only) and car (a only) left out
    assert "bicycle, car shown by one image only" in caplog.text
    with pytest.raises(FssegError, match="splits found here: val2017"):
        open_dataset("coco", tmp_path, "val2014")


def test_coco_masks_follow_a_changed_json(tmp_path):
    """Rendered masks are cached per JSON version: an edited instances file renders anew."""
    ann = {"image_id": 1, "category_id": 3, "area": 16.0, "segmentation": _square(2, 2, 4)}
    path = _coco_tree_2017(tmp_path, [ann], images=(("a.jpg", 1),))
    ds = open_dataset("coco", tmp_path)
    assert (ds.load_label(ds.samples()[0]) == 3).sum() == 16
    _coco_tree_2017(
        tmp_path, [ann | {"segmentation": _square(2, 2, 6), "area": 36.0}], images=(("a.jpg", 1),)
    )
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    ds = open_dataset("coco", tmp_path)
    assert (ds.load_label(ds.samples()[0]) == 3).sum() == 36


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ({"size": [20, 30], "counts": [10, 5]}, "RLE counts cover 15 pixels"),
        ({"size": [30, 20], "counts": [600]}, "RLE size 30x20"),
        ([[0, 0, "x", 1, 2, 2]], "polygons must be lists of numbers"),
        ("oops", "segmentation must be a list of polygons or an RLE dict"),
    ],
)
def test_coco_bad_segmentation_is_reported_by_data_check(tmp_path, segmentation, message):
    """A malformed annotation is a problem `data check` lists (file, annotation id, what is
    wrong), not a traceback; the other images are still checked."""
    from stages.core.datasets.check import check_dataset

    anns = [
        {"image_id": 1, "category_id": 1, "area": 1.0, "segmentation": segmentation},
        {"image_id": 2, "category_id": 1, "area": 16.0, "segmentation": _square(0, 0, 4)},
    ]
    path = _coco_tree_2017(tmp_path / "coco", anns, images=(("a.jpg", 1), ("b.jpg", 2)))
    report = check_dataset(open_dataset("coco", tmp_path / "coco"))
    assert report.problems == 1 and len(report.unreadable) == 1 and report.pixels[1] == 16
    assert report.unreadable[0].startswith(f"{path}: annotation 1 (image a.jpg): ")
    assert message in report.unreadable[0]
    if isinstance(segmentation, str):  # the CLI: listed, then one error line, exit 2
        from tests.conftest import error_line

        proc = run_fsseg(
            "data", "check", "coco", "--root", tmp_path / "coco", env={"FSSEG_CACHE": str(tmp_path)}
        )
        assert proc.returncode == 2 and "1 problem(s)" in error_line(proc)
        out = " ".join(proc.stdout.split())  # rich wraps long lines
        assert "1 unreadable files" in out and f"{path}: annotation 1 (image a.jpg)" in out and message in out


def test_cityscapes_tree_maps_every_label_id(tmp_path):
    stem = "aachen_000000_000019"
    labels = np.arange(34, dtype=np.uint8).repeat(3).reshape(6, 17)
    _img(tmp_path / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png", 6, 17)
    _lbl(tmp_path / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png", labels)
    inst = labels.astype(np.uint16)
    inst[0, 0] = 26001
    _lbl(tmp_path / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_instanceIds.png", inst)
    ds = open_dataset("cityscapes", tmp_path)
    mapped = ds.load_label(ds.samples()[0])
    expected = np.array([CITYSCAPES_TRAIN_IDS.get(int(v), 255) for v in labels.ravel()]).reshape(labels.shape)
    np.testing.assert_array_equal(mapped, expected)
    assert sorted(set(np.unique(mapped)) - {255}) == list(range(19))
    assert ds.load_instances(ds.samples()[0])[0, 0] == 26001
    assert [ds.class_names[t] for t in ds.things][:3] == ["person", "rider", "car"]


def test_camvid_fss1000_folder_trees(tmp_path):
    cam = tmp_path / "camvid"
    for split in ("train", "val"):
        _img(cam / split / "0001TP_006690.png", 12, 16)
        _lbl(cam / f"{split}annot" / "0001TP_006690.png", np.arange(12 * 16).reshape(12, 16) % 12)
    ds = open_dataset("camvid", cam)
    assert ds.split == "train" and ds.ignore_index == 11 and ds.background is None
    assert [ds.class_names[c] for c in ds.fold_classes(2)] == ["Pole", "SignSymbol", "Bicyclist"]
    fss = tmp_path / "fss"
    for cls in ("eiffel_tower", "zebra"):
        for k in (1, 2):
            _img(fss / cls / f"{k}.jpg", 10, 10)
            _lbl(fss / cls / f"{k}.png", np.where(np.eye(10) > 0, 255, 0))
    ds = open_dataset("fss1000", fss)
    assert ds.class_names == ["background", "eiffel_tower", "zebra"]
    assert set(np.unique(ds.load_label(ds.sample("zebra/2")))) == {0, 2}
    own = tmp_path / "own"
    _img(own / "images" / "a.jpg", 8, 8)
    _lbl(own / "masks" / "a.png", np.ones((8, 8)))
    with pytest.raises(FssegError, match="classes.yaml is missing"):
        open_dataset("folder", own)
    (own / "classes.yaml").write_text(
        "names: [background, cat, dog]\nignore_index: 255\nthings: [cat, dog]\n"
    )
    ds = open_dataset("folder", own)
    assert ds.things == (1, 2) and ds.load_label(ds.samples()[0]).max() == 1
    (own / "classes.yaml").write_text("names: [background, cat\n")
    with pytest.raises(FssegError, match="not valid YAML"):
        open_dataset("folder", own)


def test_unknown_dataset_and_class():
    with pytest.raises(FssegError, match="unknown dataset"):
        open_dataset("voc", ".")
    ds = open_dataset("camvid", shared_data("camvid"))
    assert ds.class_id("car") == 8
    with pytest.raises(FssegError, match="unknown camvid class 'dog'"):
        ds.class_id("dog")


def test_real_camvid_cityscapes_voc_fss1000(tmp_path):
    camvid = open_dataset("camvid", shared_data("camvid"))
    assert (
        len(camvid.samples()) == 367
        and len(open_dataset("camvid", shared_data("camvid"), "val").samples()) == 101
    )
    assert camvid.load_label(camvid.samples()[0]).shape == (360, 480)
    city = open_dataset("cityscapes", shared_data("cityscapes-mini"))
    sample = city.samples()[0]
    official = read_label(str(sample.label).replace("labelIds", "labelTrainIds"))
    assert (city.load_label(sample) == official).mean() > 0.99  # the mini frame was downsampled per file
    voc = open_dataset("pascal", shared_data("voc-mini"))
    scan = voc.scan()
    assert set(scan["2011_000003"]) == {0, 5, 15} and set(scan["2011_000025"]) == {0, 6, 7}
    eiffel = shared_data("fss1000-eiffel") / "support"
    cls = tmp_path / "fss" / "eiffel_tower"
    cls.mkdir(parents=True)
    for i, image in enumerate(sorted((eiffel / "image").glob("*.jpg")), 1):
        os.symlink(image, cls / f"{i}.jpg")
        os.symlink(eiffel / "label" / f"{image.stem}.png", cls / f"{i}.png")
    fss = open_dataset("fss1000", tmp_path / "fss")
    labels = [fss.load_label(s) for s in fss.samples()]
    assert len(labels) == 5 and all(0.01 < (lab == 1).mean() < 0.9 for lab in labels)


def test_data_check_cli(tmp_path):
    proc = run_fsseg(
        "data",
        "check",
        "camvid",
        "--root",
        shared_data("camvid"),
        "--split",
        "val",
        env={"FSSEG_CACHE": str(tmp_path)},
    )
    assert proc.returncode == 0 and "101 samples" in proc.stdout and "no problems found" in proc.stdout
    proc = run_fsseg("data", "check", "cityscapes", "--root", shared_data("cityscapes-mini"))
    assert proc.returncode == 0 and "no problems found" in proc.stdout
    bad = tmp_path / "bad"
    _pascal_tree(bad)
    (bad / "JPEGImages" / "2008_000001.jpg").write_bytes(b"broken")
    _lbl(bad / "SegmentationClassAug" / "2008_000002.png", np.full((30, 60), 33))
    (bad / "JPEGImages" / "2008_000000.jpg").unlink()
    proc = run_fsseg("data", "check", "pascal", "--root", bad)
    assert proc.returncode != 0
    assert "1 missing files" in proc.stdout and "1 unreadable files" in proc.stdout
    assert "size mismatches" in proc.stdout and "error: 3 problem(s)" in proc.stderr


# ids that would leave --out: `..`, absolute paths, separators ({tmp} = the test's tmp_path)
BAD_IDS = ["../../escape", "../../escape__1", "{tmp}/escape", "sub/escape", "..\\escape", "im00/../../escape"]


def _bad_list(tmp_path, bad):
    """A VOC tree in tmp/work/voc, a list file naming im00, im01 and `bad`, and the escape target
    files an id `../../escape` would reach (so a reader that trusted it would find an image)."""
    from tests.conftest import make_voc_tree

    voc = make_voc_tree(tmp_path / "work" / "voc")
    bad = bad.replace("{tmp}", str(tmp_path))
    _img(tmp_path / "work" / "escape.jpg", 64, 64)
    _lbl(tmp_path / "work" / "escape.png", np.ones((64, 64)))
    lst = tmp_path / "work" / "list.txt"
    lst.write_text(f"im00\nim01\n{bad}\n")
    return voc, lst, bad


@pytest.mark.parametrize("bad", BAD_IDS)
def test_list_file_ids_must_be_plain_names(tmp_path, bad):
    voc, lst, bad = _bad_list(tmp_path, bad)
    with pytest.raises(FssegError, match="must be a plain file name") as err:
        open_dataset("pascal", voc, str(lst)).samples()
    assert str(lst) in str(err.value) and repr(bad.split()[0]) in str(err.value)
    fss = tmp_path / "fss"
    _img(fss / "zebra" / "1.jpg", 10, 10)
    (tmp_path / "classes.txt").write_text(f"zebra\n{bad}\n")
    with pytest.raises(FssegError, match="must be a plain file name"):
        open_dataset("fss1000", fss, str(tmp_path / "classes.txt"))


@pytest.mark.parametrize("bad", ["../../escape", "{tmp}/escape", "sub/escape"])
def test_data_check_and_episodes_reject_a_list_with_a_bad_id(tmp_path, bad):
    from tests.conftest import error_line, files_outside

    voc, lst, bad = _bad_list(tmp_path, bad)
    out = tmp_path / "work" / "out"
    before = files_outside(tmp_path, out, tmp_path / "cache")
    proc = run_fsseg("data", "check", "pascal", "--root", voc, "--split", lst)
    line = error_line(proc)
    assert proc.returncode == 2 and str(lst) in line and repr(bad) in line and "plain file name" in line
    for out_path in (out / "episodes.json", tmp_path / "work" / "episodes.json"):
        proc = run_fsseg(
            "data", "episodes", "pascal", "--root", voc, "--split", lst, "--min-area", 100, "--out", out_path
        )
        assert proc.returncode == 2 and str(lst) in error_line(proc) and not out_path.exists()
    assert files_outside(tmp_path, out, tmp_path / "cache") == before


def test_clip_cam_pascal_list_cannot_write_outside_out(tmp_path):
    """The issue's repro: an id `../../escape` made clip-cam write escape__1.npy/.png/.jpg beside --out."""
    from tests.conftest import error_line, files_outside

    voc, lst, bad = _bad_list(tmp_path, "../../escape")
    out = tmp_path / "work" / "out"
    before = files_outside(tmp_path, out, tmp_path / "cache")
    proc = run_fsseg(
        "clip-cam", "--dataset", "pascal", "--root", voc, "--split", lst, "--backend", "imagenet",
        "--device", "cpu", "--out", out, env={"FSSEG_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert proc.returncode == 2 and str(lst) in error_line(proc)
    assert files_outside(tmp_path, out, tmp_path / "cache") == before
    assert not list(tmp_path.rglob("escape__*"))


def _coco_json_tree(root, file_name):
    _img(root / "val2014" / "a.jpg", 20, 30)
    doc = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "height": 20, "width": 30},
            {"id": 2, "file_name": file_name, "height": 20, "width": 30},
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "person", "supercategory": "x"}],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(doc))
    return root / "annotations" / "instances_val2014.json"


@pytest.mark.parametrize("file_name", ["../../escape.jpg", "{tmp}/escape.jpg", "sub/escape.jpg"])
def test_coco_json_file_names_must_be_plain(tmp_path, file_name):
    from tests.conftest import error_line

    file_name = file_name.replace("{tmp}", str(tmp_path))
    annotations = _coco_json_tree(tmp_path / "coco", file_name)
    with pytest.raises(FssegError, match="image file_name") as err:
        open_dataset("coco", tmp_path / "coco", "val2014")
    assert str(annotations) in str(err.value) and repr(file_name) in str(err.value)
    if file_name.startswith(".."):  # the CLI: one line, exit 2
        proc = run_fsseg(
            "data", "check", "coco", "--root", tmp_path / "coco", env={"FSSEG_CACHE": str(tmp_path / "cache")}
        )
        line = error_line(proc)
        assert proc.returncode == 2 and str(annotations) in line and repr(file_name) in line


def test_fss1000_ids_keep_their_class_folder():
    from stages.core.datasets.base import check_id

    assert check_id("zebra/2", "x", parts=2) == "zebra/2"
    for bad in ("zebra/../2", "a/b/c", "/zebra/2", "zebra//2", "", "..", "zebra\\2"):
        with pytest.raises(FssegError, match="^x: id "):
            check_id(bad, "x", parts=2)
