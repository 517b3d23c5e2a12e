"""The command line itself: fast help, no heavy imports, `fsseg info`."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import run_fsseg

HEAVY = ("torch", "numpy", "torchvision", "cv2", "PIL", "scipy", "open_clip", "timm", "matplotlib")


@pytest.mark.parametrize("args", [["--help"], ["evaluate", "--help"], ["info", "--help"]])
def test_help_imports_no_heavy_modules(args):
    code = (
        "import sys\n"
        f"sys.argv = ['fsseg', *{args!r}]\n"
        "from fsseg_cli.main import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout
    assert "Usage" in proc.stdout


def test_help_lists_stage_commands_only():
    proc = run_fsseg("--help", check=True)
    panel = proc.stdout.split("Commands", 1)[1]
    listed = set(re.findall(r"^\W ([a-z][a-z0-9-]+)\s{2,}\S", panel, re.M))
    stages = {"clip-cam", "pretrain", "refine", "finetune-episode", "label-gen", "pseudo-label"}
    stages |= {"train-panoptic", "predict-panoptic", "evaluate", "report", "data", "info"}
    assert listed == stages


def test_info_reports_versions_devices_and_weights():
    proc = run_fsseg("info", check=True)
    out = proc.stdout
    assert "torch" in out and "devices" in out
    assert "precision (--precision auto)" in out and ("fp32" in out or "bf16" in out)  # what auto picks
    assert "EfficientNet-Lite0 ImageNet" in out
    # the offline ImageNet weights ship with a dependency, so they must be found
    line = next(line for line in out.splitlines() if "EfficientNet-Lite0 ImageNet" in line)
    assert "yes" in line and "efficientnet-lite0-57934424.pth" in line
    assert "DINOv2 ViT-B/14" in out


def test_unknown_option_value_is_rejected():
    proc = run_fsseg("evaluate", "--pred", "a", "--gt", "b", "--num-classes", "0", "--out", "x")
    assert proc.returncode != 0
    assert "num-classes" in proc.stderr
