"""Checkpoints rebuild their model from the file alone and load with weights_only=True."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from stages.core.checkpoints import build_from_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from stages.core.errors import FssegError
from stages.models import MODELS


class TinyNet(nn.Module):
    def __init__(self, *, channels: int = 4, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.head = nn.Conv2d(channels, classes, 1)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))))


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(MODELS, "tiny_test_net", TinyNet)
    torch.manual_seed(0)
    return TinyNet(channels=5, classes=2)


def test_round_trip_rebuilds_from_file_alone(tmp_path, tiny):
    tiny.norm.running_mean += 1.5  # buffers travel too
    path = save_checkpoint(
        tmp_path / "m.pt", tiny, model_name="tiny_test_net", model_kwargs={"channels": 5, "classes": 2}
    )
    model, data = build_from_checkpoint(path)
    assert data["fsseg_version"] and data["model_kwargs"] == {"channels": 5, "classes": 2}
    x = torch.randn(1, 3, 8, 8)
    tiny.eval(), model.eval()
    torch.testing.assert_close(model(x), tiny(x), rtol=0, atol=0)
    raw = torch.load(path, weights_only=True)  # the plain format, for anyone's tools
    assert set(raw) >= {"model_name", "model_kwargs", "state_dict", "fsseg_version"}


def test_resume_state_restores_optimizer_and_rng(tmp_path, tiny):
    opt = torch.optim.Adam(tiny.parameters(), lr=1e-3)
    tiny(torch.randn(2, 3, 8, 8)).mean().backward()
    opt.step()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save_checkpoint(
        tmp_path / "r.pt",
        tiny,
        model_name="tiny_test_net",
        model_kwargs={"channels": 5, "classes": 2},
        optimizer=opt,
        step=7,
    )
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    data = load_checkpoint(path)
    assert data["step"] == 7
    set_rng_state(data["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    opt2 = torch.optim.Adam(TinyNet(channels=5, classes=2).parameters(), lr=1e-3)
    opt2.load_state_dict(data["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_unsafe_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model_name": "x", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(FssegError, match=r"Python object \(print\)"):
        load_checkpoint(tmp_path / "evil.pt")


def test_bad_checkpoint_files(tmp_path, tiny):
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(FssegError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FssegError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save(tiny.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(FssegError, match="not an fsseg checkpoint"):
        build_from_checkpoint(tmp_path / "plain.pt")
    path = save_checkpoint(
        tmp_path / "m.pt", tiny, model_name="tiny_test_net", model_kwargs={"channels": 5, "classes": 2}
    )
    data = torch.load(path, weights_only=True)
    data["model_kwargs"]["channels"] = 6
    torch.save(data, tmp_path / "wrong.pt")
    with pytest.raises(FssegError, match="does not fit model"):
        build_from_checkpoint(tmp_path / "wrong.pt")
    data["model_name"] = "nonexistent"
    torch.save(data, tmp_path / "unknown.pt")
    with pytest.raises(FssegError, match="unknown to this fsseg"):
        build_from_checkpoint(tmp_path / "unknown.pt")


FAMILIES = {  # the arguments each family needs beside its tiny widths
    "imr_hsnet": {"backbone": "tiny"},
    "hsnet": {"backbone": "tiny"},
    "pspnet": {"backbone": "tiny", "num_classes": 3},
    "panoptic_deeplab": {"backbone": "tiny", "num_classes": 3},
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_model_kwargs_alone_rebuild_every_family(tmp_path, name):
    """Checkpoints hold the constructor's kwargs and nothing else; those of fsseg 0.2.0, which also
    held `backbone_weights: None`, still load."""
    from stages.models import build, model_kwargs

    torch.manual_seed(0)
    kwargs = model_kwargs(name, tiny=True, **FAMILIES[name])
    model = build(name, **kwargs)
    path = save_checkpoint(tmp_path / "new.pt", model, model_name=name, model_kwargs=kwargs)
    old = torch.load(path, weights_only=True)
    torch.save(old | {"model_kwargs": old["model_kwargs"] | {"backbone_weights": None}}, tmp_path / "old.pt")
    for file in (path, tmp_path / "old.pt"):
        rebuilt, data = build_from_checkpoint(file)
        assert type(rebuilt) is type(model)
        for key, value in model.state_dict().items():
            assert torch.equal(rebuilt.state_dict()[key], value), key


def test_load_backbone_weights_fills_every_resnet50_backbone(tmp_path):
    """One torchvision ResNet50 file loads into the pyramid (HSNet), the dilated (PSPNet) and the
    panoptic backbones, which drop its classifier; misfits are one line each."""
    import torchvision

    from stages.models.backbones import load_backbone_weights
    from stages.models.hsnet import HSNet
    from stages.models.pspnet import PSPNet
    from stages.models.spino import PanopticDeepLab

    torch.manual_seed(0)
    state = torchvision.models.resnet50().state_dict()
    torch.save(state, tmp_path / "r50.pth")
    models = [HSNet(), PSPNet(num_classes=3), PanopticDeepLab(backbone="resnet50", num_classes=3)]
    for model in models:
        assert load_backbone_weights(model, tmp_path / "r50.pth") is model
        loaded = model.backbone.state_dict()
        loaded = {k.removeprefix("net."): v for k, v in loaded.items()}
        assert set(state) - set(loaded) <= {"fc.weight", "fc.bias"}
        assert all(torch.equal(loaded[k], v) for k, v in state.items() if k in loaded)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(FssegError, match=r"other.pth does not fit the resnet50 backbone \(Missing key"):
        load_backbone_weights(models[1], tmp_path / "other.pth")
    with pytest.raises(FssegError, match="the tiny backbone has no pretrained weights"):
        load_backbone_weights(PSPNet(backbone="tiny", num_classes=3), tmp_path / "r50.pth")
    tiny = PSPNet(backbone="tiny", num_classes=3)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    for keyword in ("random", "imagenet", "auto"):  # nothing to load: the weights as built
        load_backbone_weights(tiny, keyword)
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
