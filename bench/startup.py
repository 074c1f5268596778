"""How long `qeffc` takes to answer before any work: `--help`, a mistyped option, and `import qeff_compiler`.

`python -m bench.startup [--source DIR] [--runs N]`: each command in a fresh process, N times, median and min-max of
the wall time, and the load average (other work on the machine slows imports). `--source` puts another checkout of
the package first on `PYTHONPATH`, to compare two versions in one run. Prints only; no results file (the figure
depends on the page cache and the load more than on the code once torch is out of the way).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "qeffc --help": ["-m", "qeff_compiler.cli.main", "--help"],
    "qeffc compile --bogus": ["-m", "qeff_compiler.cli.main", "compile", "-o", "x", "--bogus"],
    "import qeff_compiler": ["-c", "import qeff_compiler"],
    "import torch (for scale)": ["-c", "import torch"],
}


def measure(source: Path | None, runs: int) -> dict[str, list[float]]:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as elsewhere:  # `python -m` puts the working directory first on sys.path
        for name, args in COMMANDS.items():
            subprocess.run([sys.executable, *args], env=env, capture_output=True, cwd=elsewhere)  # warm the cache
            for _ in range(runs):
                start = time.perf_counter()
                subprocess.run([sys.executable, *args], env=env, capture_output=True, cwd=elsewhere)
                times.setdefault(name, []).append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="checkout of qeff-compiler to measure (default: the installed)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for name, samples in measure(args.source, args.runs).items():
        print(f"{name:<26} median {statistics.median(samples):6.2f} s  (min-max {min(samples):.2f}-{max(samples):.2f})")
    print("load average:", Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()
