"""Self-describing output folders: atomic items, a manifest written last, resume and no-op reruns.

Every stage writes one folder. Items inside it are written atomically (temp name + rename),
so a file that exists is complete. The folder ends with `manifest.json`, written last and
atomically; a folder without one is an unfinished run.

Rerun rules, decided by `open_artifact`:
- complete, same parameters and inputs: up to date, nothing to do;
- complete, anything different: refused unless `overwrite`;
- unfinished (`.fsseg-run.json`, the run's parameters, written first; but no manifest), same
  parameters: resumed, the stage redoes only the items that are missing;
- unfinished with other parameters: refused unless `overwrite`;
- any other non-empty folder: refused (fsseg never replaces a folder it did not write).
With `overwrite`, the old folder is moved aside and only deleted once the new run finishes;
if the new run fails, the old one is put back.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from stages import __version__
from stages.core import distributed
from stages.core.errors import FssegError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
RUN_STATE_NAME = ".fsseg-run.json"

# kind -> the command that produces it; a stage adds its kind here when it lands.
PRODUCERS: dict[str, str] = {
    "metrics": "fsseg evaluate",
    "cams": "fsseg clip-cam",
    "label-gen": "fsseg label-gen",
    "pseudo-label": "fsseg pseudo-label",
    "panoptic-gt": "fsseg data panoptic-gt",
    "panoptic-model": "fsseg train-panoptic",
}


# ----------------------------------------------------------------------------- atomic files
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); rename it onto `path` on success.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- inputs
def describe_input(path: str | os.PathLike) -> dict[str, Any]:
    """What an input was, precisely enough to tell whether it changed since.

    An artifact is named by the sha256 of its manifest; a plain folder by a digest of its
    files' names, sizes and modification times; a file by the sha256 of its bytes.
    """
    path = Path(path).resolve()
    if not path.exists():
        raise FssegError(f"input not found: {path}; check the path")
    manifest = path / MANIFEST_NAME
    if manifest.is_file():
        kind = json.loads(manifest.read_text()).get("kind")
        return {"path": str(path), "kind": kind, "manifest_sha256": sha256_file(manifest)}
    if path.is_file():
        return {"path": str(path), "sha256": sha256_file(path)}
    digest = hashlib.sha256()
    count = 0
    for entry in sorted(p for p in path.rglob("*") if p.is_file()):
        st = entry.stat()
        digest.update(f"{entry.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        count += 1
    return {"path": str(path), "files": count, "listing_sha256": digest.hexdigest()}


# ----------------------------------------------------------------------------- reading
def read_manifest(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """The manifest of the artifact at `path` (folder or manifest file), checked to be `kind`."""
    path = Path(path)
    folder = path.parent if path.name == MANIFEST_NAME else path
    manifest = folder / MANIFEST_NAME
    if not folder.exists():
        raise FssegError(f"{folder} does not exist; pass the output folder of an earlier fsseg stage")
    if not manifest.is_file():
        hint = f"make it with `{PRODUCERS[kind]}`" if kind in PRODUCERS else "rerun the stage that writes it"
        raise FssegError(f"{folder} is not a finished fsseg artifact (no {MANIFEST_NAME}); {hint}")
    try:
        data = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FssegError(
            f"{manifest} is corrupt ({err.__class__.__name__}); rerun the stage that wrote it"
        ) from None
    found = data.get("kind")
    if kind is not None and found != kind:
        where = f" (from `{PRODUCERS[found]}`)" if found in PRODUCERS else ""
        need = f"; make one with `{PRODUCERS[kind]}`" if kind in PRODUCERS else ""
        raise FssegError(
            f"{folder} is a '{found}' artifact{where} but a '{kind}' artifact is needed here{need}"
        )
    return data


# ----------------------------------------------------------------------------- writing
@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _torch_version() -> str | None:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


@dataclass
class Artifact:
    """An output folder being written by one stage run. Use through `open_artifact`."""

    path: Path
    kind: str
    stage: str
    signature: dict[str, Any]
    state: str  # "new" | "resume" | "up-to-date"
    dist: distributed.DistInfo = field(default_factory=distributed.DistInfo)
    backup: Path | None = None
    created: bool = False
    started: float = field(default_factory=time.time)

    @property
    def up_to_date(self) -> bool:
        return self.state == "up-to-date"

    def file(self, relpath: str | os.PathLike) -> Path:
        """Absolute path of an item inside the artifact (its folder is created)."""
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def has(self, relpath: str | os.PathLike) -> bool:
        """Whether an item was already written (items are atomic, so it is complete)."""
        return (self.path / relpath).is_file()

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.path, self.kind)

    def finish(
        self,
        *,
        outputs: dict[str, Any],
        label_map: dict[str, Any] | Sequence[str] | None = None,
        device: str = "cpu",
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write the manifest (rank 0, after every rank is done) and drop the replaced run."""
        distributed.barrier(self.dist)
        if self.dist.is_main:
            manifest = {
                "kind": self.kind,
                "stage": self.stage,
                "fsseg_version": __version__,
                "git_commit": _git_commit(),
                "params": self.signature["params"],
                "inputs": self.signature["inputs"],
                "seed": self.signature["seed"],
                "outputs": outputs,
                "label_map": label_map,
                "torch_version": _torch_version(),
                "device": device,
                "world_size": self.dist.world_size,
                "host": platform.node(),
                "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "wall_time_s": round(time.time() - self.started, 3),
            }
            if extra:
                manifest.update(extra)
            atomic_write_json(self.path / MANIFEST_NAME, manifest)
            if self.backup is not None:
                shutil.rmtree(self.backup, ignore_errors=True)
                self.backup = None
        distributed.barrier(self.dist)
        self.state = "up-to-date"
        return self.path

    # context manager: on failure, put a replaced run back; otherwise keep items for resume
    def __enter__(self) -> Artifact:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or not self.dist.is_main or self.state == "up-to-date":
            return
        if self.backup is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            os.replace(self.backup, self.path)
            self.backup = None
            log.warning("run failed; the previous contents of %s were restored", self.path)
        elif self.state == "new" and [p.name for p in self.path.iterdir()] == [RUN_STATE_NAME]:
            # failed before writing anything: leave no trace
            (self.path / RUN_STATE_NAME).unlink(missing_ok=True)
            if self.created:
                self.path.rmdir()


