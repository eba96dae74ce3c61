"""The AnnData contract: every malformed input gets an error naming the problem."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from samsbench.data import contract
from samsbench.data.contract import ContractError


def make(X=None, labels=None, genes=None, **uns):
    labels = ["non-targeting", "non-targeting", "KLF1", "KLF1+MAP2K6"] if labels is None else labels
    X = np.array([[1, 0, 3], [2, 2, 0], [0, 5, 1], [4, 0, 0]], dtype=np.float32) if X is None else X
    genes = ["A", "B", "C"] if genes is None else genes
    adata = ad.AnnData(X=X, obs=pd.DataFrame({"perturbation": labels},
                                             index=[f"c{i}" for i in range(len(labels))]),
                       var=pd.DataFrame(index=genes))
    adata.uns.update(uns)
    return adata


def test_valid_dense_and_sparse():
    contract.validate(make())
    a = make()
    a.X = sp.csr_matrix(a.X)
    contract.validate(a)


@pytest.mark.parametrize(
    "adata, message",
    [
        (lambda: make(X=np.array([[1, -1, 0], [0, 0, 0], [1, 1, 1], [0, 0, 1]], np.float32)), "negative"),
        (lambda: make(X=np.array([[1.5, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0, 1]], np.float32)), "non-integer"),
        (lambda: make(X=np.array([[np.nan, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0, 1]], np.float32)), "NaN"),
        (lambda: make(X=sp.csr_matrix(np.array([[0.5, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0, 1]], np.float32))), "non-integer"),
        (lambda: make(labels=["KLF1", "KLF1", "A", "B"]), "no control cells"),
        (lambda: make(genes=["A", "A", "C"]), "not unique"),
        (lambda: make(labels=["non-targeting", "KLF1", "A+", "B"]), "malformed perturbation label 'A\\+'"),
        (lambda: make(labels=["non-targeting", "KLF1", "+B", "B"]), "malformed"),
        (lambda: make(labels=["non-targeting", "KLF1", "A+A", "B"]), "repeated"),
        (lambda: make(labels=["ctrl", "ctrl", "A", "B"], control_label="non-targeting"), "no control cells"),
        (lambda: make()[:0], "empty"),
    ],
)
def test_malformed_inputs_are_named(adata, message):
    with pytest.raises(ContractError, match=message):
        contract.validate(adata())


def test_missing_perturbation_column():
    a = make()
    a.obs = a.obs.rename(columns={"perturbation": "guide"})
    with pytest.raises(ContractError, match='no "perturbation" column'):
        contract.validate(a)


def test_custom_control_label_is_accepted():
    contract.validate(make(labels=["ctrl", "ctrl", "A", "B"], control_label="ctrl"))


def test_read_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.h5ad"
    empty.write_bytes(b"")
    with pytest.raises(ContractError, match="empty.h5ad: file is empty"):
        contract.read(empty)
    junk = tmp_path / "junk.h5ad"
    junk.write_text("<html>not found</html>")
    with pytest.raises(ContractError, match="junk.h5ad: not a readable h5ad"):
        contract.read(junk)
    with pytest.raises(ContractError, match="no such file"):
        contract.read(tmp_path / "absent.h5ad")
    bad = make(X=np.array([[1, -1, 0], [0, 0, 0], [1, 1, 1], [0, 0, 1]], np.float32))
    bad.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(ContractError, match="bad.h5ad: X contains negative"):
        contract.read(tmp_path / "bad.h5ad")


def test_write_is_atomic_and_refuses_bad_data(tmp_path):
    path = tmp_path / "out.h5ad"
    contract.write(make(), path)
    before = path.read_bytes()
    with pytest.raises(ContractError):
        contract.write(make(genes=["A", "A", "C"]), path)
    assert path.read_bytes() == before  # the earlier file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]
