"""Time the data ATE on a Replogle-sized matrix (118,641 cells x 1,187 genes, 723 labels).

Counts are gamma-Poisson (negative-binomial-like) with log-normal gene means, as highly
expressed genes give a fairly dense matrix. Prints one table row per input layout.
"""

from __future__ import annotations

import argparse
import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from samsbench.metrics import DEFAULT_CHUNK_ROWS, data_ate

N_CELLS, N_GENES, N_LABELS = 118_641, 1_187, 723
N_CONTROL = 10_000


def simulate_counts(n_cells: int, n_genes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gene_mean = rng.lognormal(mean=0.0, sigma=1.2, size=n_genes)
    cell_scale = rng.lognormal(mean=0.0, sigma=0.3, size=(n_cells, 1))
    dispersion = 2.0  # NB: Poisson with a gamma-distributed rate, variance mu + mu^2/2
    counts = np.empty((n_cells, n_genes), dtype=np.float32)
    step = 16_384  # bound the float64 temporaries
    for start in range(0, n_cells, step):
        stop = min(start + step, n_cells)
        mu = cell_scale[start:stop] * gene_mean
        rate = rng.gamma(shape=dispersion, scale=mu / dispersion)
        counts[start:stop] = rng.poisson(rate)
    return counts


def simulate_labels(n_cells: int, n_labels: int, n_control: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    names = np.array(["non-targeting"] + [f"GENE{i:04d}" for i in range(1, n_labels)])
    labels = np.concatenate([
        np.zeros(n_control, dtype=int),
        rng.integers(1, n_labels, size=n_cells - n_control),
    ])
    rng.shuffle(labels)
    return names[labels]


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=N_CELLS)
    parser.add_argument("--genes", type=int, default=N_GENES)
    parser.add_argument("--labels", type=int, default=N_LABELS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    counts = simulate_counts(args.cells, args.genes)
    labels = simulate_labels(args.cells, args.labels, min(N_CONTROL, args.cells // 10))
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(args.cells)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(args.genes)])
    layouts = {"dense float32": counts, "CSR float32": sp.csr_matrix(counts)}
    density = layouts["CSR float32"].nnz / counts.size
    print(f"simulated {args.cells} x {args.genes} counts, {args.labels} labels, "
          f"density {density:.2f}, in {time.perf_counter() - start:.1f} s")

    rows = []
    for name, X in layouts.items():
        adata = ad.AnnData(X=X, obs=obs, var=var)
        times = _time(lambda: data_ate(adata, chunk_rows=args.chunk_rows), args.repeats)
        rows.append({
            "step": "data_ate", "input": name, "cells": args.cells, "genes": args.genes,
            "labels": args.labels, "chunk_rows": args.chunk_rows,
            "best_s": round(min(times), 2), "median_s": round(float(np.median(times)), 2),
        })
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    main()
