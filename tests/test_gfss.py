"""PSPNet pretraining with the pixel contrastive loss, and per-episode fine-tuning (FSS / GFSS)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from stages.models.episode_classifier import distillation, reformulated_ce, train_classifiers
from stages.models.pspnet import PSPNet, _SpaceToBatchConv2d, pixel_info_nce, sample_anchors
from tests.conftest import error_line, make_voc_tree, run_fsseg


def test_info_nce_equals_a_loop():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(9, 5), dim=1)
    labels = torch.tensor([1, 1, 2, 2, 2, 3, 1, 3, 4])  # class 4 has no positive: not an anchor
    t, base = 0.1, 0.07
    losses = []
    for i in range(len(labels)):
        pos = [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(len(labels)) if labels[j] != labels[i]]
        if not pos:
            continue
        terms = []
        for p in pos:
            num = math.exp(float(emb[i] @ emb[p]) / t)
            den = num + sum(math.exp(float(emb[i] @ emb[n]) / t) for n in neg)
            terms.append(-math.log(num / den))
        losses.append(sum(terms) / len(terms))
    expected = (t / base) * sum(losses) / len(losses)
    assert float(pixel_info_nce(emb, labels, temperature=t, base_temperature=base)) == pytest.approx(
        expected, rel=1e-5
    )


@pytest.mark.parametrize("hw", [(28, 28), (23, 30)])
def test_space_to_batch_depthwise_equals_the_dilated_conv(hw):
    """The Lite0 PSPNet's 5x5, dilation-4 depthwise convs run on interleaved sub-grids; values and
    gradients equal the dilated conv's, on maps whose sides are and are not multiples of 4."""
    torch.manual_seed(0)
    dilated = torch.nn.Conv2d(6, 6, 5, padding=8, dilation=4, groups=6)
    twin = _SpaceToBatchConv2d.like(dilated)
    assert twin.state_dict().keys() == dilated.state_dict().keys()
    x = torch.randn(2, 6, *hw, requires_grad=True)
    a, b = dilated(x), twin(x)
    torch.testing.assert_close(b, a)
    ga = torch.autograd.grad(a.square().sum(), [x, dilated.weight])
    gb = torch.autograd.grad(b.square().sum(), [x, twin.weight])
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(v, u)
    model = PSPNet(backbone="efficientnet_lite0", num_classes=3)
    assert sum(isinstance(m, _SpaceToBatchConv2d) for m in model.modules()) == 3


def test_anchor_sampler_never_picks_background_or_ignored():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2, 16, 16))
    labels[0, :3] = 255
    preds = torch.randint(0, 4, (2, 16, 16))
    idx = sample_anchors(labels, preds, max_anchors=60, generator=gen)
    chosen = labels.reshape(-1)[idx]
    assert len(idx) > 0 and not ((chosen == 0) | (chosen == 255)).any()
    assert len(set(idx.tolist())) == len(idx) and len(idx) <= 60
    for c in (1, 2, 3):  # half hard (misclassified), half easy per class, when both exist
        mine = idx[chosen == c]
        hard = (preds.reshape(-1)[mine] != c).sum()
        assert 0 < hard < len(mine)


def test_contrastive_gradients_reach_the_projection_and_backbone():
    torch.manual_seed(0)
    model = PSPNet(backbone="tiny", num_classes=3, bottleneck=16, proj_dim=8)
    x = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 3, (2, 8, 8))
    feats, logits = model(x)
    emb = torch.nn.functional.normalize(model.projection(feats), dim=1).permute(0, 2, 3, 1).reshape(-1, 8)
    idx = sample_anchors(labels, logits.argmax(1), max_anchors=64)
    pixel_info_nce(emb[idx], labels.reshape(-1)[idx]).backward()
    assert model.projection[0].weight.grad.abs().sum() > 0
    assert model.backbone.net.body[0][0].weight.grad.abs().sum() > 0


