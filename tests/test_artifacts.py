"""Artifact rules: atomic items, manifest written last, kind checks, no-op reruns, resume, overwrite."""

from __future__ import annotations

import json

import pytest

from stages.core import artifacts
from stages.core.artifacts import (
    MANIFEST_NAME,
    RUN_STATE_NAME,
    atomic_path,
    atomic_write_text,
    open_artifact,
    read_manifest,
    run_items,
)
from stages.core.errors import FssegError


def _run(out, items, params=None, fail_after=None, overwrite=False, inputs=()):
    """A miniature stage: writes one file per item, optionally crashing after `fail_after` items."""
    written = []
    with open_artifact(
        out,
        kind="metrics",
        stage="test",
        params=params or {"a": 1},
        inputs=inputs,
        seed=0,
        overwrite=overwrite,
    ) as art:
        if art.up_to_date:
            return art, written

        def work(item):
            if fail_after is not None and len(written) == fail_after:
                raise RuntimeError("crash")
            atomic_write_text(art.file(f"items/{item}.txt"), f"value {item}")
            written.append(item)

        run_items(art, items, done=lambda i: art.has(f"items/{i}.txt"), work=work)
        art.finish(outputs={"items": len(items)}, label_map=["bg", "fg"])
    return art, written


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_manifest_fields_and_noop_rerun(tmp_path):
    out = tmp_path / "run"
    art, written = _run(out, ["a", "b", "c"])
    assert written == ["a", "b", "c"]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    for key in (
        "kind",
        "stage",
        "fsseg_version",
        "git_commit",
        "params",
        "inputs",
        "outputs",
        "label_map",
        "seed",
        "torch_version",
        "device",
        "wall_time_s",
    ):
        assert key in manifest, key
    assert manifest["params"] == {"a": 1} and manifest["seed"] == 0
    assert json.loads((out / RUN_STATE_NAME).read_text())["params"] == {"a": 1}
    before = (out / MANIFEST_NAME).read_bytes()
    art2, written2 = _run(out, ["a", "b", "c"])
    assert art2.up_to_date and written2 == []
    assert (out / MANIFEST_NAME).read_bytes() == before


def test_different_params_refused_then_overwritten(tmp_path):
    out = tmp_path / "run"
    _run(out, ["a"])
    with pytest.raises(FssegError, match="different params.*--overwrite"):
        _run(out, ["a"], params={"a": 2})
    _, written = _run(out, ["a"], params={"a": 2}, overwrite=True)
    assert written == ["a"]
    assert read_manifest(out)["params"] == {"a": 2}
    assert not list(tmp_path.glob(".run.replaced-*"))


def test_failed_overwrite_restores_previous_artifact(tmp_path):
    out = tmp_path / "run"
    _run(out, ["a", "b"])
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError):
        _run(out, ["a", "b"], params={"a": 2}, overwrite=True, fail_after=1)
    after = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not list(tmp_path.glob(".run.replaced-*"))


def test_interrupted_run_resumes_only_missing_items(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        _run(out, ["a", "b", "c", "d"], fail_after=2)
    assert not (out / MANIFEST_NAME).exists()
    assert sorted(p.stem for p in (out / "items").iterdir()) == ["a", "b"]
    art, written = _run(out, ["a", "b", "c", "d"])
    assert art.state == "up-to-date" and written == ["c", "d"]
    assert (out / MANIFEST_NAME).exists()


def test_unfinished_run_with_other_params_is_refused(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        _run(out, ["a", "b"], fail_after=1)
    with pytest.raises(FssegError, match="unfinished run"):
        _run(out, ["a", "b"], params={"a": 3})


def test_changed_input_is_not_up_to_date(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.png").write_bytes(b"1")
    out = tmp_path / "run"
    _run(out, ["a"], inputs=[data])
    (data / "y.png").write_bytes(b"2")
    with pytest.raises(FssegError, match="inputs"):
        _run(out, ["a"], inputs=[data])


def test_input_artifact_is_named_by_manifest_hash(tmp_path):
    upstream = tmp_path / "up"
    _run(upstream, ["a"])
    described = artifacts.describe_input(upstream)
    assert described["kind"] == "metrics"
    assert described["manifest_sha256"] == artifacts.sha256_file(upstream / MANIFEST_NAME)


def test_foreign_folder_and_file_are_refused(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "me.jpg").write_bytes(b"x")
    with pytest.raises(FssegError, match="did not write"):
        _run(foreign, ["a"])
    assert (foreign / "me.jpg").read_bytes() == b"x"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(FssegError, match="is a file"):
        _run(a_file, ["a"])
    with pytest.raises(FssegError, match="cannot write"):
        _run(a_file / "sub", ["a"])


def test_failure_before_any_item_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        _run(out, ["a"], fail_after=0)
    assert not out.exists()


def test_read_manifest_checks_kind_and_names_producer(tmp_path):
    out = tmp_path / "run"
    _run(out, ["a"])
    assert read_manifest(out, "metrics")["kind"] == "metrics"
    with pytest.raises(
        FssegError, match=r"'metrics' artifact \(from `fsseg evaluate`\).*'cams'.*fsseg clip-cam"
    ):
        read_manifest(out, "cams")
    with pytest.raises(FssegError, match="not a finished fsseg artifact"):
        read_manifest(tmp_path)
    with pytest.raises(FssegError, match="does not exist"):
        read_manifest(tmp_path / "nope")


@pytest.mark.parametrize(
    "relpath", ["../x.txt", "items/../../x.txt", "items/../x.txt", "{tmp}/x.txt", "link/x.txt"]
)
def test_item_paths_never_leave_the_artifact(tmp_path, relpath):
    from tests.conftest import files_outside

    out = tmp_path / "work" / "run"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with open_artifact(out, kind="metrics", stage="test", params={}, seed=0) as art:
        (out / "link").symlink_to(outside)  # a symlink inside that points out is outside too
        before = files_outside(tmp_path, out)
        relpath = relpath.replace("{tmp}", str(tmp_path))
        with pytest.raises(FssegError, match="would be written outside the artifact") as err:
            art.file(relpath)
        assert repr(relpath) in str(err.value) and "plain file name" in str(err.value)
        assert "\n" not in str(err.value) and files_outside(tmp_path, out) == before
        assert art.file("items/sub/x.txt") == out.resolve() / "items" / "sub" / "x.txt"
        assert (out / "items" / "sub").is_dir()
