"""Bad input, table-driven: every case is one `fsseg` command with one thing wrong and the fragment
its error line must hold. Each must exit 2 with exactly one `error:` line (no traceback), create
no --out folder, and leave every file it was given unchanged."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import error_line, make_street_tree, make_voc_tree, run_fsseg

TINY = ["--backbone", "tiny", "--backbone-weights", "random", "--device", "cpu"]
PSP = ["pretrain", "--method", "pspnet", "--dataset", "pascal", "--root", "{voc}", "--split", "all", "--fold",
       "0", *TINY, "--tiny", "--img-size", "32", "--epochs", "1", "--batch-size", "4"]  # fmt: skip
HSNET = [*PSP[:2], "hsnet", *PSP[3:]]
LABEL_GEN = ["label-gen", "folder", "--root", "{street}", "--k", "2", "--views", "1", "--epochs-semantic", "1",
             "--epochs-boundary", "1", *TINY]  # fmt: skip
PSEUDO = ["pseudo-label", "folder", "--root", "{street}", "--heads", "{lg}", "--device", "cpu"]
PANOPTIC = ["train-panoptic", "--pseudo", "{pl}", *TINY, "--tiny", "--epochs", "1"]
CAMS = ["clip-cam", "--images", "{voc}/JPEGImages", "--label", "dog", "--backend", "clip", "--pretrained",
        "none", "--device", "cpu"]  # fmt: skip
REFINE = ["refine", "--checkpoint", "{hsnet}", "--episodes", "{fss}", "--refiner", "none", "--device", "cpu"]
FINETUNE = ["finetune-episode", "--checkpoint", "{psp}", "--episodes", "{fss}", "--img-size", "32", "--steps",
            "2", "--device", "cpu"]  # fmt: skip
EVAL_FSS = ["evaluate", "--task", "fss", "--pred", "{preds}", "--episodes", "{fss}"]  # a plain folder


def _with(base: list[str], option: str, value: str) -> list[str]:
    """`base` with `option` set to `value` (replaced where base has it, else appended)."""
    args = list(base)
    if option in args:
        args[args.index(option) + 1] = value
        return args
    return [*args, option, value]


def _weights(base: list[str], backbone: str, value: str) -> list[str]:
    return _with(_with(base, "--backbone", backbone), "--backbone-weights", value)


# (case id, arguments, expected fragment of the error line); "--out {out}" is appended to the
# arguments unless they name --out or the case is in NO_OUT
CASES = [
    # -- numbers, one rule per kind (sizes, rates, counts, probabilities, weights, indices, seeds)
    ("pretrain img-size 7", _with(PSP, "--img-size", "7"), "'--img-size': 7 is out of range: must be >= 32"),
    ("pretrain img-size 0", _with(PSP, "--img-size", "0"), "'--img-size'"),
    ("pretrain img-size -5", _with(PSP, "--img-size", "-5"), "'--img-size'"),
    ("pretrain lr 0", _with(PSP, "--lr", "0"), "'--lr': 0 is out of range: must be > 0"),
    ("pretrain lr -1", _with(PSP, "--lr", "-1"), "'--lr'"),
    ("pretrain lr nan", _with(PSP, "--lr", "nan"), "'--lr': nan is not a finite number"),
    ("pretrain epochs 0", _with(PSP, "--epochs", "0"), "'--epochs'"),
    ("pretrain batch-size 0", _with(PSP, "--batch-size", "0"), "'--batch-size'"),
    ("pretrain episodes-per-epoch 0", _with(HSNET, "--episodes-per-epoch", "0"), "'--episodes-per-epoch'"),
    ("pretrain episodes-per-epoch -3", _with(HSNET, "--episodes-per-epoch", "-3"), "'--episodes-per-epoch'"),
    ("pretrain n-folds 0", _with(PSP, "--n-folds", "0"), "'--n-folds'"),
    ("pretrain fold -1", _with(PSP, "--fold", "-1"), "'--fold'"),
    (
        "pretrain lambda-t a,b",
        _with(HSNET, "--lambda-t", "a,b"),
        "'--lambda-t': 'a,b' is not a comma-separated",
    ),
    ("pretrain lambda-t 1,-1", _with(HSNET, "--lambda-t", "1,-1"), "'--lambda-t': -1 is out of range"),
    ("pretrain w-s -1", _with(HSNET, "--w-s", "-1"), "'--w-s'"),
    ("pretrain label-smoothing 1.5", _with(PSP, "--label-smoothing", "1.5"), "'--label-smoothing'"),
    ("pretrain momentum -0.1", _with(PSP, "--momentum", "-0.1"), "'--momentum'"),
    ("pretrain temperature 0", _with(PSP, "--temperature", "0"), "'--temperature'"),
    ("pretrain contrastive -1", _with(PSP, "--contrastive", "-1"), "'--contrastive'"),
    ("pretrain max-anchors 1", _with(PSP, "--max-anchors", "1"), "'--max-anchors'"),
    ("pretrain val-images 0", _with(PSP, "--val-images", "0"), "'--val-images'"),
    ("pretrain seed -1", _with(PSP, "--seed", "-1"), "'--seed'"),
    (
        "pretrain momentum for hsnet",
        _with(HSNET, "--momentum", "0.5"),
        "--momentum applies to --method pspnet only",
    ),
    ("label-gen lr 0", _with(LABEL_GEN, "--lr", "0"), "'--lr'"),
    ("label-gen size 7", _with(LABEL_GEN, "--size", "7"), "'--size'"),
    ("label-gen k 0", _with(LABEL_GEN, "--k", "0"), "'--k'"),
    ("label-gen views 0", _with(LABEL_GEN, "--views", "0"), "'--views'"),
    (
        "label-gen indices 1,-2",
        _with(LABEL_GEN, "--indices", "1,-2"),
        "'--indices': -2 is out of range: must be >= 0",
    ),
    ("pseudo-label tta-scales 1,x", _with(PSEUDO, "--tta-scales", "1,x"), "'--tta-scales'"),
    ("pseudo-label tta-scales 0", _with(PSEUDO, "--tta-scales", "0"), "'--tta-scales': 0 is out of range"),
    (
        "pseudo-label boundary-threshold 2",
        _with(PSEUDO, "--boundary-threshold", "2"),
        "'--boundary-threshold'",
    ),
    ("pseudo-label min-segment -1", _with(PSEUDO, "--min-segment", "-1"), "'--min-segment'"),
    ("train-panoptic lr -1", _with(PANOPTIC, "--lr", "-1"), "'--lr'"),
    ("train-panoptic batch-size 0", _with(PANOPTIC, "--batch-size", "0"), "'--batch-size'"),
    ("train-panoptic size 0", _with(PANOPTIC, "--size", "0"), "'--size'"),
    ("clip-cam cam-size 0", _with(CAMS, "--cam-size", "0"), "'--cam-size': 0 is out of range: must be >= 1"),
    ("clip-cam cam-size -3", _with(CAMS, "--cam-size", "-3"), "'--cam-size'"),
    ("clip-cam input-size 7", _with(CAMS, "--input-size", "7"), "'--input-size'"),
    ("clip-cam threshold 1.5", _with(CAMS, "--threshold", "1.5"), "'--threshold'"),
    ("clip-cam batch-size 0", _with(CAMS, "--batch-size", "0"), "'--batch-size'"),
    ("refine img-size 7", _with(REFINE, "--img-size", "7"), "'--img-size'"),
    ("refine steps 0", _with(REFINE, "--steps", "0"), "'--steps'"),
    ("refine feature-cache -1", _with(REFINE, "--feature-cache-mb", "-1"), "'--feature-cache-mb'"),
    ("finetune img-size 0", _with(FINETUNE, "--img-size", "0"), "'--img-size'"),
    ("finetune label-size 0", _with(FINETUNE, "--label-size", "0"), "'--label-size'"),
    ("finetune label-size -4", _with(FINETUNE, "--label-size", "-4"), "'--label-size'"),
    ("finetune lr 0", _with(FINETUNE, "--lr", "0"), "'--lr'"),
    ("finetune gamma -1", _with(FINETUNE, "--gamma", "-1"), "'--gamma'"),
    ("finetune batch-episodes 0", _with(FINETUNE, "--batch-episodes", "0"), "'--batch-episodes'"),
    ("evaluate num-classes 0", ["evaluate", "--pred", "{voc}", "--num-classes", "0"], "'--num-classes'"),
    ("evaluate resize-gt 0", _with(EVAL_FSS, "--resize-gt", "0"), "'--resize-gt'"),
    ("evaluate ignore-index -1", ["evaluate", "--pred", "{voc}", "--ignore-index", "-1"], "'--ignore-index'"),
    ("report gallery -1", ["report", "{run}", "--gallery", "-1"], "'--gallery'"),
    ("data episodes seed -1", ["data", "episodes", "pascal", "--root", "{voc}", "--seed", "-1"], "'--seed'"),
    (
        "data check num-workers -1",
        ["data", "check", "pascal", "--root", "{voc}", "--num-workers", "-1"],
        "'--num-workers'",
    ),
    ("unknown command", ["segment-everything"], "No such command 'segment-everything'"),
    ("missing --out", PSP, "Missing option '--out'"),
    # -- --backbone-weights: missing, empty, not a checkpoint, another network's, ignored with tiny
    ("weights missing", _weights(PSP, "resnet50", "{data}/nope.pth"), "'--backbone-weights': file not found"),
    ("weights empty", _weights(PSP, "resnet50", "{data}/empty.pth"), "empty.pth is an empty file"),
    (
        "weights text",
        _weights(PSP, "resnet50", "{data}/text.pth"),
        "the file is corrupt or not a torch checkpoint",
    ),
    ("weights a list", _weights(PSP, "resnet50", "{data}/list.pth"), "list.pth is not a checkpoint dict"),
    ("weights a folder", _weights(PSP, "resnet50", "{data}"), "is a folder, not a weights file"),
    (
        "weights of another net (pspnet)",
        _weights(PSP, "resnet50", "{data}/other.pth"),
        "other.pth does not fit the resnet50 backbone (Missing key(s)",
    ),
    (
        "weights of another net (label-gen)",
        _weights(LABEL_GEN, "efficientnet_lite0", "{data}/other.pth"),
        "does not fit the efficientnet_lite0 backbone",
    ),
    ("weights missing, tiny backbone", _weights(HSNET, "tiny", "{data}/nope.pth"), "file not found"),
    (
        "weights file, tiny backbone",
        _weights(PSP, "tiny", "{data}/other.pth"),
        "--backbone tiny has no pretrained weights",
    ),
    (
        "weights missing (label-gen)",
        _weights(LABEL_GEN, "dinov2_vits14", "{data}/nope.pth"),
        "file not found",
    ),
    # -- labels outside the dataset's classes, or of the wrong size: refused alike by every stage
    ("pspnet id 200", _with(PSP, "--root", "{ids200}"), "im03.png holds label id(s) 200, outside pascal"),
    ("pspnet id 300 (16-bit)", _with(PSP, "--root", "{ids300}"), "im03.png holds label id(s) 300"),
    ("pspnet mask size", _with(PSP, "--root", "{size}"), "im03.png is 64x60 but its image"),
    (
        "label-gen id 200",
        [*_with(LABEL_GEN, "--root", "{street200}"), "--indices", "0"],
        "s00.png holds label id(s) 200, outside folder's classes 0..2",
    ),
    (
        "label-gen id 300 (16-bit)",
        [*_with(LABEL_GEN, "--root", "{street300}"), "--indices", "0"],
        "s00.png holds label id(s) 300",
    ),
    # -- episodes: no supports, a class the dataset lacks; predictions made for other episodes
    (
        "finetune empty support",
        _with(FINETUNE, "--episodes", "{no_support}"),
        "episode 1 has no support images",
    ),
    (
        "finetune class 99",
        _with(FINETUNE, "--episodes", "{class99}"),
        "episode 0 has class 99, which pascal lacks",
    ),
    (
        "evaluate empty support",
        _with(EVAL_FSS, "--episodes", "{no_support}"),
        "episode 1 has no support images",
    ),
    ("evaluate class 99", _with(EVAL_FSS, "--episodes", "{class99}"), "episode 0 has class 99"),
    (
        "evaluate other episodes",
        _with(_with(EVAL_FSS, "--pred", "{ft}"), "--episodes", "{fss_other}"),
        "holds predictions for the episodes file",
    ),
    # -- a finished artifact given bad options stays as it was
    ("bad option into a finished artifact", [*_with(PSP, "--lr", "0"), "--out", "{psp}"], "'--lr'"),
    ("report over a file named report", ["report", "{run}"], "report exists but is not an fsseg report"),
]


NO_OUT = {"report gallery -1", "data check num-workers -1", "unknown command", "missing --out",
          "report over a file named report"}  # fmt: skip


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny datasets (clean and broken copies), weights files, a PSPNet and an HSNet checkpoint,
    episodes (good and broken), predictions for them, a run folder; all under data/ (watched)."""
    import torch

    base = tmp_path_factory.mktemp("bad-inputs")
    data = base / "data"
    env = {"FSSEG_CACHE": str(base / "cache")}
    voc = make_voc_tree(data / "voc")
    for name in ("ids200", "ids300", "size"):
        shutil.copytree(voc, data / name)
    label = np.array(Image.open(voc / "SegmentationClassAug" / "im03.png"))
    Image.fromarray(np.where(np.arange(64) < 8, 200, label).astype(np.uint8)).save(
        data / "ids200" / "SegmentationClassAug" / "im03.png"
    )
    Image.fromarray(np.where(np.arange(64) < 8, 300, label.astype(np.uint16))).save(
        data / "ids300" / "SegmentationClassAug" / "im03.png"
    )
    Image.fromarray(label[:60]).save(data / "size" / "SegmentationClassAug" / "im03.png")
    street = make_street_tree(data / "street", n=4, size=(42, 56))
    for name, value, dtype in (("street200", 200, np.uint8), ("street300", 300, np.uint16)):
        shutil.copytree(street, data / name)
        mask = np.array(Image.open(street / "masks" / "s00.png")).astype(dtype)
        mask[2:6, 2:6] = value
        Image.fromarray(mask).save(data / name / "masks" / "s00.png")
    (data / "empty.pth").write_bytes(b"")
    (data / "text.pth").write_text("not a checkpoint\n")
    torch.save([1, 2], data / "list.pth")
    torch.save({"foo.weight": torch.zeros(2)}, data / "other.pth")

    def fsseg(*args):
        run_fsseg(*[str(a).format(**paths) for a in args], env=env, check=True)

    # hsnet, lg, pl are never read: the commands that name them stop at their bad option first
    paths = {"data": data, "voc": voc, "street": street, "psp": data / "psp", "hsnet": data / "hsnet",
             "fss": data / "fss.json", "fss_other": data / "fss-other.json", "ft": data / "ft",
             "lg": data / "lg", "pl": data / "pl", "run": data / "run", "preds": data / "preds"}  # fmt: skip
    paths |= {name: data / name for name in ("ids200", "ids300", "size", "street200", "street300")}
    fsseg(*PSP, "--out", "{psp}")
    for seed, key in ((0, "fss"), (1, "fss_other")):
        fsseg("data", "episodes", "pascal", "--root", "{voc}", "--split", "all", "--fold", "0", "--n", "3",
              "--min-area", "500", "--seed", str(seed), "--out", "{" + key + "}")  # fmt: skip
    doc = json.loads(paths["fss"].read_text())
    broken = json.loads(json.dumps(doc))
    broken["episodes"][1]["support"] = []
    (data / "no-support.json").write_text(json.dumps(broken))
    broken = json.loads(json.dumps(doc))
    broken["episodes"][0]["class"] = 99
    (data / "class99.json").write_text(json.dumps(broken))
    paths |= {"no_support": data / "no-support.json", "class99": data / "class99.json"}
    fsseg(*FINETUNE, "--out", "{ft}")
    shutil.copytree(paths["ft"], paths["run"] / "ft")
    shutil.copytree(paths["ft"] / "pred", paths["preds"])
    (paths["run"] / "report").write_text("my own notes, not a report\n")
    return {"base": base, "env": env, "paths": paths, "digest": _digest(data)}


@pytest.mark.parametrize(("case", "args", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(world, tmp_path, case, args, fragment):
    out = tmp_path / "out"
    paths = {**world["paths"], "out": out}
    argv = [a.format(**paths) for a in args]
    if "--out" not in argv and case not in NO_OUT:
        argv += ["--out", str(out)]
    proc = run_fsseg(*argv, env=world["env"])
    line = error_line(proc)  # exactly one `error:` line, no traceback
    assert proc.returncode == 2, proc.stderr
    assert fragment.format(**paths) in line, line
    assert not out.exists()
    assert _digest(paths["data"]) == world["digest"]  # every given file unchanged, nothing written beside


def test_report_into_an_unwritable_folder(world, tmp_path, monkeypatch):
    """(In-process: permissions cannot stop root, so the folder refuses the staging folder itself.)"""
    from typer.testing import CliRunner

    from fsseg_cli.main import app

    run = tmp_path / "run"
    shutil.copytree(world["paths"]["ft"], run / "ft")
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self.name.startswith(".report-") or self.parent.name.startswith(".report-"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write the report into"), lines
    assert "Permission denied" in lines[0] and sorted(p.name for p in run.iterdir()) == ["ft"]
