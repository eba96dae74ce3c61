"""The AnnData contract that every step after "prepare" reads (see DESIGN.md).

A prepared file has raw integer counts in X, a string ``obs["perturbation"]``, unique gene
symbols as var names and a control label in ``uns["control_label"]``; combinations join their
components with ``+``. ``validate`` names the first violated rule. A file may instead declare
real-valued X (``uns["value_kind"] = "continuous"``) and no control cells
(``uns["no_controls"] = True``); see the section on the continuous mode below.
"""

from __future__ import annotations

import os

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

PERTURBATION_KEY = "perturbation"
DEFAULT_CONTROL = "non-targeting"
COMBINATION_SEP = "+"
VALUE_KIND_KEY = "value_kind"
NO_CONTROLS_KEY = "no_controls"


class ContractError(ValueError):
    """A prepared dataset breaks the AnnData contract."""


def control_label(adata: ad.AnnData) -> str:
    return str(adata.uns.get("control_label", DEFAULT_CONTROL))


def components(label: str) -> list[str]:
    """Split a perturbation label into its single perturbations (``A+B`` -> ``[A, B]``)."""
    return label.split(COMBINATION_SEP)


def _check_label(label: str) -> None:
    parts = label.split(COMBINATION_SEP)
    if any(p.strip() == "" for p in parts) or any(p != p.strip() for p in parts):
        raise ContractError(
            f"malformed perturbation label {label!r}: a combination must join non-empty "
            f"names with '{COMBINATION_SEP}' (for example 'KLF1+MAP2K6')"
        )
    if len(set(parts)) != len(parts):
        raise ContractError(f"malformed perturbation label {label!r}: a component is repeated")


def _check_counts(X) -> None:
    values = X.data if sp.issparse(X) else np.asarray(X)
    if values.size == 0:
        return
    if not np.issubdtype(values.dtype, np.number):
        raise ContractError(f"X must be numeric counts, found dtype {values.dtype}")
    # Chunked over rows so that a large dense matrix is not copied whole.
    flat = values.reshape(-1) if not sp.issparse(X) else values
    step = 1 << 24
    for start in range(0, flat.size, step):
        chunk = flat[start : start + step]
        if not np.all(np.isfinite(chunk)):
            raise ContractError("X contains NaN or infinite values; raw counts are required")
        if np.any(chunk < 0):
            raise ContractError("X contains negative values; raw counts must be >= 0")
        if not np.issubdtype(chunk.dtype, np.integer) and np.any(chunk != np.round(chunk)):
            raise ContractError(
                "X contains non-integer values; the contract needs raw UMI counts, "
                "not normalised or log-transformed expression"
            )


def validate(adata: ad.AnnData) -> ad.AnnData:
    """Raise ContractError naming the first violated rule; return adata unchanged otherwise."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ContractError(f"dataset is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
    if PERTURBATION_KEY not in adata.obs.columns:
        raise ContractError(
            f'obs has no "{PERTURBATION_KEY}" column (found: {list(adata.obs.columns)[:10]})'
        )
    labels = adata.obs[PERTURBATION_KEY]
    if labels.isna().any():
        raise ContractError(f'obs["{PERTURBATION_KEY}"] has missing values')
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ContractError(f"gene names (var_names) are not unique, duplicated: {dup}")
    control = control_label(adata)
    unique = pd.unique(labels.astype(str))
    for label in unique:
        if label != control:
            _check_label(label)
    if control not in set(unique) and not declares_no_controls(adata):
        raise ContractError(
            f'no control cells: no cell has obs["{PERTURBATION_KEY}"] == {control!r} '
            '(set uns["control_label"] if the control has another name)'
        )
    if value_kind(adata) == "continuous":
        _check_continuous(adata.X)
    else:
        _check_counts(adata.X)
    return adata


# -- continuous mode and datasets without controls -----------------------------------------
# ``uns["value_kind"] = "continuous"``: X holds real values (any sign, finite), not counts, as
# the reference's Gaussian simulator draws them. Only normal-likelihood models may train on
# such data (``require_model_fits``) and metrics defined on log-normalised counts are not
# computed. ``uns["no_controls"] = True``: the dataset has no control cells; allowed, and the
# metrics that need a control mean are skipped with a logged reason.
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


def _check_continuous(X) -> None:
    values = X.data if sp.issparse(X) else np.asarray(X)
    if values.size and not np.issubdtype(values.dtype, np.number):
        raise ContractError(f"X must be numeric, found dtype {values.dtype}")
    if values.size and not np.all(np.isfinite(values)):
        raise ContractError(f'X contains NaN or infinite values (uns["{VALUE_KIND_KEY}"] is '
                            '"continuous": real values are allowed, but they must be finite)')


def require_model_fits(kind: str, family: str, hp: dict) -> None:
    """Continuous data admit only normal-likelihood models whose encoder does not take the log
    of its input: a clear error otherwise (a baseline without a likelihood is refused too)."""
    if kind != "continuous":
        return
    likelihood = hp.get("likelihood")
    if likelihood not in CONTINUOUS_LIKELIHOODS:
        raise ContractError(
            f'the dataset is continuous (uns["{VALUE_KIND_KEY}"] = "continuous") but model '
            f"family {family!r} uses likelihood {likelihood!r}; only {CONTINUOUS_LIKELIHOODS} "
            "can train on it (set `likelihood: normal`)"
        )
    if hp.get("encoder_input_normalization", "log_standardize") == "log_standardize":
        raise ContractError(
            f'the dataset is continuous (uns["{VALUE_KIND_KEY}"] = "continuous"): '
            "encoder_input_normalization 'log_standardize' takes the log of negative values; "
            "use 'standardize' or 'none'"
        )


def read(path: str | os.PathLike) -> ad.AnnData:
    """Read a prepared h5ad and validate it; errors name the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ContractError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise ContractError(f"{path}: file is empty")
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a broken file
        raise ContractError(f"{path}: not a readable h5ad file ({exc})") from exc
    try:
        validate(adata)
    except ContractError as exc:
        raise ContractError(f"{path}: {exc}") from None
    adata.obs[PERTURBATION_KEY] = adata.obs[PERTURBATION_KEY].astype(str)
    return adata


def write(adata: ad.AnnData, path: str | os.PathLike) -> None:
    """Validate, then write atomically (temporary file + rename)."""
    validate(adata)
    write_h5ad_atomic(adata, path)


def write_h5ad_atomic(adata: ad.AnnData, path: str | os.PathLike) -> None:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.h5ad"
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
