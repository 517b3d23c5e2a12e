"""Device choice, autocast by precision, and seeding of every random source.

`--device auto|cpu|cuda|cuda:N|mps` and `--precision auto|fp32|bf16|fp16` resolve here. Under
torchrun, `auto` and `cuda` pick the GPU of the process's LOCAL_RANK. `--precision auto` is bf16
where the device executes it fast (a CUDA GPU with native bf16; a CPU whose flags show AVX-512
BF16 or AMX and whose oneDNN takes bf16), fp32 everywhere else; it never picks fp16. CPU
features are read from /proc/cpuinfo, not guessed: without them `auto` stays fp32.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from stages.core.errors import FssegError
from stages.params import AUTO_FP32_STAGES, DEVICE_PATTERN, Precision, auto_fp32_stage

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_CHOICES = get_args(Precision)  # auto and the three above, as the records spell them
_DEVICE_PATTERN = re.compile(DEVICE_PATTERN)
# the /proc/cpuinfo flags that decide whether bf16 is fast on an x86 CPU, in the order printed
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
_BF16_UNITS = ("avx512_bf16", "amx_bf16")


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device a `--device` value names, checked to exist on this machine."""
    spec = spec.strip().lower()
    if not _DEVICE_PATTERN.fullmatch(spec):
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


# ----------------------------------------------------------------------------- CPU features
@dataclass(frozen=True)
class CpuFeatures:
    """What this CPU offers for bf16, as detected.

    `flags`: those of CPU_FLAGS that /proc/cpuinfo lists (None when it could not be read);
    `onednn_bf16`: torch's own check (`torch.ops.mkldnn._is_mkldnn_bf16_supported`, None when this
    torch has none). That check is true on every AVX-512 CPU, with or without bf16 units, so it
    alone never makes bf16 the fast choice.
    """

    flags: frozenset[str] | None
    onednn_bf16: bool | None = None

    @property
    def bf16_units(self) -> bool:
        """AVX-512 BF16 or AMX seen in the flags, and not contradicted by torch's check."""
        return bool(self.flags and self.flags.intersection(_BF16_UNITS)) and self.onednn_bf16 is not False

    def summary(self) -> str:
        """e.g. "avx2 (no avx512_bf16/amx_bf16)" or "avx2 avx512f avx512_bf16 amx_tile amx_bf16"."""
        if self.flags is None:
            found = "features unknown (no /proc/cpuinfo)"
        else:
            found = " ".join(f for f in CPU_FLAGS if f in self.flags) or "no avx2"
            if not self.flags.intersection(_BF16_UNITS):
                found += f" (no {'/'.join(_BF16_UNITS)})"
        if self.onednn_bf16 is not None:
            found += f", onednn bf16 {'yes' if self.onednn_bf16 else 'no'}"
        return found


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The CPU_FLAGS that a /proc/cpuinfo text lists (its first `flags` line: the cores agree)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split()).intersection(CPU_FLAGS)
    return frozenset()


def _onednn_bf16() -> bool | None:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the check, or built without oneDNN
        return None


@functools.cache
def cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> CpuFeatures:
    """This machine's CpuFeatures (read once per process)."""
    try:
        flags = parse_cpu_flags(Path(cpuinfo).read_text(errors="replace"))
    except OSError:
        flags = None
    return CpuFeatures(flags, _onednn_bf16())


# ----------------------------------------------------------------------------- precision
def _cuda_bf16(device: torch.device) -> bool:
    """Native bf16 on this GPU (Ampere or later, or ROCm); torch's emulation on older GPUs is slow."""
    with torch.cuda.device(device):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.3 has no emulation and no such argument
            return torch.cuda.is_bf16_supported()


def stage_precision(params, device: torch.device) -> str:
    """resolve_precision of a stage's parameter record: its `precision`, kept fp32 under `auto`
    when the record's field says so (`params.fp32_precision`)."""
    return resolve_precision(params.precision, device, stage=auto_fp32_stage(params))


def resolve_precision(precision: str, device: torch.device, stage: str | None = None) -> str:
    """The concrete precision (fp32, bf16 or fp16) that `--precision` means on `device`.

    `auto` -> bf16 on a CUDA GPU with native bf16 and on a CPU with bf16 units (cpu_features),
    fp32 elsewhere (MPS included) and for the stages of `AUTO_FP32_STAGES`; never fp16. Other
    values are checked and returned as they are.
    """
    if precision not in PRECISION_CHOICES:
        raise FssegError(f"--precision {precision!r} is not one of {', '.join(PRECISION_CHOICES)}")
    if precision == "auto":
        if stage in AUTO_FP32_STAGES:
            return "fp32"
        if device.type == "cuda":
            return "bf16" if _cuda_bf16(device) else "fp32"
        if device.type == "cpu":
            return "bf16" if cpu_features().bf16_units else "fp32"
        return "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise FssegError("--precision fp16 is for GPUs; on the CPU use --precision bf16 (or fp32)")
    return precision


def check_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `--precision` on `device` (None for fp32); `auto` is resolved first."""
    return PRECISIONS[resolve_precision(precision, device)]


def describe_precision(device: torch.device | str = "cpu", precision: str = "auto") -> str:
    """One line for humans: what `device` offers for bf16 and what `precision` resolves to there,
    e.g. "cpu: avx2 (no avx512_bf16/amx_bf16), onednn bf16 no -> fp32"."""
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        major, minor = torch.cuda.get_device_capability(device)
        native = "native" if _cuda_bf16(device) else "not native"
        offers, name = f"{torch.cuda.get_device_name(device)} (sm_{major}{minor}), bf16 {native}", str(device)
    elif device.type == "cpu":
        offers, name = cpu_features().summary(), "cpu"
    else:
        offers, name = "bf16 not chosen automatically", str(device)
    resolved = resolve_precision(precision, device)
    line = f"{name}: {offers} -> {resolved}"
    if precision != "auto":
        line += f" (asked; auto would pick {resolve_precision('auto', device)})"
    return line


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Mixed-precision context for `precision` on `device` (`auto` resolved); a no-op for fp32."""
    dtype = check_precision(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc serve every allocation from its heap and keep freed blocks for reuse (CPU runs).
    By default each block above 32 MB is a fresh mmap that the kernel zeroes page by page on first
    touch and unmaps when freed; refine's 4D correlations and convolution outputs are tens to
    hundreds of MB and are allocated anew at every step. Returns whether glibc took the setting
    (False elsewhere, e.g. musl or macOS)."""
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_max = -1, -4
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError, TypeError):
        return False


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
