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
With `overwrite`, the old folder is moved aside (as `.NAME.replaced-PID`) and only deleted once
the new run finishes; if the new run fails or is interrupted, the old one is put back. A run
killed outright (kill -9, power loss) is settled by the next run into the same folder: it puts
the old folder back if the new run had not finished, else deletes the set-aside copy, and says
which. That next run also deletes the temporary files killed runs left (`.NAME.tmp-PID.EXT`);
readers never take one for an item (`is_temp_file`).

One module, over 400 lines, because these rules are one state machine (atomic files, the run
state, the manifest, recovery of killed runs): split, each part would need the others' invariants.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import re
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
from stages.params import Params, recorded

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
RUN_STATE_NAME = ".fsseg-run.json"
# `atomic_path`'s temporary name, `.STEM.tmp-PID.SUFFIX`; the PID tells whether its writer lives
_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)(\.[^.]*)?$")

# kind -> the command that produces it; a stage adds its kind here when it lands.
PRODUCERS: dict[str, str] = {
    "metrics": "fsseg evaluate",
    "cams": "fsseg clip-cam",
    "label-gen": "fsseg label-gen",
    "pseudo-label": "fsseg pseudo-label",
    "panoptic-gt": "fsseg data panoptic-gt",
    "panoptic-model": "fsseg train-panoptic",
    "panoptic-pred": "fsseg predict-panoptic",
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


# ----------------------------------------------------------------------------- leftovers of killed runs
def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a temporary file of `atomic_path` (never a finished item; skip it when listing)."""
    return _TEMP_NAME.match(Path(path).name) is not None


def _running_elsewhere(pid: int) -> bool:
    """Whether another live process has this id (this process's own id counts as not running:
    whatever it left before opening an artifact is a leftover of an earlier process)."""
    if pid == os.getpid() or os.name == "nt":  # os.kill(pid, 0) would terminate it on Windows
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return False
    try:  # a killed child its parent has not waited for yet is a zombie: not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Delete the temporary files under `folder` whose writing process is gone (killed mid-write).

    Returns how many were deleted. Files of a process still running are kept.
    """
    removed = 0
    for path in Path(folder).rglob(".*.tmp-*"):
        match = _TEMP_NAME.match(path.name)
        if match and path.is_file() and not _running_elsewhere(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _replaced_copies(out: Path) -> list[Path]:
    """The copies of `out` that `--overwrite` runs set aside (`.NAME.replaced-PID`)."""
    prefix = f".{out.name}.replaced-"
    if not out.parent.is_dir():
        return []
    return sorted(
        p for p in out.parent.iterdir() if p.name.startswith(prefix) and p.name[len(prefix) :].isdigit()
    )


def recover_replaced(out: str | os.PathLike) -> None:
    """Settle an `--overwrite` run into `out` that was killed before it could clean up.

    If the new run finished (its manifest exists), the set-aside old copy is deleted; otherwise
    the unfinished new run is discarded and the old copy put back. Each is logged in one line.
    Raises if the run that set the copy aside is still running.
    """
    out = Path(out)
    copies = _replaced_copies(out)
    if len(copies) > 1:
        raise FssegError(
            f"{out} has {len(copies)} copies set aside by interrupted --overwrite runs "
            f"({', '.join(p.name for p in copies)}); keep the one you want as {out} and delete the others"
        )
    for copy in copies:
        pid = int(copy.name.rsplit("-", 1)[1])
        if _running_elsewhere(pid):
            raise FssegError(
                f"{out} is being replaced by another fsseg run (process {pid}) that is still running; "
                f"wait for it to end, or stop it and run again"
            )
        if (out / MANIFEST_NAME).is_file():
            shutil.rmtree(copy, ignore_errors=True)
            log.info(
                "an --overwrite run into %s had finished when it was stopped; deleted the previous "
                "contents it had set aside (%s)",
                out,
                copy.name,
            )
        else:
            if out.exists():
                shutil.rmtree(out)
            os.replace(copy, out)
            log.warning(
                "an --overwrite run into %s was stopped before it finished; put the previous contents "
                "back (the unfinished new run was discarded)",
                out,
            )


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
        kind = read_manifest(path).get("kind")  # a corrupt manifest: one line naming it
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
    if not manifest.is_file() and (copies := _replaced_copies(folder.absolute())):
        raise FssegError(
            f"{folder} is not a finished fsseg artifact: an --overwrite run into it was stopped, and its "
            f"previous contents wait in {copies[0].name}; rerun the stage that wrote it (same --out): it puts "
            f"them back first"
        )
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
    settings: dict[str, Any] = field(default_factory=dict)
    state: str = "new"  # "new" | "resume" | "up-to-date"
    dist: distributed.DistInfo = field(default_factory=distributed.DistInfo)
    backup: Path | None = None
    created: bool = False
    started: float = field(default_factory=time.time)

    @property
    def up_to_date(self) -> bool:
        return self.state == "up-to-date"

    def file(self, relpath: str | os.PathLike) -> Path:
        """Absolute path of an item inside the artifact (its folder is created).

        An item path that is absolute, has a '..' component or resolves outside the folder (an
        image id like `../../x` from a list, episodes or annotation file) is refused, so nothing
        is ever written outside `--out`.
        """
        rel = Path(relpath)
        target = self.path / rel
        if rel.is_absolute() or ".." in rel.parts or not target.resolve().is_relative_to(self.path.resolve()):
            raise FssegError(
                f"item {str(relpath)!r} would be written outside the artifact {self.path}: an image id in "
                f"the input holds '..', an absolute path or a path separator; make every id in the list, "
                f"episodes or annotation file a plain file name"
            )
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
                "resolved": self.signature["resolved"],
                "settings": self.settings,
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
            backup, self.backup = self.backup, None  # finished: the old copy is never put back now
            if backup is not None:
                shutil.rmtree(backup, ignore_errors=True)
        distributed.barrier(self.dist)
        self.state = "up-to-date"
        return self.path

    # context manager: on failure, put a replaced run back; otherwise keep items for resume
    def __enter__(self) -> Artifact:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or not self.dist.is_main or self.state == "up-to-date":
            return
        # what became of the folder, for the interrupted-run message (`fsseg_outcome` on the exception)
        outcome = None
        if self.backup is not None and (self.path / MANIFEST_NAME).is_file():
            # stopped right after the manifest: the new run is finished; drop the old copy
            shutil.rmtree(self.backup, ignore_errors=True)
            self.backup = None
            outcome = f"the run had finished: {self.path} is complete"
        elif self.backup is not None:
            try:
                shutil.rmtree(self.path, ignore_errors=True)
                os.replace(self.backup, self.path)
            except OSError as err:  # the copy stays aside; the next run into the folder puts it back
                log.warning("could not put the previous contents of %s back yet (%s)", self.path, err)
                outcome = f"the previous contents of {self.path} are put back by the next run into it"
            else:
                self.backup = None
                outcome = f"the previous contents of {self.path} were put back (the new run was discarded)"
                if not issubclass(exc_type, KeyboardInterrupt):  # an interrupt's message says so
                    log.warning("run failed; the previous contents of %s were restored", self.path)
        elif self.state == "new" and [p.name for p in self.path.iterdir()] == [RUN_STATE_NAME]:
            # failed before writing anything: leave no trace
            (self.path / RUN_STATE_NAME).unlink(missing_ok=True)
            if self.created:
                self.path.rmdir()
            outcome = f"nothing was written to {self.path}"
        if outcome is not None and exc is not None:
            exc.fsseg_outcome = outcome


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
        old_sig = {k: old.get(k) for k in ("kind", "params", "resolved", "inputs", "seed")}
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
    params: Params | dict[str, Any],
    resolved: dict[str, Any] | None = None,
    inputs: Sequence[str | os.PathLike] = (),
    seed: int | None = None,
    overwrite: bool = False,
) -> Artifact:
    """Start (or resume, or skip) a stage run writing the artifact `out_dir`.

    `params` is the stage's parameter record (or, for stages without one, a dict); `resolved` what
    the run settled from them and its inputs (the precision `auto` chose, the checkpoint's method);
    `inputs` the paths the run reads. A finished or unfinished run is reused only when all of these
    match; the record's settings (device, workers, caches) are recorded but may change. Under
    torchrun, rank 0 decides and prepares the folder for all ranks.
    """
    out = Path(out_dir).resolve()
    settings: dict[str, Any] = {}
    if isinstance(params, Params):
        seed = params.seed if seed is None and hasattr(params, "seed") else seed
        params, settings = recorded(params)
    canonical = json.loads(json.dumps({"params": params, "resolved": resolved or {}}, default=str))
    signature = {"kind": kind, **canonical, "inputs": [describe_input(p) for p in inputs], "seed": seed}
    dist = distributed.current()
    decision: tuple[str, str | None, bool] | str
    if dist.is_main:
        try:
            recover_replaced(out)  # an --overwrite run killed before it could clean up
            state, move_aside = _decide(out, signature, overwrite)
            if state != "new" and (removed := remove_stale_temp_files(out)):
                log.info("deleted %d temporary file(s) a stopped run left in %s", removed, out)
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
        settings=json.loads(json.dumps(settings, default=str)),
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
