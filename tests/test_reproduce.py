"""examples/reproduce.py: clear one-line errors for missing data (the QUICK chains run in CI)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("QUICK", "DATA", "OUT", "CHECKPOINTS")}
    return subprocess.run([sys.executable, str(ROOT / "examples" / "reproduce.py"), *args], capture_output=True,
                          text=True, env={**clean, **env}, cwd=ROOT)  # fmt: skip


@pytest.mark.parametrize(
    ("experiment", "env", "expected"),
    [
        ("table1", {}, "set DATA=path/to/VOCdevkit/VOC2012"),
        (
            "gfss",
            {"DATA": "/nonexistent/VOC2012"},
            "is not a VOC2012 folder with JPEGImages/ and SegmentationClassAug/",
        ),
        ("spino", {}, "set DATA=path/to/cityscapes"),
        ("nothing", {}, "usage: python examples/reproduce.py table1|gfss|spino"),
    ],
)
def test_missing_data_is_one_clear_line(experiment, env, expected, tmp_path):
    proc = _run(experiment, OUT=str(tmp_path / "out"), **env)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()
