"""Checkpoints that rebuild their model from the file alone, loaded safely.

Format (a plain dict, readable with `torch.load(path, weights_only=True)`):
`{"model_name", "model_kwargs", "state_dict", "fsseg_version"}` and, for resumable training,
`"optimizer"`, `"step"`, `"rng"` (python, numpy, torch CPU and CUDA generator states) and any
`extra` entries. Nothing is ever unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages import __version__
from stages.core.artifacts import atomic_path, read_manifest
from stages.core.errors import FssegError
from stages.models import MODELS, builder

REQUIRED_KEYS = ("model_name", "model_kwargs", "state_dict")


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain containers (safe for weights_only)."""
    py_version, py_state, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [
            torch.from_numpy(np_keys.astype(np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


SAFE_LEAVES = (type(None), bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.device, torch.Size)


def plain(value: Any, where: str = "checkpoint") -> Any:
    """`value` with NumPy scalars as Python numbers and NumPy arrays as tensors, so that it loads
    with `torch.load(weights_only=True)`; anything else beyond tensors and plain containers is a
    bug and raises TypeError naming where it sits."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, SAFE_LEAVES):
        return value
    if isinstance(value, dict):
        items = {k: plain(v, f"{where}[{k!r}]") for k, v in value.items()}
        if all(items[k] is v for k, v in value.items()):
            return value  # unchanged: a state dict keeps its type and `_metadata`
        return type(value)(items)
    if isinstance(value, list | tuple | set):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else type(value)(items)
    raise TypeError(f"{where} is a {type(value).__name__}, which torch.load(weights_only=True) refuses")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model  # DDP


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    model_name: str,
    model_kwargs: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    step: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically; with `optimizer`/`step` it carries full resume state."""
    payload: dict[str, Any] = {
        "model_name": model_name,
        "model_kwargs": dict(model_kwargs),
        "state_dict": _unwrap(model).state_dict(),
        "fsseg_version": __version__,
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if step is not None:
        payload["step"] = int(step)
        payload["rng"] = rng_state()
    if extra:
        payload.update(extra)
    payload = plain(payload)  # e.g. a learning rate computed with NumPy sits in the optimizer state
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint file a `--checkpoint` value names: the file, or an artifact's `checkpoints/best.pt`."""
    path = Path(path)
    if not path.is_dir():
        return path
    kind = read_manifest(path).get("kind")
    best = path / "checkpoints" / "best.pt"
    if not best.is_file():
        raise FssegError(
            f"{path} is a '{kind}' artifact without checkpoints/best.pt; pass the output folder of "
            f"`fsseg pretrain` (or train-panoptic) or a checkpoint file"
        )
    return best


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with `weights_only=True`; clear errors for anything else. `path` is a
    file, or an artifact folder holding `checkpoints/best.pt` (as `fsseg pretrain` writes)."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise FssegError(f"checkpoint not found: {path}; check the --checkpoint path")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if unsafe is None:
            raise FssegError(
                f"cannot read checkpoint {path}: the file is corrupt or not a torch checkpoint; pass one that "
                f"fsseg (or torch.save) wrote"
            ) from None
        raise FssegError(
            f"{path} holds a Python object ({unsafe.group(1)}) beyond tensors and plain containers, so fsseg "
            f"will not unpickle it; re-save it as a plain state dict"
        ) from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        KeyError,
        IndexError,
        struct.error,
    ) as err:
        # bytes that are not a torch file fail anywhere in the unpickler (a text file: KeyError)
        text = str(err).strip() if isinstance(err, RuntimeError | OSError | ValueError) else ""
        reason = text.splitlines()[0][:120] if text else "not torch data"
        raise FssegError(
            f"cannot read checkpoint {path}: {reason}; the file is corrupt or not a torch checkpoint"
        ) from None
    if not isinstance(data, dict):
        raise FssegError(
            f"{path} is not a checkpoint dict (found {type(data).__name__}); re-save it as a dict"
        )
    return data


def build_from_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model with the checkpoint's weights, the checkpoint dict), from the file alone."""
    data = load_checkpoint(path, map_location)
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise FssegError(
            f"{path} is not an fsseg checkpoint (no {', '.join(missing)}); pass a checkpoint written by "
            f"an fsseg training stage"
        )
    name = data["model_name"]
    if name not in MODELS:
        raise FssegError(
            f"{path} names model {name!r}, unknown to this fsseg; known: {', '.join(sorted(MODELS))}"
        )
    # fsseg 0.2.0 and earlier saved `backbone_weights` (None) among the kwargs: the state dict holds them
    kwargs = {k: v for k, v in data["model_kwargs"].items() if k != "backbone_weights"}
    model = builder(name)(**kwargs)
    try:
        result = model.load_state_dict(data["state_dict"], strict=False)
    except RuntimeError as err:
        raise FssegError(
            f"{path} does not fit model {name!r}: {str(err).splitlines()[-1].strip()[:160]}"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise FssegError(
            f"{path} does not match model {name!r}: {len(result.missing_keys)} missing and "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. "
            f"{(result.missing_keys + result.unexpected_keys)[0]}); was it written by another fsseg version?"
        )
    return model, data
