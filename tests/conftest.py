"""Shared test helpers: running the real `fsseg` command, and where the shared real data lives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FSSEG = Path(sys.executable).parent / "fsseg"


def run_fsseg(*args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed `fsseg` console script as a user would; returns the completed process."""
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    full_env.pop("FSSEG_DEBUG", None) if "FSSEG_DEBUG" not in (env or {}) else None
    proc = subprocess.run([str(FSSEG), *map(str, args)], capture_output=True, text=True, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"fsseg {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (it ships beside the repo on dev and CI machines)")
    return path


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The user-facing error: exactly one non-empty stderr line starting with 'error:', no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def make_voc_tree(root: Path) -> Path:
    """A tiny VOC2012 tree: 12 images 64x64; a 40x40 square of class 1 (even i) or 2 (odd i),
    a class-8 corner on every third image, row 0 = 255 (border)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    for i in range(12):
        label = np.zeros((64, 64), np.uint8)
        label[:40, :40] = 1 + (i % 2)
        if i % 3 == 0:
            label[50:, 50:] = 8
        label[0, :] = 255
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"im{i:02d}.jpg"
        )
        Image.fromarray(label).save(root / "SegmentationClassAug" / f"im{i:02d}.png")
    return root


def make_street_tree(root: Path, n: int = 8, size: tuple[int, int] = (84, 112)) -> Path:
    """A tiny street scene dataset in the `folder` layout: classes road (stuff), sky (stuff) and
    car (thing). Sky above, road below, 1-2 red cars (the second one touching the first on odd
    images), mild noise; every image `size` (h, w)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    h, w = size
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.yaml").write_text("names: [road, sky, car]\nbackground: null\nthings: [car]\n")
    for i in range(n):
        label = np.zeros((h, w), np.uint8)
        label[: h // 3] = 1
        x0 = 8 + 4 * (i % 4)
        label[h // 2 : h // 2 + 20, x0 : x0 + 30] = 2
        if i % 2:
            label[h // 2 : h // 2 + 20, x0 + 30 : x0 + 60] = 2
        colours = np.array([[90, 90, 90], [110, 160, 230], [200, 30, 30]], np.float64)
        image = colours[label] + rng.normal(0, 8, (h, w, 3))
        if i % 2:  # a dark seam between touching cars, as real images have
            image[h // 2 : h // 2 + 20, x0 + 29 : x0 + 31] *= 0.3
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / f"s{i:02d}.png")
        Image.fromarray(label).save(root / "masks" / f"s{i:02d}.png")
    return root


def files_outside(root: Path, *inside: Path) -> set[Path]:
    """Every path under `root` and beside it (in its parent), except those under `inside` (the
    --out folder, caches). Compare it before and after a run: a run that wrote outside --out
    changes it."""
    keep = [p.resolve() for p in inside]
    found = set(root.parent.iterdir()) | set(root.rglob("*"))
    return {p for p in found if not any(p.resolve().is_relative_to(k) for k in keep)}
