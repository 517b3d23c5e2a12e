"""IMR-HSNet: architecture, the authors' checkpoints, refine modes, training with resume and DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stages.models import build
from stages.models.hsnet import (
    CenterPivotConv4d,
    GroupNorm4d,
    HSNet,
    MaskedPair,
    correlation,
    level_masks,
    mask_levels,
)
from tests.conftest import ROOT, error_line, make_voc_tree, run_fsseg, shared_data

REFERENCE = ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """A tiny VOC tree, its CAMs (random CLIP), fold-0 episodes, and a 2-epoch tiny IMR model."""
    base = tmp_path_factory.mktemp("imr")
    env = {"FSSEG_CACHE": str(base / "cache")}
    root = make_voc_tree(base / "VOC2012")
    run_fsseg(
        "clip-cam",
        "--dataset",
        "pascal",
        "--root",
        root,
        "--split",
        "all",
        "--backend",
        "clip",
        "--pretrained",
        "none",
        "--out",
        base / "cams",
        env=env,
        check=True,
    )
    run_fsseg(
        "data",
        "episodes",
        "pascal",
        "--root",
        root,
        "--split",
        "all",
        "--fold",
        0,
        "--n",
        6,
        "--min-area",
        500,
        "--out",
        base / "episodes.json",
        env=env,
        check=True,
    )
    common = [
        "--dataset",
        "pascal",
        "--root",
        root,
        "--split",
        "all",
        "--fold",
        1,
        "--backbone",
        "tiny",
        "--backbone-weights",
        "random",
        "--tiny",
        "--img-size",
        64,
        "--batch-size",
        4,
        "--min-area",
        100,
    ]
    run_fsseg(
        "pretrain",
        "--method",
        "imr-hsnet",
        "--cams",
        base / "cams",
        *common,
        "--epochs",
        2,
        "--val-episodes",
        base / "episodes.json",
        "--out",
        base / "imr",
        env=env,
        check=True,
    )
    run_fsseg(
        "pretrain", "--method", "hsnet", *common, "--epochs", 1, "--out", base / "hsnet", env=env, check=True
    )
    return {
        "base": base,
        "root": root,
        "env": env,
        "cams": base / "cams",
        "episodes": base / "episodes.json",
        "imr": base / "imr" / "checkpoints" / "best.pt",
        "hsnet": base / "hsnet" / "checkpoints" / "best.pt",
        "common": common,
    }


def test_architecture_at_400():
    torch.manual_seed(0)
    model = build("imr_hsnet", tiny=True, backbone="tiny").eval()
    assert model.convz1.groups == 8 and model.convz1.weight.shape == (16 // 2, 32 // 2 // 8, 3, 3)
    with torch.no_grad():
        q, s = model.backbone(torch.randn(1, 3, 400, 400)), model.backbone(torch.randn(1, 3, 400, 400))
        assert [level[0].shape[-1] for level in q] == [50, 25, 13]
        sq = model.hpn_learner.encoder_layer2(correlation(q[0], s[0]))
        assert sq.shape == (1, 50, 50, 2, 2, 16)  # the support dims end at 2x2 on every level
        assert model.hpn_learner.encoder_layer4(correlation(q[2], s[2])).shape[3:5] == (2, 2)
        mq, ms = torch.rand(1, 1, 50, 50), torch.rand(1, 1, 50, 50)
        fast, fast_s = model.refine(q, s, mq, ms, steps=3, reuse_correlation=True)
        slow, slow_s = model.refine(q, s, mq, ms, steps=3, reuse_correlation=False)
    assert len(fast) == 3 and fast[0].shape == (1, 2, 100, 100)
    for a, b in zip(fast + fast_s, slow + slow_s, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    pair = MaskedPair(q, s)
    sides = [
        (pair.query_side(level_masks(q, mq), level_masks(s, ms)), mask_levels(q, mq), mask_levels(s, ms)),
        (pair.support_side(level_masks(s, ms), level_masks(q, mq)), mask_levels(s, ms), mask_levels(q, mq)),
    ]
    for lazy, own, other in sides:
        for got, a, b in zip(lazy, own, other, strict=True):
            want = correlation(a, b)
            torch.testing.assert_close(got.tensor(), want, atol=1e-6, rtol=1e-4)
            torch.testing.assert_close(
                got.strided(2), want[:, :, :, ::2, ::2].permute(0, 3, 4, 1, 2, 5), atol=1e-6, rtol=1e-4
            )
            with torch.enable_grad():  # training's path: one tensor, with autograd
                torch.testing.assert_close(got.tensor(), want, atol=1e-6, rtol=1e-4)
    # the first 4D convolution reads the lazy correlation slab by slab: the same as on the tensor
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr("stages.models.hsnet.CHUNK_ELEMENTS", 3 * sides[0][0][0].dots[0, 0].numel())
        for lazy, _, _ in sides:
            layer = model.hpn_learner.encoder_layer2[0]
            torch.testing.assert_close(layer(lazy[0]), layer(lazy[0].tensor()), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16"])
def test_taps_are_the_values_before_each_relu(backbone):
    """HSNet taps ResNet bottlenecks after the shortcut and before the final ReLU, and VGG convs
    before their ReLU: the taps hold negative values, and the network's own output is unchanged."""
    from stages.models.backbones import feature_pyramid

    torch.manual_seed(0)
    pyramid = feature_pyramid(backbone, weights="random")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        taps = [f for level in pyramid(x) for f in level]
        assert len(taps) == (13 if backbone == "resnet50" else 7)
        assert all(
            (t < 0).any() for t in (taps[:-1] if backbone == "vgg16" else taps)
        )  # VGG's last: a max-pool
        if backbone == "resnet50":  # the ReLU'd last tap is torchvision's layer4 output
            net = pyramid
            ref = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
            torch.testing.assert_close(torch.relu(taps[-1]), ref)


