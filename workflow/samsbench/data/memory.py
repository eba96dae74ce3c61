"""Memory pre-flight for training and evaluation (light: h5py only, no torch).

Training holds X dense as float32 (``tensors.dense_float32``), whatever the file's storage:
a 5 %-dense sparse file grows about tenfold in memory. The estimate is

    cells x genes x 4 bytes  x OVERHEAD_FACTOR  + FIXED_OVERHEAD

with OVERHEAD_FACTOR = 2 (the matrix as read from the file, up to the same size again when
stored dense, beside its float32 copy) and FIXED_OVERHEAD = 1 GiB (Python, PyTorch, the model
and minibatch temporaries). It is read from the h5ad's shape without loading X, logged at the
start of training, checked against the memory this process may use, and sizes the Slurm
profiles' ``mem_mb`` of train and evaluate (workflow/rules/train.smk, evaluate.smk).
"""

from __future__ import annotations

import errno
import logging
import math
import os

log = logging.getLogger(__name__)

BYTES_PER_VALUE = 4  # float32
OVERHEAD_FACTOR = 2.0
FIXED_OVERHEAD = 1 << 30
MIN_MEM_MB = 4000  # what the Slurm profiles asked for before the estimate existed
SKIP_ENV = "SAMSBENCH_SKIP_MEMORY_CHECK"


class InsufficientMemoryError(MemoryError):
    """The dense expression matrix does not fit; the message names the estimate and the fix."""


def h5ad_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(cells, genes) of an h5ad file, read from its metadata (X is not loaded)."""
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):  # Snakemake re-evaluates a resource that raises this later
        raise FileNotFoundError(errno.ENOENT, "no such file", path)
    with h5py.File(path, "r") as f:
        if "X" not in f:
            raise ValueError(f"{path}: no X in the file")
        X = f["X"]
        if isinstance(X, h5py.Dataset):
            shape = X.shape
        else:  # sparse: a group with data/indices/indptr and its shape as an attribute
            shape = X.attrs.get("shape", X.attrs.get("h5sparse_shape"))
        if shape is None or len(shape) != 2:
            raise ValueError(f"{path}: cannot read the shape of X")
        return int(shape[0]), int(shape[1])


def dense_bytes(n_cells: int, n_genes: int) -> int:
    return int(n_cells) * int(n_genes) * BYTES_PER_VALUE


def estimate_bytes(n_cells: int, n_genes: int) -> int:
    """Peak memory of training or evaluation on a cells x genes dataset (module docstring)."""
    return int(dense_bytes(n_cells, n_genes) * OVERHEAD_FACTOR) + FIXED_OVERHEAD


def mem_mb(path: str | os.PathLike, attempt: int = 1) -> int:
    """Slurm ``mem_mb`` of a train or evaluate job on the dataset at ``path`` (grows with
    Snakemake's ``attempt``, so a retry after an out-of-memory kill asks for more)."""
    n_cells, n_genes = h5ad_shape(path)
    return max(MIN_MEM_MB, math.ceil(estimate_bytes(n_cells, n_genes) / 1e6)) * int(attempt)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes() -> int | None:
    """Memory this process can still take: the smaller of the system's MemAvailable and what
    is left under its cgroup's limit (Slurm confines jobs with one). None when unknown."""
    candidates = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/proc/self/cgroup") as fh:
            entries = [line.rstrip("\n").split(":", 2) for line in fh]
    except OSError:
        entries = []
    for _, controllers, rel in entries:
        if controllers == "":  # cgroup v2
            base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
            limit, used = _read_int(f"{base}/memory.max"), _read_int(f"{base}/memory.current")
        elif "memory" in controllers.split(","):  # cgroup v1
            base = os.path.join("/sys/fs/cgroup/memory", rel.lstrip("/"))
            limit = _read_int(f"{base}/memory.limit_in_bytes")
            used = _read_int(f"{base}/memory.usage_in_bytes")
        else:
            continue
        if limit is not None and used is not None and limit < 1 << 60:
            candidates.append(max(0, limit - used))
    return min(candidates) if candidates else None


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def explain(n_cells: int, n_genes: int, have: int | None, where: str = "memory") -> str:
    need = dense_bytes(n_cells, n_genes)
    have_text = f"only {_gb(have)} is available" if have is not None else "it does not fit"
    return (
        f"the dataset needs {_gb(need)} of {where} held dense ({n_cells} cells x {n_genes} "
        f"genes x 4 bytes), about {_gb(estimate_bytes(n_cells, n_genes))} in all with "
        f"overheads; {have_text}. Fix: give the job more memory (Slurm profiles size mem_mb "
        "from this estimate; by hand: snakemake --set-resources train:mem_mb=N "
        "evaluate:mem_mb=N), train on a GPU with more memory or on the CPU, or make the "
        "dataset smaller (fewer genes, e.g. the highly variable ones, or fewer cells). "
        f"Set {SKIP_ENV}=1 to skip this check."
    )


def preflight(n_cells: int, n_genes: int, device=None) -> int:
    """Log the estimate; raise InsufficientMemoryError when the dense matrix cannot fit in the
    memory left to this process (or on the GPU). Returns the estimate in bytes."""
    estimate = estimate_bytes(n_cells, n_genes)
    log.info("memory estimate: %s (%d cells x %d genes x 4 bytes held dense, x%g, + %s)",
             _gb(estimate), n_cells, n_genes, OVERHEAD_FACTOR, _gb(FIXED_OVERHEAD))
    if os.environ.get(SKIP_ENV):
        return estimate
    need = dense_bytes(n_cells, n_genes)
    have = available_bytes()
    if have is not None and need > have:
        raise InsufficientMemoryError(explain(n_cells, n_genes, have))
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        if need > free:
            raise InsufficientMemoryError(explain(n_cells, n_genes, free, "GPU memory"))
    return estimate
