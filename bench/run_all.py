"""`make bench`: every benchmark in bench/, one after the other, each printing its own ratios.

Usage: python bench/run_all.py [--quick] [NAME ...]   (NAME: evaluate, clip_cam, ...; default all)
`--quick` (or QUICK=1) runs each with tiny sizes (`make bench-quick`, what CI runs). Each benchmark
runs in its own process; one that fails is reported and the rest still run; the exit status is 1
when any failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    if "--quick" in argv:
        env["QUICK"] = "1"
    wanted = [a for a in argv if a != "--quick"]
    scripts = sorted(HERE.glob("bench_*.py"))
    unknown = set(wanted) - {s.stem.removeprefix("bench_") for s in scripts}
    if unknown:
        print(f"no benchmark named {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    results = []
    for script in scripts:
        if wanted and script.stem.removeprefix("bench_") not in wanted:
            continue
        print(f"== {script.stem} ==", flush=True)
        start = time.perf_counter()
        status = subprocess.run([sys.executable, str(script)], env=env).returncode
        results.append((script.stem, status, time.perf_counter() - start))
        if status:
            print(f"!! {script.stem} FAILED (exit status {status})", flush=True)
    print("== summary ==")
    for name, status, seconds in results:
        print(f"  {name:<16} {'ok' if status == 0 else f'FAILED ({status})':<12} {seconds:6.1f} s")
    failed = [name for name, status, _ in results if status]
    if failed:
        print(f"{len(failed)} benchmark(s) failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