def test_reformulated_ce_and_distillation_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 0.5, 3.0], [0.2, 0.1, 2.0, -1.0]]])  # 1 episode, 2 pixels, K = 4
    p = logits.softmax(-1)[0]
    target = torch.tensor([[1, 0]])
    column = torch.tensor([[3, 3]])  # the novel class sits in column 3
    valid = torch.ones(1, 2)
    expected_ce = (
        -math.log(float(p[0, 3])) - math.log(1 - float(p[1, 3]))
    ) / 2  # Eq. 4: fg = novel, bg = the rest
    assert float(reformulated_ce(logits, target, column, valid)) == pytest.approx(expected_ce, rel=1e-6)
    teacher = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]])  # over [background, base1, base2]
    expected_kd = 0.0
    for i in range(2):
        old = [p[i, 0] + p[i, 3], p[i, 1], p[i, 2]]  # Eq. 7: old background = background + novel
        expected_kd += -sum(float(teacher[0, i, c]) * math.log(float(old[c])) for c in range(3))
    assert float(distillation(logits, teacher, 3, valid)) == pytest.approx(expected_kd / 2, rel=1e-6)


def test_batched_classifiers_equal_one_at_a_time():
    torch.manual_seed(0)
    e, n, d = 4, 30, 6
    x = torch.randn(e, n, d)
    target = torch.randint(0, 2, (e, n))
    valid = (torch.rand(e, n) > 0.1).float()
    teacher = torch.rand(e, n, 3).softmax(-1)
    column = torch.full((e, n), 3)
    init_w, init_b = torch.randn(e, 4, d) * 0.1, torch.zeros(e, 4)
    w, b, loss = train_classifiers(
        x, target, valid, teacher, init_w, init_b, column, mode="gfss", steps=20, lr=0.1, gamma=10.0, n_old=3
    )
    for k in range(e):
        wk, bk, lk = train_classifiers(
            x[k : k + 1],
            target[k : k + 1],
            valid[k : k + 1],
            teacher[k : k + 1],
            init_w[k : k + 1],
            init_b[k : k + 1],
            column[k : k + 1],
            mode="gfss",
            steps=20,
            lr=0.1,
            gamma=10.0,
            n_old=3,
        )
        torch.testing.assert_close(wk[0], w[k], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lk[0], loss[k], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("gfss")
    env = {"FSSEG_CACHE": str(base / "cache")}
    root = make_voc_tree(base / "VOC2012")
    run_fsseg(
        "pretrain",
        "--method",
        "pspnet",
        "--dataset",
        "pascal",
        "--root",
        root,
        "--split",
        "all",
        "--fold",
        0,
        "--backbone",
        "tiny",
        "--backbone-weights",
        "random",
        "--tiny",
        "--img-size",
        64,
        "--epochs",
        2,
        "--batch-size",
        4,
        "--contrastive",
        0.1,
        "--val-split",
        "all",
        "--out",
        base / "psp",
        env=env,
        check=True,
    )
    for protocol in ("fss", "gfss-binary"):
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
            8,
            "--min-area",
            500,
            "--protocol",
            protocol,
            "--out",
            base / f"{protocol}.json",
            env=env,
            check=True,
        )
    return {"base": base, "env": env, "ckpt": base / "psp" / "checkpoints" / "best.pt"}


def test_pspnet_pretrain_artifact(trained):
    manifest = json.loads((trained["base"] / "psp" / "manifest.json").read_text())
    assert manifest["params"]["contrastive"] == 0.1 and manifest["resolved"]["optimizer"] == "sgd"
    assert manifest["label_map"]["0"] == "background" and len(manifest["outputs"]["history"]) == 2
    assert all(r["val_miou"] is not None for r in manifest["outputs"]["history"])


def test_pretrain_method_picks_its_record():
    from stages.core.errors import FssegError
    from stages.params import EpisodicTrainParams, PSPNetTrainParams
    from stages.pretrain import pretrain_params

    psp = pretrain_params(None, {"method": "pspnet", "epochs": 3})
    assert type(psp) is PSPNetTrainParams and (psp.epochs, psp.img_size, psp.lr) == (3, 473, 2.5e-3)
    assert pretrain_params(None, {}) == EpisodicTrainParams(method="imr-hsnet")
    assert pretrain_params(EpisodicTrainParams(steps=3), {"method": "hsnet"}) == EpisodicTrainParams(
        method="hsnet", steps=3
    )
    with pytest.raises(FssegError, match="--method hsnet does not go with params=PSPNetTrainParams"):
        pretrain_params(PSPNetTrainParams(), {"method": "hsnet"})
    with pytest.raises(FssegError, match="--method 'psp' is not one of imr-hsnet, hsnet, pspnet"):
        pretrain_params(None, {"method": "psp"})


