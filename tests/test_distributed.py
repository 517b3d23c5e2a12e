"""torchrun with 2 CPU processes: every item processed exactly once, one manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from stages.core.distributed import DistInfo, shard

ROOT = Path(__file__).resolve().parents[1]


def test_shard_covers_every_item_once():
    items = list(range(10))
    parts = [shard(items, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(parts, [])) == items


def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "art"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        str(torchrun),
        "--nproc_per_node=2",
        "--standalone",
        str(ROOT / "tests" / "dist_worker.py"),
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted((out / "items").iterdir())
    assert [f.stem for f in files] == [f"item{i:02d}" for i in range(11)]
    ranks = [json.loads(f.read_text())["rank"] for f in files]
    assert ranks == [i % 2 for i in range(11)]  # each item written once, by its own rank
    manifests = list(out.rglob("manifest.json"))
    assert manifests == [out / "manifest.json"]
    manifest = json.loads(manifests[0].read_text())
    assert manifest["world_size"] == 2 and manifest["outputs"]["per_rank"] == [6, 5]
    assert not list(out.rglob(".*tmp*"))
