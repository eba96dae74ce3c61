"""McFaline-Figueroa cells of PerturBench's devel.h5ad: counts back from normalised values."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from samsbench.data import contract, mcfaline
from samsbench.stages.data import prepare


def _counts(n_cells=60, n_genes=40, seed=0):
    rng = np.random.default_rng(seed)
    keep = rng.random((n_cells, n_genes)) < 0.4
    counts = rng.negative_binomial(2, 0.6, size=(n_cells, n_genes)) * keep
    counts[:, :3] = 0  # genes zero in every cell, as 62 of the real 500
    counts[:, 3] = np.maximum(counts[:, 3], 1)
    counts[np.arange(n_cells), 4] = 1  # every cell has a count of 1 (true of the real cells)
    counts[0, 5] = 250  # a large count
    return counts.astype(np.int64)


def test_recovery_gives_the_counts_back_exactly():
    counts = _counts()
    # The full library (other genes) sets the scale; the kept genes are a subset of columns.
    full = np.hstack([counts, _counts(seed=1) * 3])
    normalised = mcfaline.normalise_like_perturbench(full)[:, : counts.shape[1]]
    recovered = mcfaline.recover_counts(normalised)
    assert recovered.dtype == np.int32
    np.testing.assert_array_equal(recovered.toarray(), counts)


def test_recovery_matches_scanpy_normalisation():
    sc = pytest.importorskip("scanpy")
    counts = _counts(seed=2)
    adata = ad.AnnData(sp.csr_matrix(counts.astype(np.float32)))
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    np.testing.assert_array_equal(mcfaline.recover_counts(adata.X).toarray(), counts)


def test_hand_computed_cell():
    # counts (1, 3, 0, 2) with a unit of 0.25: expm1(x) = (0.25, 0.75, 0, 0.5)
    x = np.log1p(np.array([[0.25, 0.75, 0.0, 0.5]], dtype=np.float32))
    np.testing.assert_array_equal(mcfaline.recover_counts(x).toarray(), [[1, 3, 0, 2]])


def test_values_that_are_no_multiples_are_an_error():
    x = np.log1p(np.array([[1.0, 1.37, 2.0]], dtype=np.float32))
    with pytest.raises(mcfaline.RecoveryError, match="cell 'c0'.*integer multiples"):
        mcfaline.recover_counts(x, obs_names=["c0"])


def _devel_like(path):
    """A devel.h5ad-shaped file: McFaline cells and other screens' cells, normalised X."""
    counts = _counts(n_cells=40)
    lines = np.repeat(["a172", "t98g", "u87mg", "k562"], 10)
    condition = np.tile(["control", "MAPK1", "SGK1", "control", "PLK4"], 8)
    dataset = np.where(lines == "k562", "norman19", "mcfaline23")
    obs = pd.DataFrame({"condition": condition, "cell_type": lines, "dataset": dataset,
                        "perturbation_type": "CRISPRi"},
                       index=[f"cell{i}" for i in range(40)]).astype("category")
    var = pd.DataFrame({"gene_symbol": [f"G{j}" for j in range(counts.shape[1])]},
                       index=[f"ENSG{j:05d}" for j in range(counts.shape[1])])
    ad.AnnData(mcfaline.normalise_like_perturbench(counts), obs=obs, var=var).write_h5ad(path)
    return counts


def test_prepare_selects_relabels_and_pins_the_counts(tmp_path):
    src = tmp_path / "devel.h5ad"
    counts = _devel_like(src)
    out = tmp_path / "prepared.h5ad"
    prepare({"source": "mcfaline"}, [str(src)], out)
    adata = contract.read(out)
    assert adata.n_obs == 30  # the K562 cells are left out
    np.testing.assert_array_equal(adata.X.toarray(), counts[:30])
    assert sorted(set(adata.obs["cell_line"])) == ["A172", "T98G", "U87MG"]
    assert set(adata.obs["perturbation"]) == {"non-targeting", "MAPK1", "SGK1", "PLK4"}
    assert list(adata.var_names[:2]) == ["G0", "G1"]
    sha = mcfaline.counts_sha256(adata)
    # The same sha from the h5ad route, and a wrong one stops with the file named.
    prepare({"source": "mcfaline", "counts_sha256": sha}, [str(src)], tmp_path / "b.h5ad")
    prepare({"source": "h5ad", "path": str(out), "counts_sha256": sha}, [str(out)],
                    tmp_path / "c.h5ad")
    with pytest.raises(contract.ContractError, match="sha256 is .* expected 0{64}"):
        prepare({"source": "h5ad", "path": str(out), "counts_sha256": "0" * 64},
                        [str(out)], tmp_path / "d.h5ad")


def test_counts_sha256_ignores_storage_and_order_but_not_values():
    counts = _counts(n_cells=6, n_genes=8)
    a = ad.AnnData(sp.csr_matrix(counts), obs=pd.DataFrame(index=list("uvwxyz")),
                   var=pd.DataFrame(index=list("abcdefgh")))
    b = a[::-1, ::-1].copy()
    b.X = np.asarray(b.X.toarray(), dtype=np.float32)
    assert mcfaline.counts_sha256(a) == mcfaline.counts_sha256(b)
    b.X[0, 0] += 1
    assert mcfaline.counts_sha256(a) != mcfaline.counts_sha256(b)
