"""Cell-level splits exactly as the reference, written as a TSV (cell_id, split).

``random``: 80/20 train+val/test, then 80/20 train/val, scikit-learn ``train_test_split``
with ``random_state=seed`` (Replogle; any dataset). ``ood``: Norman held-out combinations.
``data_efficiency``: Norman with a fraction of the combination training cells.
``heldout_perturbation`` (beyond the reference): whole perturbations unseen in training, for
screens of single perturbations. Cells that a split leaves out are labelled ``unused``.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from samsbench import io as sbio
from samsbench.data.contract import COMBINATION_SEP, DEFAULT_CONTROL, canonical, components

SPLIT_NAMES = ("train", "val", "test", "unused")
KINDS = ("random", "ood", "data_efficiency", "heldout_perturbation")


class SplitError(ValueError):
    pass


def random_split(n_cells: int, seed: int = 0) -> np.ndarray:
    """Reference Replogle split: labels for positions 0..n_cells-1."""
    if n_cells < 5:
        raise SplitError(f"a random split needs at least 5 cells, got {n_cells}")
    idx = np.arange(n_cells)
    trval, test = train_test_split(idx, train_size=0.8, random_state=seed)
    train, val = train_test_split(trval, train_size=0.8, random_state=seed)
    labels = np.full(n_cells, "unused", dtype=object)
    labels[train], labels[val], labels[test] = "train", "val", "test"
    return labels


def perturbed_components(label: str, control: str | None = None) -> list[str]:
    """The components of a label that are perturbations (a control component is none)."""
    return [p for p in components(label) if p != control]


def combination_groups(labels: np.ndarray, control: str | None = None):
    """Per cell: is it a combination (two or more perturbed components, counted, not found
    by the presence of '+'), and its combination in canonical order (``B+A`` -> ``A+B``)."""
    mapping = {}
    for label in pd.unique(labels):
        parts = perturbed_components(label, control)
        mapping[label] = (len(parts) > 1, canonical(parts) if parts else label)
    is_combo = np.array([mapping[lab][0] for lab in labels], dtype=bool)
    groups = np.array([mapping[lab][1] for lab in labels], dtype=object).astype(str)
    return is_combo, groups


def _combination_parts(labels: np.ndarray, seed: int, control: str | None = None):
    """The cell-level partition shared by ``ood`` and ``data_efficiency`` (done before any
    filtering by combination, so that growing the fraction only adds cells)."""
    is_combo, _ = combination_groups(labels, control)
    combo_idx = np.flatnonzero(is_combo)
    single_idx = np.flatnonzero(~is_combo)
    if len(combo_idx) < 5:
        raise SplitError(
            f"this split needs combination cells (labels joined by '{COMBINATION_SEP}'), "
            f"found {len(combo_idx)}"
        )
    trval, test = train_test_split(combo_idx, test_size=0.2, random_state=seed)
    train, val = train_test_split(trval, test_size=0.2, random_state=seed)
    s_train, s_val = train_test_split(single_idx, test_size=0.2, random_state=seed)
    return is_combo, train, val, test, s_train, s_val


def ood_split(
    perturbations, fraction: float, seed: int, test_fraction: float = 0.25,
    combination_ids=None, control: str | None = None,
) -> np.ndarray:
    """Norman OOD: the first int(f*n) shuffled combinations train, the last ceil(tf*n) test.

    ``combination_ids`` (optional, one per cell) names the combinations that are sorted,
    shuffled and held out; by default the labels themselves. The reference uses Norman's
    ``guide_identity`` strings, which sort differently from ``A+B`` labels (and can name one
    gene pair twice, once per guide order), so passing them reproduces its split exactly.
    """
    labels = np.asarray(perturbations, dtype=str)
    groups = (combination_groups(labels, control)[1] if combination_ids is None
              else np.asarray(combination_ids, dtype=str))
    if groups.shape != labels.shape:
        raise SplitError(
            f"combination_ids has {groups.shape[0]} entries for {labels.shape[0]} cells"
        )
    _check_fraction(fraction)
    is_combo, train, val, test, s_train, s_val = _combination_parts(labels, seed, control)
    combos = np.array(sorted(set(groups[is_combo])))
    np.random.default_rng(seed).shuffle(combos)
    n = len(combos)
    train_combos = set(combos[: int(fraction * n)])
    n_test = math.ceil(test_fraction * n)
    test_combos = set(combos[n - n_test :]) if n_test > 0 else set()
    out = np.full(len(labels), "unused", dtype=object)
    out[s_train], out[s_val] = "train", "val"
    out[train[np.isin(groups[train], list(train_combos))]] = "train"
    out[val[np.isin(groups[val], list(train_combos))]] = "val"
    out[test[np.isin(groups[test], list(test_combos))]] = "test"
    return out


def data_efficiency_split(perturbations, fraction: float, seed: int,
                          control: str | None = None) -> np.ndarray:
    """Norman data efficiency: keep the first int(f*n) combination training cells."""
    labels = np.asarray(perturbations, dtype=str)
    _check_fraction(fraction)
    _, train, val, test, s_train, s_val = _combination_parts(labels, seed, control)
    out = np.full(len(labels), "unused", dtype=object)
    out[s_train], out[s_val] = "train", "val"
    out[train[: int(fraction * len(train))]] = "train"
    out[val], out[test] = "val", "test"
    return out


def heldout_perturbation_split(perturbations, seed: int, test_fraction: float = 0.25,
                               control: str = DEFAULT_CONTROL) -> np.ndarray:
    """The last ceil(tf*n) of the sorted, shuffled non-control labels are test (all their
    cells); every other cell (controls included) goes 80/20 to train/val."""
    labels = np.asarray(perturbations, dtype=str)
    _check_fraction(test_fraction)
    perts = np.array(sorted(set(labels) - {control}))
    n_test = math.ceil(test_fraction * len(perts))
    if not 1 <= n_test < len(perts):
        raise SplitError(
            f"heldout_perturbation: test_fraction {test_fraction} holds out {n_test} of "
            f"{len(perts)} perturbations; at least one must be held out and one kept"
        )
    np.random.default_rng(seed).shuffle(perts)
    is_test = np.isin(labels, perts[len(perts) - n_test :])
    out = np.full(len(labels), "test", dtype=object)
    train, val = train_test_split(np.flatnonzero(~is_test), test_size=0.2, random_state=seed)
    out[train], out[val] = "train", "val"
    return out


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise SplitError(f"fraction must lie in [0, 1], got {fraction}")


def make_split(perturbations, kind: str, seed: int = 0, fraction: float = 1.0,
               test_fraction: float = 0.25, combination_ids=None,
               control: str | None = None) -> np.ndarray:
    """``control`` (optional): a component with this name is no perturbation, so
    ``KLF1+ctrl`` counts as a single perturbation (prepared files never hold such labels);
    ``heldout_perturbation`` never holds out the control (default ``non-targeting``)."""
    labels = np.asarray(perturbations, dtype=str)
    if kind == "random":
        return random_split(len(labels), seed)
    if kind == "ood":
        return ood_split(labels, fraction, seed, test_fraction, combination_ids, control)
    if kind == "data_efficiency":
        return data_efficiency_split(labels, fraction, seed, control)
    if kind == "heldout_perturbation":
        return heldout_perturbation_split(labels, seed, test_fraction,
                                          control or DEFAULT_CONTROL)
    raise SplitError(f"unknown split kind {kind!r}; expected one of {KINDS}")


def write_split(cell_ids, labels, path: str | os.PathLike) -> None:
    frame = pd.DataFrame({"cell_id": np.asarray(cell_ids, dtype=str), "split": labels})
    sbio.write_tsv(frame, path)


def read_split(path: str | os.PathLike, cell_ids=None) -> np.ndarray:
    """Split labels aligned to ``cell_ids`` (the dataset's obs_names) when given."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if list(frame.columns) != ["cell_id", "split"]:
        raise SplitError(f"{path}: expected columns cell_id, split; found {list(frame.columns)}")
    bad = sorted(set(frame["split"]) - set(SPLIT_NAMES))
    if bad:
        raise SplitError(f"{path}: unknown split labels {bad}; expected {SPLIT_NAMES}")
    if cell_ids is None:
        return frame["split"].to_numpy(dtype=object)
    series = frame.set_index("cell_id")["split"]
    if not series.index.is_unique:
        raise SplitError(f"{path}: duplicated cell ids")
    cell_ids = pd.Index(np.asarray(cell_ids, dtype=str))
    missing = cell_ids.difference(series.index)
    if len(missing):
        raise SplitError(
            f"{path}: {len(missing)} cells of the dataset are missing, e.g. {list(missing[:3])}"
        )
    return series.reindex(cell_ids).to_numpy(dtype=object)
