"""`fsseg info`: what this installation has to work with."""

from __future__ import annotations

import os
import platform
from importlib import metadata

from rich.table import Table

from fsseg_cli.console import console, handles_errors

PACKAGES = (
    "fsseg",
    "torch",
    "torchvision",
    "open_clip_torch",
    "timm",
    "numpy",
    "scipy",
    "opencv-python-headless",
    "pillow",
    "typer",
    "rich",
)


@handles_errors
def info() -> None:
    import torch

    from stages.core.weights import weight_report

    versions = Table(title="versions", show_header=False, title_justify="left")
    versions.add_row("python", platform.python_version())
    for name in PACKAGES:
        try:
            versions.add_row(name, metadata.version(name))
        except metadata.PackageNotFoundError:
            versions.add_row(name, "[red]not installed[/]")
    console.print(versions)

    devices = Table(title="devices", show_header=False, title_justify="left")
    devices.add_row(
        "cpu", f"{platform.machine()}, {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads"
    )
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.add_row(f"cuda:{i}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB")
    else:
        devices.add_row("cuda", "not available")
    devices.add_row("mps", "available" if torch.backends.mps.is_available() else "not available")
    devices.add_row(
        "default (--device auto)",
        "cuda:0" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu",
    )
    from stages.core.devices import describe_precision

    devices.add_row("precision (--precision auto)", describe_precision("cpu"))
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        devices.add_row("", describe_precision(f"cuda:{i}"))
    console.print(devices)

    weights = Table(title="pretrained weights in local caches", title_justify="left")
    for col in ("weights", "used by", "present"):
        weights.add_column(col)
    for row in weight_report():
        where = (
            f"[green]yes[/] {row.location}" if row.location else f"[yellow]no[/] (expected at {row.expected})"
        )
        weights.add_row(row.name, row.used_by, where)
    console.print(weights)