def _decide(out: Path, signature: dict[str, Any], overwrite: bool) -> tuple[str, bool]:
    """(state, move_old_aside) for a run of `signature` into `out`; raises on refusals."""
    if out.exists() and not out.is_dir():
        raise FssegError(f"--out {out} is a file; choose a folder path")
    manifest = out / MANIFEST_NAME
    run_state = out / RUN_STATE_NAME
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        old_sig = {k: old.get(k) for k in ("kind", "params", "inputs", "seed")}
        diff = _differences(old_sig, signature)
        if not diff and not overwrite:
            return "up-to-date", False
        if diff and not overwrite:
            raise FssegError(
                f"{out} already holds a finished '{old.get('kind')}' artifact made with different "
                f"{', '.join(diff)}; pass --overwrite to replace it, or choose another --out"
            )
        return "new", True
    if run_state.is_file():
        try:
            old_sig = json.loads(run_state.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old_sig = {}
        diff = _differences(old_sig, signature)
        if not diff and not overwrite:
            return "resume", False
        if diff and not overwrite:
            raise FssegError(
                f"{out} holds an unfinished run with different {', '.join(diff)}; pass --overwrite "
                f"to discard it, or choose another --out"
            )
        return "new", True
    if out.is_dir() and any(out.iterdir()):
        raise FssegError(
            f"--out {out} is a non-empty folder that fsseg did not write; choose a new or empty folder"
        )
    return "new", False


def open_artifact(
    out_dir: str | os.PathLike,
    *,
    kind: str,
    stage: str,
    params: dict[str, Any],
    inputs: Sequence[str | os.PathLike] = (),
    seed: int | None = None,
    overwrite: bool = False,
) -> Artifact:
    """Start (or resume, or skip) a stage run writing the artifact `out_dir`.

    `params` are every resolved parameter of the run (JSON-serialisable); `inputs` the paths
    the run reads. Under torchrun, rank 0 decides and prepares the folder for all ranks.
    """
    out = Path(out_dir).resolve()
    params = json.loads(json.dumps(params, default=str))  # canonical, comparable to what is stored
    signature = {"kind": kind, "params": params, "inputs": [describe_input(p) for p in inputs], "seed": seed}
    dist = distributed.current()
    decision: tuple[str, str | None, bool] | str
    if dist.is_main:
        try:
            state, move_aside = _decide(out, signature, overwrite)
            backup = None
            created = move_aside or not out.exists()
            if move_aside:
                backup = out.with_name(f".{out.name}.replaced-{os.getpid()}")
                shutil.rmtree(backup, ignore_errors=True)
                os.replace(out, backup)
            if state != "up-to-date":
                out.mkdir(parents=True, exist_ok=True)
                atomic_write_json(out / RUN_STATE_NAME, signature)
            decision = (state, str(backup) if backup else None, created)
        except OSError as err:
            reason = err.strerror or err.__class__.__name__
            decision = f"cannot write to {err.filename or out}: {reason}; choose a writable --out"
        except FssegError as err:
            decision = str(err)
    decision = distributed.broadcast_object(decision if dist.is_main else None, dist)
    if isinstance(decision, str):
        raise FssegError(decision)
    state, backup, created = decision
    if state == "up-to-date":
        log.info("%s is up to date (same parameters and inputs); nothing to do", out)
    elif state == "resume":
        log.info("resuming the unfinished run in %s", out)
    return Artifact(
        path=out,
        kind=kind,
        stage=stage,
        signature=signature,
        state=state,
        dist=dist,
        backup=Path(backup) if backup else None,
        created=created,
    )


def run_items(
    art: Artifact,
    items: Sequence[Any],
    done: Callable[[Any], bool],
    work: Callable[[Any], None],
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Process this rank's share of `items`, skipping those `done` says are written.

    Returns how many items this rank processed (not counting skipped ones).
    """
    mine = distributed.shard(items, art.dist)
    processed = 0
    for i, item in enumerate(mine, 1):
        if not done(item):
            work(item)
            processed += 1
        if on_progress is not None:
            on_progress(i, len(mine))
    return processed