@pytest.mark.parametrize("hs, ws, stride", [(7, 6, 2), (2, 2, 1), (3, 2, 2)])
def test_center_pivot_conv_and_group_norm_match_their_definitions(hs, ws, stride):
    """Channels-last (B, hq, wq, hs, ws, C) layers against a direct 4D computation; support grids
    up to the kernel's size take the dense-matrix path."""
    torch.manual_seed(0)
    b, hq, wq, c, o, k = 2, 5, 4, 3, 4, 3
    x = torch.randn(b, hq, wq, hs, ws, c)
    conv = CenterPivotConv4d(c, o, kernel=k, stride=stride)
    got = conv(x)
    hk, wk = -(-hs // stride), -(-ws // stride)
    assert got.shape == (b, hq, wq, hk, wk, o)
    # a 4D convolution whose kernel is zero except the two center-pivot slices, position by position
    w1, w2 = conv.conv1.weight, conv.conv2.weight  # (o, c, k, k)
    pad = torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1, 1, 1, 1, 1))  # k = 3: one on each side of all 4 dims
    want = torch.zeros_like(got)
    for i in range(hq):
        for j in range(wq):
            for u in range(hk):
                for v in range(wk):
                    ks, ls = u * stride, v * stride  # the support position this output keeps
                    query_slice = pad[:, i : i + k, j : j + k, ks + 1, ls + 1]  # (b, k, k, c)
                    support_slice = pad[:, i + 1, j + 1, ks : ks + k, ls : ls + k]
                    want[:, i, j, u, v] = (
                        torch.einsum("bxyc,ocxy->bo", query_slice, w1)
                        + torch.einsum("bxyc,ocxy->bo", support_slice, w2)
                        + conv.conv1.bias
                        + conv.conv2.bias
                    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    norm = GroupNorm4d(2, o)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.normal_()
    reference = torch.nn.functional.group_norm(
        got.permute(0, 5, 1, 2, 3, 4), 2, norm.weight, norm.bias, norm.eps
    )
    torch.testing.assert_close(norm(got), reference.permute(0, 2, 3, 4, 5, 1), atol=1e-5, rtol=1e-5)


def test_dense_support_conv_equals_the_convolution_with_its_gradients():
    """The mixing blocks' 2x2 support grids run as one matrix product: the same values and the
    same weight gradients as the padded convolution."""
    torch.manual_seed(0)
    conv = CenterPivotConv4d(8, 6, kernel=3, stride=1)
    x = torch.randn(40, 2, 2, 8)
    direct = conv.conv2(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    dense = conv._support_conv(x)
    torch.testing.assert_close(dense, direct, atol=1e-5, rtol=1e-5)
    grads = [
        torch.autograd.grad(y.square().sum(), [conv.conv2.weight, conv.conv2.bias]) for y in (direct, dense)
    ]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # without gradients the matrix is kept, and rebuilt once the weights change in place
    with torch.no_grad():
        torch.testing.assert_close(conv._support_conv(x), direct, atol=1e-5, rtol=1e-5)
        assert conv._dense[1] is conv._dense_kernel(2, 2, 8, x.dtype, x.device)  # kept
        conv.load_state_dict({k: v * 2 for k, v in conv.state_dict().items()})
        direct = conv.conv2(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        torch.testing.assert_close(conv._support_conv(x), direct, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,backbone", [("imr_hsnet", "resnet50"), ("hsnet", "vgg16")])
def test_authors_checkpoint_loads_every_tensor(voc, tmp_path, kind, backbone):
    listing = REFERENCE / f"{kind}_state_dict_shapes.json"
    if not listing.is_file():
        pytest.skip(
            f"{listing} is absent (the authors' key listing ships beside the repo on dev and CI machines)"
        )
    shapes = json.loads(listing.read_text())["models"][backbone]
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v, generator=gen) if v else torch.tensor(7)) for k, v in shapes.items()}
    for key in state:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(3)
        elif key.endswith("running_var"):
            state[key] = state[key].abs() + 0.5
    path = tmp_path / "authors.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # as DataParallel saved them
    from stages.refine import load_refiner

    model, method, found = load_refiner(path, torch.device("cpu"))
    assert (method, found) == (kind.replace("_", "-"), backbone)
    ours = model.state_dict()
    assert len(ours) == len(state)
    for key, value in state.items():
        torch.testing.assert_close(ours[key.replace("conv1024_512.", "mid_proj.")], value, rtol=0, atol=0)
    refiner = "imr" if kind == "imr_hsnet" else "none"
    run_fsseg(
        "refine",
        "--checkpoint",
        path,
        "--episodes",
        voc["episodes"],
        "--cams",
        voc["cams"],
        "--refiner",
        refiner,
        "--img-size",
        64,
        "--out",
        tmp_path / "out",
        env=voc["env"],
        check=True,
    )
    assert len(list((tmp_path / "out" / "pred").glob("*.png"))) == 6


def test_refine_modes_cache_and_evaluate(voc, tmp_path):
    args = [
        "refine",
        "--checkpoint",
        voc["imr"],
        "--episodes",
        voc["episodes"],
        "--cams",
        voc["cams"],
        "--img-size",
        64,
    ]
    run_fsseg(*args, "--out", tmp_path / "cached", env=voc["env"], check=True)
    run_fsseg(*args, "--feature-cache-mb", 0, "--out", tmp_path / "uncached", env=voc["env"], check=True)
    for png in sorted((tmp_path / "cached" / "pred").glob("*.png")):
        np.testing.assert_array_equal(
            np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "uncached" / "pred" / png.name))
        )
    manifest = json.loads((tmp_path / "cached" / "manifest.json").read_text())
    assert manifest["outputs"]["feature_cache"]["hits"] > 0
    assert (tmp_path / "cached" / "steps" / "t2" / "support" / "00000_s0.png").is_file()
    overlay = Image.open(tmp_path / "cached" / "overlays" / "00000.jpg")
    assert overlay.size == (3 * 220, 2 * 220)  # support and query rows: initial CAM, step 1, step 2
    ev = run_fsseg(
        "evaluate",
        "--task",
        "fss",
        "--pred",
        tmp_path / "cached",
        "--episodes",
        voc["episodes"],
        "--out",
        tmp_path / "ev",
        env=voc["env"],
        check=True,
    )
    assert "mIoU" in ev.stdout
    pretrain_val = json.loads((voc["base"] / "imr" / "manifest.json").read_text())["outputs"]["history"][-1][
        "val_miou"
    ]
    scored = json.loads((tmp_path / "ev" / "metrics.json").read_text())["miou"]
    best = json.loads((voc["base"] / "imr" / "manifest.json").read_text())["outputs"]["best_val_miou"]
    assert scored == pytest.approx(best, abs=1e-6) or scored == pytest.approx(pretrain_val, abs=1e-6)
    run_fsseg(*args, "--zero-shot", "--out", tmp_path / "zero", env=voc["env"], check=True)
    assert not (tmp_path / "zero" / "steps" / "t1" / "support").exists()
    for refiner in ("none", "mutual"):
        run_fsseg(
            "refine",
            "--checkpoint",
            voc["hsnet"],
            "--episodes",
            voc["episodes"],
            "--cams",
            voc["cams"],
            "--refiner",
            refiner,
            "--img-size",
            64,
            "--out",
            tmp_path / refiner,
            env=voc["env"],
            check=True,
        )
    assert len(list((tmp_path / "mutual" / "steps").iterdir())) == 2
    wrong = run_fsseg(
        "refine",
        "--checkpoint",
        voc["hsnet"],
        "--episodes",
        voc["episodes"],
        "--cams",
        voc["cams"],
        "--refiner",
        "imr",
        "--out",
        tmp_path / "wrong",
        env=voc["env"],
    )
    assert "needs an IMR-HSNet checkpoint" in error_line(wrong)
    folder = [*args[:2], voc["base"] / "imr", *args[3:]]  # the pretrain artifact: its best.pt
    run_fsseg(*folder, "--out", tmp_path / "from-folder", env=voc["env"], check=True)
    for png in sorted((tmp_path / "cached" / "pred").glob("*.png")):
        np.testing.assert_array_equal(
            np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "from-folder" / "pred" / png.name))
        )
    no_ckpt = run_fsseg(*args[:2], tmp_path / "ev", *args[3:], "--out", tmp_path / "y", env=voc["env"])
    assert "'metrics' artifact without checkpoints/best.pt" in error_line(no_ckpt)
    not_cams = run_fsseg(*args, "--cams", tmp_path / "ev", "--out", tmp_path / "x", env=voc["env"])
    assert "'metrics' artifact" in error_line(not_cams) and "fsseg clip-cam" in error_line(not_cams)


