"""HSNet (hypercorrelation squeeze) and IMR-HSNet (iterative mutual refinement).

One module (over 400 lines): IMR-HSNet is HSNet's modules plus the refinement, and both must
load the authors' checkpoints, so their state-dict names are defined in one place.

Shapes below for a 400x400 input and ResNet50: pyramid levels at 50, 25, 13 pixels.

4D tensors are stored channels-last, (B, hq, wq, hs, ws, C): the support-dim convolution reads
them in place as a channels-last batch of support images, and only the (strided, smaller)
query-dim input is transposed.

- `correlation`: cosine similarity of every query and support position per layer pair,
  ReLU, stacked per level -> (B, hq, wq, hs, ws, n_layers).
- `CenterPivotConv4d`: a 4D conv approximated by its two center-pivot slices: a 2D conv over
  the query dims (at the support positions the stride keeps) plus a strided 2D conv over the
  support dims. `GroupNorm4d`: GroupNorm over channel groups in that layout.
- `HypercorrSqueeze` (HSNet's "hpn_learner"): three encoder stacks (16, 64, 128 channels,
  GroupNorm(4), ReLU; support strides 2-2-2, 4-2-2, 4-4-2 so every level ends at 2x2
  support dims), top-down mixing coarse -> middle -> fine over the query dims, mean over the
  support dims -> (B, 128, 50, 50); HSNet's decoder 128->128->64, x2, 64->64->2.
- `IMRHSNet`: the GRU-style refinement of paper Eq. 4 (1x1 conv then two 3x3 group convs of 8
  groups each: 16 groups in all), learned initial state, head of Eq. 5-6, symmetric support and
  query branches with shared weights.
- `initial_mask`, `final_mask`, `vote`: the authors' model inputs and outputs (mask sizes, the
  argmax of upsampled logits, the k-shot vote).
The forward is the authors' code's, checked number for number against their outputs
(tests/test_parity.py; the facts are in ../shared/reference/parity/README.md). Parameter names
follow their models, so their released state dicts load directly (`load_reference_state_dict`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.models.backbones import feature_pyramid

Levels = list[list[torch.Tensor]]  # [fine, middle, coarse] lists of (B, C, h, w)


# ----------------------------------------------------------------------------- correlation
def resize(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, 1, h, w) -> (B, 1, *size), bilinear with align_corners (the identity at equal size)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=True)


def mask_levels(levels: Levels, mask: torch.Tensor) -> Levels:
    """Multiply every map by `mask` (B, 1, h, w) resized to the map (bilinear, align_corners)."""
    return [[f * m for f in level] for level, m in zip(levels, level_masks(levels, mask), strict=True)]


def level_masks(levels: Levels, mask: torch.Tensor) -> list[torch.Tensor]:
    """`mask` (B, 1, h, w) resized to each level's maps: one (B, 1, h_l, w_l) per level."""
    return [resize(mask, level[0].shape[-2:]) for level in levels]


def _unit(x: torch.Tensor, norm: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, C, h, w) over its channel norm (given, or computed here) + eps."""
    return x / ((x.norm(dim=1) if norm is None else norm)[:, None] + 1e-5)


def _relu_dots(query: Sequence[torch.Tensor], support: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, hq, wq, hs, ws, n): ReLU of the dot products of every query and support position."""
    rows = [
        torch.bmm(q.flatten(2).transpose(1, 2), s.flatten(2)).clamp_(min=0)
        for q, s in zip(query, support, strict=True)
    ]
    return torch.stack(rows, -1).view(rows[0].shape[0], *query[0].shape[-2:], *support[0].shape[-2:], -1)


