"""Every checkpoint a training stage writes loads with `torch.load(weights_only=True)`, also the
`last.pt` of an interrupted run and everything a resumed run writes; PSPNet pretraining resumes to
the same weights as an uninterrupted run, and its `last.pt` feeds finetune-episode."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from stages.core.checkpoints import plain
from tests.conftest import make_street_tree, make_voc_tree, run_fsseg

TINY = dict(backbone="tiny", backbone_weights="random", tiny=True, device="cpu")


def assert_weights_only(folder) -> int:
    """Every .pt file under `folder` loads with weights_only=True; returns how many there are."""
    files = sorted(folder.rglob("*.pt"))
    for path in files:
        torch.load(path, map_location="cpu", weights_only=True)  # raises on any pickled object
    return len(files)


def stop_in_last_epoch(epochs: int):
    """An on_progress callback that interrupts (as Ctrl-C does) once the last epoch has begun."""

    def on_progress(done, total, status=None):
        if status and status.startswith(f"epoch {epochs}/{epochs}"):
            raise KeyboardInterrupt

    return on_progress


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """A tiny VOC tree and a stand-in clip-cam artifact (random CAMs) for imr-hsnet."""
    from stages.core.datasets import open_dataset
    from stages.core.imageio import save_float_map

    base = tmp_path_factory.mktemp("safe-ckpt")
    os.environ["FSSEG_CACHE"] = str(base / "cache")
    root = make_voc_tree(base / "VOC2012")
    cams = base / "cams"
    ds = open_dataset("pascal", root, "all")
    rng = np.random.default_rng(0)
    for image_id, counts in ds.scan().items():
        for cls in counts:
            save_float_map(cams / "cams" / f"{image_id}__{cls}.npy", rng.random((8, 8)))
    (cams / "manifest.json").write_text(json.dumps({"kind": "cams", "stage": "clip-cam", "outputs": {}}))
    return {"base": base, "root": root, "cams": cams}


def test_plain_turns_numpy_scalars_into_python_numbers():
    payload = plain({"lr": np.float64(0.5), "steps": [np.int64(3)], "pair": (np.float32(1.5),)})
    assert payload == {"lr": 0.5, "steps": [3], "pair": (1.5,)}
    assert type(payload["lr"]) is float and type(payload["steps"][0]) is int
    with pytest.raises(TypeError, match=r"checkpoint\['where'\] is a PosixPath"):
        plain({"where": __import__("pathlib").Path("x")})


@pytest.mark.parametrize("method", ["imr-hsnet", "hsnet"])
def test_episodic_pretrain_checkpoints_load_safely_after_resume(voc, tmp_path, method):
    from stages.pretrain import run_pretrain

    kwargs = dict(method=method, dataset="pascal", root=voc["root"], split="all", fold=1, img_size=32,
                  epochs=2, batch_size=4, min_area=100, val_episodes=None, **TINY)  # fmt: skip
    if method == "imr-hsnet":
        kwargs["cams"] = voc["cams"]
    out = tmp_path / method
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(out, on_progress=stop_in_last_epoch(2), **kwargs)
    assert assert_weights_only(out) == 2  # best.pt and last.pt of epoch 1
    run_pretrain(out, resume=True, **kwargs)
    assert assert_weights_only(out) == 2
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1


def test_pspnet_resume_is_bit_equal_and_last_pt_feeds_finetune(voc, tmp_path):
    from stages.pretrain import run_pretrain

    kwargs = dict(method="pspnet", dataset="pascal", root=voc["root"], split="all", fold=0, img_size=32,
                  epochs=2, batch_size=4, contrastive=0.1, val_split="all", val_images=4, seed=2, **TINY)  # fmt: skip
    run_pretrain(tmp_path / "straight", **kwargs)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(tmp_path / "resumed", on_progress=stop_in_last_epoch(2), **kwargs)
    last = tmp_path / "resumed" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)  # the cosine learning rate was a NumPy scalar here
    assert state["epoch"] == 0 and type(state["optimizer"]["param_groups"][0]["lr"]) is float
    run_pretrain(tmp_path / "resumed", resume=True, **kwargs)
    for folder in ("straight", "resumed"):
        assert assert_weights_only(tmp_path / folder) == 2
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0)
    assert a["history"][-1]["loss"] == b["history"][-1]["loss"] and a["best"] == b["best"]

    # the CLI resumes the same way (a rerun, and --resume) and last.pt is a finetune-episode checkpoint
    env = {"FSSEG_CACHE": os.environ["FSSEG_CACHE"]}
    episodes = tmp_path / "fss.json"
    run_fsseg("data", "episodes", "pascal", "--root", voc["root"], "--split", "all", "--fold", 0, "--n", 2,
              "--min-area", 500, "--out", episodes, env=env, check=True)  # fmt: skip
    proc = run_fsseg("finetune-episode", "--checkpoint", last, "--episodes", episodes, "--img-size", 32,
                     "--steps", 2, "--device", "cpu", "--out", tmp_path / "ft", env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "ft" / "pred").glob("*.png"))) == 2


def test_pspnet_cli_rerun_resumes_an_interrupted_run(voc, tmp_path):
    """The issue's repro: an interrupted CLI run continues from last.pt when run again."""
    from stages.pretrain import run_pretrain

    args = ["--method", "pspnet", "--dataset", "pascal", "--root", voc["root"], "--split", "all", "--fold", 0,
            "--backbone", "tiny", "--backbone-weights", "random", "--tiny", "--img-size", 32, "--epochs", 2,
            "--batch-size", 4, "--device", "cpu", "--out", tmp_path / "psp"]  # fmt: skip
    kwargs = dict(method="pspnet", dataset="pascal", root=voc["root"], split="all", fold=0, img_size=32,
                  epochs=2, batch_size=4, **TINY)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):  # the same parameters as the CLI's: the CLI run resumes it
        run_pretrain(tmp_path / "psp", on_progress=stop_in_last_epoch(2), **kwargs)
    env = {"FSSEG_CACHE": os.environ["FSSEG_CACHE"]}
    proc = run_fsseg("pretrain", *args, "--resume", "-v", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stderr and "at epoch 2" in proc.stderr
    assert assert_weights_only(tmp_path / "psp") == 2


def test_train_panoptic_and_label_gen_checkpoints_load_safely_after_resume(tmp_path):
    from stages.label_gen import run_label_gen
    from stages.pseudo_label import run_pseudo_label
    from stages.train_panoptic import run_train_panoptic

    street = make_street_tree(tmp_path / "street", n=5, size=(42, 56))
    os.environ.setdefault("FSSEG_CACHE", str(tmp_path / "cache"))
    run_label_gen(tmp_path / "lg", dataset="folder", root=street, k=2, backbone="tiny", backbone_weights="random",
                  views=1, epochs_semantic=2, epochs_boundary=1, device="cpu")  # fmt: skip
    assert assert_weights_only(tmp_path / "lg") == 1  # heads.pt
    run_pseudo_label(tmp_path / "pl", heads=tmp_path / "lg", min_segment=5, device="cpu")
    kwargs = dict(pseudo=tmp_path / "pl", tiny=True, backbone="tiny", backbone_weights="random", epochs=2,
                  batch_size=2, val_split="all", val_images=2, device="cpu")  # fmt: skip
    out = tmp_path / "tp"
    with pytest.raises(KeyboardInterrupt):
        run_train_panoptic(out, on_progress=stop_in_last_epoch(2), **kwargs)
    assert assert_weights_only(out) == 2  # best.pt (validated: its PQ) and last.pt
    run_train_panoptic(out, **kwargs)
    assert assert_weights_only(out) == 2
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
