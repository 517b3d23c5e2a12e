"""`fsseg report`: the page's content, and its rendering in a real headless browser (Chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import error_line, make_street_tree, run_fsseg

TINY = ("--backbone", "tiny", "--backbone-weights", "random", "--device", "cpu")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder with a label-gen, a pseudo-label, a panoptic ground truth and two evaluations."""
    base = tmp_path_factory.mktemp("report")
    street = make_street_tree(base / "street")
    run = base / "run"
    steps = [
        ("label-gen", "folder", "--root", street, "--k", "3", "--views", "1", "--epochs-semantic", "2",
         "--epochs-boundary", "1", *TINY, "--out", run / "heads"),
        ("pseudo-label", "folder", "--root", street, "--heads", run / "heads", "--split", "all", "--min-segment", "20",
         "--device", "cpu", "--out", run / "pseudo"),
        ("data", "panoptic-gt", "folder", "--root", street, "--out", run / "gt"),
        ("evaluate", "--task", "panoptic", "--format", "coco", "--pred", run / "pseudo", "--gt", run / "gt",
         "--out", run / "eval-panoptic"),
        ("evaluate", "--task", "semantic", "--pred", run / "pseudo" / "semantic", "--gt", street / "masks",
         "--num-classes", "3", "--class-names", "road,sky,car", "--out", run / "eval-semantic"),
    ]  # fmt: skip
    for step in steps:
        run_fsseg(*step, check=True)
    return run


def test_report_lists_the_chain_metrics_and_gallery(run_dir):
    proc = run_fsseg("report", run_dir)
    assert proc.returncode == 0, proc.stderr
    page = (run_dir / "report" / "index.html").read_text()
    assert "5 artifacts" in page
    for stage in ("label-gen", "pseudo-label", "data panoptic-gt", "evaluate"):
        assert f"{stage} <small>" in page
    # lineage: the panoptic evaluation links back to the pseudo-labels (step 2) and the ground truth (step 3)
    section = page[page.index('id="a3"') : page.index('id="a4"')]
    assert "<code>eval-panoptic</code>" in section and 'href="#a1"' in section and 'href="#a2"' in section
    assert "<svg" in page and "per class" in page and "Gallery (6 of 8)" not in page
    pictures = re.findall(r'<img src="([^"]+)"', page)
    assert len(pictures) >= 8 + 4  # 8 previews + loss and metric charts
    assert all((run_dir / "report" / p).is_file() for p in pictures)
    assert "http://" not in page and "https://" not in page  # nothing remote
    # rebuilt in place, atomically
    assert run_fsseg("report", run_dir).returncode == 0
    assert not list(run_dir.glob(".report-*"))


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    run_fsseg("report", run_dir, check=True)
    url = (run_dir / "report" / "index.html").as_uri()
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    loaded = int(re.search(r'data-images-loaded="(\d+)"', body.group(0)).group(1))
    broken = int(re.search(r'data-images-broken="(\d+)"', body.group(0)).group(1))
    assert loaded >= 12 and broken == 0
    assert dom.count("<table>") >= 10
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, "--window-size=1280,1800", f"--screenshot={shot}", url], capture_output=True, timeout=120
    )
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_report_errors(tmp_path):
    assert "does not exist" in error_line(run_fsseg("report", tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    assert "no fsseg artifacts" in error_line(run_fsseg("report", tmp_path / "empty"))
