"""A prepared dataset and one split as tensors resident on the training device.

X is held once, dense float32 (raw counts). Dosages are stored as column indices per cell and
expanded to a dense ``D`` only for the cells of a minibatch. ``encoding`` chooses the columns:
``additive`` (one column per single perturbation; a combination sets each of its components)
or ``unique`` (each distinct label, combinations included, is its own column).
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch

from samsbench.data import memory
from samsbench.nn import log2_cp10k
from samsbench.data.contract import (MAX_COUNT, PERTURBATION_KEY, ContractError, components,
                                     control_label, value_kind)

log = logging.getLogger(__name__)
ENCODINGS = ("additive", "unique")


def dense_float32(X, chunk_rows: int = 8192) -> np.ndarray:
    """X as a C-contiguous float32 array, converting sparse input in row chunks.

    A count above ``MAX_COUNT`` is refused (the contract does so first, in the stored dtype;
    this guards data that did not pass through it): float32 rounding is monotone, so such a
    value stays above the bound after the cast, or becomes inf. A failed allocation becomes an
    ``InsufficientMemoryError`` naming the estimate and the fix."""
    try:
        if not sp.issparse(X):
            out = np.ascontiguousarray(np.asarray(X), dtype=np.float32)
        else:
            X = X.tocsr()
            out = np.empty(X.shape, dtype=np.float32)
            for start in range(0, X.shape[0], chunk_rows):
                out[start : start + chunk_rows] = X[start : start + chunk_rows].toarray()
    except MemoryError:
        raise memory.InsufficientMemoryError(
            memory.explain(X.shape[0], X.shape[1], memory.available_bytes())) from None
    for start in range(0, out.shape[0], chunk_rows):
        block = out[start : start + chunk_rows]
        if block.size and not block.max() <= MAX_COUNT:  # also catches NaN
            row, col = np.argwhere(~(block <= MAX_COUNT))[0]
            raise ContractError(
                f"X holds {block[row, col]} at row {start + row}, column {col}: counts above "
                f"2**24 = {MAX_COUNT} (or not finite) are not raw UMI counts"
            )
    return out


class Dosage:
    """Dosage rows of some cells, stored as column indices ``(n, C)`` padded with T.

    ``apply(A)`` computes ``D @ A`` for a per-perturbation tensor ``A`` of shape (..., T, K) by
    gathering rows (a cell has at most a few non-zero doses, so a dense product would waste
    n x T x K operations); ``dense`` builds D itself for families that read it directly.
    """

    def __init__(self, codes: torch.Tensor, n_columns: int):
        self.codes = codes
        self.n_columns = n_columns

    def __len__(self) -> int:
        return self.codes.shape[0]

    @property
    def dense(self) -> torch.Tensor:
        D = torch.zeros(self.codes.shape[0], self.n_columns + 1, device=self.codes.device)
        D.scatter_(1, self.codes, 1.0)
        return D[:, : self.n_columns]

    def apply(self, per_perturbation: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(per_perturbation, (0, 0, 0, 1))  # zero row for padding
        if self.codes.shape[1] == 1:
            return padded[..., self.codes[:, 0], :]
        return padded[..., self.codes, :].sum(-2)

    def present_columns(self) -> torch.Tensor:
        """The columns with a non-zero dose in some cell, sorted."""
        present = torch.unique(self.codes)
        return present[present < self.n_columns]

    def restrict(self, columns: torch.Tensor) -> "Dosage":
        """The same cells' dosages over only ``columns`` (which must hold every column these
        cells received): column ``columns[i]`` becomes column i."""
        position = torch.full((self.n_columns + 1,), len(columns), dtype=self.codes.dtype,
                              device=self.codes.device)
        position[columns] = torch.arange(len(columns), dtype=self.codes.dtype,
                                         device=self.codes.device)
        return Dosage(position[self.codes], len(columns))

    def charge(self, per_perturbation: torch.Tensor) -> torch.Tensor:
        """``D != 0`` applied to a (..., T) tensor: the sum over each cell's perturbations."""
        padded = torch.nn.functional.pad(per_perturbation, (0, 1))
        return padded[..., self.codes].sum(-1)


