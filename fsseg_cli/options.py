"""The options every stage shares, defined once. Validation here imports no torch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import typer

COMMON = "Common options"


def _check_device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value.strip().lower()):
        raise typer.BadParameter(f"{value!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return value.strip().lower()


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
Seed = Annotated[int, typer.Option("--seed", help="Seed for every random choice.", rich_help_panel=COMMON)]
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
        "--num-workers", min=0, help="Worker threads/processes for reading data.", rich_help_panel=COMMON
    ),
]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bar.", rich_help_panel=COMMON),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.", rich_help_panel=COMMON)]