def test_pspnet_options_left_out_take_the_pspnet_records_defaults(tmp_path):
    """`pretrain --method pspnet` without --img-size/--batch-size/--lr trains with the GFSS report's
    473/12/2.5e-3 (PSPNetTrainParams), not IMR's 400/40/4e-4; the manifest records them."""
    from dataclasses import asdict

    from stages.params import EpisodicTrainParams, PSPNetTrainParams

    root = make_voc_tree(tmp_path / "VOC2012")
    given = {"split": "all", "backbone": "tiny", "backbone_weights": "random", "tiny": True, "epochs": 1}
    run_fsseg("pretrain", "--method", "pspnet", "--dataset", "pascal", "--root", root, "--split", "all",
              "--backbone", "tiny", "--backbone-weights", "random", "--tiny", "--epochs", 1, "--device", "cpu",
              "--out", tmp_path / "psp", env={"FSSEG_CACHE": str(tmp_path / "cache")}, check=True)  # fmt: skip
    manifest = json.loads((tmp_path / "psp" / "manifest.json").read_text())
    params = manifest["params"]
    assert (params["img_size"], params["batch_size"], params["lr"]) == (473, 12, 0.0025)
    assert params["epochs"] == 1 and PSPNetTrainParams().epochs == 100  # the one option made small here
    defaults = asdict(PSPNetTrainParams())
    episodic = asdict(EpisodicTrainParams())
    for name, value in defaults.items():
        recorded = manifest["settings"][name] if name == "device" else params[name]
        assert recorded == given.get(name, "cpu" if name == "device" else value), name
    differ = {name for name, value in defaults.items() if value != episodic.get(name)}
    assert {"img_size", "batch_size", "lr", "epochs"} <= differ  # what IMR's defaults would have changed
    resolved = manifest["resolved"]
    assert resolved["method"] == "pspnet" and resolved["precision"] in ("fp32", "bf16")


def test_finetune_fss_and_gfss_then_evaluate(trained, tmp_path):
    b, env = trained["base"], trained["env"]
    for mode, protocol, batch in (("fss", "fss", 50), ("fss", "fss", 1), ("gfss", "gfss-binary", 50)):
        out = tmp_path / f"{mode}-{batch}"
        run_fsseg(
            "finetune-episode",
            "--checkpoint",
            b / "psp" if batch == 1 else trained["ckpt"],  # the pretrain folder stands for its best.pt
            "--episodes",
            b / f"{protocol}.json",
            "--mode",
            mode,
            "--img-size",
            64,
            "--steps",
            20,
            "--batch-episodes",
            batch,
            "--out",
            out,
            env=env,
            check=True,
        )
        task = "fss" if mode == "fss" else "gfss"
        run_fsseg(
            "evaluate",
            "--task",
            task,
            "--pred",
            out,
            "--episodes",
            b / f"{protocol}.json",
            "--out",
            out / "eval",
            env=env,
            check=True,
        )
        assert json.loads((out / "episodes" / "00000.json").read_text())["final_loss"] > 0
    for png in sorted((tmp_path / "fss-50" / "pred").glob("*.png")):  # batched == one episode at a time
        a = np.asarray(Image.open(png))
        one = np.asarray(Image.open(tmp_path / "fss-1" / "pred" / png.name))
        assert (a == one).mean() > 0.999
    assert (tmp_path / "gfss-50" / "pred" / "00000_base.png").is_file()
    wrong = run_fsseg(
        "finetune-episode",
        "--checkpoint",
        trained["ckpt"],
        "--episodes",
        b / "fss.json",
        "--mode",
        "gfss",
        "--out",
        tmp_path / "x",
        env=env,
    )
    assert "needs `fsseg data episodes --protocol gfss`" in error_line(wrong)


def test_pspnet_ddp_two_processes_keep_identical_weights(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import ROOT

    root = make_voc_tree(tmp_path / "VOC2012")
    env = {
        **os.environ,
        "FSSEG_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "tests" / "ddp_pretrain_worker.py"),
            "pspnet",
            str(root),
            "-",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    sums = manifest["outputs"]["rank_weight_checksums"]
    assert manifest["world_size"] == 2 and len(sums) == 2 and sums[0] == sums[1]
