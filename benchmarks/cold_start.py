"""Time how long the ``pypds`` command takes to start and answer, each run a fresh process.

    python -m benchmarks.cold_start [--runs 21]

Runs each command ``--runs`` times (after one untimed warm-up run) and
prints the median and the fastest wall-clock time of each, and the median
CPU time (user + system: on a shared machine, what the process itself
spent), in two settings:

* **bytecode cached**: compiled modules are kept (in a temporary
  ``PYTHONPYCACHEPREFIX``, written by the warm-up run), as for an installed
  package;
* **as this environment runs it**: the inherited environment; with
  ``PYTHONDONTWRITEBYTECODE=1`` and no ``__pycache__`` beside the sources
  (an editable checkout), every start compiles pypds from source.

The commands:

* ``python -c pass``: the interpreter alone (the floor);
* ``python -c "import pypds"``: the library's import;
* ``pypds --version`` and ``pypds get REPO COLLECTION RKEY`` on a repository of
  10 records, through the installed ``pypds`` script (``python -m pypds.cli`` if
  there is none).

For where the import time goes: ``python -X importtime -m pypds.cli --version``.
Not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pypds import Repo

DID = "did:plc:benchmarkbenchmarkbench"
POST = "app.bsky.feed.post"


def pypds_command() -> list[str]:
    """The installed ``pypds`` script beside this interpreter, else ``python -m pypds.cli``."""
    script = Path(sys.executable).parent / "pypds"
    if script.exists():
        return [str(script)]
    found = shutil.which("pypds")
    return [found] if found else [sys.executable, "-m", "pypds.cli"]


def timed_runs(command: list[str], runs: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU (user + system) seconds of ``runs`` runs of ``command`` (after one
    untimed run); each must exit 0."""
    subprocess.run(command, check=True, capture_output=True, env=env)
    wall, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        wall.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    pypds = pypds_command()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "repo")
        with Repo.create(path, DID) as repo, repo.batch() as batch:
            for i in range(10):
                record = {"$type": POST, "text": f"post {i}", "createdAt": "2024-01-01T00:00:00Z"}
                batch.put(POST, f"3jui7kd54zh{i}a", record)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import pypds'": [sys.executable, "-c", "import pypds"],
            "pypds --version": [*pypds, "--version"],
            "pypds get REPO COLLECTION RKEY": [*pypds, "get", path, POST, "3jui7kd54zh3a"],
        }
        cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        settings = {"bytecode cached": cached, "as this environment runs it": dict(os.environ)}
        print(f"{args.runs} runs each ({' '.join(pypds)}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
        for setting, env in settings.items():
            print(f"\n{setting + ':':<34} {'median ms':>10} {'fastest ms':>11} {'median CPU ms':>14}")
            for name, command in commands.items():
                wall, cpu = timed_runs(command, args.runs, env)
                median, fastest, median_cpu = statistics.median(wall), min(wall), statistics.median(cpu)
                print(f"  {name:<32} {median * 1000:>10.1f} {fastest * 1000:>11.1f} {median_cpu * 1000:>14.1f}")


if __name__ == "__main__":
    main()
