"""Class activation maps from label text: CLIP (open_clip) and ImageNet (EfficientNet-Lite0) scorers.

A `CamScorer` turns a batch of images (B, 3, S, S) into per-label scores (B, L) and names the
module whose output is the CAM's target layer. `cams_and_presence` runs one batched
forward and one backward, with the graph recorded only from the target layer on (a forward
hook swaps its output for a detached leaf), and combines activations A and gradients G:

- gradcam:   relu(sum_c mean_xy(G_c) A_c)
- gradcam++: weights sum_xy relu(G) * G^2 / (2 G^2 + sum_xy(A) G^3), then as gradcam
- layercam:  relu(sum_c relu(G_c) A_c)
- hirescam:  relu(sum_c G_c A_c)
- dense:     (ResNet CLIPs) MaskCLIP: attention pooling's value and output projections applied
             to every position, cosine (or class softmax) with the text embedding; no gradient.
Each map is min-max normalised to [0, 1] per image, as pytorch-grad-cam does, so every map has
a hottest spot whether or not the label is in the image: the same forward pass also gives a
presence score per image (`CamScorer.presence`), which says how likely the label is there.
One module (over 400 lines): the CAM methods, the two scorers and their label/prompt handling
share the `CamScorer` contract, and the presence calibration belongs to the imagenet scorer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from stages.core.errors import FssegError
from stages.params import CamMethod

log = logging.getLogger(__name__)

METHODS = get_args(CamMethod)
BACKENDS = ("auto", "clip", "imagenet")
TEMPLATES = ["a photo of a {}."]
# The imagenet backend's presence score (see `imagenet_presence`): (penalty, slope, bias), fitted by
# examples/clip_cam_presence.py on COCO-mini train2017 (61 classes x 80 images).
IMAGENET_PRESENCE = (0.2, 0.694, -4.099)
ENSEMBLE_TEMPLATES = [
    "a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "a bright photo of a {}.",
    "a cropped photo of a {}.", "a photo of a large {}.", "a photo of a small {}.",
]  # fmt: skip


@dataclass
class CamScorer:
    """A network seen as: normalised image batch -> scores per label, with a CAM target layer."""

    network: nn.Module
    target: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    score: Callable[[torch.Tensor], torch.Tensor]  # network output -> (B, L) label scores
    to_grid: Callable[[torch.Tensor], torch.Tensor] = field(
        default=lambda a: a
    )  # target output -> (B, C, h, w)
    dense: Callable[[torch.Tensor], torch.Tensor] | None = None  # target output -> (B, L, h, w) dense scores
    native_size: int | None = None  # input side the network requires (ViT CLIPs)
    # network output -> (B, L) presence scores (how likely each label is in the image); None: `score`
    presence: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.presence is None:
            self.presence = self.score

    def to(self, device: torch.device) -> CamScorer:
        self.network.to(device)
        return self


def normalise_batch(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float, normalised."""
    x = images.float() / 255.0
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def combine(method: str, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) activations and gradients -> (B, h, w) non-negative CAM."""
    if method == "gradcam":
        cam = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1)
    elif method == "gradcam++":
        g2, g3 = grads.pow(2), grads.pow(3)
        sum_acts = acts.sum(dim=(2, 3), keepdim=True)
        aij = g2 / (2 * g2 + sum_acts * g3 + 1e-6)
        aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
        weights = (grads.clamp(min=0) * aij).sum(dim=(2, 3), keepdim=True)
        cam = (weights * acts).sum(1)
    elif method == "layercam":
        cam = (grads.clamp(min=0) * acts).sum(1)
    elif method == "hirescam":
        cam = (grads * acts).sum(1)
    else:
        raise FssegError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    return cam.clamp(min=0)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def minmax(cam: torch.Tensor) -> torch.Tensor:
    """Per-image min-max to [0, 1] over the last two dims (pytorch-grad-cam's scaling)."""
    flat = cam.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    cam = cam - lo
    hi = cam.flatten(1).max(1).values.view(-1, 1, 1)
    return cam / (hi + 1e-7)


def cams_and_presence(
    scorer: CamScorer,
    images: torch.Tensor,
    weights: torch.Tensor,
    *,
    method: str = "gradcam",
    autocast: Callable[[], object] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CAMs (B, h, w) in [0, 1] at the target layer's resolution, and presence scores (B,), from
    one forward pass.

    `images`: uint8 (B, 3, S, S) on the scorer's device; `weights`: (B, L) per-image weights of
    the label scores (a one-hot row picks the target label), so score_b = sum_l w_bl s_bl, and
    likewise presence_b = sum_l w_bl p_bl.
    """
    x = normalise_batch(images, scorer.mean, scorer.std).to(next(scorer.network.parameters()).dtype)
    captured: dict[str, torch.Tensor] = {}
    context = autocast or (lambda: torch.autocast(x.device.type, enabled=False))

    def presence(output: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (_at_least_fp32(scorer.presence(output.detach())) * weights).sum(1)

    if method == "dense":
        if scorer.dense is None:
            raise FssegError("--method dense needs a ResNet CLIP (e.g. --model RN50)")

        def keep(module, args, output):
            captured["acts"] = output

        handle = scorer.target.register_forward_hook(keep)
        try:
            with torch.no_grad(), context():
                output = scorer.network(x)
                dense = _at_least_fp32(scorer.dense(captured["acts"]))  # (B, L, h, w)
        finally:
            handle.remove()
        return minmax((dense * weights[:, :, None, None]).sum(1)), presence(output)

    def leaf(module, args, output):
        output = output.detach().requires_grad_(True)
        captured["acts"] = output
        return output

    handle = scorer.target.register_forward_hook(leaf)
    try:
        with torch.enable_grad(), context():
            output = scorer.network(x)
            total = (_at_least_fp32(scorer.score(output)) * weights).sum()
        (grads,) = torch.autograd.grad(total, captured["acts"])
    finally:
        handle.remove()
    acts = _at_least_fp32(scorer.to_grid(captured["acts"].detach()))
    grads = _at_least_fp32(scorer.to_grid(grads))
    return minmax(combine(method, acts, grads)), presence(output)


# ----------------------------------------------------------------------------- scorers
def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def imagenet_presence(
    max_logit: torch.Tensor,
    n_classes: torch.Tensor,
    calibration: tuple[float, float, float] = IMAGENET_PRESENCE,
) -> torch.Tensor:
    """How likely a label is in the image, from m = the largest logit among its n ImageNet classes:
    sigmoid(slope * (m - penalty * ln n) + bias). MaxLogit separated present from absent labels
    better than the softmax mass of their classes on COCO-mini; the penalty offsets the higher
    maximum of many classes (dog has 118), which otherwise keeps half of the dog-free photos."""
    penalty, slope, bias = calibration
    return torch.sigmoid(slope * (max_logit - penalty * n_classes.log()) + bias)


def imagenet_scorer(
    label_classes: Sequence[Sequence[int]],
    weights: str | Path | None = "imagenet",
    *,
    calibration: tuple[float, float, float] | None = IMAGENET_PRESENCE,
) -> CamScorer:
    """EfficientNet-Lite0: the score of a label is the sum of its ImageNet classes' logits; its
    presence is `imagenet_presence` (`calibration` None: the largest logit, what it is fitted on)."""
    from stages.models.backbones import LITE0_MEAN, LITE0_STD, efficientnet_lite0

    network = _freeze(efficientnet_lite0(weights=weights))
    selector = torch.zeros(len(label_classes), 1000)
    for row, classes in enumerate(label_classes):
        selector[row, list(classes)] = 1.0

    def score(logits: torch.Tensor) -> torch.Tensor:
        return logits.float() @ selector.to(logits.device).T

    def presence(logits: torch.Tensor) -> torch.Tensor:
        outside = selector.to(logits.device) == 0  # (L, 1000)
        best = logits.float()[:, None, :].masked_fill(outside, -torch.inf).amax(-1)  # (B, L)
        if calibration is None:
            return best
        return imagenet_presence(best, selector.sum(1).to(best.device), calibration)

    return CamScorer(network, network.bn2, LITE0_MEAN, LITE0_STD, score, presence=presence)


def clip_weights_present(model_name: str, pretrained: str) -> bool:
    """Whether `pretrained` (a file, or an open_clip tag) can be loaded without downloading."""
    if pretrained.lower() == "none" or Path(pretrained).is_file():
        return True
    from open_clip import pretrained as registry

    from stages.core.weights import hf_repo_present

    cfg = registry.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        return False
    if cfg.get("hf_hub") and hf_repo_present("/".join(cfg["hf_hub"].strip("/").split("/")[:2])):
        return True
    url = cfg.get("url") or ""
    return bool(url) and (Path.home() / ".cache" / "clip" / Path(url).name).is_file()


def load_clip(model_name: str, pretrained: str, device: torch.device):
    """(model, tokenizer) from open_clip; `pretrained` is a tag, a local file, or "none" (random)."""
    import open_clip

    if model_name not in open_clip.list_models():
        raise FssegError(
            f"--model {model_name!r} is not an open_clip model; e.g. RN50, RN101, ViT-B-16, ViT-B-32"
        )
    tag = None if pretrained.lower() == "none" else pretrained
    if tag and not clip_weights_present(model_name, tag):
        log.info(
            "CLIP weights %s/%s are not in the local caches; open_clip will try to download them",
            model_name,
            tag,
        )
    if tag and not Path(tag).is_file() and not open_clip.pretrained.get_pretrained_cfg(model_name, tag):
        tags = ", ".join(t for m, t in open_clip.list_pretrained() if m == model_name) or "none known"
        raise FssegError(
            f"--pretrained {tag!r} is neither a file nor an open_clip tag of {model_name} ({tags})"
        )
    try:
        model = open_clip.create_model(model_name, pretrained=tag, device=device)
    except Exception as err:  # a download that cannot happen, a corrupt file: open_clip raises many types
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else err.__class__.__name__
        raise FssegError(
            f"could not load CLIP weights {model_name}/{pretrained} ({reason}); put them in the hub cache, pass "
            f"--pretrained FILE, or use --backend imagenet (offline machines: set HF_HUB_OFFLINE=1)"
        ) from None
    return _freeze(model), open_clip.get_tokenizer(model_name)


@torch.no_grad()
def text_embeddings(
    model, tokenizer, labels: Sequence[str], templates: Sequence[str], device
) -> torch.Tensor:
    """(L, D) unit text embeddings, averaged over templates (computed once per run)."""
    rows = []
    for label in labels:
        tokens = tokenizer([t.format(label) for t in templates]).to(device)
        emb = F.normalize(model.encode_text(tokens).float(), dim=-1).mean(0)
        rows.append(F.normalize(emb, dim=-1))
    return torch.stack(rows)


def clip_scorer(model, text: torch.Tensor, *, score: str = "cosine") -> CamScorer:
    """CLIP image encoder + fixed text embeddings. score: "cosine" or "softmax" over the labels;
    the presence score is that same prompt score (not calibrated: no CLIP weights offline)."""
    from open_clip.model import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    visual = model.visual
    scale = float(model.logit_scale.exp())
    mean = tuple(getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
    std = tuple(getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))

    def to_scores(cos: torch.Tensor) -> torch.Tensor:
        return (scale * cos).softmax(-1) if score == "softmax" else cos

    def scores(image_features: torch.Tensor) -> torch.Tensor:
        feats = _at_least_fp32(image_features)
        return to_scores(F.normalize(feats, dim=-1) @ text.to(feats.dtype).T)

    if isinstance(visual, ModifiedResNet):
        pool = visual.attnpool

        def dense(acts: torch.Tensor) -> torch.Tensor:
            b, c, h, w = acts.shape
            tokens = acts.flatten(2).transpose(1, 2)  # (B, hw, C)
            emb = F.normalize(_at_least_fp32(pool.c_proj(pool.v_proj(tokens))), dim=-1)
            return to_scores(emb @ text.to(emb.dtype).T).transpose(1, 2).reshape(b, -1, h, w)

        return CamScorer(visual, visual.layer4, mean, std, scores, dense=dense)
    if isinstance(visual, VisionTransformer):
        grid = visual.grid_size
        batch_first = getattr(visual.transformer, "batch_first", True)

        def to_grid(tokens: torch.Tensor) -> torch.Tensor:
            patches = tokens[:, 1:] if batch_first else tokens[1:].transpose(0, 1)  # (B, hw, D)
            return patches.transpose(1, 2).reshape(patches.shape[0], -1, grid[0], grid[1])

        # the last block's input tokens (after its first norm): the last block's own output patch
        # tokens do not reach the pooled class token, so their gradient would be zero
        target = visual.transformer.resblocks[-1].ln_1
        return CamScorer(visual, target, mean, std, scores, to_grid=to_grid, native_size=visual.image_size[0])
    raise FssegError(f"unsupported CLIP vision tower {type(visual).__name__}; use a ResNet or ViT CLIP")


def resize_attnpool(visual, input_size: int) -> None:
    """Interpolate a ResNet CLIP's attention-pool position embedding for another input size."""
    pool = visual.attnpool
    old = int(round((pool.positional_embedding.shape[0] - 1) ** 0.5))
    new = input_size // 32
    if new == old:
        return
    cls, grid = pool.positional_embedding[:1], pool.positional_embedding[1:]
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    pool.positional_embedding = nn.Parameter(
        torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(new * new, -1)]), requires_grad=False
    )


