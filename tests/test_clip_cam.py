"""`fsseg clip-cam`: parity with pytorch-grad-cam, outputs, backends, errors, resume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from stages.core import devices
from stages.models import cam as cams
from stages.models.imagenet_labels import TABLE, imagenet_categories, imagenet_classes
from stages.params import IMAGENET_MIN_SCORE
from tests.conftest import error_line, run_fsseg, shared_data


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos shipped by scikit-image (a test dependency): a cat and two motorcycle shots."""
    import skimage

    data = Path(skimage.__file__).parent / "data"
    out = tmp_path_factory.mktemp("photos")
    (out / "cat").mkdir()
    shutil.copyfile(data / "chelsea.png", out / "cat" / "chelsea.png")
    (out / "moto").mkdir()
    for name in ("motorcycle_left.png", "motorcycle_right.png"):
        shutil.copyfile(data / name, out / "moto" / name)
    return out


def _peer_normalised(ours: np.ndarray, size: int) -> np.ndarray:
    """pytorch-grad-cam scales per layer, resizes to the input size, and scales again: do the same."""
    up = np.stack([cv2.resize(np.float32(c), (size, size)) for c in ours])
    up = up - up.min(axis=(1, 2), keepdims=True)
    return up / (1e-7 + up.max(axis=(1, 2), keepdims=True))


@pytest.mark.parametrize("model_name", ["RN50", "ViT-B-16"])
def test_parity_with_pytorch_grad_cam(model_name):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM

    torch.manual_seed(0)
    model, tokenizer = cams.load_clip(model_name, "none", torch.device("cpu"))
    model = model.double()  # random weights give flat maps; float64 keeps the comparison about the method
    text = cams.text_embeddings(model, tokenizer, ["cat", "dog", "car"], cams.TEMPLATES, "cpu").double()
    images = torch.randint(0, 255, (2, 3, 224, 224), dtype=torch.uint8)
    weights = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]], dtype=torch.float64)
    for score in ("cosine", "softmax"):
        scorer = cams.clip_scorer(model, text, score=score)
        wrapper = torch.nn.Sequential(scorer.network)
        wrapper.forward = lambda x, s=scorer: s.score(s.network(x))
        x = cams.normalise_batch(images, scorer.mean, scorer.std).double()
        extra = {"reshape_transform": scorer.to_grid} if scorer.native_size else {}
        for method, peer in (
            ("gradcam", GradCAM),
            ("gradcam++", GradCAMPlusPlus),
            ("layercam", LayerCAM),
            ("hirescam", HiResCAM),
        ):
            ours = cams.cams_and_presence(scorer, images, weights, method=method)[0].numpy()
            for p in wrapper.parameters():
                p.requires_grad_(True)  # the peer needs a graph through the parameters
            with peer(model=wrapper, target_layers=[scorer.target], **extra) as cam:
                theirs = cam(input_tensor=x, targets=[lambda o: o[0], lambda o: o[2]])
            for p in wrapper.parameters():
                p.requires_grad_(False)
            np.testing.assert_allclose(
                _peer_normalised(ours, 224), theirs, atol=1e-4, err_msg=f"{score} {method}"
            )
            if model_name == "ViT-B-16" or method in ("gradcam++", "layercam"):
                assert theirs.max() > 0.5  # a map with content, not two zero maps agreeing


def test_batch_gives_the_same_maps_as_single_images():
    scorer = cams.imagenet_scorer([imagenet_classes("cat"), imagenet_classes("car")])
    images = torch.randint(0, 255, (3, 3, 224, 224), dtype=torch.uint8)
    weights = torch.tensor([[1.0, 0], [0, 1.0], [1.0, 0]])
    batch = cams.cams_and_presence(scorer, images, weights)[0]
    for i in range(3):
        single = cams.cams_and_presence(scorer, images[i : i + 1], weights[i : i + 1])[0]
        torch.testing.assert_close(batch[i : i + 1], single, atol=1e-5, rtol=1e-4)


