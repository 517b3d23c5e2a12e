"""Crashes and interrupts: a killed `--overwrite` run is settled by the next run, SIGTERM is
handled like Ctrl-C, temp files of killed writes are cleaned up and never read as items, a
resumed clip-cam is bit-exact, every training and labelling stage killed with `kill -9` and run
again ends as an uninterrupted run, and error text is shown as written (square brackets too).

The real `kill -9` tests run the `fsseg` command in a subprocess and are marked slow."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image

from stages.core import artifacts
from stages.core.artifacts import (
    MANIFEST_NAME,
    RUN_STATE_NAME,
    atomic_write_text,
    is_temp_file,
    open_artifact,
    read_manifest,
    remove_stale_temp_files,
    run_items,
)
from stages.core.errors import FssegError
from stages.core.imageio import list_images
from tests.conftest import FSSEG, error_line, make_street_tree, make_voc_tree, run_fsseg


# ----------------------------------------------------------------------------- helpers
def _dead_pid() -> int:
    """The id of a process that has ended (and been waited for)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _run(out, items, params=None, fail_after=None, overwrite=False, interrupt=False):
    """A miniature stage writing one file per item; raises after `fail_after` items."""
    with open_artifact(
        out, kind="metrics", stage="test", params=params or {"a": 1}, seed=0, overwrite=overwrite
    ) as art:
        if art.up_to_date:
            return art
        written = []

        def work(item):
            if fail_after is not None and len(written) == fail_after:
                raise KeyboardInterrupt() if interrupt else RuntimeError("crash")
            atomic_write_text(art.file(f"items/{item}.txt"), f"value {item} {params}")
            written.append(item)

        run_items(art, items, done=lambda i: art.has(f"items/{i}.txt"), work=work)
        art.finish(outputs={"items": len(items)})
    return art


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _flat(text: str) -> str:
    """Log output with Rich's line wrapping undone."""
    return " ".join(text.split())


def _leftovers(parent: Path) -> list[str]:
    """Set-aside copies and temp files anywhere under `parent`."""
    return [str(p) for p in parent.rglob("*") if ".replaced-" in p.name or is_temp_file(p)]


# ----------------------------------------------------------------------------- overwrite killed
def test_killed_unfinished_overwrite_is_put_back_by_the_next_run(tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    _run(out, ["a", "b", "c"])
    before = _contents(out)
    # as after kill -9: the old folder set aside, the new run half done, no cleanup ran
    monkeypatch.setattr(artifacts.Artifact, "__exit__", lambda self, *exc: None)
    with pytest.raises(RuntimeError):
        _run(out, ["a", "b", "c"], params={"a": 2}, overwrite=True, fail_after=1)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.glob(".run.replaced-*")] == [f".run.replaced-{os.getpid()}"]
    assert (out / "items" / "a.txt").is_file() and not (out / MANIFEST_NAME).exists()
    with pytest.raises(
        FssegError, match=r"--overwrite run into it was stopped.*\.run\.replaced-.*puts them back"
    ):
        read_manifest(out)  # a reader says where the old contents are
    caplog.set_level(logging.INFO, logger="stages")
    art = _run(out, ["a", "b", "c"])  # any run into --out: here the old command again
    assert art.up_to_date
    put_back = [r.getMessage() for r in caplog.records if "put the previous contents back" in r.getMessage()]
    assert len(put_back) == 1 and str(out) in put_back[0], caplog.text
    assert _contents(out) == before
    assert _leftovers(tmp_path) == []


