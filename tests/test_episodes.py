"""Episodes: HSNet's protocol, reproducibility byte for byte, GFSS variants, errors."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_classes_without_enough_supports_are_left_out_and_recorded(voc):
    ds = open_dataset("pascal", voc, "all")
    pairs = ds.pairs([1, 2, 3, 4, 5], 1000)
    few = [p for p in pairs if p[1] == 2][:2]  # class 2 in two images only: a query and one support
    ds.pairs = lambda novel, min_area, on_progress=None: [p for p in pairs if p[1] != 2] + few
    doc = make_episodes(ds, fold=0, shots=2, n=20, seed=0, min_area=1000)
    assert doc["skipped_classes"] == [2]
    assert {ep["class"] for ep in doc["episodes"]} == {1}
    assert make_episodes(ds, fold=0, shots=1, n=20, seed=0, min_area=1000)["skipped_classes"] == []
    with pytest.raises(FssegError, match="no class of fold 0 has more than --shots 6"):
        make_episodes(ds, fold=0, shots=6, n=5, seed=0, min_area=1000)


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
    with pytest.raises(FssegError, match="no class of fold 0 has more than --shots 9"):
        make_episodes(open_dataset("pascal", voc, "all"), fold=0, shots=9, n=3, min_area=1000)
    ds = open_dataset("pascal", voc, "all")
    ds.fold_classes = lambda fold, n_folds=None: [1, 2]  # gfss needs every class: it names the one short
    with pytest.raises(FssegError, match="fewer than --shots 9"):
        make_episodes(ds, fold=0, shots=9, n=3, protocol="gfss", min_area=1000)


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


# ----------------------------------------------------------------------------- ids in episodes files
def _doc(voc, **kw):
    return make_episodes(open_dataset("pascal", voc, "all"), fold=0, shots=1, n=4, min_area=1000, **kw)


@pytest.mark.parametrize("bad", ["../../escape", "/tmp/escape", "sub/escape", "..\\escape", ""])
@pytest.mark.parametrize("where", ["query", "support", "base_query", "supports"])
def test_episodes_file_ids_must_be_plain_names(voc, tmp_path, bad, where):
    doc = _doc(voc, protocol="gfss-binary")
    ep = doc["episodes"][2]
    if where == "supports":  # the gfss protocol: class -> support ids
        ep.pop("support")
        ep["supports"] = {"1": ["im02", bad]}
    elif where == "support":
        ep["support"] = [bad]
    else:
        ep[where] = bad
    path = write_episodes(tmp_path / "bad.json", doc)
    with pytest.raises(FssegError, match="must be a plain file name") as err:
        read_episodes(path)
    message = str(err.value)
    assert f"{path} (episode 2)" in message and repr(bad) in message and "fsseg data episodes" in message


def test_fss1000_episode_ids_keep_their_class_folder(tmp_path):
    doc = {
        "format": "fsseg-episodes/1",
        "dataset": "fss1000",
        "episodes": [{"query": "zebra/1", "support": ["zebra/2"]}],
    }
    (tmp_path / "e.json").write_text(json.dumps(doc))
    assert read_episodes(tmp_path / "e.json")["episodes"][0]["query"] == "zebra/1"
    doc["episodes"][0]["support"] = ["zebra/../../x"]
    (tmp_path / "e.json").write_text(json.dumps(doc))
    with pytest.raises(FssegError, match="'..' or '.' component"):
        read_episodes(tmp_path / "e.json")
    (tmp_path / "e.json").write_text(json.dumps({"format": "fsseg-episodes/1", "episodes": {"a": 1}}))
    with pytest.raises(FssegError, match="has no list of episodes"):
        read_episodes(tmp_path / "e.json")


def test_evaluate_refuses_an_episodes_file_with_a_bad_id(voc, tmp_path):
    from tests.conftest import files_outside

    doc = _doc(voc)
    doc["episodes"][0]["query"] = "../../../escape"
    episodes = write_episodes(tmp_path / "work" / "bad.json", doc)
    (tmp_path / "work" / "pred").mkdir()
    out = tmp_path / "work" / "eval"
    before = files_outside(tmp_path, out, tmp_path / "cache")
    proc = run_fsseg("evaluate", "--task", "fss", "--pred", tmp_path / "work" / "pred", "--episodes", episodes,
                     "--out", out, env={"FSSEG_CACHE": str(tmp_path / "cache")})  # fmt: skip
    line = error_line(proc)
    assert proc.returncode == 2 and str(episodes) in line and "'../../../escape'" in line
    assert files_outside(tmp_path, out, tmp_path / "cache") == before


# ----------------------------------------------------------------------------- `data episodes --out`
def _episodes_cli(voc, out, *extra):
    return run_fsseg("data", "episodes", "pascal", "--root", voc, "--split", "all", "--n", 4,
                     "--min-area", 1000, "--out", out, *extra)  # fmt: skip


def test_episodes_out_follows_the_artifact_rules(voc, tmp_path):
    out = tmp_path / "ep.json"
    assert _episodes_cli(voc, out).returncode == 0
    first, stat = out.read_bytes(), out.stat()
    same = _episodes_cli(voc, out)  # same episodes: up to date, the file is not touched
    assert same.returncode == 0 and "up to date" in same.stderr
    assert out.read_bytes() == first and out.stat().st_mtime_ns == stat.st_mtime_ns
    assert out.stat().st_ino == stat.st_ino
    other = _episodes_cli(voc, out, "--seed", 1)  # other episodes: refused, then replaced with --overwrite
    line = error_line(other)
    assert other.returncode == 2 and "already holds other episodes" in line and "seed" in line
    assert "--overwrite" in line and out.read_bytes() == first
    assert _episodes_cli(voc, out, "--seed", 1, "--overwrite").returncode == 0
    assert json.loads(out.read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOC2012", "cache", "ep.json"]  # no temp file left


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n not episodes", b'{"a": 1}', b"", b"[1, 2]"])
def test_episodes_out_never_replaces_a_foreign_file(voc, tmp_path, content):
    out = tmp_path / "mask.png"
    out.write_bytes(content)
    for extra in ((), ("--overwrite",)):
        proc = _episodes_cli(voc, out, *extra)
        line = error_line(proc)
        assert proc.returncode == 2 and str(out) in line and "not an fsseg episodes file" in line
        assert "choose another path" in line and out.read_bytes() == content


def test_episodes_out_folder_or_under_a_file(voc, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    proc = _episodes_cli(voc, folder)
    assert proc.returncode == 2 and "is a folder" in error_line(proc)
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for out in (blocker / "ep.json", blocker / "deeper" / "ep.json"):
        proc = _episodes_cli(voc, out)
        line = error_line(proc)
        assert proc.returncode == 2 and f"lies under {blocker}, which is a file" in line
    assert blocker.read_text() == "x"


def test_episodes_out_unwritable(voc, tmp_path, monkeypatch):
    import os

    if os.geteuid() != 0:  # a read-only folder stops everyone but root
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = locked / "ep.json"
    elif os.path.isdir("/proc/self"):  # root writes anywhere but where the kernel forbids it
        out = Path("/proc/fsseg-no-such-folder/ep.json")
    else:
        pytest.skip("running as root without /proc: no unwritable folder to test with")
    proc = _episodes_cli(voc, out)
    line = error_line(proc)
    assert proc.returncode == 2 and f"cannot write --out {out}" in line and "choose a writable --out" in line
    assert not out.exists()
    # in-process too: any OSError while writing becomes one line, the old file stays
    import stages.core.episodes as episodes

    def refuse(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(episodes, "atomic_write_text", refuse)
    with pytest.raises(FssegError, match="cannot write --out .*Permission denied; choose a writable --out"):
        write_episodes(tmp_path / "x.json", _doc(voc))
