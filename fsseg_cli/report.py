"""`fsseg report`: a static HTML page of a run folder's artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsseg_cli import options as opt
from fsseg_cli.console import console, handles_errors, progress, setup_logging
from fsseg_cli.options import Quiet, Verbose

HELP = (
    "Build RUN_DIR/report/index.html from every artifact (manifest.json) under RUN_DIR: the chain of stages with "
    "parameters and lineage, metrics tables, per-class charts, training histories and a gallery of overlays "
    "(clip-cam, refine) and previews (pseudo-label). A static page with local pictures: open it in any browser."
)


@handles_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A folder holding fsseg artifacts (searched recursively).")],
    gallery: Annotated[int, opt.count("--gallery", minimum=0, help="Pictures per artifact.")] = 12,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    setup_logging(quiet, verbose)
    from stages.report import run_report

    with progress("report", quiet) as on_progress:
        page = run_report(run_dir, gallery_size=gallery, on_progress=on_progress)
    console.print(f"report -> {page}", markup=False, highlight=False, soft_wrap=True)