# ----------------------------------------------------------------------------- label -> CAM
def resolve_backend(backend: str, model: str, pretrained: str) -> str:
    """`auto` -> clip when its weights are in the local caches, else imagenet (with a notice)."""
    if backend not in BACKENDS:
        raise FssegError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if clip_weights_present(model, pretrained):
        return "clip"
    log.warning(
        "CLIP weights %s/%s are not in the local caches: using the offline imagenet backend "
        "(EfficientNet-Lite0); pass --backend clip once the weights are there",
        model,
        pretrained,
    )
    return "imagenet"


@dataclass
class LabelCams:
    """CAMs for (image, label) pairs at each image's original size: what `fsseg clip-cam` computes.

    Build once per run (text embeddings and model load happen there), then call on batches.
    """

    scorer: CamScorer
    labels: list[str]
    method: str
    input_size: int
    device: torch.device
    precision: str = "fp32"

    @classmethod
    def build(
        cls,
        backend: str,
        labels: Sequence[str],
        *,
        model: str = "RN50",
        pretrained: str = "openai",
        score: str = "cosine",
        templates: Sequence[str] | None = None,
        method: str = "gradcam",
        input_size: int = 224,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
    ) -> LabelCams:
        device = torch.device(device)
        labels = list(labels)
        if backend == "clip":
            clip_model, tokenizer = load_clip(model, pretrained, device)
            text = text_embeddings(clip_model, tokenizer, labels, templates or TEMPLATES, device)
            scorer = clip_scorer(clip_model, text, score=score)
            if scorer.native_size and input_size != scorer.native_size:
                raise FssegError(
                    f"--input-size {input_size}: ViT CLIPs run at their native {scorer.native_size}"
                )
            if scorer.dense is not None:
                resize_attnpool(clip_model.visual, input_size)
        else:
            from stages.models.imagenet_labels import imagenet_classes

            scorer = imagenet_scorer([imagenet_classes(t) for t in labels]).to(device)
        return cls(scorer, labels, method, input_size, device, precision)

    def input_batch(self, images: Sequence) -> torch.Tensor:
        """uint8 RGB arrays (H, W, 3) -> the network input, uint8 (B, 3, S, S) on the device: each
        whole image resized to S x S (no crop)."""
        return torch.stack(
            [
                F.interpolate(
                    torch.from_numpy(img).permute(2, 0, 1)[None].float(),
                    size=(self.input_size,) * 2,
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )[0]
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
                for img in images
            ]
        ).to(self.device)

    def __call__(self, images: Sequence, labels: Sequence[str]) -> CamBatch:
        """uint8 RGB arrays (H, W, 3) and their labels -> float32 CAMs (H, W) in [0, 1], with
        each image's presence score of its label."""
        from stages.core import devices

        weights = torch.zeros(len(images), len(self.labels), device=self.device)
        for row, label in enumerate(labels):
            weights[row, self.labels.index(label)] = 1.0
        maps, presence = cams_and_presence(
            self.scorer,
            self.input_batch(images),
            weights,
            method=self.method,
            autocast=lambda: devices.autocast(self.device, self.precision),
        )
        resized = [
            F.interpolate(cam[None, None], size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0]
            .clamp(0, 1)
            .numpy()
            for img, cam in zip(images, maps.cpu(), strict=True)
        ]
        return CamBatch(resized, presence.cpu().tolist())


class CamBatch(list):
    """The CAMs of a batch (a list of float32 (H, W) maps) and `presence`: one score per map, how
    likely its label is in its image (see `CamScorer.presence`)."""

    def __init__(self, maps: Sequence, presence: Sequence[float]):
        super().__init__(maps)
        self.presence = list(presence)
