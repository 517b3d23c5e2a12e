"""SPINO models: a frozen dense feature extractor, the label generator's heads, and a
Panoptic-DeepLab-style panoptic model with its post-processing.

- `DenseFeatures`: one feature map per image from a frozen backbone: DINOv2 ViT-S/B/L/14 (timm,
  last block's normalised patch tokens, stride 14), EfficientNet-Lite0 (stride 16: the stride-16
  map with the stride-32 map upsampled onto it), or a tiny ViT for tests.
- `LabelGenHeads`: semantic head (1x1 convs D->300->300->200->C) and boundary head
  (D->600->600->400->1). Default: heads at patch resolution, logits upsampled; with
  `upsample_features` (the authors' mode) features are upsampled first.
- `PanopticDeepLab`: backbone (frozen DenseFeatures + light adapter, or a trainable ResNet50),
  semantic / center / offset heads; `panoptic_inference` turns their outputs into instances.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.core.errors import FssegError
from stages.models.backbones import DINOV2, IMAGENET_MEAN, IMAGENET_STD

BACKBONES = (*DINOV2, "efficientnet_lite0", "tiny")


def input_size(shape: tuple[int, int], size: int | None, multiple: int) -> tuple[int, int]:
    """Network input (h, w) for an image of `shape`: height `size` (default the image's own), width
    keeping the aspect, both rounded to a multiple of `multiple`."""
    h, w = shape
    scale = (size or h) / h
    return (
        max(multiple, round(h * scale / multiple) * multiple),
        max(multiple, round(w * scale / multiple) * multiple),
    )


def to_unit(image, hw: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB uint8 array (H, W, 3) -> (1, 3, H, W) float in [0, 1], resized (bilinear) to `hw` if given."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(255)
    return x if hw is None else F.interpolate(x, size=hw, mode="bilinear", align_corners=False)


def colour_jitter(x: torch.Tensor, rng: np.random.Generator, strength: float = 0.2) -> torch.Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1 - strength, 1 + strength]."""
    b, c, s = rng.uniform(1 - strength, 1 + strength, 3)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    x = x * b
    grey = (x * luma).sum(1, keepdim=True)
    x = grey.mean() + (x - grey.mean()) * c
    grey = (x * luma).sum(1, keepdim=True)
    return (grey + (x - grey) * s).clamp(0, 1)


def bootstrapped_ce(
    logits: torch.Tensor, target: torch.Tensor, ignore: int, top: float = 0.2
) -> torch.Tensor:
    """Cross-entropy averaged over the hardest `top` fraction of the valid pixels.
    logits (B, C, H, W), target (B, H, W)."""
    per_pixel = F.cross_entropy(logits, target, ignore_index=ignore, reduction="none").flatten()
    valid = per_pixel[(target != ignore).flatten()]
    if valid.numel() == 0:
        return logits.sum() * 0
    return valid.topk(max(1, int(top * valid.numel()))).values.mean()


class DenseFeatures(nn.Module):
    """A frozen backbone returning one dense map: (B, 3, H, W) -> (B, C, H/stride, W/stride).

    H and W must be multiples of `multiple` (14 for ViTs, 32 for Lite0). Random init:
    `load_backbone_weights` loads the pretrained weights."""

    def __init__(self, *, name: str):
        super().__init__()
        if name not in BACKBONES:
            raise FssegError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
        self.name = name
        if name == "efficientnet_lite0":
            from stages.models.backbones import NORMALISATION, feature_pyramid

            self.net = feature_pyramid(name, weights="random")
            self.stride, self.multiple = 16, 32
            self.out_channels = self.net.channels[1][-1] + self.net.channels[2][-1]
            self.mean, self.std = NORMALISATION[name]
        else:
            import timm

            if name == "tiny":
                from timm.models.vision_transformer import VisionTransformer

                self.net = VisionTransformer(
                    img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                    dynamic_img_size=True,
                )  # fmt: skip
            else:
                self.net = timm.create_model(
                    DINOV2[name], pretrained=False, num_classes=0, dynamic_img_size=True
                )
            self.stride = self.multiple = 14
            self.out_channels = self.net.embed_dim
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> DenseFeatures:
        return super().train(False)  # frozen: batch norm statistics never move

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the backbone's normalised input."""
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) normalised -> (B, C, H/stride, W/stride)."""
        if self.name == "efficientnet_lite0":
            _, middle, coarse = self.net(x)
            up = F.interpolate(coarse[-1], size=middle[-1].shape[-2:], mode="bilinear", align_corners=False)
            return torch.cat([middle[-1], up], 1)
        b, _, h, w = x.shape
        tokens = self.net.forward_features(x)[:, self.net.num_prefix_tokens :]
        return tokens.transpose(1, 2).reshape(b, -1, h // 14, w // 14)


def _mlp(channels: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        layers.append(nn.Conv2d(cin, cout, 1))
        if i < len(channels) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LabelGenHeads(nn.Module):
    """SPINO's semantic and boundary heads on frozen features."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        semantic_hidden: Sequence[int] = (300, 300, 200),
        boundary_hidden: Sequence[int] = (600, 600, 400),
        upsample_features: bool = False,
    ):
        super().__init__()
        self.semantic = _mlp([in_channels, *semantic_hidden, num_classes])
        self.boundary = _mlp([in_channels, *boundary_hidden, 1])
        self.upsample_features = upsample_features

    def run_head(self, head: str, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """One head ("semantic" or "boundary"): features (B, D, h, w) -> logits (B, C, *size)."""

        def up(t):
            return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

        if self.upsample_features:
            return getattr(self, head)(up(features))
        return up(getattr(self, head)(features))

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, D, h, w) -> semantic logits (B, C, *size), boundary logits (B, 1, *size).

        A 1x1-conv head commutes with bilinear upsampling except through its ReLUs, so the default
        (heads at patch resolution, logits upsampled) is close to the authors' mode at ~1/stride^2 of
        the cost; the README gives the measured difference."""
        return self.run_head("semantic", features, size), self.run_head("boundary", features, size)


# ----------------------------------------------------------------------------- panoptic model
def _conv_bn(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _ResNet50(nn.Module):
    """Trainable ResNet50 at output stride 16 (last stage dilated)."""

    def __init__(self):
        super().__init__()
        import torchvision.models as tvm

        net = tvm.resnet50(weights=None, replace_stride_with_dilation=[False, False, True])
        net.fc = nn.Identity()
        self.name, self.net, self.stride, self.multiple, self.out_channels = "resnet50", net, 16, 32, 2048
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    normalise = DenseFeatures.normalise

    def forward(self, x):
        n = self.net
        x = n.layer1(n.maxpool(n.relu(n.bn1(n.conv1(x)))))
        return n.layer4(n.layer3(n.layer2(x)))


class PanopticDeepLab(nn.Module):
    """Panoptic-DeepLab-style model: backbone -> adapter -> semantic, center and offset heads.

    Frozen backbones (DINOv2, Lite0, tiny) get a light trainable adapter (1x1 + 3x3 conv);
    ResNet50 is trained end to end. Random init: `load_backbone_weights` loads the backbone's."""

    def __init__(self, *, backbone: str, num_classes: int, channels: int = 256, head_channels: int = 128):
        super().__init__()
        self.backbone = _ResNet50() if backbone == "resnet50" else DenseFeatures(name=backbone)
        self.adapter = nn.Sequential(
            _conv_bn(self.backbone.out_channels, channels, 1), _conv_bn(channels, channels)
        )

        def head(cout):
            return nn.Sequential(_conv_bn(channels, head_channels), nn.Conv2d(head_channels, cout, 1))

        self.semantic, self.center, self.offset = head(num_classes), head(1), head(2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, 3, H, W) normalised -> semantic (B, C, H, W) logits, center (B, 1, H, W) heatmap,
        offset (B, 2, H, W) in input pixels (dy, dx) from each pixel to its instance center."""
        f = self.adapter(self.backbone(x))
        size = x.shape[-2:]

        def up(t):
            return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

        return {"semantic": up(self.semantic(f)), "center": up(self.center(f)), "offset": up(self.offset(f))}


def panoptic_inference(
    semantic: torch.Tensor,
    center: torch.Tensor,
    offset: torch.Tensor,
    things: Sequence[int],
    *,
    threshold: float = 0.1,
    nms_kernel: int = 7,
    top_k: int = 200,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: semantic logits (C, H, W), center (1, H, W), offset (2, H, W) ->
    (class map (H, W) long, instance map (H, W) long: 1..n for thing instances, 0 elsewhere).

    Centers: heatmap peaks above `threshold` after `nms_kernel` max-pooling, the `top_k` best.
    Each thing pixel joins the center nearest to (its position + its offset); an instance's
    class is the majority vote of its pixels' semantic classes."""
    classes = semantic.max(0).indices  # = argmax(0), which is far slower on CPU
    h, w = classes.shape
    heat = center[0]
    pooled = F.max_pool2d(heat[None, None], nms_kernel, stride=1, padding=nms_kernel // 2)[0, 0]
    peaks = (heat == pooled) & (heat > threshold)
    ys, xs = peaks.nonzero(as_tuple=True)
    instances = torch.zeros_like(classes)
    thing = torch.isin(classes, torch.tensor(list(things), device=classes.device))
    if len(ys) == 0 or not thing.any():
        return classes, instances
    order = heat[ys, xs].argsort(descending=True)[:top_k]
    centers = torch.stack([ys[order], xs[order]], 1).float()  # (K, 2)
    py, px = thing.nonzero(as_tuple=True)
    voted = torch.stack([py + offset[0, py, px], px + offset[1, py, px]], 1)  # (N, 2)
    nearest = torch.cdist(voted, centers).argmin(1)
    instances[py, px] = nearest + 1
    # majority vote of the semantic classes inside each instance
    n_cls = semantic.shape[0]
    votes = torch.zeros(len(centers) + 1, n_cls, device=classes.device, dtype=torch.long)
    votes.index_put_((instances[py, px], classes[py, px]), torch.ones_like(py), accumulate=True)
    instance_class = votes.argmax(1)
    classes[py, px] = instance_class[instances[py, px]]
    # renumber the instances that received pixels 1..n
    used = torch.unique(instances[instances > 0])
    remap = torch.zeros(len(centers) + 1, dtype=torch.long, device=classes.device)
    remap[used] = torch.arange(1, len(used) + 1, device=classes.device)
    return classes, remap[instances]


def predict_panoptic(
    model, x: torch.Tensor, things, out_hw: tuple[int, int], device, precision: str
) -> tuple[np.ndarray, np.ndarray]:
    """(class map, instances) at `out_hw` for one normalised input (1, 3, h, w)."""
    import cv2

    from stages.core import devices

    with torch.no_grad(), devices.autocast(device, precision):
        out = model(x.to(device))
    classes, instances = panoptic_inference(
        out["semantic"][0].float(), out["center"][0].float(), out["offset"][0].float(), things
    )
    size = out_hw[::-1]
    classes = cv2.resize(classes.cpu().numpy().astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
    instances = cv2.resize(instances.cpu().numpy().astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
    return classes, instances
