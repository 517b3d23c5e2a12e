"""Model families. `MODELS` maps a model name to its builder ("module:Class" or a callable);
checkpoints store the name and the builder's keyword arguments, so
`stages.core.checkpoints.build_from_checkpoint` rebuilds a model from the file alone.
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


def builder(name: str) -> Callable[..., Any]:
    """The constructor registered under `name`."""
    entry = MODELS[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        return getattr(importlib.import_module(module), attr)
    return entry
