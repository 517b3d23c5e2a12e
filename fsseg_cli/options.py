"""The options every command spells the same way, and the number rules of the commands that have
no parameter record (`fsseg data`, `fsseg report`). Each rule is `stages.params.Rule`, the one
the records use, so a value is refused the same way whichever command takes it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from stages.params import COMMON, NUM_WORKERS_HELP, SEED_HELP, SEED_MAX, Rule


def rule_callback(rule: Rule, parse: Callable[[str], Any] | None = None) -> Callable[[Any], Any]:
    """A typer callback: the value (parsed from its text when `parse` is given) if `rule` accepts
    it, else one line naming the option (None, an unset option, passes)."""

    def check(value: Any) -> Any:
        try:
            if parse is not None and isinstance(value, str):
                value = parse(value)
            rule.check(value)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
        return value

    check.rule = rule  # for tests and docs: what the option accepts
    return check


def _rule(**limits: Any) -> Callable[[Any], Any]:
    return rule_callback(Rule(**limits))


def pixels(*names: str, help: str, **kw) -> Any:
    """A size in pixels of something stored or scored (>= 1)."""
    return typer.Option(*names, help=help, callback=_rule(minimum=1), **kw)


def count(*names: str, help: str = "", minimum: int = 1, **kw) -> Any:
    """How many of something (>= 1, or >= `minimum` where 0 means 'none' or more are needed)."""
    return typer.Option(*names, help=help, callback=_rule(minimum=minimum), **kw)


def index(*names: str, help: str, maximum: int | None = None, **kw) -> Any:
    """An index or id (>= 0)."""
    return typer.Option(*names, help=help, callback=_rule(minimum=0, maximum=maximum), **kw)


Out = Annotated[
    Path,
    typer.Option(
        "--out", "-o", help="Output folder: one artifact, ends with manifest.json.", rich_help_panel=COMMON
    ),
]
# the ad-hoc mode of refine and finetune-episode: one query folder, every support a shot of each query
Support = Annotated[
    str | None, typer.Option("--support", help="Ad-hoc mode: support image folder/file/glob.")
]
Query = Annotated[str | None, typer.Option("--query", help="Ad-hoc mode: query image folder/file/glob.")]
Seed = Annotated[
    int,
    typer.Option(
        "--seed", help=SEED_HELP, callback=_rule(minimum=0, maximum=SEED_MAX), rich_help_panel=COMMON
    ),
]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace a finished artifact made with other "
        "parameters (the old one is kept until the new run finishes).",
        rich_help_panel=COMMON,
    ),
]
NumWorkers = Annotated[
    int,
    typer.Option("--num-workers", help=NUM_WORKERS_HELP, callback=_rule(minimum=0), rich_help_panel=COMMON),
]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bar.", rich_help_panel=COMMON),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.", rich_help_panel=COMMON)]
