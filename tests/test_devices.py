"""Device choice, autocast and seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from stages.core.devices import autocast, check_precision, resolve_device, seed_everything
from stages.core.errors import FssegError


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(FssegError, match="not one of"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(FssegError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_autocast_bf16_on_cpu():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (a @ b).dtype == torch.float32
    with pytest.raises(FssegError, match="bf16"):
        check_precision("fp16", torch.device("cpu"))


def test_seed_everything_is_deterministic():
    def draw():
        gen = seed_everything(123)
        return random.random(), np.random.rand(), torch.rand(2).tolist(), torch.rand(1, generator=gen).item()

    assert draw() == draw()
