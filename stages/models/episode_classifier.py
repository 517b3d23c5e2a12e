"""Per-episode classifiers on frozen features (`fsseg finetune-episode`): the transfer-learning
report's losses (reformulated cross-entropy, distillation), plain SGD on many episodes at once,
the ImageNet features and the cosine-prototype start of fsseg's no-pretraining path."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Extract = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def reformulated_ce(
    logits: torch.Tensor, target: torch.Tensor, column: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Eq. 4-5 per episode. logits (E, N, K); target (E, N), 1 = foreground; column (E, N): each
    pixel's foreground column (its support's class); valid (E, N). The background probability
    is the sum of every other column. Returns (E,)."""
    logp = logits.log_softmax(-1)
    fg = logp.gather(-1, column[..., None])[..., 0]
    bg = torch.logsumexp(logp.scatter(-1, column[..., None], float("-inf")), -1)
    per_pixel = -torch.where(target == 1, fg, bg)
    return (per_pixel * valid).sum(1) / valid.sum(1).clamp(min=1)


def distillation(
    logits: torch.Tensor, teacher: torch.Tensor, n_old: int, valid: torch.Tensor
) -> torch.Tensor:
    """Eq. 6-7 per episode. logits (E, N, K) with columns [background, base..., novel...];
    teacher (E, N, n_old) pretrained probabilities over [background, base...]. The student's
    old-background probability is its background plus every novel column. Returns (E,)."""
    p = logits.softmax(-1)
    old = torch.cat([p[..., :1] + p[..., n_old:].sum(-1, keepdim=True), p[..., 1:n_old]], -1)
    per_pixel = -(teacher * old.clamp(min=1e-12).log()).sum(-1)
    return (per_pixel * valid).sum(1) / valid.sum(1).clamp(min=1)


def imagenet_features(pyramid: torch.nn.Module) -> Extract:
    """A plain ImageNet backbone's stride-16 and stride-32 outputs (the last block of each), each
    L2-normalised per pixel, the coarse one upsampled to stride 16, concatenated; no logits."""

    def extract(x: torch.Tensor) -> tuple[torch.Tensor, None]:
        levels = pyramid(x)
        middle, coarse = levels[1][-1], levels[2][-1]
        coarse = F.interpolate(coarse, size=middle.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([F.normalize(middle.float(), dim=1), F.normalize(coarse.float(), dim=1)], 1), None

    return extract


def prototype_start(
    x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, size: int, scale: float
) -> torch.Tensor:
    """2-way classifiers' starting rows (E, 2, D) from support feature maps x (E, S, D, h, w) and
    their labels at `size` (target/valid (E, S*size*size)): the L2-normalised mean background and
    foreground features of each episode's supports (their cosine prototypes) times `scale`."""
    e, n_shots, d, h, w = x.shape
    fg = (target == 1).float() * valid
    bg = (target == 0).float() * valid
    # the labels' share of each feature cell (area average from the label size to the feature size)
    shares = F.interpolate(
        torch.stack([bg, fg], 1).view(e * 2 * n_shots, 1, size, size), size=(h, w), mode="area"
    )
    shares = shares.view(e, 2, n_shots * h * w)
    pixels = x.permute(0, 1, 3, 4, 2).reshape(e, n_shots * h * w, d)
    means = torch.bmm(shares, pixels) / shares.sum(-1, keepdim=True).clamp(min=1e-6)
    return F.normalize(means, dim=-1) * scale


def _pixel_logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, size: int) -> torch.Tensor:
    """Classifier logits of support features, upsampled to the input size: x (E, D, S, h, w) ->
    (E, K, S*size*size). A 1x1 classifier commutes with bilinear upsampling, so this equals
    classifying upsampled features, without materialising them."""
    e, d, s, h, wd = x.shape
    k = w.shape[1]
    logits = torch.bmm(w, x.view(e, d, -1)) + b[:, :, None]  # (E, K, S*h*w): one matrix product per episode
    logits = F.interpolate(
        logits.view(e, k, s, h, wd).transpose(1, 2).reshape(e * s, k, h, wd),
        size=(size, size),
        mode="bilinear",
        align_corners=True,
    )
    return logits.view(e, s, k, -1).transpose(1, 2).reshape(e, k, -1)


def train_classifiers(
    x,
    target,
    valid,
    teacher,
    init_w,
    init_b,
    column,
    *,
    mode: str,
    steps: int,
    lr: float,
    gamma: float,
    n_old: int,
    size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain SGD on E classifiers at once; returns (weights (E, K, D), bias (E, K), final loss (E,)).

    x: (E, N, D) pixel features, or (E, S, D, h, w) support feature maps whose logits are
    upsampled to `size` (then target/valid/column/teacher hold S*size*size pixels per episode).
    target/valid/column: (E, N); teacher: (E, N, n_old) pretrained probabilities."""
    w = init_w.clone().requires_grad_(True)
    b = init_b.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([w, b], lr=lr)
    x = x.transpose(1, 2).contiguous()  # (E, D, S, h, w) or (E, D, N): logits are matrix products
    for _ in range(steps):
        if x.dim() == 5:
            by_class = _pixel_logits(x, w, b, size)  # (E, K, N)
        else:
            by_class = torch.bmm(w, x) + b[:, :, None]
        if mode == "fss":
            per_pixel = F.cross_entropy(by_class, target, reduction="none")
            loss = (per_pixel * valid).sum(1) / valid.sum(1).clamp(min=1)
        else:
            logits = by_class.transpose(1, 2)  # (E, N, K)
            loss = reformulated_ce(logits, target, column, valid)
            if gamma > 0:
                loss = loss + gamma * distillation(logits, teacher, n_old, valid)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # episodes are independent: each gets exactly its own gradient
        optimizer.step()
    return w.detach(), b.detach(), loss.detach()
