"""The options every stage shares, and one rule per kind of value, defined once. Validation here
imports no torch (only a --backbone-weights file is opened with it)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

COMMON = "Common options"


def _check_device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value.strip().lower()):
        raise typer.BadParameter(f"{value!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return value.strip().lower()


# ----------------------------------------------------------------------------- one rule per kind of value
# Every numeric option goes through one of these, so a value is refused the same way (one line,
# exit 2, naming the option) whichever command takes it. `None` (an unset optional) passes.
MIN_SIDE = 32  # the coarsest backbone stride: below it VGG16 fails and the other backbones see 1x1 maps


def _show(number: float) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


def _number_rule(
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    integer: bool = False,
    why: str = "",
) -> Callable[[Any], Any]:
    """A typer callback accepting numbers >= minimum, > above and <= maximum (finite)."""

    def check(value):
        if value is None:
            return value
        if not integer and not math.isfinite(value):
            raise typer.BadParameter(f"{value} is not a finite number")
        limits = []
        if minimum is not None:
            limits.append(f">= {_show(minimum)}")
        if above is not None:
            limits.append(f"> {_show(above)}")
        if maximum is not None:
            limits.append(f"<= {_show(maximum)}")
        if (
            (minimum is not None and value < minimum)
            or (above is not None and value <= above)
            or (maximum is not None and value > maximum)
        ):
            raise typer.BadParameter(f"{_show(value)} is out of range: must be {' and '.join(limits)}{why}")
        return value

    return check


def side(*names: str, help: str, minimum: int = MIN_SIDE, **kw) -> Any:
    """A network input side in pixels (>= MIN_SIDE, or the family's own minimum)."""
    why = f" (the backbones' coarsest stride is {MIN_SIDE} px)" if minimum == MIN_SIDE else ""
    return typer.Option(
        *names, help=help, callback=_number_rule(minimum=minimum, integer=True, why=why), **kw
    )


def pixels(*names: str, help: str, **kw) -> Any:
    """A size in pixels of something stored or scored (>= 1)."""
    return typer.Option(*names, help=help, callback=_number_rule(minimum=1, integer=True), **kw)


def count(*names: str, help: str = "", minimum: int = 1, **kw) -> Any:
    """How many of something (>= 1, or >= `minimum` where 0 means 'none' or more are needed)."""
    return typer.Option(*names, help=help, callback=_number_rule(minimum=minimum, integer=True), **kw)


def learning_rate(*names: str, help: str, **kw) -> Any:
    """A learning rate (> 0)."""
    return typer.Option(*names, help=help, callback=_number_rule(above=0), **kw)


def probability(*names: str, help: str, **kw) -> Any:
    """A probability, fraction or threshold in [0, 1]."""
    return typer.Option(*names, help=help, callback=_number_rule(minimum=0, maximum=1), **kw)


def weight(*names: str, help: str, **kw) -> Any:
    """A loss weight or penalty (>= 0)."""
    return typer.Option(*names, help=help, callback=_number_rule(minimum=0), **kw)


def positive(*names: str, help: str, **kw) -> Any:
    """A scale or temperature (> 0)."""
    return typer.Option(*names, help=help, callback=_number_rule(above=0), **kw)


def index(*names: str, help: str, maximum: int | None = None, **kw) -> Any:
    """An index or id (>= 0)."""
    return typer.Option(
        *names, help=help, callback=_number_rule(minimum=0, maximum=maximum, integer=True), **kw
    )


def parse_numbers(value: str, *, minimum: float | None = None, above: float | None = None) -> list[float]:
    """A comma-separated list of numbers, each checked by the same rule as a single option.
    Raises typer.BadParameter (without the option's name: the callback adds it)."""
    try:
        numbers = [float(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. 1,0.5") from None
    if not numbers:
        raise typer.BadParameter(f"{value!r} holds no numbers")
    check = _number_rule(minimum=minimum, above=above)
    for number in numbers:
        check(number)
    return numbers


def numbers(*names: str, help: str, minimum: float | None = None, above: float | None = None, **kw) -> Any:
    """A comma-separated list of numbers, each >= minimum / > above (the string is kept; parse it
    with `parse_numbers`)."""

    def check(value):
        if value is not None:
            parse_numbers(value, minimum=minimum, above=above)
        return value

    return typer.Option(*names, help=help, callback=check, **kw)


def _weights_rule(keywords: tuple[str, ...]) -> Callable[[str | None], str | None]:
    """--backbone-weights: one of `keywords`, or a file that loads with weights_only=True."""

    def check(value: str | None) -> str | None:
        if value is None or value in keywords:
            return value
        path = Path(value).expanduser()
        if not path.exists():
            raise typer.BadParameter(
                f"file not found: {path}; pass a weights file or one of {', '.join(keywords)}"
            )
        if not path.is_file():
            raise typer.BadParameter(f"{path} is a folder, not a weights file")
        if path.stat().st_size == 0:
            raise typer.BadParameter(f"{path} is an empty file, not a weights file")
        from stages.core.checkpoints import load_checkpoint  # torch: only once a file is named
        from stages.core.errors import FssegError

        try:
            load_checkpoint(path)
        except FssegError as err:
            raise typer.BadParameter(str(err)) from None
        return value

    return check


def backbone_weights(*names: str, help: str, keywords: tuple[str, ...], **kw) -> Any:
    """A backbone's weights: one of `keywords` (imagenet, auto, random) or a checkpoint file, read here."""
    return typer.Option(*names, help=help, callback=_weights_rule(keywords), **kw)


def no_weights_for_tiny(backbone: str, weights: str) -> None:
    """The tiny backbone is always randomly initialised: a weights file passed with it would be ignored."""
    if backbone == "tiny" and weights not in ("imagenet", "auto", "random", "none"):
        raise typer.BadParameter(
            f"--backbone tiny has no pretrained weights, so {weights} would be ignored; pass "
            f"--backbone-weights random or another --backbone",
            param_hint="'--backbone-weights'",
        )


Out = Annotated[
    Path,
    typer.Option(
        "--out", "-o", help="Output folder: one artifact, ends with manifest.json.", rich_help_panel=COMMON
    ),
]
Device = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto | cpu | cuda | cuda:N | mps (auto: GPU if any).",
        callback=_check_device,
        rich_help_panel=COMMON,
    ),
]
Precision = Annotated[
    Literal["fp32", "bf16", "fp16"],
    typer.Option(
        "--precision", help="Autocast precision (bf16 is fast on recent CPUs).", rich_help_panel=COMMON
    ),
]
Seed = Annotated[
    int,
    typer.Option(
        "--seed",
        help="Seed for every random choice (0 to 2^32-1).",
        callback=_number_rule(minimum=0, maximum=2**32 - 1, integer=True),
        rich_help_panel=COMMON,
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
    typer.Option(
        "--num-workers",
        help="Worker threads/processes for reading data.",
        callback=_number_rule(minimum=0, integer=True),
        rich_help_panel=COMMON,
    ),
]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bar.", rich_help_panel=COMMON),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.", rich_help_panel=COMMON)]