def test_killed_overwrite_that_had_finished_drops_the_set_aside_copy(tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    _run(out, ["a", "b"])
    # as after kill -9 between the new manifest and the deletion of the old copy
    monkeypatch.setattr(artifacts.shutil, "rmtree", lambda *args, **kwargs: None)
    _run(out, ["a", "b"], params={"a": 2}, overwrite=True)
    monkeypatch.undo()
    assert len(list(tmp_path.glob(".run.replaced-*"))) == 1
    finished = _contents(out)
    caplog.set_level(logging.INFO, logger="stages")
    assert _run(out, ["a", "b"], params={"a": 2}).up_to_date
    assert "deleted the previous contents it had set aside" in caplog.text
    assert _contents(out) == finished and read_manifest(out)["params"] == {"a": 2}
    assert _leftovers(tmp_path) == []


def test_interrupt_after_the_new_manifest_keeps_the_finished_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _run(out, ["a"])
    write_json = artifacts.atomic_write_json

    def write_then_interrupt(path, obj):
        write_json(path, obj)
        if path.name == MANIFEST_NAME:
            raise KeyboardInterrupt()

    monkeypatch.setattr(artifacts, "atomic_write_json", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt) as err:
        _run(out, ["a"], params={"a": 2}, overwrite=True)
    monkeypatch.undo()
    assert "had finished" in err.value.fsseg_outcome
    assert read_manifest(out)["params"] == {"a": 2} and _leftovers(tmp_path) == []


def test_set_aside_copy_of_a_running_process_is_not_touched(tmp_path):
    out = tmp_path / "run"
    _run(out, ["a"])
    copy = tmp_path / f".run.replaced-{os.getppid()}"  # a process that is running now
    copy.mkdir()
    with pytest.raises(FssegError, match=rf"being replaced by another fsseg run \(process {os.getppid()}\)"):
        _run(out, ["a"])
    assert copy.is_dir()


def test_two_set_aside_copies_are_refused_with_their_names(tmp_path):
    out = tmp_path / "run"
    _run(out, ["a"])
    for pid in (_dead_pid(), _dead_pid() + 100000):
        (tmp_path / f".run.replaced-{pid}").mkdir()
    with pytest.raises(FssegError, match=r"2 copies set aside.*keep the one you want"):
        _run(out, ["a"])


def test_interrupted_overwrite_notes_the_old_run_was_put_back(tmp_path):
    out = tmp_path / "run"
    _run(out, ["a", "b"])
    before = _contents(out)
    with pytest.raises(KeyboardInterrupt) as err:
        _run(out, ["a", "b"], params={"a": 2}, overwrite=True, fail_after=1, interrupt=True)
    assert "were put back" in err.value.fsseg_outcome and str(out) in err.value.fsseg_outcome
    assert _contents(out) == before and _leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt) as err:  # resumable: no note, the default message holds
        _run(tmp_path / "fresh", ["a", "b"], fail_after=1, interrupt=True)
    assert not hasattr(err.value, "fsseg_outcome")


# ----------------------------------------------------------------------------- temp files
def test_temp_file_names():
    assert is_temp_file("x/.im00.tmp-123.png") and is_temp_file(".best.tmp-9.pt")
    assert is_temp_file(".a.b.tmp-1.npy") and is_temp_file(".manifest.tmp-77.json")
    for name in ("im00.png", ".hidden.png", "a.tmp-1.png", ".a.tmp-x.png", ".fsseg-run.json"):
        assert not is_temp_file(name), name


def test_resumed_run_deletes_stale_temp_files_and_keeps_live_ones(tmp_path, caplog):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        _run(out, ["a", "b", "c"], fail_after=1)
    dead, live = _dead_pid(), os.getppid()
    stale = [out / "items" / f".b.tmp-{dead}.txt", out / "checkpoints" / f".best.tmp-{dead}.pt"]
    own = out / "items" / f".c.tmp-{os.getpid()}.txt"  # this process has not written it: stale
    kept = out / "items" / f".d.tmp-{live}.txt"
    for path in [*stale, own, kept]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    caplog.set_level(logging.INFO, logger="stages")
    art = _run(out, ["a", "b", "c"])
    assert art.up_to_date and "deleted 3 temporary file(s)" in caplog.text
    assert [p for p in out.rglob("*") if is_temp_file(p)] == [kept]
    kept.unlink()
    assert remove_stale_temp_files(out) == 0


