"""Run a benchmark's measurement in a fresh Python process (its own peak RSS, no state left
over from an earlier measurement) and read the JSON object it prints last.

A measurement is a top-level function ``f(args: dict) -> dict`` of a module in bench/. The
parent calls ``run_child(f, args)``; the child is this file run as a script,

    python bench/child.py MODULE_FILE FUNCTION ARGS_JSON

which imports the module (not as ``__main__``, so its command line does not run), calls the
function and prints its result as JSON on the last line. A measurement's heavy imports belong
inside the function: the parent stays light, and the module's import costs the child nothing
beyond what it measures.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from typing import Callable

Measurement = Callable[[dict], dict]


def child_command(measure: Measurement, args: dict) -> list[str]:
    """The command line that runs ``measure(args)`` in a fresh process."""
    module = sys.modules[measure.__module__]
    path = getattr(module, "__file__", None)
    if (path is None or measure.__qualname__ != measure.__name__
            or not measure.__name__.isidentifier()):
        raise ValueError(f"run_child needs a top-level function of a module file, got "
                         f"{measure.__module__}.{measure.__qualname__}")
    return [sys.executable, os.path.abspath(__file__), os.path.abspath(path), measure.__name__,
            json.dumps(args)]


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) in MB. Not ru_maxrss: Linux carries the
    parent's peak over into a child's ru_maxrss at exec."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except OSError:  # not Linux: ru_maxrss (KB on Linux-likes), the best there is
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_result(stdout: str) -> dict:
    lines = stdout.strip().splitlines()
    if not lines:
        raise RuntimeError("the measurement printed nothing")
    return json.loads(lines[-1])


def run_child(measure: Measurement, args: dict) -> dict:
    out = subprocess.run(child_command(measure, args), capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"measurement {measure.__name__} failed (exit {out.returncode}):\n"
                           f"{out.stderr[-3000:]}")
    return read_result(out.stdout)


def _main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit("usage: python bench/child.py MODULE_FILE FUNCTION ARGS_JSON")
    path, name, args = argv
    folder, stem = os.path.split(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    result = getattr(importlib.import_module(os.path.splitext(stem)[0]), name)(json.loads(args))
    print(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1:])


def collect(procs: list, what: str, tail: int = 3000) -> list[dict]:
    """Wait for measurement children started with ``child_command`` and read their results;
    the first failure raises with the end of its stderr."""
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"{what} failed:\n{err[-tail:]}")
        results.append(read_result(out))
    return results
