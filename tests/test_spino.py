"""SPINO: fusion, heads, losses, DINOv2 checkpoints, mixed batches, the three stages end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, error_line, make_street_tree, run_fsseg

from stages.core.devices import resolve_precision
from stages.core.imageio import read_label
from stages.core.panoptic import (
    boundary_target,
    cityscapes_form,
    coco_segments,
    from_instance_ids,
    fuse_panoptic,
)


# ----------------------------------------------------------------------------- fusion
def test_fusion_splits_touching_instances_at_the_predicted_boundary():
    semantic = np.zeros((20, 30), np.int64)  # 0 = road (stuff), 2 = car (thing)
    semantic[5:15, 2:22] = 2  # two touching cars: one blob
    semantic[0:2, 27:30] = 2  # a tiny car blob: void
    boundary = np.zeros_like(semantic, bool)
    boundary[5:15, 11:13] = True  # the boundary between the two cars
    fused, instances = fuse_panoptic(semantic, boundary, (2,), min_size=20, void=255)
    assert (fused[0:2, 27:30] == 255).all() and (instances[0:2, 27:30] == 0).all()
    left, right = instances[5:15, 2:11], instances[5:15, 13:22]
    assert len(np.unique(left)) == 1 and len(np.unique(right)) == 1 and left[0, 0] != right[0, 0]
    assert set(np.unique(instances)) == {0, 1, 2}
    # boundary pixels join the nearest instance: column 11 to the left car, 12 to the right one
    assert (instances[5:15, 11] == left[0, 0]).all() and (instances[5:15, 12] == right[0, 0]).all()
    assert (instances[semantic == 0] == 0).all() and (fused[semantic == 0] == 0).all()


def test_fusion_keeps_a_component_whole_when_no_piece_is_big_enough():
    semantic = np.zeros((12, 12), np.int64)
    semantic[2:10, 2:10] = 1
    boundary = np.zeros_like(semantic, bool)
    boundary[2:10, 4] = boundary[2:10, 7] = True  # pieces of 16, 16 and 16 px: all under 20
    fused, instances = fuse_panoptic(semantic, boundary, (1,), min_size=20)
    assert (instances[semantic == 1] == 1).all() and instances.max() == 1
    # one piece over the limit: it takes the whole component, the small pieces join it
    fused, instances = fuse_panoptic(semantic, boundary, (1,), min_size=10)
    assert instances.max() == 3 and (instances[semantic == 1] > 0).all()
    # without boundaries, connected components only
    _, instances = fuse_panoptic(semantic, None, (1,), min_size=1)
    assert instances.max() == 1


def test_boundary_target_marks_pixels_with_a_different_neighbour():
    ids = np.zeros((5, 6), np.int64)
    ids[:, 3:] = 7
    expected = np.zeros((5, 6), bool)
    expected[:, 2:4] = True
    assert (boundary_target(ids) == expected).all()
    ids[0, 0] = -1  # a void pixel: itself and its 3x3 neighbours are boundary
    assert boundary_target(ids)[:2, :2].all()


def test_cityscapes_form_and_coco_segments_round_trip():
    semantic = np.array([[0, 2, 2, 255], [1, 2, 2, 2]])
    instances = np.array([[0, 1, 1, 0], [0, 2, 2, 2]])
    label_ids = np.array([7, 23, 26])  # road, sky, car labelIds
    ids = cityscapes_form(semantic, instances, label_ids, 255, 0)
    assert ids.tolist() == [[7, 26000, 26000, 0], [23, 26001, 26001, 26001]]
    categories = {7: False, 23: False, 26: True}
    seg, info = coco_segments(ids, categories)
    assert seg[0, 3] == 0 and {s["category_id"] for s in info} == {7, 23, 26}
    assert sorted(s["area"] for s in info) == [1, 1, 2, 3]
    pan = from_instance_ids(ids, categories)
    assert sorted(pan.categories.values()) == [7, 23, 26, 26] and not pan.crowd


# ----------------------------------------------------------------------------- heads and losses
def test_heads_without_hidden_layers_commute_with_upsampling():
    from stages.models.spino import LabelGenHeads

    torch.manual_seed(0)
    feats = torch.randn(1, 8, 4, 5)
    linear = LabelGenHeads(in_channels=8, num_classes=3, semantic_hidden=(), boundary_hidden=())
    authors = LabelGenHeads(
        in_channels=8, num_classes=3, semantic_hidden=(), boundary_hidden=(), upsample_features=True
    )
    authors.load_state_dict(linear.state_dict())
    for a, b in zip(linear(feats, (28, 35)), authors(feats, (28, 35)), strict=True):
        assert a.shape[-2:] == (28, 35)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    deep = LabelGenHeads(in_channels=8, num_classes=3)
    assert [m.out_channels for m in deep.semantic if hasattr(m, "out_channels")] == [300, 300, 200, 3]
    assert [m.out_channels for m in deep.boundary if hasattr(m, "out_channels")] == [600, 600, 400, 1]


def test_bootstrapped_ce_averages_the_hardest_fifth():
    from stages.models.spino import bootstrapped_ce

    torch.manual_seed(1)
    logits = torch.randn(1, 3, 5, 4)
    target = torch.randint(0, 3, (1, 5, 4))
    target[0, 0, :2] = 255
    per_pixel = [
        -torch.log_softmax(logits[0, :, y, x], 0)[target[0, y, x]].item()
        for y in range(5)
        for x in range(4)
        if target[0, y, x] != 255
    ]
    expected = np.mean(sorted(per_pixel, reverse=True)[: int(0.2 * len(per_pixel))])
    assert bootstrapped_ce(logits, target, 255).item() == pytest.approx(expected, rel=1e-6)


def test_official_dinov2_checkpoint_loads_through_the_key_mapping(tmp_path):
    import timm

    from stages.models.backbones import load_backbone_weights
    from stages.models.spino import DenseFeatures

    reference = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 384)  # the official file has it; timm's model does not
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    features = load_backbone_weights(DenseFeatures(name="dinov2_vits14"), path)
    loaded = features.net.state_dict()
    assert set(loaded) == set(state) - {"mask_token"}
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    out = features(torch.zeros(1, 3, 28, 42))
    assert out.shape == (1, 384, 2, 3)
    assert not any(p.requires_grad for p in features.parameters())


# ----------------------------------------------------------------------------- panoptic model
@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_mixed_batches_hold_one_ground_truth_sample(batch_size):
    from stages.train_panoptic import mixed_batches

    batches = mixed_batches(20, 3, batch_size, np.random.default_rng(0))
    pseudo = [i for b in batches for s, i in b if s == "pseudo"]
    gt = [i for b in batches for s, i in b if s == "gt"]
    assert sorted(pseudo) == list(range(20))  # every pseudo-label once per epoch
    assert set(gt) == {0, 1, 2}
    if batch_size == 1:
        assert [b[0][0] for b in batches] == ["pseudo", "gt"] * 20
    else:
        assert all(sum(s == "gt" for s, _ in b) == 1 for b in batches)
        assert all(len(b) <= batch_size for b in batches) and len(batches[0]) == batch_size
    assert mixed_batches(20, 0, batch_size, np.random.default_rng(0))[0][0][0] == "pseudo"


def test_panoptic_inference_groups_pixels_by_their_offsets():
    from stages.models.spino import panoptic_inference
    from stages.train_panoptic import panoptic_targets

    semantic_map = np.zeros((16, 16), np.int64)
    semantic_map[2:8, 2:14] = 1  # two touching things of class 1
    instances = np.zeros((16, 16), np.int64)
    instances[2:8, 2:8], instances[2:8, 8:14] = 1, 2
    heat, offset, weight = panoptic_targets(semantic_map, instances, 255, sigma=2)
    # centres of mass at (4.5, 4.5) and (4.5, 10.5): the nearest pixels are half a pixel off in y and x
    assert heat.max() == pytest.approx(np.exp(-0.5 / (2 * 2**2))) and weight.sum() == 72
    assert offset[:, 2, 2].tolist() == [2.5, 2.5] and offset[:, 7, 13].tolist() == [-2.5, -2.5]
    logits = torch.nn.functional.one_hot(torch.from_numpy(semantic_map), 3).permute(2, 0, 1).float()
    logits[:, 4, 4] = torch.tensor(
        [0.0, 0.0, 1.0]
    )  # one pixel says thing class 2: its instance's majority wins
    classes, found = panoptic_inference(
        logits, torch.from_numpy(heat)[None], torch.from_numpy(offset), [1, 2], threshold=0.1, nms_kernel=3
    )
    assert classes[4, 4] == 1 and found.max() == 2
    a, b = found[2:8, 2:8].unique(), found[2:8, 8:14].unique()
    assert len(a) == 1 and len(b) == 1 and a.item() != b.item() and (found[semantic_map == 0] == 0).all()


# ----------------------------------------------------------------------------- stages through the CLI
@pytest.fixture(scope="module")
def street(tmp_path_factory):
    root = make_street_tree(tmp_path_factory.mktemp("street") / "street")
    return root


TINY = ("--backbone", "tiny", "--backbone-weights", "random", "--device", "cpu")


def _label_gen(street, out, *extra):
    return run_fsseg(
        "label-gen", "folder", "--root", street, "--k", "3", "--views", "2", "--epochs-semantic", "3",
        "--epochs-boundary", "2", *TINY, "--out", out, *extra,
    )  # fmt: skip


def test_label_gen_is_deterministic_and_records_its_images(street, tmp_path):
    from stages.core.checkpoints import load_checkpoint

    for name in ("a", "b"):
        proc = _label_gen(street, tmp_path / name)
        assert proc.returncode == 0, proc.stderr
    a = load_checkpoint(tmp_path / "a" / "heads.pt")
    b = load_checkpoint(tmp_path / "b" / "heads.pt")
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    params, resolved = manifest["params"], manifest["resolved"]
    assert params["k"] == 3 and params["backbone"] == "tiny" and params["indices"] is None
    assert len(resolved["ids"]) == 3 and len(resolved["indices"]) == 3
    assert resolved["precision"] == resolve_precision("auto", torch.device("cpu"))  # bf16 on bf16 CPUs
    assert manifest["settings"] == {"device": "cpu"}  # where a run goes, not what it writes
    assert "heads trained on 3 images" in proc.stdout
    _label_gen(street, tmp_path / "c", "--seed", "1")
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["resolved"]["ids"] != resolved["ids"]


def test_pseudo_label_train_predict_evaluate_chain(street, tmp_path):
    proc = run_fsseg(
        "pseudo-label", "folder", "--root", street, "--k", "3", "--views", "2", "--epochs-semantic", "3",
        "--epochs-boundary", "2", "--min-segment", "20", *TINY, "--out", tmp_path / "pl",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "pl-label-gen" / "heads.pt").is_file()
    # the label-gen options given to pseudo-label (--device shared by both records) reach label-gen
    made = json.loads((tmp_path / "pl-label-gen" / "manifest.json").read_text())
    assert made["params"]["k"] == 3 and made["params"]["views"] == 2 and made["settings"]["device"] == "cpu"
    pl = tmp_path / "pl"
    manifest = json.loads((pl / "manifest.json").read_text())
    assert manifest["params"]["min_segment"] == 20
    assert manifest["resolved"]["split"] == made["resolved"]["split"]
    annotated = manifest["resolved"]["annotated_ids"]
    written = sorted(p.name[:3] for p in (pl / "cityscapes").glob("*_instanceIds.png"))
    assert written == sorted({f"s{i:02d}" for i in range(8)} - set(annotated))
    for sid in written:
        ids = read_label(pl / "cityscapes" / f"{sid}_gtFine_instanceIds.png")
        labels = read_label(pl / "cityscapes" / f"{sid}_gtFine_labelIds.png")
        assert ids.dtype == np.uint16 and (np.where(ids >= 1000, ids // 1000, ids) == labels).all()
        assert (pl / "preview" / f"{sid}.jpg").is_file() and (pl / "panoptic" / f"{sid}.png").is_file()
    coco = json.loads((pl / "panoptic.json").read_text())
    assert [a["file_name"] for a in coco["annotations"]] == [f"{s}.png" for s in written]
    assert {c["name"] for c in coco["categories"]} == {"road", "sky", "car"}

    # resume: a lost item is redone, the rest kept
    manifest = pl / "manifest.json"
    manifest.unlink()
    (pl / "cityscapes" / f"{written[0]}_gtFine_instanceIds.png").unlink()
    kept = (pl / "cityscapes" / f"{written[1]}_gtFine_instanceIds.png").stat().st_mtime_ns
    proc = run_fsseg("pseudo-label", "folder", "--root", street, "--heads", tmp_path / "pl-label-gen",
                     "--min-segment", "20", "--device", "cpu", "--out", pl)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (pl / "cityscapes" / f"{written[0]}_gtFine_instanceIds.png").is_file()
    assert (pl / "cityscapes" / f"{written[1]}_gtFine_instanceIds.png").stat().st_mtime_ns == kept

    proc = run_fsseg("data", "panoptic-gt", "folder", "--root", street, "--out", tmp_path / "gt")
    assert proc.returncode == 0 and "8 images (connected components)" in proc.stdout, proc.stderr
    proc = run_fsseg("evaluate", "--task", "panoptic", "--format", "coco", "--pred", tmp_path / "gt",
                     "--gt", tmp_path / "gt", "--out", tmp_path / "ev-gt")  # fmt: skip
    assert "PQ 100.00" in proc.stdout, proc.stderr

    for batch in ("1", "3"):
        proc = run_fsseg(
            "train-panoptic", "--pseudo", pl, *TINY, "--tiny", "--epochs", "2", "--batch-size", batch,
            "--val-split", "all", "--val-images", "3", "--out", tmp_path / f"tp{batch}",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        out = json.loads((tmp_path / f"tp{batch}" / "manifest.json").read_text())["outputs"]
        assert out["ground_truth_images"] == 3 and len(out["history"]) == 2
        assert out["history"][-1]["val_pq"] is not None and "val_miou" in out["history"][-1]
    proc = run_fsseg(
        "predict-panoptic", "--checkpoint", tmp_path / "tp3" / "checkpoints" / "best.pt",
        "--dataset", "folder", "--root", street, "--split", "all", "--device", "cpu", "--out", tmp_path / "pred",
    )  # fmt: skip
    assert proc.returncode == 0 and "8 panoptic predictions" in proc.stdout, proc.stderr
    manifest = json.loads((tmp_path / "pred" / "manifest.json").read_text())
    assert manifest["kind"] == "panoptic-pred" and manifest["stage"] == "predict-panoptic"
    assert manifest["params"]["split"] == "all" and manifest["resolved"]["dataset"] == "folder"
    proc = run_fsseg("evaluate", "--task", "panoptic", "--format", "coco", "--pred", tmp_path / "pred",
                     "--gt", tmp_path / "gt", "--out", tmp_path / "ev")  # fmt: skip
    assert proc.returncode == 0 and "PQ" in proc.stdout, proc.stderr


def test_train_panoptic_resume_matches_an_uninterrupted_run(street, tmp_path):
    from stages.core.checkpoints import load_checkpoint
    from stages.label_gen import run_label_gen
    from stages.pseudo_label import run_pseudo_label
    from stages.train_panoptic import run_train_panoptic

    run_label_gen(tmp_path / "lg", dataset="folder", root=street, k=3, backbone="tiny", backbone_weights="random",
                  views=1, epochs_semantic=1, epochs_boundary=1, device="cpu")  # fmt: skip
    run_pseudo_label(tmp_path / "pl", heads=tmp_path / "lg", min_segment=20, device="cpu")
    kwargs = dict(pseudo=tmp_path / "pl", backbone="tiny", backbone_weights="random", tiny=True, epochs=3,
                  batch_size=2, device="cpu", seed=5)  # fmt: skip
    run_train_panoptic(tmp_path / "straight", **kwargs)

    def stop_in_epoch_2(done, total, status=None):
        if status and status.startswith("epoch 2/3"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_train_panoptic(tmp_path / "resumed", on_progress=stop_in_epoch_2, **kwargs)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["epoch"] == 0
    run_train_panoptic(tmp_path / "resumed", **kwargs)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_sharded_pseudo_labelling_under_torchrun_matches_one_process(street, tmp_path):
    lg = tmp_path / "lg"
    assert _label_gen(street, lg).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # the same threads per process:
    # bf16 kernels (the default on bf16 CPUs) round differently with another thread count
    single = run_fsseg("pseudo-label", "folder", "--root", street, "--heads", lg, "--min-segment", "20",
                       "--device", "cpu", "--out", tmp_path / "one", env=env)  # fmt: skip
    assert single.returncode == 0, single.stderr
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "fsseg_cli.main", "pseudo-label", "folder",
         "--root", str(street), "--heads", str(lg), "--min-segment", "20", "--device", "cpu", "-q",
         "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    one = sorted((tmp_path / "one" / "cityscapes").glob("*.png"))
    two = sorted((tmp_path / "two" / "cityscapes").glob("*.png"))
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 10
    for a, b in zip(one, two, strict=True):
        assert (read_label(a) == read_label(b)).all(), a.name
    assert json.loads((tmp_path / "one" / "panoptic.json").read_text()) == json.loads(
        (tmp_path / "two" / "panoptic.json").read_text()
    )


def test_spino_user_errors(street, tmp_path):
    lg = tmp_path / "lg"
    assert _label_gen(street, lg).returncode == 0
    line = error_line(run_fsseg("pseudo-label", "folder", "--root", street, "--heads", lg, "--tta-scales", "1,x",
                                "--out", tmp_path / "a"))  # fmt: skip
    assert "--tta-scales" in line or "scales" in line
    line = error_line(run_fsseg("train-panoptic", "--pseudo", lg, "--out", tmp_path / "b"))
    assert "label-gen" in line and "fsseg pseudo-label" in line
    line = error_line(_label_gen(street, tmp_path / "c", "--indices", "1,99"))
    assert "--indices [99]" in line
    line = error_line(
        run_fsseg("label-gen", "folder", "--root", street, "--k", "50", *TINY, "--out", tmp_path / "d")
    )
    assert "--k 50" in line and "8 images" in line
    line = error_line(run_fsseg("predict-panoptic", "--checkpoint", lg / "heads.pt", "--dataset",
                                "folder", "--root", street, "--split", "all", "--out", tmp_path / "e"))  # fmt: skip
    assert "spino_heads" in line and "train-panoptic checkpoint" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "e").exists()


def test_train_panoptic_ddp_two_processes_keep_identical_weights(street, tmp_path):
    from stages.label_gen import run_label_gen
    from stages.pseudo_label import run_pseudo_label

    run_label_gen(tmp_path / "lg", dataset="folder", root=street, k=3, backbone="tiny", backbone_weights="random",
                  views=1, epochs_semantic=1, epochs_boundary=1, device="cpu")  # fmt: skip
    run_pseudo_label(tmp_path / "pl", heads=tmp_path / "lg", min_segment=20, device="cpu")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "fsseg_cli.main", "train-panoptic",
         "--pseudo", str(tmp_path / "pl"), *TINY, "--tiny", "--epochs", "2", "--batch-size", "2", "-q",
         "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    checksums = manifest["outputs"]["rank_weight_checksums"]
    assert manifest["world_size"] == 2 and len(checksums) == 2 and checksums[0] == checksums[1]
    assert len(manifest["outputs"]["history"]) == 2


@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet_lite0", "tiny"])
def test_panoptic_model_shapes_and_trainable_parts(backbone):
    from stages.models.spino import PanopticDeepLab

    model = PanopticDeepLab(backbone=backbone, num_classes=5, channels=16, head_channels=8)
    out = model(torch.zeros(2, 3, 56, 112))  # sides: multiples of the ViT's 14
    assert out["semantic"].shape == (2, 5, 56, 112) and out["center"].shape == (2, 1, 56, 112)
    assert out["offset"].shape == (2, 2, 56, 112)
    backbone_trainable = any(p.requires_grad for p in model.backbone.parameters())
    assert backbone_trainable == (backbone == "resnet50")  # frozen backbones get only the adapter trained


def test_a_diverged_training_stops_with_one_line_and_no_artifact(street, tmp_path, monkeypatch):
    """A NaN loss (here forced) ends the stage with an error naming the step and a fix, instead
    of training on to NaN weights and writing them as a finished artifact."""
    from stages.core.errors import FssegError
    from stages.label_gen import run_label_gen

    monkeypatch.setattr(
        "stages.label_gen.bootstrapped_ce", lambda logits, *a, **k: logits.sum() * float("nan")
    )
    with pytest.raises(
        FssegError, match=r"training diverged: the loss is nan at epoch 1, semantic head \(rerun"
    ):
        run_label_gen(tmp_path / "lg", dataset="folder", root=street, k=3, backbone="tiny",
                      backbone_weights="random", views=1, epochs_semantic=1, epochs_boundary=1,
                      device="cpu")  # fmt: skip
    assert not (tmp_path / "lg" / "manifest.json").exists() and not (tmp_path / "lg" / "heads.pt").exists()