def test_readers_never_list_temp_files(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "a.png")
    (folder / f".b.tmp-{_dead_pid()}.png").write_bytes(b"\x89PNG half")
    assert [p.name for p in list_images(folder)] == ["a.png"]
    assert [p.name for p in list_images(str(folder / "*.png"))] == ["a.png"]


def test_evaluate_ignores_temp_files_of_predictions_and_labels(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for folder in (pred, gt):
        folder.mkdir()
        for name in ("a", "b"):
            Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8)).save(folder / f"{name}.png")
    (pred / f".c.tmp-{_dead_pid()}.png").write_bytes(b"\x89PNG half")
    (gt / f".c.tmp-{_dead_pid()}.png").write_bytes(b"\x89PNG half")
    proc = run_fsseg("evaluate", "--pred", pred, "--gt", gt, "--num-classes", 3, "--out", tmp_path / "ev")
    assert proc.returncode == 0, proc.stderr
    assert "(2 images)" in proc.stdout and "no ground truth" not in proc.stderr
    assert read_manifest(tmp_path / "ev")["kind"] == "metrics"


# ----------------------------------------------------------------------------- clip-cam resume
class _BatchSensitiveCams:
    """A stand-in for `LabelCams` whose maps depend on the whole batch, as batched convolutions'
    last bits do: resume is exact only if every item is computed in the batch it had."""

    calls = 0
    stop_after: int | None = None

    @classmethod
    def build(cls, *args, **kwargs):
        return cls()

    def __call__(self, images, labels):
        type(self).calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt()
        level = float(np.mean([img.mean() for img in images])) / 255
        return [np.full(img.shape[:2], level, np.float32) for img in images]


def test_resumed_clip_cam_computes_each_item_in_its_original_batch(tmp_path, monkeypatch):
    from stages import clip_cam
    from stages.models import cam as cams

    images = tmp_path / "images"
    images.mkdir()
    for i in range(10):
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(images / f"im{i}.png")
    monkeypatch.setattr(cams, "LabelCams", _BatchSensitiveCams)
    args = {"images": str(images), "label": "cat", "backend": "clip", "pretrained": "none", "batch_size": 3}
    clip_cam.run_clip_cam(tmp_path / "whole", **args)
    monkeypatch.setattr(_BatchSensitiveCams, "calls", 0)
    monkeypatch.setattr(_BatchSensitiveCams, "stop_after", 2)  # stopped in the third batch
    with pytest.raises(KeyboardInterrupt):
        clip_cam.run_clip_cam(tmp_path / "resumed", **args)
    (tmp_path / "resumed" / "cams" / "im1.npy").unlink()  # one item of a finished batch missing
    monkeypatch.setattr(_BatchSensitiveCams, "stop_after", None)
    clip_cam.run_clip_cam(tmp_path / "resumed", **args)
    assert _contents(tmp_path / "resumed" / "cams") == _contents(tmp_path / "whole" / "cams")


# ----------------------------------------------------------------------------- messages
def test_error_line_shows_square_brackets(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for folder in (pred, gt):
        folder.mkdir()
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(folder / "[b].png")
    (pred / "[b].png").write_bytes(b"not a png")
    proc = run_fsseg("evaluate", "--pred", pred, "--gt", gt, "--num-classes", 3, "--out", tmp_path / "ev")
    assert "[b].png" in error_line(proc) and proc.returncode == 2
    proc = run_fsseg(
        "clip-cam",
        "--dataset",
        "folder",
        "--root",
        tmp_path / "gt",
        "--backend",
        "clip",
        "--out",
        tmp_path / "c",
    )
    assert "names: [background, ...]" in error_line(proc)


def test_clip_cam_lists_each_failed_image_once(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(images / "good.png")
    (images / "[b].png").write_bytes(b"not a png")
    proc = run_fsseg(
        "clip-cam", "--images", images, "--label", "cat", "--backend", "clip", "--pretrained", "none",
        "--input-size", "64", "--out", tmp_path / "cams",
    )  # fmt: skip
    assert "1 image(s) could not be read" in error_line(proc) and proc.returncode == 2
    output = proc.stdout + proc.stderr
    mentions = [line for line in output.splitlines() if "[b].png" in line]
    assert len(mentions) == 1 and mentions[0].startswith("  failed: cannot read"), output
    assert (tmp_path / "cams" / "cams" / "good.npy").is_file()


def _command(action):
    from fsseg_cli.console import handles_errors

    @handles_errors
    def command():
        action()

    return command


def test_interrupt_messages_say_what_became_of_the_folder(capsys):
    def interrupted_overwrite():
        err = KeyboardInterrupt()
        err.fsseg_outcome = "the previous contents of /x were put back (the new run was discarded)"
        raise err

    cases = [
        (interrupted_overwrite, 130, "interrupted; the previous contents of /x were put back"),
        (lambda: (_ for _ in ()).throw(KeyboardInterrupt()), 130, "interrupted; run the same command again"),
        (
            lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5)),
            143,
            "terminated (SIGTERM); run the same",
        ),
    ]
    default = signal.getsignal(signal.SIGTERM)
    for action, code, message in cases:
        with pytest.raises(typer.Exit) as exit_:
            _command(action)()
        assert exit_.value.exit_code == code
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
    assert signal.getsignal(signal.SIGTERM) == default  # put back after the command


