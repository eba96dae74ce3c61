"""The one place that writes files, and the one spelling of the run-directory layout.

Every output is written to a unique temporary file in the destination's folder, flushed to
disk (fsync) and renamed over the destination, so a killed job never leaves a half-written
file that Snakemake or a reader could take for a finished one. Tables use one float format.

The layout (``run_dir`` and friends) is read by the rule files through common.smk and by the
stages; nothing else spells ``runs/{model}/{split}/seed{seed}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

# Ten significant digits: enough to round-trip every metric the tests compare exactly, short
# enough to diff. Every TSV the package writes uses it.
FLOAT_FORMAT = "%.10g"

# ------------------------------------------------------------------------------ layout

RUN_DIR = "{results}/{experiment}/runs/{model}/{split}/seed{seed}"
# cell-eval's predicted.h5ad and real.h5ad of a run (rule export_cell_eval, on demand)
CELL_EVAL_DIR = "{results}/{experiment}/cell_eval/{model}/{split}/seed{seed}"
BENCHMARK_FILE = "{results}/{experiment}/benchmarks/{step}/{model}/{split}/seed{seed}.tsv"
# Files of a run directory, by role.
RUN_FILES = {
    "model": "model.pt",
    "history": "history.tsv",
    "summary": "summary.json",
    "latents": "perturbation_latents.h5ad",
    "predictions": "predictions.h5ad",
    "metrics": "metrics.tsv",
    "perturbation_metrics": "perturbation_metrics.tsv",
    "enrichment": "enrichment.tsv",
    "complex_recovery": "complex_recovery.tsv",
    "planted_programs": "planted_programs.tsv",
}


def run_dir(results: str, experiment: str, model: str, split: str, seed) -> str:
    """The directory of one run (``seed`` may be a wildcard pattern such as ``{seed}``)."""
    return RUN_DIR.format(results=results, experiment=experiment, model=model, split=split,
                          seed=seed)


def cell_eval_dir(results: str, experiment: str, model: str, split: str, seed) -> str:
    """Where a run's cell-eval export goes (``seed`` may be a wildcard pattern)."""
    return CELL_EVAL_DIR.format(results=results, experiment=experiment, model=model,
                                split=split, seed=seed)


def run_file(directory: str | os.PathLike, role: str) -> str:
    """A file of a run directory by its role (a key of ``RUN_FILES``)."""
    if role not in RUN_FILES:
        raise KeyError(f"no run file {role!r}; known: {sorted(RUN_FILES)}")
    return os.path.join(os.fspath(directory), RUN_FILES[role])


def benchmark_file(results: str, experiment: str, step: str, model: str, split: str,
                   seed) -> str:
    """Snakemake's benchmark TSV of one train or evaluate job."""
    return BENCHMARK_FILE.format(results=results, experiment=experiment, step=step,
                                 model=model, split=split, seed=seed)


def read_summary(run_dir: str | os.PathLike) -> dict | None:
    """A run's summary.json (written by the train step), or None when there is none."""
    path = run_file(run_dir, "summary")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks (downloads, provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ writing


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to ``path``; on success fsync it and rename it over
    ``path``, on error remove it. ``suffix`` keeps an extension that a writer insists on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are shared like any other file
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a power loss after it keeps the new file)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)


def write_tsv(frame, path: str | os.PathLike, index: bool = False) -> None:
    """A pandas frame as TSV in the package's float format."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=index, float_format=FLOAT_FORMAT)


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")


def write_h5ad(adata, path: str | os.PathLike) -> None:
    # anndata decides the format from the suffix, so the temporary file keeps '.h5ad'
    with atomic_path(path, suffix=".h5ad") as tmp:
        adata.write_h5ad(tmp)


def write_pt(obj, path: str | os.PathLike) -> None:
    import torch  # only the stages that save models need torch here

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_png(fig, path: str | os.PathLike, dpi: int = 120, tight: bool = True) -> None:
    """Save a matplotlib figure and close it (``tight``: crop to the drawn content)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    import shutil

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
