"""Episodes: HSNet's protocol, reproducibility byte for byte, GFSS variants, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from stages.core.datasets import open_dataset
from stages.core.episodes import make_episodes, read_episodes, write_episodes
from stages.core.errors import FssegError
from tests.conftest import error_line, make_voc_tree, run_fsseg, shared_data


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSSEG_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def voc(tmp_path):
    return make_voc_tree(tmp_path / "VOC2012")


def test_hsnet_protocol_and_reproducibility(voc, tmp_path):
    ds = open_dataset("pascal", voc, "all")
    doc = make_episodes(ds, fold=0, shots=2, n=25, seed=0, min_area=1000)
    pairs = ds.pairs([1, 2, 3, 4, 5], 1000)
    assert len(pairs) == 12
    for i, ep in enumerate(doc["episodes"]):
        assert (ep["query"], ep["class"]) == pairs[i % 12]  # query i = pair i mod N
        assert ep["query"] not in ep["support"] and len(set(ep["support"])) == 2
        assert all(int(s[2:]) % 2 == (ep["class"] - 1) for s in ep["support"])  # supports show the class
    a = write_episodes(tmp_path / "a.json", doc).read_bytes()
    b = write_episodes(
        tmp_path / "b.json", make_episodes(ds, fold=0, shots=2, n=25, seed=0, min_area=1000)
    ).read_bytes()
    c = write_episodes(
        tmp_path / "c.json", make_episodes(ds, fold=0, shots=2, n=25, seed=1, min_area=1000)
    ).read_bytes()
    assert a == b and a != c
    assert read_episodes(tmp_path / "a.json")["novel_classes"] == [1, 2, 3, 4, 5]


def test_gfss_protocols(voc):
    ds = open_dataset("pascal", voc, "all")
    doc = make_episodes(ds, fold=0, shots=1, n=6, protocol="gfss-binary", min_area=1000)
    scan = ds.scan()
    assert all(8 in scan[ep["base_query"]] for ep in doc["episodes"])
    assert 8 in doc["base_classes"] and 1 not in doc["base_classes"]
    with pytest.raises(FssegError, match="have no images"):
        make_episodes(ds, fold=0, shots=1, n=6, protocol="gfss", min_area=1000)  # classes 3..5 never appear
    ds.fold_classes = lambda fold, n_folds=None: [1, 2]  # a fold of two classes, all present
    doc = make_episodes(ds, fold=0, shots=2, n=4, protocol="gfss", min_area=1000)
    for ep in doc["episodes"]:
        assert set(ep["supports"]) == {"1", "2"} and all(
            ep["query"] not in s for s in ep["supports"].values()
        )


def test_coco_draws_class_first(tmp_path):
    root = tmp_path / "coco"
    (root / "val2014").mkdir(parents=True)
    (root / "annotations" / "val2014").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "val2014" / f"c{i}.jpg")
        Image.fromarray(np.full((40, 40), 1 if i < 6 else 5, np.uint8)).save(
            root / "annotations" / "val2014" / f"c{i}.png"
        )
    doc = make_episodes(open_dataset("coco", root), fold=0, shots=1, n=200, seed=0, min_area=100)
    counts = np.bincount([ep["class"] for ep in doc["episodes"]])
    assert counts[1] > 60 and counts[5] > 60  # uniform over classes although class 1 has 3x the images


def test_too_few_images_for_shots(voc):
    with pytest.raises(FssegError, match="fewer than --shots 9"):
        make_episodes(open_dataset("pascal", voc, "all"), fold=0, shots=9, n=3, min_area=1000)


def test_cli_episodes_camvid_same_bytes(tmp_path):
    root = shared_data("camvid")
    args = [
        "data",
        "episodes",
        "camvid",
        "--root",
        root,
        "--split",
        "val",
        "--fold",
        1,
        "--shots",
        1,
        "--n",
        200,
        "--seed",
        0,
    ]
    env = {"FSSEG_CACHE": str(tmp_path / "cache")}
    run_fsseg(*args, "--out", tmp_path / "a.json", env=env, check=True)
    run_fsseg(*args, "--out", tmp_path / "b.json", env=env, check=True)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    doc = json.loads((tmp_path / "a.json").read_text())
    assert {ep["class"] for ep in doc["episodes"]} == {1, 5, 9} and len(doc["episodes"]) == 200
    bad = run_fsseg(
        "data", "episodes", "camvid", "--root", root, "--fold", 7, "--out", tmp_path / "c.json", env=env
    )
    assert "--fold 7 is out of range" in error_line(bad) and not (tmp_path / "c.json").exists()
