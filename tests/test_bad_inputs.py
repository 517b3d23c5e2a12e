"""Bad input as a matrix: every kind of bad input x every stage command that reads that kind of input.

A *family* is one kind of input (image folders, label masks, folder-dataset class lists, earlier
artifacts, episodes files, backbone weights, `--out`, numbers). Its *cases* each make one bad input
(a zero-byte image, a mask with id 300, an artifact of another kind, ...); its *readers* are the
stage commands that read that kind of input, each a working command over a small world (tiny
datasets and the artifacts of every stage) with "{bad}" where the case's input goes. The numbers
family is derived from the commands themselves: every option that has a rule, each way its rule
can be broken.

Every (case, reader) pair must exit 2 with exactly one `error:` line (no traceback) that names the
input and says what to do, write nothing outside --out (no --out at all unless the stage keeps
the items it finished), and leave every file it was given unchanged. The pairs run in-process
through typer's CliRunner (the same app, exit code and stderr as the `fsseg` script, without a
torch import per run); slow tests run the first case of every (family, reader) and a number per
stage through the real `fsseg` script too, and the pairs that build real networks.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import error_line, make_street_tree, make_voc_tree, run_fsseg

TINY = ("--backbone", "tiny", "--backbone-weights", "random", "--device", "cpu")
PSP = ("pretrain", "--method", "pspnet", "--dataset", "pascal", "--root", "{voc}", "--split", "all",
       "--fold", "0", *TINY, "--tiny", "--img-size", "32", "--epochs", "1", "--batch-size", "4")  # fmt: skip
HSNET = (*PSP[:2], "hsnet", *PSP[3:], "--min-area", "100")
# Every stage command, working as written on the world; "--out {out}" is appended to those with --out.
# fmt: off
STAGES: dict[str, tuple[str, ...]] = {
    "clip-cam": ("clip-cam", "--images", "{street}/images", "--label", "car", "--backend", "imagenet",
                 "--device", "cpu", "--num-workers", "0", "--strict"),
    "clip-cam (lenient)": ("clip-cam", "--images", "{street}/images", "--label", "car", "--backend",
                           "imagenet", "--device", "cpu", "--num-workers", "0"),
    "pretrain pspnet": PSP,
    "pretrain hsnet": HSNET,
    "refine": ("refine", "--checkpoint", "{hsnet}", "--episodes", "{fss}", "--cams", "{cams}", "--refiner", "none",
               "--supervision", "mask", "--img-size", "32", "--device", "cpu"),
    "refine (ad hoc)": ("refine", "--checkpoint", "{hsnet}", "--support", "{street}/images/s00.png",
                        "--support-masks", "{street}/masks", "--query", "{street}/images", "--refiner", "none",
                        "--img-size", "32", "--device", "cpu"),
    "finetune-episode": ("finetune-episode", "--checkpoint", "{psp}", "--episodes", "{fss}", "--img-size", "32",
                         "--steps", "2", "--device", "cpu"),
    "label-gen": ("label-gen", "folder", "--root", "{street}", "--k", "2", "--views", "1", "--epochs-semantic",
                  "1", "--epochs-boundary", "1", *TINY),
    "pseudo-label": ("pseudo-label", "folder", "--root", "{street}", "--heads", "{lg}", "--min-segment", "20",
                     "--device", "cpu"),
    "train-panoptic": ("train-panoptic", "--pseudo", "{pl}", *TINY, "--tiny", "--epochs", "1", "--batch-size",
                       "2"),
    "predict-panoptic": ("predict-panoptic", "--checkpoint", "{tp}", "--dataset", "folder", "--root", "{street}",
                         "--split", "all", "--device", "cpu"),
    "evaluate": ("evaluate", "--task", "fss", "--pred", "{ft}", "--episodes", "{fss}"),
    "data check": ("data", "check", "folder", "--root", "{street}", "--num-workers", "0"),
    "data episodes": ("data", "episodes", "pascal", "--root", "{voc}", "--split", "all", "--fold", "0", "--n",
                      "3", "--min-area", "500"),
    "data panoptic-gt": ("data", "panoptic-gt", "folder", "--root", "{street}"),
    "report": ("report", "{run}"),
}
# fmt: on
NO_OUT = {"data check", "report"}
# stages that keep the items they finished before the bad one (clip-cam lists unreadable images)
KEEPS_ITEMS = {"clip-cam", "clip-cam (lenient)"}
# stages that list every bad file on stdout and end with one summary error line
LISTS = {"clip-cam (lenient)", "data check"}


def command(stage: str, changes: tuple[tuple[str, str | None], ...] = ()) -> list[str]:
    """The stage's command with each (option, value) of `changes` set (replaced, appended, or
    removed where the value is None); "--out {out}" last unless the stage has no --out or
    `changes` sets it."""
    args = list(STAGES[stage])
    for option, value in changes:
        at = args.index(option) if option in args else len(args)
        args[at : at + 2] = [] if value is None else [option, value]
    if stage not in NO_OUT and "--out" not in args:
        args += ["--out", "{out}"]
    return args


# ----------------------------------------------------------------------------- the matrix's parts
@dataclass(frozen=True)
class Case:
    """One bad input: `make(tmp, world)` writes it under `tmp` and returns the placeholders it sets
    ("bad", or "out" for --out cases); `says` are fragments the error line must hold."""

    name: str
    make: Callable[[Path, dict], dict[str, str]]
    says: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reader:
    """A stage command reading the family's kind of input: `changes` put "{bad}" in place;
    `tree` names the world dataset that tree cases copy and break ("voc" or "street")."""

    stage: str
    changes: tuple[tuple[str, str | None], ...] = ()
    tree: str = "street"
    label: str = ""

    @property
    def name(self) -> str:
        return f"{self.stage} {self.label}".strip()

    def args(self) -> list[str]:
        return command(self.stage, self.changes)


@dataclass(frozen=True)
class Family:
    """One kind of input: every case of it is run against every reader of it."""

    name: str
    cases: tuple[Case, ...]
    readers: tuple[Reader, ...]
    skip: frozenset[tuple[str, str]] = frozenset()  # (case, reader) pairs that do not apply
    slow: frozenset[tuple[str, str]] = frozenset()  # (case, reader) pairs that build real networks


# ----------------------------------------------------------------------------- tree cases (images, masks)
TREES = {"voc": ("JPEGImages", "SegmentationClassAug"), "street": ("images", "masks")}


def _tree_case(name: str, breaks: Callable[[Path, Path], None], *says: str) -> Case:
    """A copy of the reader's world dataset with `breaks(images_dir, masks_dir)` applied."""

    def make(tmp: Path, world: dict) -> dict[str, str]:
        tree = world["tree"]
        root = tmp / "data"
        shutil.copytree(world[tree], root)
        images, masks = TREES[tree]
        breaks(root / images, root / masks)
        return {"bad": str(root)}

    return Case(name, make, says)