def correlation(query: Sequence[torch.Tensor], support: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, hq, wq, hs, ws, n): ReLU of cosine similarity, one channel per layer pair."""
    return _relu_dots([_unit(q) for q in query], [_unit(s) for s in support])


CHUNK_ELEMENTS = 1 << 20  # elements of a correlation slab scaled at a time (4 MB in fp32: cache-sized)


class ScaledDots:
    """A correlation (B, h, w, h', w', n) held as ReLU'd raw dot products `dots` (possibly a
    permuted view) with the per-position scales `own` (B, h, w, n) and `other` (B, h', w', n):
    its values are dots * other * own. The first 4D convolution of each squeeze block reads it
    a few own-rows at a time (`rows`) and at the support positions it keeps (`strided`), so the
    full scaled tensor is never written to memory."""

    def __init__(self, dots: torch.Tensor, own: torch.Tensor, other: torch.Tensor):
        self.dots, self.own, self.other = dots, own, other
        self.shape = dots.shape

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Own rows start:stop, scaled, contiguous."""
        d = self.dots[:, start:stop]
        out = torch.mul(
            d, self.other[:, None, None], out=torch.empty(d.shape, dtype=d.dtype, device=d.device)
        )
        return out.mul_(self.own[:, start:stop, :, None, None])  # the order of MaskedPair's products

    def strided(self, stride: int) -> torch.Tensor:
        """The values at every `stride`-th position of the other dims, other-major: a contiguous
        (B, h'/stride, w'/stride, h, w, n)."""
        d = self.dots[:, :, :, ::stride, ::stride].permute(0, 3, 4, 1, 2, 5)
        out = torch.empty(d.shape, dtype=d.dtype, device=d.device)
        torch.mul(d, self.other[:, ::stride, ::stride, None, None], out=out)
        return out.mul_(self.own[:, None, None])

    def chunk_rows(self) -> int:
        """Own rows per slab of about CHUNK_ELEMENTS."""
        return max(1, CHUNK_ELEMENTS // (self.dots[0, 0].numel() or 1))

    def tensor(self) -> torch.Tensor:
        """The whole scaled correlation, contiguous; differentiable (training's masks carry gradients)."""
        scaled = torch.mul(self.dots, self.other[:, None, None]).mul_(self.own[:, :, :, None, None])
        return scaled.contiguous()


Correlation = torch.Tensor | ScaledDots


class MaskedPair:
    """Correlation pyramids of one query/support pair whose features are masked per position.

    The masks are per-level maps (B, 1, h, w) >= 0 (products of resized masks when masks
    accumulate). Masking a feature f by m and normalising afterwards, as `correlation` does, is
    the same as scaling the ReLU'd raw dot products: relu(q_i . s_j) a_i b_j with
    a = m_q / (m_q |q| + eps) and b = m_s / (m_s |s| + eps). With `reuse` (the default) the raw
    products are computed once per pair and every step only rescales them, lazily (`ScaledDots`,
    the rescaling done by the first 4D convolution); the support branch reads them transposed
    (a view). Without it, every call masks the features and correlates them
    directly, as the authors' code does; the results agree to float rounding (tested).
    """

    def __init__(self, query: Levels, support: Levels, *, reuse: bool = True):
        self.query, self.support, self.reuse = query, support, reuse
        if reuse:
            self.q_norms = [
                torch.stack([f.norm(dim=1) for f in level], -1) for level in query
            ]  # (B, h, w, n)
            self.s_norms = [torch.stack([f.norm(dim=1) for f in level], -1) for level in support]
            self.dots = [_relu_dots(q, s) for q, s in zip(query, support, strict=True)]

    @staticmethod
    def _scale(norms: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.permute(0, 2, 3, 1).float()  # (B, h, w, 1)
        return m / (m * norms.float() + 1e-5)

    @staticmethod
    def _direct(own: Levels, own_masks, other: Levels, other_masks) -> list[torch.Tensor]:
        """Mask the features, then correlate them (the authors' way)."""
        return [
            correlation([f * m for f in a], [f * n for f in b])
            for a, m, b, n in zip(own, own_masks, other, other_masks, strict=True)
        ]

    def _side(self, dots, own_norms, own_masks, other_norms, other_masks) -> list[Correlation]:
        return [
            ScaledDots(d, self._scale(n_own, m_own).to(d.dtype), self._scale(n_other, m_other).to(d.dtype))
            for d, n_own, m_own, n_other, m_other in zip(
                dots, own_norms, own_masks, other_norms, other_masks, strict=True
            )
        ]

    def query_side(
        self, query_masks: list[torch.Tensor], support_masks: list[torch.Tensor]
    ) -> list[Correlation]:
        """Correlation pyramid (fine, middle, coarse) of the masked query against the masked support."""
        if not self.reuse:
            return self._direct(self.query, query_masks, self.support, support_masks)
        return self._side(self.dots, self.q_norms, query_masks, self.s_norms, support_masks)

    def support_side(
        self, support_masks: list[torch.Tensor], query_masks: list[torch.Tensor]
    ) -> list[Correlation]:
        """Correlation pyramid of the masked support against the masked query."""
        if not self.reuse:
            return self._direct(self.support, support_masks, self.query, query_masks)
        dots_t = [d.permute(0, 3, 4, 1, 2, 5) for d in self.dots]  # support-major views, no copy
        return self._side(dots_t, self.s_norms, support_masks, self.q_norms, query_masks)


def _images(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) memory -> an (N, C, H, W) channels-last view."""
    return x.permute(0, 3, 1, 2)


def _memory(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W, C) contiguous (a view for channels-last tensors)."""
    return x.permute(0, 2, 3, 1).contiguous()


def resize_query_dims(corr: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize the query dims of (B, hq, wq, hs, ws, C) to `size`."""
    b, hq, wq, hs, ws, c = corr.shape
    x = F.interpolate(
        _images(corr.reshape(b, hq, wq, -1)), size=tuple(size), mode="bilinear", align_corners=True
    )
    return _memory(x).view(b, *size, hs, ws, c)


class CenterPivotConv4d(nn.Module):
    """(B, hq, wq, hs, ws, C) -> (B, hq, wq, hs', ws', O), hs' = ceil(hs / stride)."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)  # query dims
        self.conv2 = nn.Conv2d(
            in_channels, out_channels, kernel, stride=stride, padding=kernel // 2
        )  # support

    def _support_conv(self, x: torch.Tensor) -> torch.Tensor:
        """conv2 over the support dims: (N, hs, ws, C) -> (N, hk, wk, O). Where the support grid
        is no larger than the kernel (the 2x2 grids of the mixing blocks), the convolution is one
        dense matrix (hs*ws*C, hk*wk*O), built from the kernel by convolving the identity basis:
        one matrix product instead of N tiny padded convolutions, the same function."""
        n, hs, ws, c = x.shape
        k = self.conv2.kernel_size
        if hs * ws > k[0] * k[1]:
            return _memory(self.conv2(_images(x)))  # no copy in or out
        dense = self._dense_kernel(hs, ws, c, x.dtype, x.device)
        hk, wk = dense.shape[1:3]
        bias = self.conv2.bias.to(x.dtype).repeat(hk * wk)
        return torch.addmm(bias, x.reshape(n, -1), dense.reshape(hs * ws * c, -1)).view(n, hk, wk, -1)

    def _dense_kernel(self, hs: int, ws: int, c: int, dtype: torch.dtype, device) -> torch.Tensor:
        """conv2 as a (hs*ws*C, hk, wk, O) tensor. Without gradients (inference) it is built once per
        weight version, grid and dtype and kept: every squeeze runs these layers, and building it
        costs a quarter of the product it serves."""
        weight = self.conv2.weight
        key = (hs, ws, dtype, device, weight.data_ptr(), weight._version)
        kept = getattr(self, "_dense", None)
        if not torch.is_grad_enabled() and kept is not None and kept[0] == key:
            return kept[1]
        # built in float32, autocast off: it only places the weights, so its bf16 cast is the
        # weights' own rounding, and oneDNN's bf16 weight gradient of this convolution can be NaN
        # (AMX CPUs, torch 2.14, measured)
        with torch.autocast(torch.device(device).type, enabled=False):
            basis = torch.eye(hs * ws * c, device=device).view(-1, hs, ws, c)
            dense = _memory(
                F.conv2d(_images(basis), weight.float(), None, self.conv2.stride, self.conv2.padding)
            ).to(dtype)
        if not torch.is_grad_enabled():
            self._dense = (key, dense)
        return dense

    def forward(self, x: Correlation) -> torch.Tensor:
        if isinstance(x, ScaledDots) and torch.is_grad_enabled():
            x = x.tensor()
        b, hq, wq, hs, ws, c = x.shape
        if isinstance(x, ScaledDots):  # inference: conv2 slab by slab, conv1 on the kept positions only
            step = x.chunk_rows()
            slabs = [self._support_conv(x.rows(r, r + step).view(-1, hs, ws, c)) for r in range(0, hq, step)]
            out = torch.cat([slab.view(b, -1, wq, *slab.shape[1:]) for slab in slabs], 1)
            out = out.view(b * hq * wq, *out.shape[3:])
            kept = x.strided(self.stride)
        else:
            out = self._support_conv(x.reshape(b * hq * wq, hs, ws, c))
            kept = (x[:, :, :, :: self.stride, :: self.stride] if self.stride > 1 else x).permute(
                0, 3, 4, 1, 2, 5
            )
        hk, wk = out.shape[1:3]
        kept = kept.reshape(b * hk * wk, hq, wq, c).contiguous()  # conv1 runs fastest on dense channels-last
        q = _memory(self.conv1(_images(kept))).view(b, hk, wk, hq, wq, -1)
        return out.view(b, hq, wq, hk, wk, -1).add_(q.permute(0, 3, 4, 1, 2, 5))


class GroupNorm4d(nn.GroupNorm):
    """nn.GroupNorm (same parameters) for channels-last (B, hq, wq, hs, ws, C) tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[-1]
        flat, per_group = x.view(b, -1, c), c // self.num_groups

        def group_mean(values: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, C), averaged per group
            by_channel = values.mean(1).view(b, self.num_groups, per_group)
            return by_channel.mean(2, keepdim=True).expand(-1, -1, per_group).reshape(b, c)

        wide = flat.float()  # statistics in float32 (no copy for float32 input)
        mean = group_mean(wide)
        var = group_mean((wide - mean[:, None]).square_())  # two passes, as F.group_norm
        scale = (var + self.eps).rsqrt()
        shift = -mean * scale
        if self.affine:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        shape = (b, 1, 1, 1, 1, c)
        return torch.addcmul(shift.view(shape).to(x.dtype), x, scale.view(shape).to(x.dtype))


def _block(
    in_channels: int, channels: Sequence[int], kernels: Sequence[int], strides: Sequence[int]
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out, kernel, stride in zip(channels, kernels, strides, strict=True):
        layers += [
            CenterPivotConv4d(in_channels, out, kernel=kernel, stride=stride),
            GroupNorm4d(4, out),
            nn.ReLU(inplace=True),
        ]
        in_channels = out
    return nn.Sequential(*layers)


def _decoders(width: int) -> tuple[nn.Sequential, nn.Sequential]:
    half = max(width // 2, 2)
    return (
        nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, half, 3, padding=1), nn.ReLU()
        ),
        nn.Sequential(nn.Conv2d(half, half, 3, padding=1), nn.ReLU(), nn.Conv2d(half, 2, 3, padding=1)),
    )


def decode(decoder1: nn.Module, decoder2: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """HSNet's 2D decoder: (B, C, h, w) -> 2-class logits (B, 2, 2h, 2w)."""
    x = decoder1(x)
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    return decoder2(x)


class HypercorrSqueeze(nn.Module):
    """HSNet's learner. `layer_counts` = layers per level (coarse, middle, fine), e.g. (3, 6, 4)."""

    def __init__(
        self, layer_counts: Sequence[int], *, channels: Sequence[int] = (16, 64, 128), decoder: bool = True
    ):
        super().__init__()
        c = channels[-1]
        self.encoder_layer4 = _block(layer_counts[0], channels, (3, 3, 3), (2, 2, 2))
        self.encoder_layer3 = _block(layer_counts[1], channels, (5, 3, 3), (4, 2, 2))
        self.encoder_layer2 = _block(layer_counts[2], channels, (5, 5, 3), (4, 4, 2))
        self.encoder_layer4to3 = _block(c, (c, c, c), (3, 3, 3), (1, 1, 1))
        self.encoder_layer3to2 = _block(c, (c, c, c), (3, 3, 3), (1, 1, 1))
        if decoder:
            self.decoder1, self.decoder2 = _decoders(c)

    def squeeze(
        self, corr_coarse: torch.Tensor, corr_middle: torch.Tensor, corr_fine: torch.Tensor
    ) -> torch.Tensor:
        """Three correlation pyramids -> (B, C, hq, wq) at the fine query resolution."""
        sq4 = self.encoder_layer4(corr_coarse)
        sq3 = self.encoder_layer3(corr_middle)
        sq2 = self.encoder_layer2(corr_fine)
        mix = self.encoder_layer4to3(self._mix(sq4, sq3))
        mix = self.encoder_layer3to2(self._mix(mix, sq2))
        return mix.mean((3, 4)).permute(0, 3, 1, 2)

    @staticmethod
    def _mix(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        """Top-down mixing: `coarse` resized to `fine`'s query dims, plus `fine` at `coarse`'s support dims."""
        return _match_support(fine, coarse) + resize_query_dims(coarse, fine.shape[1:3])

    def forward(self, query: Levels, support: Levels) -> torch.Tensor:
        return self.squeeze_pyramid([correlation(q, s) for q, s in zip(query, support, strict=True)])

    def squeeze_pyramid(self, corr: Sequence[torch.Tensor]) -> torch.Tensor:
        """(fine, middle, coarse) correlations -> (B, C, hq, wq)."""
        return self.squeeze(corr[2], corr[1], corr[0])


def _match_support(target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Support dims of `target` resized to those of `like` (equal for square inputs; needed otherwise)."""
    if target.shape[3:5] == like.shape[3:5]:
        return target
    b, hq, wq, hs, ws, c = target.shape
    x = F.interpolate(
        _images(target.reshape(-1, hs, ws, c)), size=like.shape[3:5], mode="bilinear", align_corners=True
    )
    return _memory(x).view(b, hq, wq, *like.shape[3:5], c)


class HSNet(nn.Module):
    """HSNet: frozen pyramid backbone + hypercorrelation squeeze + decoder."""

    def __init__(self, *, backbone: str = "resnet50", channels: Sequence[int] = (16, 64, 128)):
        super().__init__()
        self.backbone = feature_pyramid(backbone, weights="random")  # load_backbone_weights loads them
        counts = [len(level) for level in self.backbone.channels]
        self.hpn_learner = HypercorrSqueeze((counts[2], counts[1], counts[0]), channels=channels)

    def predict(self, query: Levels, support: Levels, support_mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, 2, 2h, 2w) from backbone levels and a support mask (B, 1, H, W) in [0, 1]."""
        squeezed = self.hpn_learner(query, mask_levels(support, support_mask))
        return decode(self.hpn_learner.decoder1, self.hpn_learner.decoder2, squeezed)


class IMRHSNet(nn.Module):
    """IMR-HSNet. `hidden` must equal the last squeeze width (the head adds state and correlation)."""

    def __init__(
        self,
        *,
        backbone: str = "resnet50",
        channels: Sequence[int] = (16, 64, 128),
        mid: int = 512,
        gate: int = 512,
        state_size: int = 50,
    ):
        super().__init__()
        self.backbone = feature_pyramid(backbone, weights="random")  # load_backbone_weights loads them
        counts = [len(level) for level in self.backbone.channels]
        self.hpn_learner = HypercorrSqueeze(
            (counts[2], counts[1], counts[0]), channels=channels, decoder=False
        )
        hidden = channels[-1]
        middle = set(self.backbone.channels[1])
        mid_in = self.backbone.channels[1][-1]
        self.mid_level = [i for i, c in enumerate(self.backbone.channels[1]) if c == mid_in]  # maps summed
        if mid_in != mid or len(middle) > 1:
            self.mid_proj = nn.Conv2d(mid_in, mid, 1)  # the authors' "conv1024_512"
        x_channels = 1 + hidden + mid + hidden
        for gate_name in ("z", "r", "h"):
            setattr(self, f"conv{gate_name}0", nn.Conv2d(x_channels, gate, 1))
            for half in (1, 2):
                setattr(
                    self, f"conv{gate_name}{half}", nn.Conv2d(gate // 2, hidden // 2, 3, padding=1, groups=8)
                )
        self.state = nn.Parameter(torch.zeros(1, hidden, state_size, state_size))
        self.decoder1, self.decoder2 = _decoders(hidden)
        self.res = nn.Sequential(nn.Conv2d(3, 10, 1), nn.GELU(), nn.Conv2d(10, 2, 1))

    def _gate(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a = getattr(self, f"conv{name}0")(x)
        first, second = a.chunk(2, dim=1)
        return torch.cat([getattr(self, f"conv{name}1")(first), getattr(self, f"conv{name}2")(second)], dim=1)

    def mid_features(self, levels: Levels) -> torch.Tensor:
        """Mid-level features (B, mid, h, w) at the fine resolution: the middle level's last-width
        maps summed (ResNet50: all of layer3), projected by a 1x1 conv where widths differ."""
        x = torch.stack([levels[1][i] for i in self.mid_level]).sum(0)
        x = F.interpolate(x, size=levels[0][0].shape[-2:], mode="bilinear", align_corners=True)
        return self.mid_proj(x) if hasattr(self, "mid_proj") else x

    def initial_state(self, batch: int, size: Sequence[int]) -> torch.Tensor:
        state = (
            self.state
            if tuple(size) == tuple(self.state.shape[-2:])
            else F.interpolate(self.state, size=tuple(size), mode="bilinear", align_corners=True)
        )
        return state.expand(batch, -1, -1, -1)

    def step(
        self, corr: Sequence[torch.Tensor], prior: torch.Tensor, hidden: torch.Tensor, mid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One branch, one step: (logits (B, 2, 2h, 2w), new state). `prior` (B, 1, h, w) is the
        branch's mask at the squeezed resolution (step 1: the initial mask; then the last step's
        foreground probability)."""
        squeezed = self.hpn_learner.squeeze_pyramid(corr)
        x = torch.cat([prior.to(squeezed.dtype), squeezed, mid], dim=1)
        x_h = torch.cat([x, hidden], 1)
        z = torch.sigmoid(self._gate("z", x_h))
        r = torch.sigmoid(self._gate("r", x_h))
        candidate = torch.tanh(self._gate("h", torch.cat([x, r * hidden], 1)))  # x first, as the authors
        hidden = (1 - z) * hidden + z * candidate
        coarse = decode(self.decoder1, self.decoder2, squeezed + hidden)  # Eq. 5
        prior = F.interpolate(prior, size=coarse.shape[-2:], mode="bilinear", align_corners=True)
        return self.res(torch.cat([coarse, prior.to(coarse.dtype)], 1)), hidden  # Eq. 6

    def refine(
        self,
        query: Levels,
        support: Levels,
        query_mask: torch.Tensor,
        support_mask: torch.Tensor,
        *,
        steps: int = 2,
        update_support: bool = True,
        zero_shot: bool = False,
        reuse_correlation: bool = True,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Iterative mutual refinement, as the authors' forward computes it.

        Masks (B, 1, h, w) in [0, 1], any size: CAMs (the authors feed 50x50) or pixel masks.
        Step 1 masks the query features by the SUPPORT mask and the support features by the
        QUERY mask (the authors' swap); both branches correlate these two masked sets. After
        each step but the last, the masked query features are multiplied again by the query
        branch's foreground probability and the support features by the support branch's, so
        masks accumulate. A branch's prior is its initial mask at the squeezed resolution, then
        its last probability resized there. `update_support=False` (pixel-labelled supports)
        runs no support branch and never re-masks the support; `zero_shot` makes the query its
        own support. `reuse_correlation` (`MaskedPair`) changes the speed, not the results.
        Returns per-step logits (B, 2, 2h, 2w) of both branches (support: None when not run).
        """
        if zero_shot:
            support, support_mask = query, query_mask
        size = query[0][0].shape[-2:]
        mid_q = self.mid_features(query)
        mid_s = mid_q if zero_shot else self.mid_features(support)
        h_q = h_s = self.initial_state(query_mask.shape[0], size)
        prior_q, prior_s = resize(query_mask, size), resize(support_mask, size)
        masks_q, masks_s = level_masks(query, support_mask), level_masks(support, query_mask)
        pair = MaskedPair(query, support, reuse=reuse_correlation)
        q_out: list[torch.Tensor] = []
        s_out: list[torch.Tensor | None] = []
        for t in range(steps):
            logits_q, h_q = self.step(pair.query_side(masks_q, masks_s), prior_q, h_q, mid_q)
            logits_s = None
            if update_support and not zero_shot:
                logits_s, h_s = self.step(pair.support_side(masks_s, masks_q), prior_s, h_s, mid_s)
            q_out.append(logits_q)
            s_out.append(logits_q if zero_shot else logits_s)
            if t == steps - 1:
                break
            prob_q = logits_q.softmax(1)[:, 1:]
            masks_q = [m * resize(prob_q, m.shape[-2:]) for m in masks_q]
            prior_q = resize(prob_q, size)
            if zero_shot:
                masks_s = masks_q
            elif logits_s is not None:
                prob_s = logits_s.softmax(1)[:, 1:]
                masks_s = [m * resize(prob_s, m.shape[-2:]) for m in masks_s]
                prior_s = resize(prob_s, size)
        return q_out, s_out


# ----------------------------------------------------------------------------- inputs and outputs
def initial_mask(mask: np.ndarray, size: int, *, pixel: bool) -> torch.Tensor:
    """An initial mask (H, W) in [0, 1] as the model's input (1, 1, h, w), as the authors feed them:
    pixel masks at the network input size (nearest), CAMs at the finest feature size, size / 8
    (50x50 at 400; antialiased bilinear when shrinking, the identity for clip-cam --cam-size 50)."""
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    if pixel:
        return F.interpolate(m, size=(size, size), mode="nearest")
    side = -(-size // 8)
    if m.shape[-2:] == (side, side):
        return m.clamp(0, 1)
    return F.interpolate(m, size=(side, side), mode="bilinear", antialias=True).clamp(0, 1)


def final_mask(logits: torch.Tensor, shape: Sequence[int]) -> np.ndarray:
    """The authors' final-mask rule: logits (1, 2, h, w) upsampled bilinearly (align_corners) to
    `shape`, then the argmax over the two classes (ties are background) -> (H, W) uint8 0/1."""
    up = F.interpolate(logits.float(), size=tuple(shape), mode="bilinear", align_corners=True)[0]
    return (up[1] > up[0]).cpu().numpy().astype(np.uint8)


def vote(masks: Sequence[np.ndarray]) -> np.ndarray:
    """HSNet's k-shot rule: per-pixel votes of the shots' masks over the image's largest vote
    (at least 1); a ratio >= 0.5 is foreground."""
    votes = np.sum(masks, axis=0, dtype=np.float32)
    return (votes / max(float(votes.max()), 1.0) >= 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- reference checkpoints
REFERENCE_KEY_MAP = {"conv1024_512.": "mid_proj."}


def load_reference_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an authors' HSNet / IMR-HSNet state dict (optional 'module.' prefix) strictly."""
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for old, new in REFERENCE_KEY_MAP.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        renamed[key] = value
    model.load_state_dict(renamed, strict=True)


def reference_architecture(state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """("imr-hsnet" | "hsnet", backbone) of an authors' state dict, from its keys and shapes."""
    keys = {k.removeprefix("module.") for k in state}
    method = "imr-hsnet" if "convz0.weight" in keys else "hsnet"
    if "backbone.features.0.weight" in keys:
        backbone = "vgg16"
    elif "backbone.layer3.22.conv1.weight" in keys:
        backbone = "resnet101"
    else:
        backbone = "resnet50"
    return method, backbone
