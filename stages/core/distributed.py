"""Multi-process runs under torchrun: initialisation, sharding, and rank-0-only writes.

`torchrun --nproc_per_node=N fsseg STAGE ...` sets RANK / WORLD_SIZE / LOCAL_RANK; every
stage calls `init_distributed()` and gets a `DistInfo`. Without those variables the run is a
single process and nothing here imports torch. Backend: nccl on CUDA, gloo otherwise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str = "cpu") -> DistInfo:
    """Join the process group torchrun describes (idempotent); a no-op for one process."""
    if not _launched():
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return current()


def current() -> DistInfo:
    """The process group this process belongs to (one process when none is initialised)."""
    if not _launched():
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's share of `items`: every item goes to exactly one rank (round robin)."""
    return list(items[info.rank :: info.world_size])


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def summed(obj: Any, info: DistInfo) -> Any:
    """The sum (`+`) of every rank's `obj` (a metric accumulator), on every rank."""
    parts = all_gather_objects(obj, info)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def weight_checksums(weights, info: DistInfo) -> list[float]:
    """Every rank's sum of its `weights` (tensors), in rank order; DDP keeps them equal, so a
    difference is logged as a warning."""
    checksum = float(sum(w.detach().double().sum() for w in weights))
    checksums = all_gather_objects(checksum, info)
    if len(set(checksums)) > 1:
        log.warning("ranks disagree on the trained weights: %s", checksums)
    return checksums


def cleanup() -> None:
    if _launched():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