# ----------------------------------------------------------------------------- real kills (slow)
CAM_ARGS = (
    "--label",
    "cat",
    "--backend",
    "clip",
    "--pretrained",
    "none",
    "--input-size",
    "64",
    "--batch-size",
    "4",
)


@pytest.fixture(scope="module")
def cam_images(tmp_path_factory):
    """60 small random photos: enough batches to kill a clip-cam run in the middle."""
    folder = tmp_path_factory.mktemp("crash") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"im{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def reference(cam_images):
    """An uninterrupted clip-cam run over `cam_images`."""
    out = cam_images.parent / "reference"
    run_fsseg("clip-cam", "--images", cam_images, *CAM_ARGS, "--out", out, check=True)
    return out


def _start(*args: object, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    full_env.pop("FSSEG_DEBUG", None)
    return subprocess.Popen(
        [str(FSSEG), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env
    )


def _finished(folder: Path, pattern: str) -> list[Path]:
    """The files under `folder` matching `pattern`, without temp files (finished items)."""
    return sorted(p for p in folder.glob(pattern) if not is_temp_file(p))


def _signal_when(proc: subprocess.Popen, ready: Callable[[], bool], sig: int, what: str) -> str:
    """Send `sig` once `ready()` holds; return stderr. Fails if the run ended first."""
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}:\n" + proc.communicate()[1]
        assert time.monotonic() < deadline, f"no {what} in time"
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, f"the run finished before the signal (sent after {what}); make it longer"
    return err


def _stop_midway(proc: subprocess.Popen, out: Path, sig: int, after: int = 8, overwrite: bool = False) -> str:
    """Send `sig` once the run wrote `after` CAMs (with `overwrite`: after it set the old folder
    aside); return stderr. Fails if the run ended first."""

    def ready() -> bool:
        started = not overwrite or any(out.parent.glob(f".{out.name}.replaced-*"))
        return started and len(_finished(out, "cams/*.npy")) >= after

    err = _signal_when(proc, ready, sig, f"{after} CAMs were written")
    assert overwrite or not (out / MANIFEST_NAME).exists()
    return err


@pytest.mark.slow
def test_kill9_during_overwrite_then_next_run_puts_old_artifact_back(cam_images, reference, tmp_path):
    out = tmp_path / "cams"
    run_fsseg("clip-cam", "--images", cam_images, *CAM_ARGS, "--out", out, check=True)
    before = _contents(out)
    proc = _start(
        "clip-cam", "--images", cam_images, *CAM_ARGS, "--threshold", "0.3", "--overwrite", "--out", out
    )
    _stop_midway(proc, out, signal.SIGKILL, overwrite=True)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in tmp_path.iterdir() if ".replaced-" in p.name] == [f".cams.replaced-{proc.pid}"]
    again = run_fsseg("clip-cam", "--images", cam_images, *CAM_ARGS, "--out", out, check=True)
    log = _flat(again.stderr)
    assert log.count("put the previous contents back") == 1 and "up to date" in log, again.stderr
    assert _contents(out) == before
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_sigterm_during_overwrite_puts_old_artifact_back_at_once(cam_images, tmp_path):
    out = tmp_path / "cams"
    run_fsseg("clip-cam", "--images", cam_images, *CAM_ARGS, "--out", out, check=True)
    before = _contents(out)
    proc = _start(
        "clip-cam", "--images", cam_images, *CAM_ARGS, "--threshold", "0.3", "--overwrite", "--out", out
    )
    err = _stop_midway(proc, out, signal.SIGTERM, overwrite=True)
    assert proc.returncode == 143 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: terminated (SIGTERM); the previous contents of"), err
    assert "were put back" in _flat(err)
    assert _contents(out) == before
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_kill9_then_resume_is_bit_exact_and_leaves_no_temp_files(cam_images, reference, tmp_path):
    out = tmp_path / "cams"
    args = ("clip-cam", "--images", cam_images, *CAM_ARGS, "--out", out)
    proc = _start(*args)
    _stop_midway(proc, out, signal.SIGKILL)
    assert (out / RUN_STATE_NAME).is_file()
    # an item missing from a finished batch: batching what is left would put it in a batch of
    # other images, which moves CAM values by a float16 step
    (out / "cams" / "im03.npy").unlink(missing_ok=True)
    # what a kill in the middle of a write leaves, whether or not this one did
    (out / "cams" / f".im59.tmp-{proc.pid}.npy").write_bytes(b"\x93NUMPY half")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / f".best.tmp-{proc.pid}.pt").write_bytes(b"half")
    resumed = run_fsseg(*args, check=True)
    log = _flat(resumed.stderr)
    assert "resuming" in log and re.search(r"deleted \d+ temporary file\(s\)", log), resumed.stderr
    assert [p for p in out.rglob("*") if is_temp_file(p)] == []
    for sub in ("cams", "masks"):
        ours, theirs = _contents(out / sub), _contents(reference / sub)
        assert sorted(ours) == sorted(theirs) and len(ours) == 60
        differ = [name for name in ours if ours[name] != theirs[name]]
        assert differ == [], f"{sub} differ from an uninterrupted run: {differ}"