def _each(folder: Path, change: Callable[[Path], None]) -> None:
    for path in sorted(folder.iterdir()):
        change(path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _odd_names(images: Path, masks: Path) -> None:
    """Every image renamed `[b] é #N` (its mask too), its content a text file."""
    for i, path in enumerate(sorted(images.iterdir())):
        odd = f"[b] é #{i}"
        path.rename(path.with_name(odd + path.suffix)).write_text("not an image\n")
        if (mask := masks / f"{path.stem}.png").exists():
            mask.rename(mask.with_name(f"{odd}.png"))


def _mask_values(value: int, dtype) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        label = np.array(Image.open(path)).astype(dtype)
        label[2:6, 2:6] = value
        Image.fromarray(label).save(path)

    return change


def _smaller(path: Path) -> None:
    Image.fromarray(np.array(Image.open(path))[:-4]).save(path)


def _colour(path: Path) -> None:
    label = np.array(Image.open(path))
    Image.fromarray(np.stack([label, label * 0 + 7, label], axis=-1).astype(np.uint8)).save(path)


IMAGE_CASES = (
    _tree_case("missing folder", lambda images, masks: shutil.rmtree(images.parent), "does not exist"),
    _tree_case("empty folder", lambda images, masks: [shutil.rmtree(images), images.mkdir()]),
    _tree_case("zero-byte image", lambda images, masks: _each(images, lambda p: p.write_bytes(b"")), "not a readable image"),
    _tree_case("truncated image", lambda images, masks: _each(images, _truncate), "not a readable image"),
    _tree_case("text as image", lambda images, masks: _each(images, lambda p: p.write_text("hello\n")), "not a readable image"),
    _tree_case("odd names", _odd_names, "[b] é #", "not a readable image"),
)  # fmt: skip
MASK_CASES = (
    _tree_case("mask id 200", lambda images, masks: _each(masks, _mask_values(200, np.uint8)), "label id(s) 200"),
    _tree_case("mask id 300 (16-bit)", lambda images, masks: _each(masks, _mask_values(300, np.uint16)), "label id(s) 300"),
    _tree_case("mask size mismatch", lambda images, masks: _each(masks, _smaller), " but "),
    _tree_case("colour mask", lambda images, masks: _each(masks, _colour), "not a label map"),
    _tree_case("zero-byte mask", lambda images, masks: _each(masks, lambda p: p.write_bytes(b"")), "not a readable image"),
    _tree_case("masks missing", lambda images, masks: shutil.rmtree(masks)),
)  # fmt: skip


def _root(stage: str, tree: str = "street") -> Reader:
    return Reader(stage, (("--root", "{bad}"),), tree=tree)


# the stages that read a PASCAL tree's images and masks: episodes or training
VOC_READERS = tuple(
    _root(stage, "voc") for stage in ("pretrain pspnet", "pretrain hsnet", "refine", "finetune-episode")
)
IMAGES = Family(
    "image",
    IMAGE_CASES,
    (
        Reader("clip-cam", (("--images", "{bad}/images"),)),
        Reader("clip-cam (lenient)", (("--images", "{bad}/images"),)),
        Reader("refine (ad hoc)", (("--query", "{bad}/images"),), label="--query"),
        Reader("refine (ad hoc)", (("--support", "{bad}/images"), ("--support-masks", "{bad}/masks")), label="--support"),
        *VOC_READERS,
        *(_root(stage) for stage in ("label-gen", "pseudo-label", "predict-panoptic", "data check")),
    ),
    # their episodes name the images, so renamed ones are simply not in the dataset
    skip=frozenset({("odd names", "refine"), ("odd names", "finetune-episode")}),
)  # fmt: skip
MASKS = Family(
    "mask",
    MASK_CASES,
    (
        Reader("refine (ad hoc)", (("--support", "{bad}/images"), ("--support-masks", "{bad}/masks"))),
        *VOC_READERS,
        _root("evaluate", "voc"),
        _root("data episodes", "voc"),
        *(_root(stage) for stage in ("label-gen", "data check", "data panoptic-gt")),
    ),
    # ad-hoc support masks are foreground masks (any non-zero pixel, any colour); data episodes
    # and panoptic-gt never read the images, so they cannot tell a mask of another size
    skip=frozenset(
        {(case, "refine (ad hoc)") for case in ("mask id 200", "mask id 300 (16-bit)", "colour mask")}
        | {("mask size mismatch", stage) for stage in ("data episodes", "data panoptic-gt")}
    ),
)


# ----------------------------------------------------------------------------- folder datasets' class lists
def _classes_case(name: str, text: str | None, *says: str) -> Case:
    def make(tmp: Path, world: dict) -> dict[str, str]:
        root = tmp / "data"
        shutil.copytree(world["street"], root)
        config = root / "classes.yaml"
        config.unlink() if text is None else config.write_text(text)
        return {"bad": str(root)}

    return Case(name, make, ("classes.yaml", *says))


CLASSES = Family(
    "class list",
    (
        _classes_case("classes.yaml missing", None, "is missing"),
        _classes_case("classes.yaml not YAML", "names: [road, sky\n", "not valid YAML"),
        _classes_case("no names", "things: [car]\n", "needs `names:`"),
        _classes_case("unknown thing", "names: [road, sky, car]\nbackground: null\nthings: [bus]\n", "'bus'"),
    ),
    tuple(
        _root(stage)
        for stage in ("label-gen", "pseudo-label", "predict-panoptic", "data check", "data panoptic-gt")
    ),
)


LABELS = Family(
    "label",
    (
        Case("unknown label", lambda tmp, world: {"bad": "zorblax"}, ("'zorblax'",)),
        Case("empty label", lambda tmp, world: {"bad": ""}, ("--label",)),
    ),
    (
        Reader("clip-cam", (("--label", "{bad}"),)),
        Reader(
            "refine (ad hoc)",
            (("--label", "{bad}"), ("--support-masks", None), ("--cam-backend", "imagenet")),
        ),
    ),
)


# ----------------------------------------------------------------------------- artifacts, episodes, weights
def _made(write: Callable[[Path], object], name: str = "bad", **also: str) -> Callable[[Path, dict], dict]:
    """A case maker: `write(path)` makes the bad input at tmp/name; `also`: more placeholders."""

    def make(tmp: Path, world: dict) -> dict[str, str]:
        write(tmp / name)
        return {"bad": str(tmp / name), **also}

    return make


def _copy_of(key: str, change: Callable[[Path], object]) -> Callable[[Path, dict], dict[str, str]]:
    """A case maker: a copy of the world's `key` (artifact folder or file) with `change` applied."""

    def make(tmp: Path, world: dict) -> dict[str, str]:
        src, copy = Path(world[key]), tmp / f"bad{Path(world[key]).suffix}"
        shutil.copytree(src, copy) if src.is_dir() else shutil.copy(src, copy)
        change(copy)
        return {"bad": str(copy)}

    return make


def _folder_with(name: str, text: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.mkdir()
        (path / name).write_text(text)

    return write


ARTIFACTS = Family(
    "artifact",
    (
        Case("missing", _made(lambda p: None)),
        Case("plain folder", _made(_folder_with("notes.txt", "mine\n"))),
        Case("unfinished", _copy_of("ft", lambda p: (p / "manifest.json").unlink()), ("manifest.json",)),
        Case("corrupt manifest", _copy_of("ft", lambda p: (p / "manifest.json").write_text("{\n"))),
        Case("another kind", lambda tmp, world: {"bad": world["ev"]}),
        Case("empty file", _made(lambda p: p.write_bytes(b""))),
        Case("text file", _made(lambda p: p.write_text("not an artifact\n"))),
    ),
    (
        Reader("refine", (("--cams", "{bad}"),), label="--cams"),
        Reader("refine", (("--checkpoint", "{bad}"),), label="--checkpoint"),
        Reader("finetune-episode", (("--checkpoint", "{bad}"),)),
        Reader("pretrain hsnet", (("--method", "imr-hsnet"), ("--cams", "{bad}")), label="--cams"),
        Reader("pseudo-label", (("--heads", "{bad}"),)),
        Reader("train-panoptic", (("--pseudo", "{bad}"),)),
        Reader("predict-panoptic", (("--checkpoint", "{bad}"),)),
        Reader("evaluate", (("--pred", "{bad}"),)),
    ),
)


def _edit_episodes(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc))

    return write


def _set(key: str, value, episode: int | None = None) -> Callable[[dict], None]:
    return lambda doc: (doc if episode is None else doc["episodes"][episode]).__setitem__(key, value)


EPISODES = Family(
    "episodes",
    (
        Case("missing", _made(lambda p: None), ("not found",)),
        Case("a folder", _made(lambda p: p.mkdir())),
        Case("not JSON", _made(lambda p: p.write_text("episodes: 3\n")), ("not valid JSON",)),
        Case("not an episodes file", _made(lambda p: p.write_text("{}")), ("not an fsseg episodes file",)),
        Case("no episodes", _copy_of("fss", _edit_episodes(_set("episodes", []))), ("no episodes",)),
        Case("empty support", _copy_of("fss", _edit_episodes(_set("support", [], 1))), ("episode 1 has no support",)),
        Case("class 99", _copy_of("fss", _edit_episodes(_set("class", 99, 0))), ("episode 0 has class 99",)),
        Case("id '../x'", _copy_of("fss", _edit_episodes(_set("query", "../x", 0))), ("'../x'", "(episode 0)")),
        Case("other classes", _copy_of("fss", _edit_episodes(_set("class_names", ["a", "b"]))), ("made for the classes",)),
    ),
    (
        Reader("refine", (("--episodes", "{bad}"),)),
        Reader("finetune-episode", (("--episodes", "{bad}"),)),
        Reader("evaluate", (("--episodes", "{bad}"),)),
        Reader("pretrain hsnet", (("--val-episodes", "{bad}"),)),
    ),
)  # fmt: skip


def _weights_case(
    name: str, write: Callable[[Path], object], says: str, backbone="efficientnet_lite0"
) -> Case:
    return Case(name, _made(write, "weights.pth", backbone=backbone), (says,))


def _torch_save(obj_of: Callable[[object], object]) -> Callable[[Path], None]:
    """A writer of `torch.save(obj_of(torch), path)`."""

    def write(path: Path) -> None:
        import torch

        torch.save(obj_of(torch), path)

    return write


WEIGHT_READERS = ("pretrain pspnet", "pretrain hsnet", "label-gen", "train-panoptic")
WEIGHTS = Family(
    "backbone weights",
    (
        _weights_case("missing", lambda p: None, "file not found"),
        _weights_case("empty", lambda p: p.write_bytes(b""), "is an empty file"),
        _weights_case("a folder", lambda p: p.mkdir(), "is a folder, not a weights file"),
        _weights_case("text", lambda p: p.write_text("not a checkpoint\n"), "not a torch checkpoint"),
        _weights_case("a list", _torch_save(lambda torch: [1, 2]), "not a checkpoint dict"),
        _weights_case("another network's", _torch_save(lambda torch: {"foo.weight": torch.zeros(2)}),
                      "does not fit the efficientnet_lite0 backbone"),
        _weights_case("a file for tiny", _torch_save(lambda torch: {}), "--backbone tiny has no pretrained weights",
                      backbone="tiny"),
    ),
    tuple(Reader(stage, (("--backbone", "{backbone}"), ("--backbone-weights", "{bad}"))) for stage in WEIGHT_READERS),
    # these load the file into a real EfficientNet-Lite0 (seconds each); pspnet's stay in `make test`
    slow=frozenset((case, stage) for case in ("text", "a list", "another network's") for stage in WEIGHT_READERS[1:]),
)  # fmt: skip


# ----------------------------------------------------------------------------- --out
def _out_case(name: str, write: Callable[[Path, dict], Path], *says: str) -> Case:
    def make(tmp: Path, world: dict) -> dict[str, str]:
        return {"out": str(write(tmp, world))}

    return Case(name, make, says)


def _file(path: Path, text: str = "my notes\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


OUTS = Family(
    "--out",
    (
        _out_case("a file", lambda tmp, world: _file(tmp / "out.txt"), "{out}"),
        _out_case("under a file", lambda tmp, world: _file(tmp / "notes") / "out", "{out}"),
        _out_case(
            "a folder of other files", lambda tmp, world: _file(tmp / "out" / "notes.txt").parent, "{out}"
        ),
        # (root may write anywhere else; /proc takes no new folder, whoever asks)
        _out_case(
            "unwritable", lambda tmp, world: Path("/proc/fsseg-unwritable/out"), "/proc/fsseg-unwritable"
        ),
        _out_case(
            "another stage's artifact",
            lambda tmp, world: Path(shutil.copytree(world["ev"], tmp / "out")),
            "{out}",
        ),
    ),
    tuple(Reader(stage) for stage in STAGES if stage not in NO_OUT),
)


# ----------------------------------------------------------------------------- numbers, from the commands
def _stage_of_command() -> dict[tuple[str, ...], str]:
    """The first stage of STAGES for each command path (("pretrain",), ("data", "check"), ...)."""
    found: dict[tuple[str, ...], str] = {}
    for stage, args in STAGES.items():
        path = tuple(a for a in args[:2] if not a.startswith(("-", "{")) and a not in ("folder", "pascal"))
        found.setdefault(path, stage)
    return found


def _ruled_options() -> list[tuple[str, str, object, bool]]:
    """(stage, flag, rule, takes a float) of every option of every stage that a number rule checks."""
    import typer.main

    from fsseg_cli.main import app

    def commands(typer_app, prefix=()):
        for info in typer_app.registered_commands:
            yield (*prefix, info.name), info.callback
        for group in typer_app.registered_groups:
            yield from commands(group.typer_instance, (*prefix, group.name))

    stages = _stage_of_command()
    found = []
    for path, callback in commands(app):
        click_command = typer.main.get_command(app)
        for word in path:
            click_command = click_command.commands[word]
        flags = {p.name: p for p in click_command.params}
        for name, parameter in inspect.signature(callback, eval_str=True).parameters.items():
            hint, *infos = typing.get_args(parameter.annotation) or (None,)
            rule = getattr(getattr(infos[0], "callback", None), "rule", None) if infos else None
            limits = rule and (rule.minimum, rule.above, rule.maximum) != (None, None, None)
            if limits and path in stages:
                floats = float in (hint, *typing.get_args(hint))
                found.append((stages[path], flags[name].opts[0], rule, floats))
    return found


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _number_pairs() -> list[tuple[str, str, str, str]]:
    """(stage, flag, bad value, fragment): each limit of each option's rule crossed, a NaN for
    floats, and a word for any number; the error line shows the value it refuses."""
    pairs = []
    for stage, flag, rule, floats in _ruled_options():
        limits = [(rule.minimum, -1), (rule.above, 0), (rule.maximum, 1)]
        bad = [_number(limit + step) for limit, step in limits if limit is not None]
        pairs += [(stage, flag, value, value) for value in bad + ["nan"] * floats]
        pairs.append((stage, flag, "x", ""))
    return pairs


# ----------------------------------------------------------------------------- one-off cases
# (name, command, fragment): bad input that belongs to no family
SINGLES = [
    ("unknown command", ("segment-everything",), "No such command 'segment-everything'"),
    ("missing --out", STAGES["pretrain pspnet"], "Missing option '--out'"),
    ("pspnet option for hsnet", (*command("pretrain hsnet"), "--momentum", "0.5"), "--momentum applies to --method pspnet only"),
    ("unknown device", command("finetune-episode", (("--device", "gpu"),)), "'gpu' is not one of auto, cpu"),
    ("template without {}", command("clip-cam", (("--template", "a dog"),)), "needs a {{}} where the label goes"),
    ("input size not a multiple of 32", command("clip-cam", (("--input-size", "100"),)), "100 is not a multiple of 32"),
    ("predictions of other episodes", command("evaluate", (("--episodes", "{fss_other}"),)), "holds predictions for the episodes file"),
    ("bad option into a finished artifact", command("pretrain pspnet", (("--lr", "0"), ("--out", "{psp}"))), "'--lr'"),
    ("report over a file named report", ("report", "{notes_run}"), "report exists but is not an fsseg report"),
    ("report of a missing folder", ("report", "{data}/nope"), "does not exist"),
]  # fmt: skip

FAMILIES = (IMAGES, MASKS, CLASSES, LABELS, ARTIFACTS, EPISODES, WEIGHTS, OUTS)


# ----------------------------------------------------------------------------- running a pair
@dataclass
class Ran:
    """What one `fsseg` run left: exit code, stdout, stderr, and the uncaught exception (in-process)."""

    returncode: int
    stdout: str
    stderr: str
    exception: str | None = None


def _in_process(args: list[str]) -> Ran:
    import traceback

    from typer.testing import CliRunner

    from fsseg_cli.main import app

    result = CliRunner().invoke(app, args)
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    text = "".join(traceback.format_exception(*result.exc_info)) if crashed else None
    return Ran(result.exit_code, result.stdout, result.stderr, text)


def _subprocess(args: list[str]) -> Ran:
    proc = run_fsseg(*args)
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def _digest(folder: Path, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file under `folder` ("dir" for folders), except under `skip`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
        if skip is None or not p.is_relative_to(skip)
    }


def _refused(
    world: dict, tmp: Path, stage: str, args: list[str], says, given: dict[str, str], run=_in_process
):
    """Run `args` (placeholders: the world's paths, `given`, "{out}" = tmp/out) and check the
    refusal: exit 2, one error line holding every fragment of `says` and the given input, no
    traceback, nothing written outside --out, no file it was given changed."""
    out = Path(given.get("out", tmp / "out"))
    values = {**world["paths"], "out": str(out), **given}
    argv = [a.format(**values) for a in args]
    own_out = None if "out" in given else out  # a given --out is a file to keep as it is
    data = Path(world["paths"]["data"])
    before = _digest(tmp, skip=own_out), _digest(data)
    ran = run(argv)
    assert ran.exception is None, ran.exception  # an uncaught exception: a traceback for the user
    line = error_line(ran)  # exactly one `error:` line, no traceback
    assert ran.returncode == 2, ran.stderr
    assert "; " in line, f"no fix after the problem: {line}"  # house style: "the problem; the fix"
    shown = (ran.stdout + line) if stage in LISTS else line
    for fragment in (*says, given.get("bad", "")):
        assert fragment.format(**values) in shown, f"{fragment!r} not in: {shown}"
    assert (_digest(tmp, skip=own_out), _digest(data)) == before
    if own_out is not None and stage not in KEEPS_ITEMS:
        assert not own_out.exists(), sorted(p.name for p in own_out.iterdir())


PAIRS = [(f, c, r) for f in FAMILIES for c in f.cases for r in f.readers if (c.name, r.name) not in f.skip]


def _pair(family: Family, case: Case, reader: Reader, slow: bool = False):
    marks = [pytest.mark.slow] if slow or (case.name, reader.name) in family.slow else []
    return pytest.param(case, reader, id=f"{family.name}: {case.name} x {reader.name}", marks=marks)


def _bad_input(world: dict, tmp: Path, case: Case, reader: Reader, run=_in_process) -> None:
    (tmp / "input").mkdir()
    given = case.make(tmp / "input", {**world["paths"], "tree": reader.tree})
    _refused(world, tmp, reader.stage, reader.args(), case.says, given, run)


def _bad_number(
    world: dict, tmp: Path, stage: str, flag: str, value: str, says: str, run=_in_process
) -> None:
    _refused(world, tmp, stage, command(stage, ((flag, value),)), (f"'{flag}'", says, "--help"), {}, run)


# ----------------------------------------------------------------------------- the world
def _fsseg(*args) -> None:
    ran = _in_process([str(a) for a in args])
    assert ran.returncode == 0 and ran.exception is None, ran.exception or ran.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny datasets and an artifact of every stage, under data/ (which no pair may change)."""
    base = tmp_path_factory.mktemp("bad-inputs")
    data = base / "data"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FSSEG_CACHE", str(base / "cache"))
        env.delenv("FSSEG_DEBUG", raising=False)
        env.setenv("NO_COLOR", "1")
        paths = {"data": data, "voc": make_voc_tree(data / "voc"),
                 "street": make_street_tree(data / "street", n=4, size=(42, 56))}  # fmt: skip
        made = ("psp", "hsnet", "cams", "ft", "ev", "lg", "pl", "tp", "run", "notes_run")
        paths |= {name: data / name for name in made}
        paths |= {"fss": data / "fss.json", "fss_other": data / "fss-other.json"}

        def stage(name: str, out: str) -> None:
            _fsseg(*(a.format(**paths) for a in STAGES[name]), "--out", paths[out])

        stage("pretrain pspnet", "psp")
        stage("pretrain hsnet", "hsnet")
        _fsseg("clip-cam", "--dataset", "pascal", "--root", paths["voc"], "--split", "all", "--backend", "imagenet",
               "--device", "cpu", "--num-workers", "0", "--cam-size", "16", "--out", paths["cams"])  # fmt: skip
        for seed, key in ((0, "fss"), (1, "fss_other")):
            _fsseg(*(a.format(**paths) for a in STAGES["data episodes"]), "--seed", seed, "--out", paths[key])
        stage("finetune-episode", "ft")
        _fsseg(*(a.format(**paths) for a in STAGES["evaluate"]), "--missing-as-empty", "--out", paths["ev"])
        stage("label-gen", "lg")
        stage("pseudo-label", "pl")
        stage("train-panoptic", "tp")
        for run in ("run", "notes_run"):
            shutil.copytree(paths["ft"], paths[run] / "ft")
        (paths["notes_run"] / "report").write_text("my own notes, not a report\n")
        yield {"paths": {k: str(v) for k, v in paths.items()}}


# ----------------------------------------------------------------------------- the tests
@pytest.mark.parametrize(("case", "reader"), [_pair(*pair) for pair in PAIRS])
def test_bad_input_is_refused_in_one_line(world, tmp_path, case, reader):
    _bad_input(world, tmp_path, case, reader)


NUMBER_PAIRS = _number_pairs()


@pytest.mark.parametrize(
    ("stage", "flag", "value", "says"), NUMBER_PAIRS, ids=[f"{s} {f} {v}" for s, f, v, _ in NUMBER_PAIRS]
)
def test_bad_number_is_refused_in_one_line(world, tmp_path, stage, flag, value, says):
    _bad_number(world, tmp_path, stage, flag, value, says)


@pytest.mark.parametrize(("name", "args", "says"), SINGLES, ids=[s[0] for s in SINGLES])
def test_odd_bad_input_is_refused_in_one_line(world, tmp_path, name, args, says):
    _refused(world, tmp_path, args[0], list(args), (says,), {})


def _firsts(items: list, key: Callable) -> list:
    """The first item of each key, in order."""
    found: dict = {}
    for item in items:
        found.setdefault(key(item), item)
    return list(found.values())


# the real `fsseg` script (a process each): the first case of every (family, reader), a number per stage
SCRIPT_PAIRS = _firsts(PAIRS, lambda pair: (pair[0].name, pair[2].name))
SCRIPT_NUMBERS = _firsts(NUMBER_PAIRS, lambda pair: pair[0])


@pytest.mark.slow
@pytest.mark.parametrize(("case", "reader"), [_pair(*pair, slow=True) for pair in SCRIPT_PAIRS])
def test_the_fsseg_script_refuses_bad_input_alike(world, tmp_path, case, reader):
    _bad_input(world, tmp_path, case, reader, run=_subprocess)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "flag", "value", "says"), SCRIPT_NUMBERS, ids=[s[0] for s in SCRIPT_NUMBERS]
)
def test_the_fsseg_script_refuses_bad_numbers_alike(world, tmp_path, stage, flag, value, says):
    _bad_number(world, tmp_path, stage, flag, value, says, run=_subprocess)


def test_report_into_an_unwritable_folder(world, tmp_path, monkeypatch):
    """(In-process: permissions cannot stop root, so the folder refuses the staging folder itself.)"""
    run = tmp_path / "run"
    shutil.copytree(world["paths"]["ft"], run / "ft")
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self.name.startswith(".report-") or self.parent.name.startswith(".report-"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    ran = _in_process(["report", str(run)])
    line = error_line(ran)
    assert ran.returncode == 2 and line.startswith("error: cannot write the report into"), line
    assert "Permission denied" in line and sorted(p.name for p in run.iterdir()) == ["ft"]
