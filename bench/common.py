"""What every benchmark shares: quick mode, the hardware lines, the devices to run on, child runs.

Quick mode (`QUICK=1`, or `bench/run_all.py --quick`, `make bench-quick`): tiny sizes, a few
seconds a benchmark, numbers meaningless; it exists so that CI runs every benchmark's code path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def quick() -> bool:
    """Whether this is a quick run (QUICK set to anything but empty or 0)."""
    return os.environ.get("QUICK", "") not in ("", "0")


def threads() -> int:
    """Torch threads for the CPU rows: 2 (the development machine's cores); 1 in quick mode, where
    tiny ops would mostly wait for the second thread on a busy machine."""
    return 1 if quick() else 2


def bench_devices() -> list[str]:
    """The devices a benchmark runs its rows on: the CPU, and the first CUDA GPU when there is one."""
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def print_hardware() -> None:
    """The CPU features detected and what `--precision auto` resolves to on each bench device."""
    from stages.core.devices import describe_precision

    for device in bench_devices():
        print(f"--precision auto on {describe_precision(device)}", flush=True)
    if quick():
        print("QUICK=1: tiny sizes, numbers meaningless", flush=True)


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so that a timer read afterwards covers it."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child_json(*args: str) -> dict:
    """Run `python ARGS...` in a new process (for its own peak RSS) and return the JSON object of its
    last stdout line. Its stderr goes straight to ours, so a failure shows its traceback."""
    proc = subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {' '.join(args)} exited with status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_children(script: str, flag: str, names: list[str], *args: str) -> dict[str, dict]:
    """{name: result} of `python SCRIPT FLAG NAME ARGS...`, whose last stdout line is the JSON
    {NAME: result}: one process per name (each its own peak RSS); in quick mode one process for all
    (`FLAG a,b,c`), since process starts would dominate the seconds."""
    if quick():
        return child_json(script, flag, ",".join(names), *args)
    return {name: child_json(script, flag, name, *args)[name] for name in names}
