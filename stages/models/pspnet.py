"""PSPNet for transfer-learning few-shot segmentation, and the pixel contrastive loss.

- `PSPNet`: a dilated backbone (ResNet50 with output stride 8; EfficientNet-Lite0 with output
  stride 8; a tiny net for tests), pyramid pooling with bins 1, 2, 3, 6, a 3x3 bottleneck to
  512 channels (the dense feature the few-shot classifiers read), a 1x1 classifier over
  background + base classes, and a projection head for the contrastive loss.
- `pixel_info_nce` (GFSS report, Eq. 2): anchors sampled from non-background pixels across the
  batch (hard and easy halves per class), positives of the same class, negatives of the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stages.models.backbones import efficientnet_lite0


class _DilatedTiny(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()

        def conv(cin, cout, stride, dilation=1):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, dilation, dilation=dilation), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.body = nn.Sequential(
            conv(3, width, 2),
            conv(width, width, 2),
            conv(width, 2 * width, 2),
            conv(2 * width, 2 * width, 1, 2),
        )
        self.out_channels = 2 * width

    def forward(self, x):
        return self.body(x)


class DilatedBackbone(nn.Module):
    """Backbone returning one map at output stride 8 (random init; `load_backbone_weights` loads weights)."""

    def __init__(self, *, name: str):
        super().__init__()
        self.name = name
        if name == "resnet50":
            import torchvision.models as tvm

            net = tvm.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
            net.fc = nn.Identity()
            self.net, self.out_channels = net, 2048
        elif name == "efficientnet_lite0":
            net = efficientnet_lite0(weights="random")
            # output stride 8: the stride-2 depthwise convs of the last stride-16/32 stages become dilated
            _dilate_efficientnet(net)
            self.net, self.out_channels = net, 320
        elif name == "tiny":
            self.net = _DilatedTiny()
            self.out_channels = self.net.out_channels
        else:
            raise ValueError(f"unknown PSPNet backbone {name!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "resnet50":
            n = self.net
            x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
            return n.layer4(n.layer3(n.layer2(n.layer1(x))))
        if self.name == "efficientnet_lite0":
            n = self.net
            x = n.bn1(n.conv_stem(x))
            for blocks in n.blocks:
                x = blocks(x)
            return x
        return self.net(x)


def _dilate_efficientnet(net: nn.Module) -> None:
    """Turn the stride-2 depthwise convs after output stride 8 into dilated stride-1 convs."""
    stride, dilation = 2, 1  # the stem has stride 2
    for stage in net.blocks:
        for block in stage:
            conv = block.conv_dw
            if conv.stride[0] == 2:
                if stride >= 8:
                    conv.stride = (1, 1)
                    dilation *= 2
                else:
                    stride *= 2
            if dilation > 1 and conv.stride[0] == 1:
                k = conv.kernel_size[0]
                conv.dilation = (dilation, dilation)
                conv.padding = ((k - 1) // 2 * dilation,) * 2
                if hasattr(conv, "pad"):  # TF "same" padding wrappers recompute from dilation
                    conv.pad = None
                if (k, dilation) == (5, 4) and type(conv) is nn.Conv2d:
                    block.conv_dw = _SpaceToBatchConv2d.like(conv)


class _SpaceToBatchConv2d(nn.Conv2d):
    """A dilated depthwise conv computed as its undilated twin on the d x d interleaved sub-grids
    of the map (space-to-batch), which reads the same inputs with the same weights. oneDNN runs the
    5x5, dilation-4 depthwise convs of the output-stride-8 Lite0 several times slower than their
    sub-grid form (8-10 against 3-5 ms on a 28x28x1152 map, on CPUs with and without AVX-512);
    the smaller dilations and kernels are faster as they are, so only those convs use this."""

    @classmethod
    def like(cls, conv: nn.Conv2d) -> _SpaceToBatchConv2d:
        twin = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        twin.load_state_dict(conv.state_dict())
        return twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, k = self.dilation[0], self.kernel_size[0]
        n, c, h, w = x.shape
        hp, wp = -(-h // d) * d, -(-w // d) * d  # zeros up to a multiple of d: the conv's own padding
        x = F.pad(x, (0, wp - w, 0, hp - h)).view(n, c, hp // d, d, wp // d, d)
        x = x.permute(0, 3, 5, 1, 2, 4).reshape(n * d * d, c, hp // d, wp // d)
        y = F.conv2d(x, self.weight, self.bias, 1, (k - 1) // 2, 1, self.groups)
        y = y.view(n, d, d, -1, hp // d, wp // d).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(n, -1, hp, wp)[..., :h, :w]


class PyramidPooling(nn.Module):
    def __init__(self, channels: int, bins: Sequence[int]):
        super().__init__()
        reduced = max(channels // len(bins), 8)
        self.bins = list(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(channels, reduced, 1, bias=False),
                nn.BatchNorm2d(reduced),
                nn.ReLU(),
            )
            for b in bins
        )
        self.out_channels = channels + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat(
            [x] + [F.interpolate(s(x), size=size, mode="bilinear", align_corners=True) for s in self.stages],
            1,
        )


class PSPNet(nn.Module):
    """`forward(x)` -> (features (B, 512, H/8, W/8), logits (B, K, H/8, W/8))."""

    def __init__(
        self,
        *,
        backbone: str = "resnet50",
        num_classes: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        bottleneck: int = 512,
        proj_dim: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.backbone = DilatedBackbone(name=backbone)
        self.ppm = PyramidPooling(self.backbone.out_channels, bins)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(self.ppm.out_channels, bottleneck, 3, padding=1, bias=False),
            nn.BatchNorm2d(bottleneck),
            nn.ReLU(),
            nn.Dropout2d(dropout),
        )
        self.classifier = nn.Conv2d(bottleneck, num_classes, 1)
        self.projection = nn.Sequential(
            nn.Conv2d(bottleneck, bottleneck, 1), nn.ReLU(), nn.Conv2d(bottleneck, proj_dim, 1)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.ppm(self.backbone(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return feats, self.classifier(feats)


# ----------------------------------------------------------------------------- contrastive loss
def sample_anchors(
    labels: torch.Tensor,
    predictions: torch.Tensor,
    *,
    max_anchors: int,
    background: int = 0,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices (into the flattened batch) of anchor pixels: never background or ignored; per
    class present, up to max_anchors // n_classes, half hard (misclassified) and half easy."""
    labels, predictions = labels.reshape(-1), predictions.reshape(-1)
    classes = [int(c) for c in torch.unique(labels) if int(c) not in (background, ignore_index)]
    if not classes:
        return torch.zeros(0, dtype=torch.long, device=labels.device)
    per_class = max(max_anchors // len(classes), 1)
    chosen = []
    for c in classes:
        pixels = (labels == c).nonzero().squeeze(1)
        hard = pixels[predictions[pixels] != c]
        easy = pixels[predictions[pixels] == c]
        n_hard = min(len(hard), per_class // 2)
        n_easy = min(len(easy), per_class - n_hard)
        n_hard = min(len(hard), per_class - n_easy)  # fill from hard if easy ran short
        for pool, n in ((hard, n_hard), (easy, n_easy)):
            if n:
                chosen.append(
                    pool[torch.randperm(len(pool), generator=generator, device="cpu")[:n].to(pool.device)]
                )
    return torch.cat(chosen)


def pixel_info_nce(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
) -> torch.Tensor:
    """Eq. 2 over sampled anchors. embeddings (N, D) unit vectors, labels (N,).

    For anchor i with positives P_i and negatives N_i (the other sampled anchors):
    mean over p in P_i of -log(exp(i.p / t) / (exp(i.p / t) + sum_{n in N_i} exp(i.n / t))),
    averaged over anchors that have a positive, scaled by t / base_temperature.
    """
    sim = embeddings @ embeddings.T / temperature
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    negative = ~same
    neg_sum = torch.where(negative, sim.exp(), torch.zeros_like(sim)).sum(1, keepdim=True)
    log_prob = sim - torch.log(sim.exp() + neg_sum)
    counts = positive.sum(1)
    valid = counts > 0
    if not valid.any():
        return embeddings.sum() * 0.0
    per_anchor = -(torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(1)[valid] / counts[valid])
    return (temperature / base_temperature) * per_anchor.mean()
