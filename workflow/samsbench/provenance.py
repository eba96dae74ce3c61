"""Where a result came from: code version, software, device, configuration and input checksums.

``record`` is written into every run's summary.json (stages.train) and into
results/{experiment}/provenance.json (stages.report), so a number in the report can be traced
to the commit, the resolved settings and the exact bytes of the dataset and split it was
computed from.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata

from samsbench.io import sha256_file

def git_state(directory: str | os.PathLike | None = None) -> dict:
    """Commit and dirty flag of the checkout holding ``directory`` (default: this package's
    source). An installed wheel or a copy without .git reads ``{"commit": None, "dirty":
    None, "note": "not a git checkout"}``."""
    where = os.fspath(directory or os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        return subprocess.run(["git", "-C", where, *args], capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        # tracked files only: results/ and .venv are not the code
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "note": "not a git checkout"}
    return {"commit": commit, "dirty": dirty}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def software() -> dict:
    import samsbench

    out = {"samsbench": samsbench.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "torch": None, "cuda": None,
           "snakemake": _version("snakemake"), "numpy": _version("numpy"),
           "anndata": _version("anndata")}
    if "torch" in sys.modules or _version("torch"):
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda  # None for a CPU build
    return out


def device(name: str = "auto") -> dict:
    """The device a run asked for and what it resolves to here."""
    import torch

    cuda = torch.cuda.is_available()
    used = "cuda" if name == "cuda" or (name == "auto" and cuda) else "cpu"
    out = {"requested": name, "used": used, "threads": torch.get_num_threads()}
    if used == "cuda" and cuda:
        out["name"] = torch.cuda.get_device_name(0)
    else:
        out["name"] = platform.processor() or platform.machine()
    return out


def record(config: dict | None = None, files: dict | None = None, seeds=None,
           device_name: str | None = None) -> dict:
    """The provenance block: software, git state, the device, the resolved ``config`` as
    given, sha256 of each of ``files`` (label -> path; a missing file reads None) and
    ``seeds``."""
    out = {"software": software(), "git": git_state()}
    if device_name is not None:
        out["device"] = device(device_name)
    if config is not None:
        out["config"] = config
    if files:
        out["sha256"] = {label: sha256_file(path) if path and os.path.exists(path) else None
                         for label, path in files.items()}
    if seeds is not None:
        out["seeds"] = [int(s) for s in seeds]
    return out
