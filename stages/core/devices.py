"""Device choice, autocast by precision, and seeding of every random source.

`--device auto|cpu|cuda|cuda:N|mps` and `--precision fp32|bf16|fp16` resolve here. Under
torchrun, `auto` and `cuda` pick the GPU of the process's LOCAL_RANK.
"""

from __future__ import annotations

import contextlib
import os
import random
import re

import numpy as np
import torch

from stages.core.errors import FssegError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device a `--device` value names, checked to exist on this machine."""
    spec = spec.strip().lower()
    if not _DEVICE_PATTERN.match(spec):
        raise FssegError(f"--device {spec!r} is not one of auto, cpu, cuda, cuda:N, mps")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FssegError(
                f"--device {spec}: no CUDA GPU is visible to torch here; use --device cpu or auto"
            )
        index = int(spec.split(":")[1]) if ":" in spec else local_rank
        if index >= torch.cuda.device_count():
            raise FssegError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible; pick cuda:0.."
                f"{torch.cuda.device_count() - 1}"
            )
        return torch.device("cuda", index)
    if spec == "mps" and not torch.backends.mps.is_available():
        raise FssegError("--device mps: Apple MPS is not available here; use --device cpu or auto")
    return torch.device(spec)


def check_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `--precision` on `device` (None for fp32)."""
    if precision not in PRECISIONS:
        raise FssegError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise FssegError("--precision fp16 is for GPUs; on the CPU use --precision bf16 (or fp32)")
    return PRECISIONS[precision]


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Mixed-precision context for `precision` on `device`; a no-op for fp32."""
    dtype = check_precision(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (all devices); return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def describe(device: torch.device) -> str:
    """Human-readable device name for manifests and logs."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)
