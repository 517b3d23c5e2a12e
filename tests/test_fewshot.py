"""Few-shot masks with no pretraining stage: `finetune-episode` without --checkpoint (frozen ImageNet
features, per-episode classifiers), in ad-hoc and benchmark mode."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from stages.core.errors import FssegError
from stages.core.imageio import read_binary_mask
from stages.finetune_episode import run_finetune_episode
from stages.params import FINETUNE_LR, FinetuneParams
from tests.conftest import error_line, make_voc_tree, run_fsseg, shared_data

TINY = {"backbone": "tiny", "backbone_weights": "random", "img_size": 64, "device": "cpu"}


def _photos(folder, masks, n: int, seed: int):
    """n noisy images with a bright square (the class) at a random place, and its masks."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    if masks is not None:
        masks.mkdir(parents=True)
    truth = {}
    for i in range(n):
        img = rng.integers(0, 90, (72, 96, 3), dtype=np.uint8)
        y, x = rng.integers(4, 36), rng.integers(4, 56)
        img[y : y + 30, x : x + 34] = (230, 200, 40)
        mask = np.zeros((72, 96), np.uint8)
        mask[y : y + 30, x : x + 34] = 255
        Image.fromarray(img).save(folder / f"p{i}.png")
        if masks is not None:
            Image.fromarray(mask).save(masks / f"p{i}.png")
        truth[f"p{i}"] = mask > 0
    return truth


def test_adhoc_mode_writes_a_mask_and_an_overlay_per_query(tmp_path):
    _photos(tmp_path / "s", tmp_path / "m", 2, seed=0)
    truth = _photos(tmp_path / "q", None, 3, seed=1)
    out = run_finetune_episode(
        tmp_path / "out", support=tmp_path / "s", support_masks=tmp_path / "m", query=tmp_path / "q", **TINY
    )
    for stem, gt in truth.items():
        assert read_binary_mask(out / "masks" / f"{stem}.png").shape == gt.shape
        assert (out / "overlays" / f"{stem}.jpg").is_file()
        episode = json.loads((out / "episodes" / f"{sorted(truth).index(stem):05d}.json").read_text())
        assert episode["supports"] == ["support/p0", "support/p1"] and episode["query"] == f"query/{stem}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resolved"]["mode"] == "ad-hoc" and manifest["resolved"]["lr"] == FINETUNE_LR["imagenet"]
    assert manifest["resolved"]["label_size"] == 4 * 4  # 4x the tiny backbone's stride-16 side at 64 px
    assert manifest["params"] == {
        k: v for k, v in vars(FinetuneParams(**TINY)).items() if k not in ("device", "feature_cache_mb")
    }
    stamp = (out / "masks" / "p0.png").stat().st_mtime_ns  # the same run again is up to date
    run_finetune_episode(
        tmp_path / "out", support=tmp_path / "s", support_masks=tmp_path / "m", query=tmp_path / "q", **TINY
    )
    assert (out / "masks" / "p0.png").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(("cache_mb", "passes"), [(0, 3 * (2 + 1)), (None, 2 + 3)])
def test_each_image_goes_through_the_backbone_once_per_episode_or_once(
    tmp_path, monkeypatch, cache_mb, passes
):
    """Without a cache (the report's loop) each of 3 episodes computes its 2 supports and its query;
    with the default cache each of the 5 images is computed once."""
    import stages.finetune_episode as fe

    _photos(tmp_path / "s", tmp_path / "m", 2, seed=0)
    _photos(tmp_path / "q", None, 3, seed=1)
    seen = []
    compute = fe.Features._compute
    monkeypatch.setattr(fe.Features, "_compute", lambda self, i: seen.append(i) or compute(self, i))
    extra = {} if cache_mb is None else {"feature_cache_mb": cache_mb, "batch_episodes": 1}
    run_finetune_episode(
        tmp_path / "out", support=tmp_path / "s", support_masks=tmp_path / "m", query=tmp_path / "q",
        steps=1, **TINY, **extra,
    )  # fmt: skip
    assert len(seen) == passes


def test_prototype_start_alone_already_segments(tmp_path):
    """One SGD step from the cosine prototypes of the offline Lite0's features: the start is a classifier."""
    _photos(tmp_path / "s", tmp_path / "m", 1, seed=0)
    truth = _photos(tmp_path / "q", None, 2, seed=1)
    out = run_finetune_episode(
        tmp_path / "out", support=tmp_path / "s", support_masks=tmp_path / "m", query=tmp_path / "q",
        steps=1, img_size=128, device="cpu",
    )  # fmt: skip
    for stem, gt in truth.items():
        pred = read_binary_mask(out / "masks" / f"{stem}.png")
        assert (pred & gt).sum() / (pred | gt).sum() > 0.5


def test_benchmark_mode_without_a_checkpoint_then_evaluate(tmp_path):
    root = make_voc_tree(tmp_path / "VOC2012")
    episodes = tmp_path / "fss.json"
    run_fsseg("data", "episodes", "pascal", "--root", root, "--split", "all", "--fold", 0, "--n", 4,
              "--min-area", 500, "--out", episodes, check=True)  # fmt: skip
    out = run_finetune_episode(tmp_path / "ft", episodes=episodes, **TINY)
    assert sorted(p.name for p in (out / "pred").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    proc = run_fsseg(
        "evaluate", "--task", "fss", "--pred", out, "--episodes", episodes, "--out", tmp_path / "ev"
    )
    assert proc.returncode == 0, proc.stderr
    assert 0 <= json.loads((tmp_path / "ev" / "metrics.json").read_text())["miou"] <= 100


def test_adhoc_inputs_are_checked_before_anything_is_written(tmp_path):
    _photos(tmp_path / "s", tmp_path / "m", 2, seed=0)
    _photos(tmp_path / "q", None, 1, seed=1)
    (tmp_path / "m" / "p1.png").unlink()
    with pytest.raises(FssegError, match=r"no support mask .*p1\.png for p1\.png"):
        run_finetune_episode(tmp_path / "a", support=tmp_path / "s", support_masks=tmp_path / "m",
                             query=tmp_path / "q", **TINY)  # fmt: skip
    with pytest.raises(FssegError, match="--mode gfss needs --checkpoint"):
        run_finetune_episode(tmp_path / "b", episodes=tmp_path / "x.json", mode="gfss", **TINY)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    proc = run_fsseg("finetune-episode", "--support", tmp_path / "s", "--query", tmp_path / "q",
                     "--out", tmp_path / "c")  # fmt: skip
    assert "--support-masks" in error_line(proc) and proc.returncode == 2 and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_real_fss1000_one_shot_with_the_offline_imagenet_backbone(tmp_path):
    """Real FSS-1000 apples: one support, the other nine as queries, the defaults (Lite0 ImageNet)."""
    apple = shared_data("fss1000-mini") / "apple"
    (tmp_path / "s").mkdir()
    (tmp_path / "q").mkdir()
    (tmp_path / "s" / "1.jpg").symlink_to(apple / "1.jpg")
    for i in range(2, 11):
        (tmp_path / "q" / f"{i}.jpg").symlink_to(apple / f"{i}.jpg")
    out = run_finetune_episode(tmp_path / "out", support=tmp_path / "s", support_masks=apple,
                               query=tmp_path / "q", device="cpu")  # fmt: skip
    ious = []
    for i in range(2, 11):
        pred, gt = read_binary_mask(out / "masks" / f"{i}.png"), read_binary_mask(apple / f"{i}.png")
        ious.append((pred & gt).sum() / (pred | gt).sum())
    assert np.mean(ious) > 0.7, ious
