"""The AnnData contract that every step after "prepare" reads (see docs/architecture.md).

A prepared file has raw integer counts in X, a string ``obs["perturbation"]``, unique gene
symbols as var names and a control label in ``uns["control_label"]``; combinations join their
components with ``+``. ``validate`` names the first violated rule. A file may instead declare
real-valued X (``uns["value_kind"] = "continuous"``) and no control cells
(``uns["no_controls"] = True``); see the section on the continuous mode below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from samsbench import io as sbio
from samsbench.labels import (  # noqa: F401 (re-exported)
    COMBINATION_SEP,
    DEFAULT_CONTROL,
    PERTURBATION_KEY,
    components,
    control_label,
)

VALUE_KIND_KEY = "value_kind"
NO_CONTROLS_KEY = "no_controls"


class ContractError(ValueError):
    """A prepared dataset breaks the AnnData contract."""


# float32 (the training dtype) holds every integer up to 2**24 exactly; a count above it is
# no UMI count (a single cell has at most some 10**5 UMIs) and would train to garbage.
MAX_COUNT = 2**24
# Strings that a missing value turns into when labels pass through pandas, CSV or R.
MISSING_LABELS = frozenset({"", "nan", "none", "null", "na", "<na>"})


def canonical(parts) -> str:
    """The one spelling of a combination: components sorted, joined by ``+``."""
    return COMBINATION_SEP.join(sorted(parts))


def is_combination(label: str) -> bool:
    """Two or more components (a single perturbation and the control are not)."""
    return len(components(label)) > 1


def _check_label(label: str, control: str) -> None:
    parts = label.split(COMBINATION_SEP)
    if any(p.strip() == "" for p in parts) or any(p != p.strip() for p in parts):
        raise ContractError(
            f"malformed perturbation label {label!r}: a combination must join non-empty "
            f"names with '{COMBINATION_SEP}' (for example 'KLF1+MAP2K6')"
        )
    if label.strip().lower() in MISSING_LABELS:
        raise ContractError(
            f"perturbation label {label!r} looks like a missing value, not a perturbation; "
            "give those cells their perturbation (or the control label), or drop them"
        )
    if len(set(parts)) != len(parts):
        raise ContractError(f"malformed perturbation label {label!r}: a component is repeated")
    if control in parts:
        rest = [p for p in parts if p != control]
        raise ContractError(
            f"perturbation label {label!r} contains the control label {control!r} as a "
            f"component; relabel it {canonical(rest) if rest else control!r} (a component "
            "that is the control is no perturbation), or prepare the file with "
            "`source: h5ad`, which does this for you"
        )
    if len(parts) > 1 and label != canonical(parts):
        raise ContractError(
            f"perturbation label {label!r} is not in canonical order: write it "
            f"{canonical(parts)!r} (components sorted, so that A+B and B+A are one "
            "combination), or prepare the file with `source: h5ad`, which does this for you"
        )


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _cell_of(X, position: int, offset: int, n_vars: int) -> tuple[int, int]:
    """(row, column) of the ``position``-th stored value of X (its ``.data`` when sparse)."""
    position += offset
    if not sp.issparse(X):
        return divmod(position, n_vars)
    if X.format == "csr":
        row = int(np.searchsorted(X.indptr, position, side="right") - 1)
        return row, int(X.indices[position])
    if X.format == "csc":
        col = int(np.searchsorted(X.indptr, position, side="right") - 1)
        return int(X.indices[position]), col
    coo = X.tocoo()
    return int(coo.row[position]), int(coo.col[position])


def _check_counts(X, cell_ids=None, gene_names=None) -> None:
    if X is None:
        raise ContractError("X is absent; the contract needs raw counts in X")
    values = X.data if sp.issparse(X) else np.asarray(X)
    if values.size == 0:
        return
    if not np.issubdtype(values.dtype, np.number):
        raise ContractError(f"X must be numeric counts, found dtype {values.dtype}")
    n_vars = X.shape[1]

    def where(chunk_mask, start) -> str:
        row, col = _cell_of(X, _first_bad(chunk_mask), start, n_vars)
        cell = cell_ids[row] if cell_ids is not None else row
        gene = gene_names[col] if gene_names is not None else col
        return f"cell {cell!s} (row {row}), gene {gene!s}"

    # Chunked so that a large dense matrix is not copied whole; every comparison is made in
    # the stored dtype (uint64 and float64 compare exactly against MAX_COUNT), before any cast.
    flat = values.reshape(-1) if not sp.issparse(X) else values
    step = 1 << 24
    for start in range(0, flat.size, step):
        chunk = flat[start : start + step]
        if np.issubdtype(chunk.dtype, np.floating):
            bad = ~np.isfinite(chunk)
            if bad.any():
                value = chunk[_first_bad(bad)]
                raise ContractError(
                    f"X contains NaN or infinite values ({value} at {where(bad, start)}); "
                    "raw counts are required"
                )
        bad = chunk < 0
        if bad.any():
            value = chunk[_first_bad(bad)]
            raise ContractError(
                f"X contains negative values ({value} at {where(bad, start)}); "
                "raw counts must be >= 0"
            )
        bad = chunk > MAX_COUNT
        if bad.any():
            value = chunk[_first_bad(bad)]
            raise ContractError(
                f"X contains an implausible count {value} at {where(bad, start)}: counts "
                f"above 2**24 = {MAX_COUNT} are not raw UMI counts (float32 training would "
                "not hold them exactly); check that X holds raw counts, not a corrupted or "
                "rescaled matrix"
            )
        if not np.issubdtype(chunk.dtype, np.integer):
            bad = chunk != np.round(chunk)
            if bad.any():
                value = chunk[_first_bad(bad)]
                raise ContractError(
                    f"X contains non-integer values ({value} at {where(bad, start)}); the "
                    "contract needs raw UMI counts, not normalised or log-transformed expression"
                )


def holds_counts(X) -> bool:
    """Whether X meets the contract's count rules (present, numeric, integer, >= 0)."""
    try:
        _check_counts(X)
    except ContractError:
        return False
    return True


