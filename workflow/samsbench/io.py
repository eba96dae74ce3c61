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
import re
import tempfile
from pathlib import Path

# Ten significant digits: enough to round-trip every metric the tests compare exactly, short
# enough to diff. Every TSV the package writes uses it.
FLOAT_FORMAT = "%.10g"

# ------------------------------------------------------------------------------ layout

RUN_DIR = "{results}/{experiment}/runs/{model}/{split}/seed{seed}"
# cell-eval's predicted.h5ad and real.h5ad of a run (rule export_cell_eval, on demand)
CELL_EVAL_DIR = "{results}/{experiment}/cell_eval/{model}/{split}/seed{seed}"
# A job's benchmark TSV, under an experiment's benchmark folder.
BENCHMARK_RUN = "{step}/{model}/{split}/seed{seed}.tsv"
BENCHMARK_FILE = "{results}/{experiment}/benchmarks/" + BENCHMARK_RUN
# Files of a run directory, by role.
RUN_FILES = {
    "model": "model.pt",
    "history": "history.tsv",
    "summary": "summary.json",
    "resume": "resume.pt",  # the training state at the last validation (inference.train)
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


def run_benchmark(benchmark_root: str | os.PathLike, step: str, run: dict) -> str:
    """A run's benchmark TSV of one step under an experiment's benchmarks folder."""
    return os.path.join(benchmark_root, BENCHMARK_RUN.format(
        step=step, model=run["model"], split=run["split"], seed=run["seed"]))


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


# The temporary files of atomic_path: ``.<name>.<pid>-<random>.tmp`` (plus a kept extension).
TEMP_PATTERNS = (".*.tmp", ".*.tmp.*")
_WRITER_PID = re.compile(r"\.(\d+)-[A-Za-z0-9_]+\.tmp(\.|$)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to ``path``; on success fsync it and rename it over
    ``path``, on error remove it. ``suffix`` keeps an extension that a writer insists on.
    The temporary name carries the writer's process id, so that ``remove_stale`` tells one
    left by a killed process from one being written (a lock on it would stop HDF5's own)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=f".tmp{suffix}",
                               dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        usual_permissions(tmp)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def usual_permissions(path: str | os.PathLike) -> None:
    """mkstemp creates files readable by the owner only; a finished file gets what the umask
    gives an ordinary new file, so that colleagues on a shared cluster can read it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _lock(fd: int, wait: bool = True) -> bool:
    """An exclusive flock on ``fd``; False when another process holds one (``wait`` False)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        return False
    return True


def _writer_alive(name: str) -> bool:
    """Whether the process named in a temporary file's name still runs (False: no pid)."""
    found = _WRITER_PID.search(name)
    if not found:
        return False
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or an odd name: leave it
    return True


def remove_stale(directory: str | os.PathLike, patterns=TEMP_PATTERNS) -> list[str]:
    """Remove the temporary files matching ``patterns`` (globs) in ``directory`` left by a
    killed writer: neither locked (a download holds its own locked) nor named after a running
    process (atomic_path). Returns the removed paths."""
    import glob

    removed = []
    folder = glob.escape(os.fspath(directory))
    for path in sorted({p for pattern in patterns
                        for p in glob.glob(os.path.join(folder, pattern))}):
        if _writer_alive(os.path.basename(path)):
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _lock(fd, wait=False):  # held by a running writer (or no locks here): kept
                os.remove(path)
                removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def folder_lock(directory: str | os.PathLike, what: str):
    """Hold an exclusive lock on ``directory`` (a ``.samsbench.lock`` file in it) for the
    block; a second process is refused at once with a ``RuntimeError`` naming ``what``."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(os.fspath(directory), ".samsbench.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _lock(fd, wait=False):
            raise RuntimeError(f"{directory} is in use by another {what} (it holds {path}); "
                               "wait for it to finish, or give another --out")
        yield
    finally:
        os.close(fd)


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
    """torch.save through a buffer: saved to a file, the zip's record names carry that file's
    (random temporary) name, and two identical checkpoints would differ in their bytes."""
    import io

    import torch  # only the stages that save models need torch here

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buffer.getbuffer())


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
