"""Model families. `MODELS` maps a model name to its builder; checkpoints store the name and
the builder's keyword arguments, so `stages.core.checkpoints.build_from_checkpoint` rebuilds a
model from the file alone. Each family registers its paper builder and a tiny test builder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MODELS: dict[str, Callable[..., Any]] = {}
