"""Reading row ranges of an h5ad file with h5py, for preparing files too large for memory.

anndata's on-disk layout is read directly, so a block of rows (and its obs values) costs memory
in proportion to the block, never to the file. Both layouts of obs columns seen in published
files are understood: anndata >= 0.8 (categoricals as groups with ``codes`` and ``categories``)
and anndata 0.7 (codes datasets whose ``categories`` attribute refers to ``__categories``).
"""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

try:  # anndata >= 0.11
    from anndata.io import read_elem
except ImportError:  # pragma: no cover - older anndata
    from anndata.experimental import read_elem

log = logging.getLogger(__name__)

__all__ = ["Frame", "RowMatrix", "read_elem", "rows_per_chunk", "unique_names"]


def _attr(obj, key, default=None):
    value = obj.attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else value


def _read_all(dataset: h5py.Dataset) -> np.ndarray:
    if h5py.check_string_dtype(dataset.dtype) is not None:
        return np.asarray(dataset.asstr()[()], dtype=object)
    return dataset[()]


def _read_slice(dataset: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    if h5py.check_string_dtype(dataset.dtype) is not None:
        return np.asarray(dataset.asstr()[start:stop], dtype=object)
    return dataset[start:stop]


class _Column:
    """One dataframe column, readable by row range."""

    def __init__(self, group: h5py.Group, name: str):
        elem = group[name]
        self.name = name
        self.codes = self.values = self.mask = self.categories = None
        if isinstance(elem, h5py.Group):
            encoding = _attr(elem, "encoding-type")
            if encoding == "categorical":
                self.codes, self.categories = elem["codes"], _read_all(elem["categories"])
            elif encoding in ("nullable-integer", "nullable-boolean", "nullable-string-array"):
                self.values, self.mask = elem["values"], elem["mask"]
            else:
                raise ValueError(f"obs/var column {name!r} has an unknown encoding {encoding!r}")
        elif isinstance(elem.attrs.get("categories"), h5py.Reference):  # anndata 0.7
            self.codes = elem
            self.categories = _read_all(elem.file[elem.attrs["categories"]])
        else:
            self.values = elem

    @property
    def is_categorical(self) -> bool:
        return self.codes is not None

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.codes is not None:
            codes = self.codes[start:stop].astype(np.int64)
            out = np.asarray(self.categories, dtype=object)[np.maximum(codes, 0)]
            out[codes < 0] = None
            return out
        values = _read_slice(self.values, start, stop)
        if self.mask is not None:
            missing = self.mask[start:stop].astype(bool)
            if missing.any():
                values = values.astype(object)
                values[missing] = None
        return values


class Frame:
    """An on-disk obs/var dataframe whose rows are read by range."""

    def __init__(self, group: h5py.Group):
        if not isinstance(group, h5py.Group) or _attr(group, "encoding-type") != "dataframe":
            raise ValueError(
                f"{group.name} is not an anndata dataframe (written by anndata older than 0.7?)"
            )
        self.group = group
        self.index = group[_attr(group, "_index", "_index")]
        self.n_rows = self.index.shape[0]
        order = group.attrs.get("column-order", [])
        self.names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(order)]
        self._columns: dict[str, _Column] = {}

    def column_reader(self, name: str) -> _Column:
        if name not in self.names:
            raise KeyError(f"{self.group.name} has no column {name!r} (found: {self.names})")
        if name not in self._columns:
            self._columns[name] = _Column(self.group, name)
        return self._columns[name]

    def column(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.column_reader(name).read(start, stop)

    def rows(self, start: int, stop: int, local: np.ndarray | None = None) -> pd.DataFrame:
        """All columns of rows ``start + local`` (all rows of the range when local is None)."""
        pick = slice(None) if local is None else local
        index = np.asarray(_read_slice(self.index, start, stop)[pick], dtype=str)
        data = {name: self.column(name, start, stop)[pick] for name in self.names}
        return pd.DataFrame(data, index=pd.Index(index))

    def finish(self, parts: list[pd.DataFrame]) -> pd.DataFrame:
        """Concatenate row blocks; categorical or string columns become categoricals."""
        if parts:
            frame = pd.concat(parts)
        else:
            frame = pd.DataFrame({name: [] for name in self.names}, index=pd.Index([], dtype=str))
        for name in self.names:
            if self.column_reader(name).is_categorical or frame[name].dtype == object:
                frame[name] = pd.Categorical(frame[name].to_numpy())
        return frame


def rows_per_chunk(n_cols: int, target_bytes: int = 64 << 20, itemsize: int = 4) -> int:
    return max(1, target_bytes // max(1, n_cols * itemsize))


class RowMatrix:
    """A dense dataset or a CSR group, read as CSR blocks of selected rows and columns."""

    def __init__(self, elem):
        self.elem = elem
        if isinstance(elem, h5py.Dataset):
            self.format = "dense"
            self.shape = tuple(elem.shape)
            # A chunked dataset is best read in whole chunks of rows.
            self.row_granule = elem.chunks[0] if elem.chunks else 1
            return
        encoding = _attr(elem, "encoding-type") or f"{_attr(elem, 'h5sparse_format', '')}_matrix"
        shape = elem.attrs.get("shape", elem.attrs.get("h5sparse_shape"))
        if encoding not in ("csr_matrix", "csc_matrix") or shape is None:
            raise ValueError(f"{elem.name}: not a dense or sparse anndata matrix ({encoding!r})")
        self.format = encoding[:3]
        self.shape = tuple(int(s) for s in shape)
        self.row_granule = 1
        self._csc_cache = None

    def default_chunk_rows(self) -> int:
        rows = rows_per_chunk(self.shape[1])
        return -(-rows // self.row_granule) * self.row_granule

    def read(self, start: int, stop: int, rows=None, cols=None) -> sp.csr_matrix:
        """Rows ``rows`` (absolute, sorted, in [start, stop); all when None), columns ``cols``."""
        local = None if rows is None else np.asarray(rows, dtype=np.int64) - start
        if self.format == "dense":
            block = self._dense_rows(start, stop, rows, local)
        elif self.format == "csr":
            block = self._csr_rows(start, stop)
            block = block if local is None else block[local]
        else:
            block = self._csc_rows(start, stop)
            block = block if local is None else block[local]
        if cols is not None:
            block = block[:, cols]
        return sp.csr_matrix(block, dtype=np.float32)

    def _dense_rows(self, start, stop, rows, local):
        n = stop - start
        if local is None:
            return self.elem[start:stop]
        if len(local) == 0:
            return np.zeros((0, self.shape[1]), dtype=self.elem.dtype)
        # Few scattered rows: let HDF5 read just those; many, or a chunked dataset: read the
        # block once and pick rows in memory (a chunk is decompressed whole anyway).
        if self.elem.chunks is None and len(local) * 4 < n:
            return self.elem[np.asarray(rows)]
        return self.elem[start:stop][local]

    def _csr_rows(self, start, stop):
        ptr = self.elem["indptr"][start : stop + 1].astype(np.int64)
        lo, hi = int(ptr[0]), int(ptr[-1])
        data = self.elem["data"][lo:hi]
        indices = self.elem["indices"][lo:hi]
        return sp.csr_matrix((data, indices, ptr - lo), shape=(stop - start, self.shape[1]))

    def _csc_rows(self, start, stop):
        if self._csc_cache is None:
            log.warning("%s is stored by column (CSC); reading it whole", self.elem.name)
            self._csc_cache = sp.csr_matrix(read_elem(self.elem))
        return self._csc_cache[start:stop]


def unique_names(symbols, ids) -> list[str]:
    """Gene symbols made unique deterministically: every member of a duplicated symbol gets
    ``_<id>`` appended (its original var index, for example the Ensembl id); if that is still
    not unique, ``-<k>`` numbers the k-th occurrence."""
    symbols = pd.Index(np.asarray(symbols, dtype=str))
    ids = np.asarray(ids, dtype=str)
    duplicated = symbols.duplicated(keep=False)
    names = [f"{s}_{i}" if dup and i != s else s for s, i, dup in zip(symbols, ids, duplicated)]
    seen: dict[str, int] = {}
    counts = pd.Index(names).value_counts()
    out = []
    for name in names:
        if counts[name] > 1:
            seen[name] = seen.get(name, 0) + 1
            name = f"{name}-{seen[name]}"
        out.append(name)
    if not pd.Index(out).is_unique:  # e.g. "A-1" existed already: give up loudly
        raise ValueError("could not make gene names unique; rename the duplicates in var")
    return out