# ----------------------------------------------------------------------------- kill -9, every stage (slow)
TINY = ("--backbone", "tiny", "--backbone-weights", "random", "--device", "cpu", "--seed", 3)
# wall-clock fields, and what a run did rather than what it made: the only allowed differences
VOLATILE = {"seconds", "feature_seconds", "train_seconds", "labelled_by_rank0", "wall_time_s", "created_utc"}
LAST = ("checkpoints/last.pt", 1)  # kill once the first epoch's resume state is written


@pytest.fixture(scope="module")
def voc_data(tmp_path_factory):
    """A tiny VOC tree, stand-in CAMs (random, 8x8) of every (image, class) and fold-1 val episodes."""
    base = tmp_path_factory.mktemp("crash-voc")
    root = make_voc_tree(base / "VOC2012")
    rng = np.random.default_rng(0)
    (base / "cams" / "cams").mkdir(parents=True)
    for i in range(12):  # the classes make_voc_tree draws
        for cls in {1 + i % 2} | ({8} if i % 3 == 0 else set()):
            np.save(base / "cams" / "cams" / f"im{i:02d}__{cls}.npy", rng.random((8, 8)).astype(np.float16))
    (base / "cams" / MANIFEST_NAME).write_text(
        json.dumps({"kind": "cams", "stage": "clip-cam", "outputs": {}})
    )
    env = {"FSSEG_CACHE": str(base / "cache")}
    run_fsseg("data", "episodes", "pascal", "--root", root, "--split", "all", "--fold", 1, "--n", 4,
              "--min-area", 100, "--out", base / "episodes.json", env=env, check=True)  # fmt: skip
    return {"root": root, "cams": base / "cams", "episodes": base / "episodes.json", "env": env}


