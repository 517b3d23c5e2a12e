"""Model families. `MODELS` maps a model name to its builder ("module:Class" or a callable);
checkpoints store the name and the builder's keyword arguments, so
`stages.core.checkpoints.build_from_checkpoint` rebuilds a model from the file alone.

Builders take architecture arguments only and initialise randomly; pretrained backbone weights
are loaded afterwards by `stages.models.backbones.load_backbone_weights`. `TINY` holds each
family's tiny variant (a few channels, for tests and smoke runs; `--tiny`): `build(name, tiny=True)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

MODELS: dict[str, str | Callable[..., Any]] = {
    "imr_hsnet": "stages.models.hsnet:IMRHSNet",
    "hsnet": "stages.models.hsnet:HSNet",
    "pspnet": "stages.models.pspnet:PSPNet",
    "spino_heads": "stages.models.spino:LabelGenHeads",
    "panoptic_deeplab": "stages.models.spino:PanopticDeepLab",
}
TINY: dict[str, dict[str, Any]] = {
    "imr_hsnet": {"channels": [4, 8, 16], "mid": 32, "gate": 32},
    "hsnet": {"channels": [4, 8, 16]},
    "pspnet": {"bottleneck": 32, "proj_dim": 16},
    "panoptic_deeplab": {"channels": 16, "head_channels": 8},
}


def builder(name: str) -> Callable[..., Any]:
    """The constructor registered under `name`."""
    entry = MODELS[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        return getattr(importlib.import_module(module), attr)
    return entry


def model_kwargs(name: str, *, tiny: bool = False, **kwargs: Any) -> dict[str, Any]:
    """The constructor arguments of model `name`: `kwargs`, over the tiny variant's widths when `tiny`."""
    return (dict(TINY[name]) if tiny else {}) | kwargs


def build(name: str, *, tiny: bool = False, **kwargs: Any) -> Any:
    """Model `name` from `model_kwargs(name, tiny=tiny, **kwargs)`, randomly initialised."""
    return builder(name)(**model_kwargs(name, tiny=tiny, **kwargs))