def test_adhoc_mode_on_real_fss1000(voc, tmp_path):
    eiffel = shared_data("fss1000-eiffel")
    out = tmp_path / "adhoc"
    run_fsseg(
        "refine",
        "--checkpoint",
        voc["imr"],
        "--support",
        eiffel / "support" / "image",
        "--support-masks",
        eiffel / "support" / "label",
        "--query",
        eiffel / "query",
        "--label",
        "tower",
        "--img-size",
        64,
        "--out",
        out,
        env=voc["env"],
        check=True,
    )
    masks = list((out / "masks").glob("*.png"))
    assert len(masks) == len(list((eiffel / "query").iterdir()))
    assert (out / "masks" / "400. paris.png").is_file()
    assert (
        out / "steps" / "t2" / "query" / "400. paris_s4.png"
    ).is_file()  # 5-shot: one prediction per support


def test_training_resume_matches_an_uninterrupted_run(voc, tmp_path):
    from stages.core.checkpoints import load_checkpoint
    from stages.pretrain import run_pretrain

    kwargs = dict(
        method="imr-hsnet",
        dataset="pascal",
        root=voc["root"],
        split="all",
        fold=1,
        cams=voc["cams"],
        backbone="tiny",
        backbone_weights="random",
        tiny=True,
        img_size=64,
        epochs=3,
        batch_size=4,
        min_area=100,
        device="cpu",
        seed=3,
    )
    os.environ["FSSEG_CACHE"] = voc["env"]["FSSEG_CACHE"]
    run_pretrain(tmp_path / "straight", **kwargs)

    def stop_in_epoch_2(done, total, status=None):
        if status and status.startswith("epoch 2/3"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pretrain(tmp_path / "resumed", on_progress=stop_in_epoch_2, **kwargs)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["epoch"] == 0
    run_pretrain(tmp_path / "resumed", resume=True, **kwargs)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_ddp_two_processes_keep_identical_weights(voc, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, **voc["env"], "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "tests" / "ddp_pretrain_worker.py"),
            "imr-hsnet",
            str(voc["root"]),
            str(voc["cams"]),
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    checksums = manifest["outputs"]["rank_weight_checksums"]
    assert manifest["world_size"] == 2 and len(checksums) == 2 and checksums[0] == checksums[1]
    assert len((tmp_path / "ddp" / "log.jsonl").read_text().splitlines()) == 2


def test_hsnet_children_are_the_backbone_and_the_learner():
    assert {n for n, _ in HSNet(backbone="tiny").named_children()} == {"backbone", "hpn_learner"}


def test_mask_supervision_without_cams_on_camvid(voc, tmp_path):
    """Pixel-labelled supports need no CAM: a query whose class the offline CAM backend does not
    know (CamVid's Sky) starts from a flat mask; label supervision says which class lacks CAMs."""
    camvid = shared_data("camvid")
    episodes = tmp_path / "episodes.json"
    run_fsseg(
        "data", "episodes", "camvid", "--root", camvid, "--split", "val", "--fold", 0, "--n", 3,
        "--out", episodes, env=voc["env"], check=True,
    )  # fmt: skip
    classes = {ep["class"] for ep in json.loads(episodes.read_text())["episodes"]}
    assert 0 in classes  # Sky: no ImageNet counterpart
    args = ["refine", "--checkpoint", voc["hsnet"], "--episodes", episodes, "--refiner", "none",
            "--cam-backend", "imagenet", "--img-size", 64]  # fmt: skip
    run_fsseg(*args, "--supervision", "mask", "--out", tmp_path / "mask", env=voc["env"], check=True)
    assert len(list((tmp_path / "mask" / "pred").glob("*.png"))) == 3
    label = run_fsseg(*args, "--supervision", "label", "--out", tmp_path / "label", env=voc["env"])
    assert "knows no 'Pavement', 'Sky'" in error_line(label) and "--supervision mask" in error_line(label)
    assert not (tmp_path / "label").exists()


@pytest.mark.parametrize("name", ["hsnet", "imr_hsnet"])
def test_bf16_training_gradients_are_finite(name):
    """Episodic training under bf16 autocast (what --precision auto picks on bf16 CPUs and GPUs):
    every gradient finite. oneDNN's bf16 weight gradient of the dense support convolution was NaN
    on AMX CPUs, which trained every HSNet/IMR-HSNet to NaN there."""
    from stages.pretrain.episodic import episode_loss

    torch.manual_seed(0)
    model = build(name, tiny=True, backbone="tiny")
    qi, si = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    qt, st = (torch.rand(2, 64, 64) > 0.5).long(), (torch.rand(2, 64, 64) > 0.5).long()
    batch = (qi, qt, torch.rand(2, 1, 8, 8), si, st, torch.rand(2, 1, 8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = episode_loss(model, name.replace("_", "-"), batch, steps=2, lambdas=[1, 1], w_s=1)
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert torch.isfinite(loss) and not bad, bad