def validate(adata: ad.AnnData) -> ad.AnnData:
    """Raise ContractError naming the first violated rule; return adata unchanged otherwise."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ContractError(f"dataset is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
    if PERTURBATION_KEY not in adata.obs.columns:
        raise ContractError(
            f'obs has no "{PERTURBATION_KEY}" column (found: {list(adata.obs.columns)[:10]})'
        )
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()].unique()
        raise ContractError(
            f"cell ids (obs_names) are not unique: {len(dup)} repeated, e.g. {dup[:5].tolist()}; "
            "make them unique (adata.obs_names_make_unique())"
        )
    labels = adata.obs[PERTURBATION_KEY]
    if labels.isna().any():
        first = adata.obs_names[np.flatnonzero(labels.isna().to_numpy())[0]]
        raise ContractError(
            f'obs["{PERTURBATION_KEY}"] has {int(labels.isna().sum())} missing values '
            f"(first: cell {first})"
        )
    names = adata.var_names.astype(str)
    blank = np.flatnonzero(names.str.strip() == "")
    if len(blank):
        raise ContractError(f"gene name (var_names) at column {blank[0]} is empty "
                            f"({len(blank)} empty in all); give every gene a name")
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ContractError(f"gene names (var_names) are not unique, duplicated: {dup}")
    control = control_label(adata)
    unique = pd.unique(labels.astype(str))
    for label in unique:
        if label != control:
            _check_label(label, control)
    if control not in set(unique) and not declares_no_controls(adata):
        raise ContractError(
            f'no control cells: no cell has obs["{PERTURBATION_KEY}"] == {control!r} '
            '(set uns["control_label"] if the control has another name, or '
            f'uns["{NO_CONTROLS_KEY}"] = True if the dataset has none)'
        )
    if set(unique) == {control}:
        raise ContractError(
            f"every cell is a control ({control!r}): there is no perturbation to learn"
        )
    kind = value_kind(adata)
    if adata.X is None:
        layers = list(adata.layers.keys())
        hint = (f"; the file has layers {layers}: if one holds the raw counts, move it to X "
                f"(adata.X = adata.layers[{layers[0]!r}])" if layers else "")
        raise ContractError(f"X is absent; the contract needs raw counts in X{hint}")
    if kind == "continuous":
        _check_continuous(adata.X, adata.obs_names, adata.var_names)
    else:
        _check_counts(adata.X, adata.obs_names, adata.var_names)
    return adata


def normalise_labels(labels, control: str) -> tuple[np.ndarray, int]:
    """Labels with control components dropped and components sorted (``KLF1+ctrl`` ->
    ``KLF1``, ``ctrl+ctrl`` -> ``ctrl``, ``B+A`` -> ``A+B``); returns them and how many
    cells changed. Malformed labels (empty components) are left for ``validate`` to name."""
    labels = np.asarray(labels, dtype=object).astype(str)
    mapping = {}
    for label in pd.unique(labels):
        parts = components(label)
        if any(p.strip() == "" for p in parts):
            mapping[label] = label
            continue
        kept = sorted(p for p in parts if p != control)  # a repeat stays for validate
        mapping[label] = canonical(kept) if kept else control
    out = np.array([mapping[x] for x in labels], dtype=object)
    return out, int((out != labels).sum())


# -- continuous mode and datasets without controls -----------------------------------------
# ``uns["value_kind"] = "continuous"``: X holds real values (any sign, finite), not counts, as
# the reference's Gaussian simulator draws them. Only normal-likelihood models may train on
# such data (``require_model_fits``) and metrics defined on log-normalised counts are not
# computed. ``uns["no_controls"] = True``: the dataset has no control cells; allowed, and the
# metrics that need a control mean are skipped with a logged reason. Both are declared, never
# guessed: an undeclared file gets the count checks above.
VALUE_KINDS = ("counts", "continuous")
CONTINUOUS_LIKELIHOODS = ("normal", "normal_fixed_variance")


def value_kind(adata: ad.AnnData) -> str:
    kind = str(adata.uns.get(VALUE_KIND_KEY, "counts"))
    if kind not in VALUE_KINDS:
        raise ContractError(f'uns["{VALUE_KIND_KEY}"] is {kind!r}; expected one of {VALUE_KINDS}')
    return kind


def declares_no_controls(adata: ad.AnnData) -> bool:
    return bool(adata.uns.get(NO_CONTROLS_KEY, False))


def has_controls(adata: ad.AnnData) -> bool:
    labels = adata.obs[PERTURBATION_KEY].astype(str)
    return bool((labels == control_label(adata)).any())


def _check_continuous(X, cell_ids=None, gene_names=None) -> None:
    values = X.data if sp.issparse(X) else np.asarray(X)
    if values.size == 0:
        return
    if not np.issubdtype(values.dtype, np.number):
        raise ContractError(f"X must be numeric, found dtype {values.dtype}")
    bad = ~np.isfinite(values.reshape(-1) if not sp.issparse(X) else values)
    if bad.any():
        row, col = _cell_of(X, _first_bad(bad), 0, X.shape[1])
        cell = cell_ids[row] if cell_ids is not None else row
        gene = gene_names[col] if gene_names is not None else col
        raise ContractError(
            f"X contains NaN or infinite values (at cell {cell!s} (row {row}), gene {gene!s}; "
            f'uns["{VALUE_KIND_KEY}"] is "continuous": real values are allowed, but they '
            "must be finite)"
        )


def require_model_fits(kind: str, family: str, hp) -> None:
    """Continuous data admit only normal-likelihood models whose encoder does not take the log
    of its input: a clear error otherwise (a baseline without a likelihood is refused too).
    ``hp``: a family's typed hyperparameters or a plain mapping."""
    if kind != "continuous":
        return

    def setting(key, default=None):
        return hp.get(key, default) if isinstance(hp, Mapping) else getattr(hp, key, default)

    likelihood = setting("likelihood")
    if likelihood not in CONTINUOUS_LIKELIHOODS:
        raise ContractError(
            f'the dataset is continuous (uns["{VALUE_KIND_KEY}"] = "continuous") but model '
            f"family {family!r} uses likelihood {likelihood!r}; only {CONTINUOUS_LIKELIHOODS} "
            "can train on it (set `likelihood: normal`)"
        )
    if setting("encoder_input_normalization", "log_standardize") == "log_standardize":
        raise ContractError(
            f'the dataset is continuous (uns["{VALUE_KIND_KEY}"] = "continuous"): '
            "encoder_input_normalization 'log_standardize' takes the log of negative values; "
            "use 'standardize' or 'none'"
        )


def read(path: str | os.PathLike, check: bool = True) -> ad.AnnData:
    """Read a prepared h5ad and validate it (unless ``check`` is false); errors name the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ContractError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise ContractError(f"{path}: file is empty")
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a broken file
        raise ContractError(f"{path}: not a readable h5ad file ({exc})") from exc
    if not check:
        return adata
    try:
        validate(adata)
    except ContractError as exc:
        raise ContractError(f"{path}: {exc}") from None
    adata.obs[PERTURBATION_KEY] = adata.obs[PERTURBATION_KEY].astype(str)
    return adata


def write(adata: ad.AnnData, path: str | os.PathLike) -> None:
    """Validate, then write atomically (temporary file + rename)."""
    validate(adata)
    sbio.write_h5ad(adata, path)