@pytest.fixture(scope="module")
def street_data(tmp_path_factory):
    """A street scene dataset (16 images), label-gen heads on 3 of them and the pseudo-labels of the other 13."""
    base = tmp_path_factory.mktemp("crash-street")
    root = make_street_tree(base / "street", n=16)
    env = {"FSSEG_CACHE": str(base / "cache")}
    run_fsseg("label-gen", "folder", "--root", root, "--k", 3, "--views", 1, "--epochs-semantic", 2,
              "--epochs-boundary", 1, *TINY, "--out", base / "heads", env=env, check=True)  # fmt: skip
    run_fsseg("pseudo-label", "folder", "--root", root, "--heads", base / "heads", "--min-segment", 20,
              "--device", "cpu", "--out", base / "pseudo", env=env, check=True)  # fmt: skip
    return {"root": root, "heads": base / "heads", "pseudo": base / "pseudo", "env": env}


@dataclass(frozen=True)
class Stage:
    """A stage's command, when to kill it, and how a rerun resumes.

    `args`: the command line; "{key}" stands for the path `key` of its data fixture (`data`).
    `ready`: (glob under --out, count): the run is killed once that many finished files match.
    `resumes`: "epochs" (continues after the epochs in checkpoints/last.pt), "items" (redoes only
    the items not written), or None (nothing to resume from: the rerun starts over)."""

    data: str
    args: tuple
    ready: tuple[str, int]
    resumes: str | None

    def command(self, data: dict) -> list:
        return [data[a[1:-1]] if isinstance(a, str) and a[:1] == "{" else a for a in self.args]


PRETRAIN = ("pretrain", "--dataset", "pascal", "--root", "{root}", "--split", "all", *TINY, "--tiny",
            "--img-size", 32, "--batch-size", 4, "--min-area", 100)  # fmt: skip
# fmt: off
STAGES = {
    "pretrain-hsnet": Stage(
        "voc_data", (*PRETRAIN, "--method", "hsnet", "--fold", 1, "--epochs", 8), LAST, "epochs"
    ),
    "pretrain-imr-hsnet": Stage(
        "voc_data",
        (*PRETRAIN, "--method", "imr-hsnet", "--fold", 1, "--epochs", 4, "--cams", "{cams}",
         "--val-episodes", "{episodes}"),
        LAST, "epochs",
    ),
    "pretrain-pspnet": Stage(
        "voc_data",
        (*PRETRAIN, "--method", "pspnet", "--fold", 0, "--epochs", 6, "--contrastive", 0.1,
         "--val-split", "all", "--val-images", 4),
        LAST, "epochs",
    ),
    "train-panoptic": Stage(
        "street_data",
        ("train-panoptic", "--pseudo", "{pseudo}", *TINY, "--tiny", "--epochs", 3, "--batch-size", 3,
         "--val-split", "all", "--val-images", 2),
        LAST, "epochs",
    ),
    # label-gen keeps no resume state: it writes heads.pt once, after training; killed after that
    # (while it draws loss.png), a rerun trains again from the start
    "label-gen": Stage(
        "street_data",
        ("label-gen", "folder", "--root", "{root}", "--k", 3, "--views", 2, "--epochs-semantic", 4,
         "--epochs-boundary", 3, *TINY),
        ("heads.pt", 1), None,
    ),
    "pseudo-label": Stage(
        "street_data",
        ("pseudo-label", "folder", "--root", "{root}", "--heads", "{heads}", "--min-segment", 20,
         "--device", "cpu", "--seed", 3),
        ("cityscapes/*_gtFine_instanceIds.png", 3), "items",
    ),
}
# fmt: on


@contextlib.contextmanager
def _beside(*args: object, env: dict):
    """An uninterrupted run of the command, running while the body runs; it must succeed."""
    proc = _start(*args, env=env)
    try:
        yield proc
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"the uninterrupted run failed:\n{out}\n{err}"


