"""Errors as one line, progress bars, logging: how fsseg talks to the person at the terminal."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from stages.core.errors import FssegError

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` on one line to stderr and return the Exit to raise.

    `message` is plain text: square brackets in it (file names, hints) are shown as they are.
    """
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def say(text: str) -> None:
    """Print a line of plain text (paths, file names, messages; no markup) to stdout."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a terminated run cleans up as Ctrl-C does."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def handles_errors(command: Callable) -> Callable:
    """Turn user errors into one line and a non-zero exit (tracebacks with FSSEG_DEBUG=1);
    Ctrl-C and SIGTERM into one line saying what became of the output folder."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        main = threading.current_thread() is threading.main_thread()  # handlers live there only
        on_sigterm = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
        try:
            return command(*args, **kwargs)
        except FssegError as err:
            if os.environ.get("FSSEG_DEBUG") == "1":
                raise
            raise fail(str(err)) from None
        except KeyboardInterrupt as err:
            # the artifact notes what it did with the folder: put an --overwritten run back, or
            # left nothing; otherwise the items written so far are kept for resume
            outcome = getattr(err, "fsseg_outcome", None) or "run the same command again to resume"
            what, code = (
                ("terminated (SIGTERM)", 143) if isinstance(err, Terminated) else ("interrupted", 130)
            )
            raise fail(f"{what}; {outcome}", code) from None
        finally:
            if main:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if on_sigterm is None else on_sigterm)

    return wrapper


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """fsseg's own messages at INFO (WARNING with --quiet, DEBUG with --verbose); other libraries'
    chatter (download retries, "random weights" notes) only with --verbose."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = RichHandler(console=err_console, show_time=False, show_path=False, markup=False)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.CRITICAL,
        format="%(message)s",
        handlers=[handler],
        force=True,
    )
    for name in ("stages", "fsseg_cli"):
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def progress(description: str, quiet: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A `on_progress(done, total)` callback that drives a Rich progress bar on stderr."""
    if quiet or not sys.stderr.isatty() and os.environ.get("FSSEG_PROGRESS") != "1":
        yield lambda done, total, status=None: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int, status: str | None = None) -> None:
            bar.update(
                task,
                completed=done,
                total=total,
                description=f"{description} {status}" if status else description,
            )

        yield update