def test_imagenet_label_table():
    names = imagenet_categories()
    for label, entries in TABLE.items():
        for entry in entries:
            assert isinstance(entry, int) or entry in names, (label, entry)
    assert [names[i] for i in imagenet_classes("cat")] == [
        "tabby",
        "tiger cat",
        "Persian cat",
        "Siamese cat",
        "Egyptian cat",
    ]
    assert len(imagenet_classes("dog")) == 118 and imagenet_classes("shark") == [2, 3]
    assert imagenet_classes("Granny Smith") == [names.index("Granny Smith")]
    from stages.core.errors import FssegError

    for label in ("person", "sky", "kite", "qwertyuiop"):
        with pytest.raises(FssegError, match="--backend clip"):
            imagenet_classes(label)


def test_demo_photos_heat_on_the_object(photos, tmp_path):
    out = tmp_path / "cat"
    proc = run_fsseg("clip-cam", "--images", photos / "cat", "--label", "cat", "--out", out, check=True)
    assert "imagenet" in proc.stderr  # the one-line notice that auto fell back to the offline backend
    cam = np.load(out / "cams" / "chelsea.npy")
    image = np.asarray(Image.open(photos / "cat" / "chelsea.png"))
    assert cam.dtype == np.float16 and cam.shape == image.shape[:2]
    assert 0.0 <= cam.min() and cam.max() <= 1.0 and cam.max() > 0.99
    mask = np.asarray(Image.open(out / "masks" / "chelsea.png"))
    assert set(np.unique(mask)) <= {0, 1}
    differ = mask != (cam.astype(np.float32) >= 0.5)
    assert np.all(
        np.abs(cam[differ].astype(np.float32) - 0.5) < 1e-3
    )  # only float16 rounding at the threshold
    assert Image.open(out / "overlays" / "chelsea.jpg").size == image.shape[1::-1]
    # the cat's face fills the middle of the photo; the heat must be there, not on the borders
    h, w = cam.shape
    assert cam[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean() > 2 * cam[:, : w // 8].mean()
    manifest = json.loads((out / "manifest.json").read_text())
    params, resolved = manifest["params"], manifest["resolved"]
    assert manifest["kind"] == "cams" and resolved["backend"] == "imagenet" and resolved["label"] == "cat"
    assert params["backend"] == "auto" and resolved["precision"] == devices.resolve_precision(
        "auto", torch.device("cpu")
    )
    assert (
        params["method"] == "gradcam" and params["threshold"] == 0.5 and "efficientnet" in resolved["weights"]
    )
    again = run_fsseg("clip-cam", "--images", photos / "cat", "--label", "cat", "--out", out, check=True)
    assert "up to date" in again.stderr


def test_bf16_agrees_with_fp32(photos, tmp_path):
    maps = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        run_fsseg(
            "clip-cam",
            "--images",
            photos / "moto",
            "--label",
            "motorcycle",
            "--precision",
            precision,
            "--out",
            out,
            check=True,
        )
        maps[precision] = [
            np.load(p).astype(np.float64).ravel() for p in sorted((out / "cams").glob("*.npy"))
        ]
    for a, b in zip(maps["fp32"], maps["bf16"], strict=True):
        assert np.corrcoef(a, b)[0, 1] >= 0.99


def test_clip_backends_dense_and_local_checkpoint(photos, tmp_path):
    import open_clip

    weights = tmp_path / "rn50-random.pt"
    torch.manual_seed(1)
    torch.save(open_clip.create_model("RN50").state_dict(), weights)
    out = tmp_path / "file"
    run_fsseg(
        "clip-cam",
        "--images",
        photos / "cat",
        "--label",
        "cat",
        "--backend",
        "clip",
        "--pretrained",
        weights,
        "--classes",
        "voc",
        "--out",
        out,
        check=True,
    )
    params = json.loads((out / "manifest.json").read_text())["resolved"]
    assert params["backend"] == "clip" and params["weights"] == str(weights) and params["score"] == "softmax"
    assert params["templates"] == ["a photo of a {}."] and "cat" in params["classes"]
    for method in ("dense", "layercam"):
        run_fsseg(
            "clip-cam",
            "--images",
            photos / "cat",
            "--label",
            "cat",
            "--backend",
            "clip",
            "--pretrained",
            "none",
            "--method",
            method,
            "--input-size",
            320,
            "--out",
            tmp_path / method,
            check=True,
        )
        assert np.load(tmp_path / method / "cams" / "chelsea.npy").shape == (300, 451)


def test_dataset_mode_one_cam_per_image_and_class(tmp_path):
    root = shared_data("voc-mini")
    env = {"FSSEG_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "voc"
    proc = run_fsseg(
        "clip-cam",
        "--dataset",
        "pascal",
        "--root",
        root,
        "--backend",
        "clip",
        "--pretrained",
        "none",
        "--model",
        "ViT-B-16",
        "--cam-size",
        50,
        "--out",
        out,
        env=env,
        check=True,
    )
    names = sorted(p.stem for p in (out / "cams").glob("*.npy"))
    assert names == [
        "2011_000003__15",
        "2011_000003__5",
        "2011_000006__15",
        "2011_000006__18",
        "2011_000006__9",
        "2011_000025__6",
        "2011_000025__7",
    ], proc.stderr
    assert np.load(out / "cams" / "2011_000003__5.npy").shape == (50, 50)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["items"]["2011_000006__18"]["label"] == "sofa"
    assert manifest["resolved"]["score"] == "softmax" and len(manifest["resolved"]["classes"]) == 20
    # the annotations say each class is there: scores are recorded, no mask is emptied
    assert manifest["resolved"]["min_score"] == 0 and manifest["outputs"]["absent"] == 0
    assert len((out / "scores.csv").read_text().splitlines()) == 8 and "none judged absent" in proc.stdout
    skipped = run_fsseg(
        "clip-cam",
        "--dataset",
        "pascal",
        "--root",
        root,
        "--backend",
        "imagenet",
        "--out",
        tmp_path / "inet",
        env=env,
        check=True,
    )
    assert "person" in skipped.stderr and not list((tmp_path / "inet" / "cams").glob("*__15.npy"))


def test_odd_file_names_and_corrupt_images(tmp_path):
    query = shared_data("fss1000-eiffel") / "query"
    images = tmp_path / "images"
    shutil.copytree(query, images)
    (images / "zz broken & odd%.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "tower"
    proc = run_fsseg("clip-cam", "--images", images, "--label", "tower", "--out", out)
    line = error_line(proc)
    assert "1 image(s) could not be read" in line
    assert "zz broken & odd%.jpg" in proc.stdout
    written = {p.stem for p in (out / "cams").glob("*.npy")}
    assert (
        len(written) == len(list(query.iterdir()))
        and "435. photo-1416655046193-16bc1b0e35cb%3Fixlib=rb-1.2.1&ixid=eyjhchbfawqiojeymdd9&w=1000&q=80"
        in written
    )
    strict = run_fsseg(
        "clip-cam", "--images", images, "--label", "tower", "--strict", "--out", tmp_path / "strict"
    )
    assert "zz broken & odd%.jpg" in error_line(strict)


def test_resume_redoes_only_missing_items(photos, tmp_path):
    out = tmp_path / "moto"
    run_fsseg("clip-cam", "--images", photos / "moto", "--label", "motorcycle", "--out", out, check=True)
    keep = out / "cams" / "motorcycle_left.npy"
    stamp = keep.stat().st_mtime_ns
    (out / "manifest.json").unlink()
    (out / "scores" / "motorcycle_right.json").unlink()  # an item without its score is not done
    os.utime(out, None)
    run_fsseg("clip-cam", "--images", photos / "moto", "--label", "motorcycle", "--out", out, check=True)
    assert keep.stat().st_mtime_ns == stamp and (out / "scores" / "motorcycle_right.json").is_file()
    assert (out / "cams" / "motorcycle_right.npy").stat().st_mtime_ns > stamp
    assert len((out / "scores.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--label", "person"], "no ImageNet-1k counterpart"),
        (
            ["--label", "cat", "--backend", "clip", "--model", "RN5000", "--pretrained", "none"],
            "not an open_clip model",
        ),
        (["--label", "cat", "--template", "a photo"], "needs a {}"),
        (["--label", "cat", "--threshold", "2"], "Invalid value for '--threshold'"),
        (["--label", "cat", "--classes", "nope.txt"], "is not voc, coco, camvid or a file"),
        ([], "--label is required"),
    ],
)
def test_user_errors(photos, tmp_path, args, expected):
    proc = run_fsseg("clip-cam", "--images", photos / "cat", *args, "--out", tmp_path / "x")
    assert expected in error_line(proc)
    assert not (tmp_path / "x").exists()


def test_torchrun_shards_images_and_matches_one_process(photos, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    images = str(photos / "*" / "*.png")  # the cat and the two motorcycles
    args = ["clip-cam", "--images", images, "--label", "cat", "--backend", "imagenet", "--device", "cpu"]
    assert run_fsseg(*args, "--out", tmp_path / "one").returncode == 0
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "fsseg_cli.main", *args, "-q",
         "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["world_size"] == 2
    one = sorted(p.name for p in (tmp_path / "one" / "masks").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "two" / "masks").iterdir()) and len(one) >= 2
    for name in one:
        a = np.asarray(Image.open(tmp_path / "one" / "masks" / name))
        b = np.asarray(Image.open(tmp_path / "two" / "masks" / name))
        assert (a == b).mean() > 0.999, name


# ----------------------------------------------------------------------------- presence
def _csv(out: Path) -> dict[str, dict[str, str]]:
    import csv

    with open(out / "scores.csv", newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def test_presence_scores_empty_the_masks_of_absent_labels(photos, tmp_path):
    images = str(photos / "*" / "*.png")  # a cat and two motorcycles, asked for "cat"
    args = ("clip-cam", "--images", images, "--label", "cat", "--backend", "imagenet")
    proc = run_fsseg(*args, "--out", tmp_path / "auto", check=True)
    assert "3 CAMs" in proc.stdout and f"2 judged absent (presence < {IMAGENET_MIN_SCORE:g}" in proc.stdout
    rows = _csv(tmp_path / "auto")
    assert {k: r["present"] for k, r in rows.items()} == {
        "chelsea": "yes",
        "motorcycle_left": "no",
        "motorcycle_right": "no",
    }
    assert float(rows["chelsea"]["score"]) > 0.5 and all(
        float(rows[k]["score"]) < IMAGENET_MIN_SCORE for k in ("motorcycle_left", "motorcycle_right")
    )
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert manifest["params"]["min_score"] is None and manifest["resolved"]["min_score"] == IMAGENET_MIN_SCORE
    assert manifest["outputs"]["absent"] == 2 and manifest["outputs"]["scores"] == "scores.csv"
    for name, item in manifest["outputs"]["items"].items():
        assert f"{item['score']:.6g}" == rows[name]["score"] and item["present"] == (
            rows[name]["present"] == "yes"
        )
    kept = run_fsseg(*args, "--min-score", "0", "--out", tmp_path / "off", check=True)
    assert "none judged absent" in kept.stdout
    assert {k: r["score"] for k, r in _csv(tmp_path / "off").items()} == {
        k: r["score"] for k, r in rows.items()
    }
    assert all(r["present"] == "yes" for r in _csv(tmp_path / "off").values())
    for name in rows:
        cam = np.load(tmp_path / "auto" / "cams" / f"{name}.npy")
        assert np.array_equal(cam, np.load(tmp_path / "off" / "cams" / f"{name}.npy"))  # the CAM is kept
        empty = np.asarray(Image.open(tmp_path / "auto" / "masks" / f"{name}.png"))
        full = np.asarray(Image.open(tmp_path / "off" / "masks" / f"{name}.png"))
        differ = full != (cam.astype(np.float32) >= 0.5)  # only float16 rounding at the threshold
        assert full.sum() > 0 and np.all(np.abs(cam[differ].astype(np.float32) - 0.5) < 1e-3)
        assert np.array_equal(empty, full) if name == "chelsea" else not empty.any()
    grey = np.asarray(Image.open(tmp_path / "auto" / "overlays" / "motorcycle_left.jpg")).astype(int)
    assert np.abs(grey - grey.mean(axis=2, keepdims=True)).max() <= 3  # absent: a grey photo, no heat


def test_presence_comes_from_the_cam_forward_pass(photos):
    """imagenet: the calibrated largest logit of the label's classes; clip: the prompt score."""
    from stages.core.imageio import read_image

    image = read_image(photos / "cat" / "chelsea.png")
    engine = cams.LabelCams.build("imagenet", ["dog", "cat"])
    batch = engine([image, image], ["cat", "dog"])
    scorer = engine.scorer
    logits = scorer.network(cams.normalise_batch(engine.input_batch([image]), scorer.mean, scorer.std))
    penalty, slope, bias = cams.IMAGENET_PRESENCE
    for label, got in zip(["cat", "dog"], batch.presence, strict=True):
        classes = imagenet_classes(label)  # dog: 118, so its largest logit is offset by 0.2 ln 118
        expected = torch.sigmoid(slope * (logits[0, classes].max() - penalty * np.log(len(classes))) + bias)
        assert got == pytest.approx(float(expected), rel=1e-4)
    torch.manual_seed(0)
    model, tokenizer = cams.load_clip("RN50", "none", torch.device("cpu"))
    text = cams.text_embeddings(model, tokenizer, ["cat", "dog", "car"], cams.TEMPLATES, "cpu")
    scorer = cams.clip_scorer(model, text, score="softmax")
    images = torch.randint(0, 255, (2, 3, 224, 224), dtype=torch.uint8)
    weights = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    maps, presence = cams.cams_and_presence(scorer, images, weights)
    with torch.no_grad():
        expected = scorer.score(scorer.network(cams.normalise_batch(images, scorer.mean, scorer.std)))
    torch.testing.assert_close(presence, expected[[0, 1], [1, 2]], atol=1e-5, rtol=1e-4)
    assert maps.shape == (2, 7, 7)


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan", "high"])
def test_bad_min_score_is_refused(photos, tmp_path, value):
    proc = run_fsseg(
        "clip-cam",
        "--images",
        photos / "cat",
        "--label",
        "cat",
        "--min-score",
        value,
        "--out",
        tmp_path / "x",
    )
    assert "Invalid value for '--min-score'" in error_line(proc) and proc.returncode == 2
    assert not (tmp_path / "x").exists()


def test_clip_min_score_applies_to_the_prompt_score(photos, tmp_path):
    proc = run_fsseg(
        "clip-cam", "--images", photos / "moto", "--label", "motorcycle", "--backend", "clip",
        "--pretrained", "none", "--classes", "voc", "--input-size", "64", "--min-score", "0.9",
        "--out", tmp_path / "clip",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 judged absent" in proc.stdout  # random weights: near 1/20 for every prompt
    resolved = json.loads((tmp_path / "clip" / "manifest.json").read_text())["resolved"]
    assert resolved["min_score"] == 0.9 and resolved["presence"] == "the prompt score (softmax)"
    assert not any(np.asarray(Image.open(p)).any() for p in (tmp_path / "clip" / "masks").iterdir())


@pytest.mark.slow
def test_absent_labels_score_lower_on_real_photos(tmp_path):
    """VOC-mini through the stage: 2011_000003 (person, bottle), 2011_000006 (person, chair, sofa),
    2011_000025 (bus, car); labels shown by one photo, and labels shown by none."""
    from stages.clip_cam import run_clip_cam

    photos = shared_data("voc-mini") / "JPEGImages"
    shown = {"bus": "2011_000025", "car": "2011_000025", "chair": "2011_000006", "sofa": "2011_000006"}
    scores = {}
    for label in [*shown, "dog", "cat", "horse", "aeroplane", "sheep"]:
        out = run_clip_cam(tmp_path / label, images=str(photos), label=label, backend="imagenet")
        scores[label] = {k: float(r["score"]) for k, r in _csv(out).items()}
    for label, image in shown.items():
        others = [s for k, s in scores[label].items() if k != image]
        assert scores[label][image] >= IMAGENET_MIN_SCORE and scores[label][image] > max(others), scores[
            label
        ]
    present = [scores[label][image] for label, image in shown.items()]
    absent = [s for label in scores for k, s in scores[label].items() if shown.get(label) != k]
    pairs = [(p, a) for p in present for a in absent]
    assert sum(p > a for p, a in pairs) / len(pairs) >= 0.9, (present, sorted(absent)[-5:])
    for label in ("dog", "cat", "horse", "aeroplane", "sheep"):  # in none of the photos: no mask at all
        assert all(s < IMAGENET_MIN_SCORE for s in scores[label].values()), (label, scores[label])
