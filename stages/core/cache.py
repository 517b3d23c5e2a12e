"""A least-recently-used cache of tensors held within a memory budget (`--feature-cache-mb`).

The stages that see the same image in many episodes (refine, finetune-episode) keep its frozen
backbone's output here instead of recomputing it. The budget counts the bytes of the cached
tensors; 0 turns the cache off.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch


def tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors in `value` (nested lists/tuples/dicts of tensors)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    return 0


class TensorCache:
    """`cache(key, compute)`: the cached value of `key`, or `compute()` stored within `budget_mb`."""

    def __init__(self, budget_mb: float):
        self.budget = int(budget_mb * 2**20)
        self.store: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self.used = self.hits = self.misses = 0

    def __call__(self, key: str, compute: Callable[[], Any]) -> Any:
        if key in self.store:
            self.hits += 1
            self.store.move_to_end(key)
            return self.store[key][0]
        self.misses += 1
        value = compute()
        size = tensor_bytes(value)
        if 0 < size <= self.budget:
            self.store[key] = (value, size)
            self.used += size
            while self.used > self.budget:
                _, (_, freed) = self.store.popitem(last=False)
                self.used -= freed
        return value

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self.store), "bytes": self.used}
