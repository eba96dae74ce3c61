"""Peak memory of preparing Replogle's raw genome-wide file (route b) on files of two sizes.

Writes GWPS-shaped h5ad files (8,248 genes, dense float32 X stored in row chunks, Replogle's
obs/var columns) that differ only in the number of cells of genes outside the cluster list,
so the cells and genes kept are the same: a streaming preparation must use the same peak
memory on both. Each preparation runs in a fresh process that reports its own peak RSS.
The files are deleted afterwards.

    python bench/bench_replogle_raw.py [--sizes-gb 1 4] [--dir /scratch]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import fixtures_real as fr  # noqa: E402  (GWPS-shaped obs/var, shared with the tests)
from child import peak_rss_mb, run_child  # noqa: E402  (bench/ is the script's folder)

try:
    from anndata.io import write_elem
except ImportError:  # pragma: no cover - older anndata
    from anndata.experimental import write_elem

N_GENES = 8_248  # width of the real raw file
N_CONTROLS = 2_500  # 2,000 of them kept
CELLS_PER_GUIDE = 200  # ~3,200 kept cells of listed genes
CHUNK_ROWS = 64  # HDF5 chunk: 64 rows x 8,248 genes x 4 bytes = 2 MB
PATTERN_ROWS = 4_096  # counts are drawn once and tiled: generation is then disk bound


def write_gwps_like(path: Path, size_gb: float, cells_per_guide: int = CELLS_PER_GUIDE,
                    seed: int = 0) -> int:
    """An anndata-readable raw-file look-alike of about ``size_gb`` GB (more if the targeted
    cells need it); returns its number of cells."""
    n_rows = int(size_gb * 1e9 / (N_GENES * 4))
    base = fr.replogle_raw_obs(N_CONTROLS, cells_per_guide, seed, n_filler=0)
    n_filler = max(0, n_rows - len(base))
    obs = fr.replogle_raw_obs(N_CONTROLS, cells_per_guide, seed, n_filler=n_filler)
    n_program = 1_000
    n_other = N_GENES - n_program - 2 - len(fr.UNLISTED_MEASURED)
    var = fr.replogle_raw_var(n_program=n_program, seed=seed, n_filler=n_other)
    rng = np.random.default_rng(seed)
    gene_mean = rng.lognormal(-1.0, 1.2, size=N_GENES)
    pattern = rng.poisson(gene_mean, size=(PATTERN_ROWS, N_GENES)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        X = f.create_dataset(
            "X", shape=(len(obs), N_GENES), dtype=np.float32, chunks=(CHUNK_ROWS, N_GENES)
        )
        X.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        for start in range(0, len(obs), PATTERN_ROWS):
            stop = min(start + PATTERN_ROWS, len(obs))
            X[start:stop] = np.roll(pattern, start // PATTERN_ROWS, axis=1)[: stop - start]
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for group in ("layers", "obsm", "obsp", "varm", "varp", "uns"):
            write_elem(f, group, {})
    return len(obs)


def prepare(args: dict) -> dict:
    """One preparation of ``args["raw"]`` into ``args["out"]``, meant for a fresh process
    (``measure``): seconds, the cells and genes kept and the process's peak RSS."""
    from samsbench.data.replogle import prepare_from_raw

    start = time.perf_counter()
    adata = prepare_from_raw(args["raw"], args["out"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cells": adata.n_obs, "genes": adata.n_vars,
            "peak_rss_mb": peak_rss_mb()}


def measure(raw: Path, out: Path) -> dict:
    return run_child(prepare, {"raw": str(raw), "out": str(out)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--dir", default=None, help="folder for the generated files")
    parser.add_argument(
        "--cells-per-guide", type=int, default=CELLS_PER_GUIDE,
        help="cells per guide pair (15 pairs of listed genes); 7800 keeps about as many "
        "cells as the real file (118,641)",
    )
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_replogle_raw.", dir=args.dir) as tmp:
        for size in args.sizes_gb:
            raw = Path(tmp) / f"gwps_{size:g}gb.h5ad"
            start = time.perf_counter()
            n_cells = write_gwps_like(raw, size, args.cells_per_guide)
            written = time.perf_counter() - start
            result = measure(raw, Path(tmp) / "prepared.h5ad")
            rows.append((os.path.getsize(raw) / 1e9, n_cells, written, result))
            raw.unlink()

    print("Replogle route (b): raw GWPS-shaped file -> contract file, peak RSS of a fresh process")
    print(f"{'file GB':>8} {'cells':>9} {'genes':>6} {'kept cells':>10} {'kept genes':>10} "
          f"{'write s':>8} {'prepare s':>9} {'peak RSS MB':>11}")
    for size_gb, n_cells, written, r in rows:
        print(f"{size_gb:8.2f} {n_cells:9d} {N_GENES:6d} {r['cells']:10d} {r['genes']:10d} "
              f"{written:8.1f} {r['seconds']:9.1f} {r['peak_rss_mb']:11.0f}")
    peaks = [r["peak_rss_mb"] for *_, r in rows]
    growth = max(peaks) / min(peaks) if min(peaks) > 0 else float("nan")
    print(f"peak RSS ratio largest/smallest file: {growth:.2f} "
          f"(file size ratio {rows[-1][0] / rows[0][0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
