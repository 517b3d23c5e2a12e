"""Device choice, autocast and seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from stages.core import devices
from stages.core.devices import (
    CpuFeatures,
    autocast,
    check_precision,
    cpu_features,
    describe_precision,
    parse_cpu_flags,
    resolve_device,
    resolve_precision,
    seed_everything,
    stage_precision,
)
from stages.core.errors import FssegError

CPU = torch.device("cpu")
AVX2_ONLY = CpuFeatures(frozenset({"avx2"}), onednn_bf16=False)
# AVX-512 without bf16 units: torch's oneDNN check says yes, but bf16 is not fast there
AVX512_ONLY = CpuFeatures(frozenset({"avx2", "avx512f"}), onednn_bf16=True)
SAPPHIRE_RAPIDS = CpuFeatures(
    frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}), onednn_bf16=True
)
# an excerpt of a real /proc/cpuinfo (two cores), flags line shortened
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512dq avx512bw avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8
bugs\t\t: spectre_v1

processor\t: 1
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512dq avx512bw avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8
"""


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


def test_parse_cpu_flags_reads_the_bf16_relevant_flags():
    assert parse_cpu_flags(CPUINFO) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    avx2 = CPUINFO.replace(
        " avx512f avx512dq avx512bw avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8", ""
    )
    assert parse_cpu_flags(avx2) == {"avx2"}
    assert parse_cpu_flags("processor : 0\nFeatures : fp asimd bf16\n") == frozenset()  # no x86 flags line


def test_cpu_features_from_a_file(tmp_path):
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    found = cpu_features.__wrapped__(tmp_path / "cpuinfo")
    assert found.flags == {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert found.bf16_units == (found.onednn_bf16 is not False)
    missing = cpu_features.__wrapped__(tmp_path / "absent")
    assert missing.flags is None and not missing.bf16_units
    assert "unknown" in missing.summary()
    assert isinstance(cpu_features(), CpuFeatures)  # this machine's, whatever it has


def test_bf16_units_need_avx512_bf16_or_amx():
    assert not AVX2_ONLY.bf16_units
    assert not AVX512_ONLY.bf16_units  # oneDNN takes bf16 there, but emulated: not faster
    assert SAPPHIRE_RAPIDS.bf16_units
    assert CpuFeatures(frozenset({"avx512_bf16"}), onednn_bf16=None).bf16_units  # torch has no check
    assert not CpuFeatures(frozenset({"amx_bf16"}), onednn_bf16=False).bf16_units  # torch says no
    assert not CpuFeatures(None, onednn_bf16=True).bf16_units  # flags unreadable: not guessed


@pytest.mark.parametrize("features", [AVX2_ONLY, AVX512_ONLY, CpuFeatures(None, None)])
def test_auto_is_fp32_on_a_cpu_without_bf16_units(monkeypatch, features):
    monkeypatch.setattr(devices, "cpu_features", lambda: features)
    assert resolve_precision("auto", CPU) == "fp32"
    assert check_precision("auto", CPU) is None
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with autocast(CPU, "auto"):
        assert (a @ b).dtype == torch.float32
    assert describe_precision(CPU).endswith("-> fp32")
    assert "no avx512_bf16/amx_bf16" in describe_precision(CPU) or features.flags is None


def test_auto_is_bf16_on_a_cpu_with_bf16_units(monkeypatch):
    monkeypatch.setattr(devices, "cpu_features", lambda: SAPPHIRE_RAPIDS)
    assert resolve_precision("auto", CPU) == "bf16"
    assert check_precision("auto", CPU) == torch.bfloat16
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with autocast(CPU, "auto"):
        assert (a @ b).dtype == torch.bfloat16
    assert (
        describe_precision(CPU) == "cpu: avx2 avx512f avx512_bf16 amx_tile amx_bf16, onednn bf16 yes -> bf16"
    )


def test_auto_on_gpus_follows_native_bf16(monkeypatch):
    cuda = torch.device("cuda", 0)
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(devices, "_cuda_bf16", lambda device, native=native: native)
        assert resolve_precision("auto", cuda) == expected
    assert resolve_precision("auto", torch.device("mps")) == "fp32"


@pytest.mark.parametrize("features", [AVX2_ONLY, SAPPHIRE_RAPIDS])
def test_explicit_precisions_pass_through_and_auto_never_picks_fp16(monkeypatch, features):
    monkeypatch.setattr(devices, "cpu_features", lambda: features)
    monkeypatch.setattr(devices, "_cuda_bf16", lambda device: False)
    cuda = torch.device("cuda", 0)
    for precision in ("fp32", "bf16"):
        assert resolve_precision(precision, CPU) == precision
        assert resolve_precision(precision, cuda) == precision
    assert resolve_precision("fp16", cuda) == "fp16"
    assert "fp16" not in {resolve_precision("auto", d) for d in (CPU, cuda, torch.device("mps"))}
    with pytest.raises(FssegError, match="fp16 is for GPUs"):
        resolve_precision("fp16", CPU)
    with pytest.raises(FssegError, match="auto, fp32, bf16, fp16"):
        check_precision("fp64", CPU)
    assert "(asked; auto would pick" in describe_precision(CPU, "bf16")


def test_describe_precision_on_a_gpu(monkeypatch):
    monkeypatch.setattr(devices, "_cuda_bf16", lambda device: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert describe_precision("cuda") == "cuda:0: NVIDIA H200 (sm_90), bf16 native -> bf16"
    assert describe_precision("cuda:0", "fp16") == (
        "cuda:0: NVIDIA H200 (sm_90), bf16 native -> fp16 (asked; auto would pick bf16)"
    )


def test_auto_stays_fp32_for_stages_whose_numbers_bf16_moves(monkeypatch):
    """finetune-episode, train-panoptic and pretrain (README, "Common options"): `auto` stays fp32
    there even with bf16 units; asked for, bf16 is still given. Each stage's help says so and why,
    and every model-running stage resolves its precision from its record, where that is written."""
    import dataclasses
    import inspect

    from stages import (
        clip_cam,
        finetune_episode,
        label_gen,
        predict_panoptic,
        pretrain,
        pseudo_label,
        refine,
        train_panoptic,
    )
    from stages.params import (
        AUTO_FP32_STAGES,
        EpisodicTrainParams,
        FinetuneParams,
        LabelGenParams,
        PSPNetTrainParams,
        TrainPanopticParams,
    )

    monkeypatch.setattr(devices, "cpu_features", lambda: SAPPHIRE_RAPIDS)
    records = {
        "finetune-episode": [FinetuneParams],
        "train-panoptic": [TrainPanopticParams],
        "pretrain": [EpisodicTrainParams, PSPNetTrainParams],
    }
    assert set(AUTO_FP32_STAGES) == set(records)
    assert stage_precision(LabelGenParams(), CPU) == "bf16"
    for stage, classes in records.items():
        for record in classes:
            assert stage_precision(record(), CPU) == "fp32"
            assert stage_precision(record(precision="bf16"), CPU) == "bf16"
            help_text = next(f for f in dataclasses.fields(record) if f.name == "precision").metadata["help"]
            assert "auto: fp32 on every device for this stage" in help_text
            assert AUTO_FP32_STAGES[stage] in help_text
    for module in (clip_cam, finetune_episode, label_gen, predict_panoptic, pretrain, pseudo_label, refine,
                   train_panoptic):  # fmt: skip
        assert "devices.stage_precision(p, dev)" in inspect.getsource(module), module.__name__


def test_keep_freed_memory_takes_where_glibc_is_the_c_library():
    import platform

    assert devices.keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
