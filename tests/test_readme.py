"""The README's commands match the CLI: every `fsseg ...` line in a bash block names a real command
and only options that command has; every `make X` names a Makefile target."""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import ROOT, run_fsseg

GROUPS = {"data"}  # command groups: the next word is the subcommand


def _bash_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [
            line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
        ]
    return commands


def _fsseg_commands() -> list[list[str]]:
    found = []
    for line in _bash_commands():
        line = line.split(" # ")[0].replace("$(which fsseg)", "fsseg")
        words = shlex.split(line)
        if "fsseg" in words:
            found.append(words[words.index("fsseg") + 1 :])
    return found


def test_readme_has_commands_for_every_stage():
    names = {c[0] for c in _fsseg_commands() if c}
    for stage in ("clip-cam", "pretrain", "refine", "finetune-episode", "label-gen", "pseudo-label",
                  "train-panoptic", "predict-panoptic", "evaluate", "data", "report", "info"):  # fmt: skip
        assert stage in names, stage


@pytest.mark.parametrize("words", _fsseg_commands(), ids=lambda w: " ".join(w)[:60])
def test_readme_fsseg_command_uses_real_options(words):
    path = words[:2] if words and words[0] in GROUPS else words[:1]
    if words[:1] == ["STAGE"]:
        pytest.skip("placeholder for any stage")
    proc = run_fsseg(*path, "--help")
    assert proc.returncode == 0, f"fsseg {' '.join(path)}: {proc.stderr}"
    options = {w.split("=")[0] for w in words if w.startswith("--")}
    missing = [o for o in options if o not in proc.stdout]
    assert not missing, (
        f"`fsseg {' '.join(words)}` uses options that `fsseg {' '.join(path)}` lacks: {missing}"
    )


def test_readme_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+(?: [\w-]+)*):", (ROOT / "Makefile").read_text(), re.M))
    targets = {t for line in targets for t in line.split()}
    used = {m for line in _bash_commands() for m in re.findall(r"\bmake ([\w-]+)", line)}
    used |= set(re.findall(r"`make ([\w-]+)", (ROOT / "README.md").read_text()))
    assert used and not used - targets, used - targets
