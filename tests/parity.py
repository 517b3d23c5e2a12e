"""The authors' HSNet / IMR-HSNet parity fixtures (`../shared/reference/parity/README.md`):
rebuilding their checkpoints and running fsseg's forward on their inputs."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

FORMULA_ARCHS = ("resnet50", "vgg16")


def backbone_state(arch: str, offset: int) -> dict[str, torch.Tensor]:
    """The fixtures' synthetic backbone weights: a closed formula per key (float64, then float32)."""
    import torchvision.models as tvm

    reference = getattr(tvm, arch)(weights=None).state_dict()
    state = {}
    for i, key in enumerate(sorted(reference)):
        like, s = reference[key], i + offset
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.int64)
        elif like.dim() >= 2:
            out = like.shape[0]
            n = like.numel() // out
            o = torch.arange(1, out + 1, dtype=torch.float64)[:, None]
            j = torch.arange(1, n + 1, dtype=torch.float64)[None, :]
            f = 0.3 + 5.6 * torch.frac(0.618034 * o)
            w = torch.sin(f * j + s) * (1.7 * math.sqrt(2.0 / n))
            state[key] = w.float().reshape(like.shape)
        else:
            c = torch.arange(like.shape[0], dtype=torch.float64)
            if key.endswith("running_mean"):
                v = 0.05 * torch.sin(1.3 * c + s)
            elif key.endswith("running_var"):
                v = 1 + 0.5 * (1 + torch.sin(0.7 * c + s))
            elif key.endswith("weight"):
                v = 1 + 0.1 * torch.sin(c + s)
            else:
                v = 0.1 * torch.cos(c + s)
            state[key] = v.float()
    return state


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def authors_checkpoint(fixture: dict) -> dict[str, torch.Tensor]:
    """The fixture's checkpoint as the authors saved theirs: `module.` keys, backbone and head."""
    backbone = backbone_state(
        fixture.get("backbone_arch", "resnet50"), int(fixture.get("backbone_offset", 0))
    )
    assert state_sha256(backbone) == fixture["backbone_sha256"], "backbone formula recomputed differently"
    head = {k: v.float() * fixture["head_scale"][k] for k, v in fixture["head_int8"].items()}
    return {f"module.backbone.{k}": v for k, v in backbone.items()} | head


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