def _load(path: Path):
    """A file's content for comparison: checkpoints through torch.load(weights_only=True) (so this
    also checks that they load safely), JSON parsed, anything else as bytes."""
    import torch

    if path.suffix == ".pt":
        return torch.load(path, map_location="cpu", weights_only=True)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return path.read_bytes()


def _assert_same(a, b, where: str) -> None:
    """`a` equals `b` exactly (tensors bit for bit, same dtype), ignoring VOLATILE keys."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), (
            f"{where}: tensors differ (max |diff| {(a.double() - b.double()).abs().max()})"
        )
    elif isinstance(a, dict):
        assert isinstance(b, dict), where
        keys_a, keys_b = set(a) - VOLATILE, set(b) - VOLATILE
        assert keys_a == keys_b, f"{where}: keys differ: {sorted(map(str, keys_a ^ keys_b))}"
        for key in keys_a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_artifact(out: Path, ref: Path) -> None:
    """Every file of `out` equals the reference's (manifest: what was run and what it made)."""
    names = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {RUN_STATE_NAME}
    assert names == {str(p.relative_to(ref)) for p in ref.rglob("*") if p.is_file()} - {RUN_STATE_NAME}
    for name in sorted(names - {MANIFEST_NAME}):
        _assert_same(_load(out / name), _load(ref / name), name)
    manifests = [
        {k: _load(d / MANIFEST_NAME)[k] for k in ("kind", "params", "seed", "outputs")} for d in (out, ref)
    ]
    _assert_same(*manifests, MANIFEST_NAME)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STAGES))
def test_kill9_then_rerun_ends_as_an_uninterrupted_run(name, request, tmp_path):
    """`kill -9` once the first checkpoint or items exist, then the same command again: it exits 0,
    resumes (training: after the epochs in last.pt; items: only the missing ones), deletes the
    temp files of the killed run, and ends with the files of an uninterrupted run (checkpoints
    tensor for tensor, labels and pictures byte for byte); every checkpoint loads with
    weights_only=True."""
    stage = STAGES[name]
    data = request.getfixturevalue(stage.data)
    args, env = stage.command(data), data["env"]
    ref, out = tmp_path / "reference", tmp_path / "run"
    pattern, count = stage.ready
    with _beside(*args, "--out", ref, env=env):
        proc = _start(*args, "--out", out, env=env)
        _signal_when(
            proc, lambda: len(_finished(out, pattern)) >= count, signal.SIGKILL, f"{count} {pattern}"
        )
        assert proc.returncode == -signal.SIGKILL and not (out / MANIFEST_NAME).exists()
        killed = {p: (_load(p), p.stat().st_mtime_ns) for p in _finished(out, "**/*") if p.is_file()}
        # what a kill in the middle of a write leaves, whether or not this one did
        first = _finished(out, pattern)[0]
        first.with_name(f".{first.stem}.tmp-{proc.pid}{first.suffix}").write_bytes(b"half")
        rerun = run_fsseg(*args, "--out", out, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    log = _flat(rerun.stderr)
    assert "resuming the unfinished run" in log and re.search(r"deleted \d+ temporary file\(s\)", log), log

    if stage.resumes == "epochs":  # the epochs in last.pt are kept (their wall times too), the rest run
        state = killed[out / "checkpoints" / "last.pt"][0]
        done = state["epoch"] + 1
        print(f"{name}: killed after epoch {done} of {len(_load(ref / 'log.jsonl'))}")
        assert f"at epoch {done + 1}" in log, log
        assert _load(out / "log.jsonl")[:done] == state["history"]
    elif stage.resumes == "items":  # the items written before the kill are kept as they were
        kept = [p for p in _finished(out, pattern) if p in killed]
        outputs = _load(out / MANIFEST_NAME)["outputs"]
        print(f"{name}: killed after {len(kept)} of {outputs['images']} items")
        assert [p.stat().st_mtime_ns for p in kept] == [killed[p][1] for p in kept]
        assert outputs["labelled_by_rank0"] == outputs["images"] - len(kept)
    _assert_same_artifact(out, ref)
    assert _leftovers(tmp_path) == []