class PerturbationData:
    def __init__(self, adata: ad.AnnData, split: np.ndarray, encoding: str = "additive",
                 device: str | torch.device = "cpu"):
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
        self.device = torch.device(device)
        self.encoding = encoding
        self.control = control_label(adata)
        self.value_kind = value_kind(adata)  # "counts" or "continuous" (contract.py)
        self.labels = adata.obs[PERTURBATION_KEY].astype(str).to_numpy()
        self.genes = adata.var_names.astype(str).tolist()
        self.cell_ids = adata.obs_names.astype(str).to_numpy()
        self.split = np.asarray(split, dtype=object)
        if len(self.split) != len(self.labels):
            raise ValueError(f"split has {len(self.split)} labels for {len(self.labels)} cells")
        memory.preflight(adata.n_obs, adata.n_vars, self.device)
        self.X = torch.from_numpy(dense_float32(adata.X)).to(self.device)
        self.library = self.X.sum(1)
        self.columns = self._columns()
        self.codes = self.codes_for(self.labels)
        # Target gene(s) of each label: obs["gene"] where the dataset has it (Replogle guide
        # pairs target one gene), else the label itself (labels are gene symbols).
        genes = adata.obs["gene"].astype(str).to_numpy() if "gene" in adata.obs else self.labels
        first = dict(zip(self.labels[::-1], genes[::-1]))
        self.target_genes = [first.get(c, c) for c in self.columns]

    # -- dosage encoding ----------------------------------------------------------------
    def _columns(self) -> list[str]:
        labels = sorted(set(self.labels) - {self.control})
        if self.encoding == "unique":
            return labels
        return sorted({part for label in labels for part in components(label)})

    def codes_for(self, labels) -> torch.Tensor:
        """(n, C) column indices per label, padded with T (a column that is dropped)."""
        T = len(self.columns)
        index = {c: i for i, c in enumerate(self.columns)}
        width = 1 if self.encoding == "unique" else max(
            (len(components(lab)) for lab in set(labels) if lab != self.control), default=1
        )
        codes = np.full((len(labels), width), T, dtype=np.int64)
        for row, label in enumerate(labels):
            if label == self.control:
                continue
            parts = [label] if self.encoding == "unique" else components(label)
            for j, part in enumerate(parts):
                # A label without a column (e.g. a unique combination never seen) stays zero.
                codes[row, j] = index.get(part, T)
        return torch.from_numpy(codes).to(self.device)

    def dosage(self, codes: torch.Tensor) -> Dosage:
        return Dosage(codes, len(self.columns))

    def dosage_for_labels(self, labels) -> Dosage:
        return self.dosage(self.codes_for(labels))

    # -- splits --------------------------------------------------------------------------
    def split_index(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.flatnonzero(self.split == name)).to(self.device)

    def dose_counts(self, name: str) -> torch.Tensor:
        """N_t: cells of the split with a non-zero dose of each column."""
        codes = self.codes[self.split_index(name)]
        counts = torch.zeros(len(self.columns) + 1, device=self.device)
        counts.scatter_add_(0, codes.reshape(-1), torch.ones(codes.numel(), device=self.device))
        return counts[: len(self.columns)]

    def labels_in(self, name: str) -> list[str]:
        return sorted(set(self.labels[self.split == name]))

    def input_statistics(self, normalization: str, chunk_rows: int = 8192):
        """Per-gene mean and unbiased std on the training split (log1p'd when asked)."""
        idx = self.split_index("train")
        if len(idx) < 2:
            raise ValueError("the training split needs at least 2 cells")
        total = torch.zeros(self.X.shape[1], dtype=torch.float64, device=self.device)
        total_sq = torch.zeros_like(total)
        for start in range(0, len(idx), chunk_rows):
            x = self.X[idx[start : start + chunk_rows]].double()
            if normalization == "log_standardize":
                x = torch.log1p(x)
            total += x.sum(0)
            total_sq += (x * x).sum(0)
        n = len(idx)
        mean = total / n
        var = ((total_sq - n * mean * mean) / (n - 1)).clamp_min(0)
        return mean.float(), var.sqrt().float()

    def label_means(self, name: str | None = None, rows=None,
                    chunk_rows: int = 8192) -> dict[str, np.ndarray]:
        """Mean log2(CP10k+1) per label over the cells of a split (``name``) or of ``rows``
        (the baselines and the replicate), in float64 like the scorer
        (metrics.perturbation_means)."""
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        idx = np.flatnonzero(self.split == name) if rows is None else np.asarray(rows)
        for start in range(0, len(idx), chunk_rows):
            rows = idx[start : start + chunk_rows]
            x = self.X[torch.from_numpy(rows).to(self.device)].double()
            y = log2_cp10k(x).cpu().numpy()
            for label in np.unique(self.labels[rows]):
                sel = self.labels[rows] == label
                sums[label] = sums.get(label, 0) + y[sel].sum(0)
                counts[label] = counts.get(label, 0) + int(sel.sum())
        return {label: sums[label] / counts[label] for label in sums}

    def log_absent_perturbations(self) -> list[str]:
        """Perturbations with no training cell are allowed (held-out combinations); log them."""
        seen = set(self.labels[self.split == "train"])
        absent = sorted(set(self.labels) - seen - {self.control})
        if absent:
            log.info("%d perturbations have no training cells: %s", len(absent),
                     ", ".join(absent[:20]) + (" ..." if len(absent) > 20 else ""))
        return absent
