"""The parameter records are the one source of truth: every command's options, defaults and help
come from its record, and what a run records is the record."""

from __future__ import annotations

import dataclasses
import re

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from fsseg_cli.main import app
from stages import params as P
from stages.core.errors import FssegError

RECORDED = {  # commands derived from records: all that run a stage with parameters
    "clip-cam", "pretrain", "refine", "finetune-episode", "label-gen", "pseudo-label", "train-panoptic",
    "predict-panoptic", "evaluate",
}  # fmt: skip


def _commands() -> dict[str, tuple[typer.models.CommandInfo, dict]]:
    found = {}
    for info in app.registered_commands:
        targets = getattr(info.callback, "records", None)
        if targets is not None:
            found[info.name] = (info, targets)
    return found


def test_every_stage_command_is_derived_from_a_record():
    assert set(_commands()) == RECORDED


def _help_text(name: str) -> str:
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert result.exit_code == 0, result.output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_options_defaults_and_help_come_from_the_record(name):
    info, targets = _commands()[name]
    command = get_command(app).commands[name]
    options = {p.name: p for p in command.params}
    text = _help_text(name)
    for classes, by, names in targets.values():
        for cls in classes.values():
            for f in dataclasses.fields(cls):
                if (names is not None and f.name not in names) or f.name == by:
                    continue
                option = options[f.name]
                assert P.flag_of(f) in option.opts, (name, f.name)
                assert option.help == f.metadata["help"], (name, f.name)
                if option.default is None:  # differs between the records: help shows each
                    if f.default is not None:
                        assert _shown(f.default) in str(option.show_default), (name, f.name)
                        assert _shown(f.default) in text, (name, f.name)
                else:
                    assert option.default in (f.default, _shown(f.default)), (name, f.name)
                    if f.default is True:  # an on/off flag shows its on name
                        assert f"[default: {P.flag_of(f)[2:]}]" in text, (name, f.name)
                    elif f.default not in (None, False):  # and nothing when off
                        assert f"[default: {_shown(f.default)}]" in text, (name, f.name)


def test_pretrain_help_shows_each_methods_defaults():
    text = _help_text("pretrain")
    for field, episodic, pspnet in (
        ("img-size", 400, 473),
        ("epochs", 200, 100),
        ("batch-size", 40, 12),
        ("lr", 0.0004, 0.0025),
    ):
        assert f"{episodic} for imr-hsnet, hsnet; {pspnet} for pspnet" in text, field
        assert getattr(P.PSPNetTrainParams(), field.replace("-", "_")) == pspnet
        assert getattr(P.EpisodicTrainParams(), field.replace("-", "_")) == episodic


def test_records_refuse_bad_values_naming_the_option():
    with pytest.raises(FssegError, match=r"--img-size: 7 is out of range: must be >= 32"):
        P.RefineParams(img_size=7)
    with pytest.raises(FssegError, match=r"--precision 'fp64' is not one of auto, fp32, bf16, fp16"):
        P.RefineParams(precision="fp64")
    with pytest.raises(FssegError, match=r"--lambda-t: -1 is out of range: must be >= 0"):
        P.EpisodicTrainParams(lambda_t=(1.0, -1.0))
    with pytest.raises(FssegError, match=r"--device: 'gpu' is not one of"):
        P.ClipCamParams(device="gpu")
    assert P.LabelGenParams(indices=[3, 4]).indices == (3, 4)  # lists from callers are kept as tuples


def test_an_option_of_another_method_is_refused(tmp_path):
    result = CliRunner().invoke(
        app,
        ["pretrain", "--method", "hsnet", "--dataset", "camvid", "--root", str(tmp_path), "--out",
         str(tmp_path / "o"), "--momentum", "0.5"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--momentum applies to --method pspnet only" in result.output


def test_settings_stay_out_of_the_resume_signature():
    signature, settings = P.recorded(P.RefineParams(feature_cache_mb=3, device="cpu"))
    assert settings == {"device": "cpu", "feature_cache_mb": 3}
    assert signature["img_size"] == 400 and "device" not in signature
