"""The `fsseg` command: one subcommand per pipeline stage, plus `info`."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from fsseg_cli import (
    clip_cam,
    data,
    evaluate,
    finetune_episode,
    info,
    label_gen,
    predict_panoptic,
    pretrain,
    pseudo_label,
    refine,
    report,
    train_panoptic,
)
from fsseg_cli.console import fail

try:  # recent typer vendors its own click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError


class OneLineUsageErrors(TyperGroup):
    """Bad option values, missing options and unknown commands are user errors like any other:
    one `error:` line naming the option, exit 2 (click would draw a usage box)."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except UsageError as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # `fsseg data` alone: its help
                raise
            where = f"; see `{err.ctx.command_path} --help`" if err.ctx is not None else ""
            raise fail(err.format_message().rstrip(".") + where, err.exit_code) from None


app = typer.Typer(
    cls=OneLineUsageErrors,
    name="fsseg",
    help=(
        "Label-efficient image segmentation as a file-based pipeline.\n\n"
        "Each command is one stage: it reads files (images, masks, earlier artifacts) and writes one "
        "output folder ending with manifest.json. Run [bold]fsseg COMMAND --help[/] for what a stage "
        "reads, writes and defaults to."
    ),
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

app.command("clip-cam", help=clip_cam.HELP)(clip_cam.clip_cam)
app.command("pretrain", help=pretrain.HELP)(pretrain.pretrain)
app.command("refine", help=refine.HELP)(refine.refine)
app.command("finetune-episode", help=finetune_episode.HELP)(finetune_episode.finetune_episode)
app.command("label-gen", help=label_gen.HELP)(label_gen.label_gen)
app.command("pseudo-label", help=pseudo_label.HELP)(pseudo_label.pseudo_label)
app.command("train-panoptic", help=train_panoptic.HELP)(train_panoptic.train_panoptic)
app.command("predict-panoptic", help=predict_panoptic.HELP)(predict_panoptic.predict_panoptic)
app.command("info", help="Versions, devices, and which pretrained weights are in the local caches.")(
    info.info
)
app.command("evaluate", help=evaluate.HELP)(evaluate.evaluate)
app.command("report", help=report.HELP)(report.report)
app.add_typer(data.app, name="data")

if __name__ == "__main__":
    app()
