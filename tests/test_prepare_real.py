"""Preparing files shaped like the real downloads gives the expected contract files."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import fixtures_real as fr
from samsbench.data import contract, norman, replogle
from samsbench.stages import data as prepare


def _dense(X):
    return X.toarray() if sp.issparse(X) else np.asarray(X)


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory):
    return fr.write_replogle_raw(tmp_path_factory.mktemp("raw") / "K562_gwps_raw.h5ad")


@pytest.fixture(scope="module")
def expected(raw_file):
    """The notebook's filtering, done in memory by test code (independent of the package)."""
    return fr.reference_filter_replogle(ad.read_h5ad(raw_file))


@pytest.fixture(scope="module")
def prepared_b(raw_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "replogle.h5ad"
    replogle.prepare_from_raw(raw_file, out, chunk_rows=97)
    return contract.read(out)


def _strand_plus(sgid: str) -> str:
    return sgid.replace("+", "plus")


def test_raw_route_keeps_the_reference_cells_and_genes(raw_file, expected, prepared_b):
    raw = ad.read_h5ad(raw_file)
    out = prepared_b
    # Cells: same cells in file order, 2,000 controls out of 2,500.
    assert list(out.obs_names) == list(expected.obs_names)
    assert (out.obs["perturbation"] == "non-targeting").sum() == 2000
    assert (raw.obs["gene"] == "non-targeting").sum() == 2500
    # Every cell of a listed gene is kept, none of an unlisted one.
    for gene in fr.LISTED_TARGETS:
        assert (out.obs["gene"] == gene).sum() == (raw.obs["gene"] == gene).sum() > 0
    assert not out.obs["gene"].isin(fr.UNLISTED_TARGETS).any()
    # Genes: the program genes, the duplicated name on two columns, in file order.
    assert list(out.var["gene_name"]) == list(expected.var["gene_name"])
    assert list(out.var["gene_id"]) == list(expected.var_names)
    assert set(out.var["gene_name"]) <= fr.program_genes()
    assert not set(out.var["gene_name"]) & set(fr.UNLISTED_MEASURED)
    dup = out.var_names[out.var["gene_name"] == fr.DUPLICATED_PROGRAM_GENE]
    assert len(dup) == 2 and all(n.startswith("MYC_ENSG") for n in dup)
    assert out.var_names.is_unique and "MYC" not in out.var_names
    # Counts are the raw counts of those cells and genes.
    np.testing.assert_array_equal(_dense(out.X), _dense(expected.X))


def test_raw_route_labels_and_pathways(expected, prepared_b):
    out = prepared_b
    sgid = expected.obs["sgID_AB"].astype(str)
    is_control = sgid.str.contains("non-targeting")
    want = np.where(is_control, "non-targeting", [_strand_plus(s) for s in sgid])
    np.testing.assert_array_equal(out.obs["perturbation"].astype(str), want)
    assert any("_plus_" in label for label in want)  # the fixture has '+' strand guides
    assert not any("+" in label for label in out.obs["perturbation"].astype(str))
    np.testing.assert_array_equal(out.obs["sgID_AB"].astype(str), sgid)
    np.testing.assert_array_equal(out.obs["gene"].astype(str), expected.obs["gene"].astype(str))
    assert out.uns["control_label"] == "non-targeting"
    # Several targets have more than one guide pair: more treatments than genes.
    targeted = out.obs[~is_control.to_numpy()]
    assert targeted["perturbation"].nunique() > targeted["gene"].nunique()

    pathways = fr.pathway_genes()
    assert {k: list(v) for k, v in out.uns["pathway_genes"].items()} == pathways
    for name, genes in pathways.items():
        labels = sorted(set(targeted["perturbation"][targeted["gene"].isin(genes)].astype(str)))
        assert list(out.uns["pathways"][name]) == labels
    assert len(out.uns["pathways"]["EXOSOME"]) > 0  # EXOSC2 and DIS3 are in the fixture


def test_control_draw_is_the_legacy_global_seed_shuffle():
    positions = np.arange(0, 3 * 7531, 3)
    np.random.seed(0)
    shuffled = positions.copy()
    np.random.shuffle(shuffled)
    state_before = np.random.get_state()[1].copy()
    got = replogle.sample_controls(positions, 2000, 0)
    np.testing.assert_array_equal(got, np.sort(shuffled[:2000]))
    np.testing.assert_array_equal(np.random.get_state()[1], state_before)  # global untouched


@pytest.mark.parametrize("chunk_rows", [7, None, 100_000])
def test_raw_route_does_not_depend_on_block_size(raw_file, prepared_b, tmp_path, chunk_rows):
    out = replogle.prepare_from_raw(raw_file, tmp_path / "o.h5ad", chunk_rows=chunk_rows)
    assert list(out.obs_names) == list(prepared_b.obs_names)
    np.testing.assert_array_equal(_dense(out.X), _dense(prepared_b.X))


@pytest.mark.parametrize(
    "variant",
    [{"compression": "gzip"}, {"x_format": "csr"}, {"legacy_obs": True}],
    ids=["chunked-gzip-X", "csr-X", "anndata-0.7-obs"],
)
def test_raw_route_reads_other_layouts(prepared_b, tmp_path, variant):
    raw = fr.write_replogle_raw(tmp_path / "raw.h5ad", **variant)
    replogle.prepare_from_raw(raw, tmp_path / "o.h5ad", chunk_rows=211)
    out = contract.read(tmp_path / "o.h5ad")
    pd.testing.assert_frame_equal(out.obs, prepared_b.obs)
    pd.testing.assert_frame_equal(out.var, prepared_b.var)
    np.testing.assert_array_equal(_dense(out.X), _dense(prepared_b.X))


def test_raw_route_with_scattered_kept_cells(tmp_path):
    # Few kept cells per block: the reader fetches just those rows from the dense dataset.
    raw = fr.write_replogle_raw(tmp_path / "raw.h5ad", n_filler=20_000)
    expected = fr.reference_filter_replogle(ad.read_h5ad(raw))
    assert expected.n_obs * 4 < 22_000
    replogle.prepare_from_raw(raw, tmp_path / "o.h5ad", chunk_rows=1000)
    out = contract.read(tmp_path / "o.h5ad")
    assert list(out.obs_names) == list(expected.obs_names)
    np.testing.assert_array_equal(_dense(out.X), _dense(expected.X))


def test_prepared_and_raw_routes_agree(expected, prepared_b, tmp_path):
    # The authors' file: the filtered cells with every original column and dense X.
    authors = tmp_path / "replogle.h5ad"
    expected.write_h5ad(authors)
    replogle.prepare_from_prepared(authors, tmp_path / "a.h5ad")
    out_a = contract.read(tmp_path / "a.h5ad")
    pd.testing.assert_frame_equal(out_a.obs, prepared_b.obs)
    pd.testing.assert_frame_equal(out_a.var, prepared_b.var)
    np.testing.assert_array_equal(_dense(out_a.X), _dense(prepared_b.X))
    assert out_a.uns.keys() == prepared_b.uns.keys()
    for name in out_a.uns["pathways"]:
        assert list(out_a.uns["pathways"][name]) == list(prepared_b.uns["pathways"][name])


def test_fewer_controls_than_asked_keeps_all(tmp_path, caplog):
    raw = fr.write_replogle_raw(tmp_path / "raw.h5ad", n_controls=300)
    with caplog.at_level(logging.WARNING):
        out = replogle.prepare_from_raw(raw, tmp_path / "o.h5ad")
    assert (out.obs["perturbation"] == "non-targeting").sum() == 300
    assert "only 300 non-targeting cells" in caplog.text


def test_missing_sgid_column_is_a_clear_error(tmp_path):
    obs = pd.DataFrame({"gene": ["a"] * 3}, index=["c0", "c1", "c2"])
    adata = ad.AnnData(np.ones((3, 2), np.float32), obs=obs)
    adata.write_h5ad(tmp_path / "r.h5ad")
    with pytest.raises(contract.ContractError, match='obs\\["sgID_AB"\\]'):
        replogle.prepare_from_prepared(tmp_path / "r.h5ad", tmp_path / "o.h5ad")
    assert not (tmp_path / "o.h5ad").exists()


# ----------------------------------------------------------------------------- Norman


@pytest.fixture(scope="module")
def norman_file(tmp_path_factory):
    return fr.write_norman_scpert(tmp_path_factory.mktemp("norman") / "norman_scpert.h5ad")


def _labels_from_identity(identity: str) -> str:
    """Expected label from guide_identity alone: its non-control guides, sorted, '+'-joined."""
    guides = {g for g in identity.split("__")[0].split("_") if not g.startswith("NegCtrl")}
    return "+".join(sorted(guides)) or "non-targeting"


def test_norman_prepared(norman_file, tmp_path):
    source = ad.read_h5ad(norman_file)
    norman.prepare_norman(norman_file, tmp_path / "n.h5ad")
    out = contract.read(tmp_path / "n.h5ad")
    hv = source.var["highly_variable"].to_numpy()
    assert list(out.var_names) == list(source.var_names[hv])
    assert hv.sum() == 25 < source.n_vars
    np.testing.assert_array_equal(_dense(out.X), _dense(source.layers["counts"][:, hv]))
    want = [_labels_from_identity(i) for i in source.obs["guide_identity"]]
    np.testing.assert_array_equal(out.obs["perturbation"].astype(str), want)
    assert "KLF1+MAP2K6" in want and "MAP2K6+KLF1" not in want  # both guide orders merged
    np.testing.assert_array_equal(out.obs["guide_identity"], source.obs["guide_identity"])
    np.testing.assert_array_equal(
        out.obs["num_guides"], [0 if w == "non-targeting" else w.count("+") + 1 for w in want]
    )
    assert out.uns["control_label"] == "non-targeting"
    assert len(out.layers) == 0 and len(out.obsm) == 0
    labels = set(want)
    assert len([w for w in labels if "+" in w]) == len(fr.NORMAN_COMBOS)
    assert len([w for w in labels if "+" not in w and w != "non-targeting"]) == len(
        fr.NORMAN_GENES
    )


def test_norman_all_genes(norman_file, tmp_path):
    out = norman.prepare_norman(norman_file, tmp_path / "n.h5ad", highly_variable_only=False)
    source = ad.read_h5ad(norman_file)
    assert out.n_vars == source.n_vars
    np.testing.assert_array_equal(_dense(out.X), _dense(source.layers["counts"]))


def test_norman_bad_guide_column(tmp_path):
    path = fr.write_norman_scpert(tmp_path / "n.h5ad")
    adata = ad.read_h5ad(path)
    adata.obs["guide_KLF1"] = adata.obs["guide_KLF1"] * 3
    adata.write_h5ad(path)
    with pytest.raises(contract.ContractError, match="guide_KLF1"):
        norman.prepare_norman(path, tmp_path / "o.h5ad")


def test_norman_without_counts_layer(tmp_path):
    path = fr.write_norman_scpert(tmp_path / "n.h5ad")
    adata = ad.read_h5ad(path)
    del adata.layers["counts"]
    adata.write_h5ad(path)
    with pytest.raises(contract.ContractError, match="counts"):
        norman.prepare_norman(path, tmp_path / "o.h5ad")


# ----------------------------------------------------------------------------- dispatch


def test_required_inputs():
    assert prepare.required_inputs({"source": "simulate"}) == []
    assert prepare.required_inputs({"source": "replogle_prepared"}) == [
        "data/downloads/replogle.h5ad"
    ]
    assert prepare.required_inputs({"source": "replogle_raw"}) == [
        "data/downloads/K562_gwps_raw_singlecell_01.h5ad"
    ]
    assert prepare.required_inputs({"source": "norman"}) == ["data/downloads/norman_scpert.h5ad"]
    assert prepare.required_inputs({"source": "norman", "download": "norman.h5ad"}) == [
        "data/downloads/norman.h5ad"
    ]
    assert prepare.required_inputs({"source": "h5ad", "path": "my/data.h5ad"}) == ["my/data.h5ad"]
    with pytest.raises(ValueError, match="needs `path:`"):
        prepare.required_inputs({"source": "h5ad"})
    with pytest.raises(ValueError, match="unknown dataset source"):
        prepare.required_inputs({"source": "ftp"})


def test_prepare_dataset_dispatch(raw_file, norman_file, prepared_b, tmp_path):
    prepare.prepare({"source": "replogle_raw", "chunk_rows": 500}, [raw_file],
                            tmp_path / "r.h5ad")
    assert contract.read(tmp_path / "r.h5ad").n_obs == prepared_b.n_obs
    prepare.prepare({"source": "norman"}, [norman_file], tmp_path / "n.h5ad")
    assert "perturbation" in contract.read(tmp_path / "n.h5ad").obs
    # A user's own contract file is validated and copied byte for byte.
    prepare.prepare({"source": "h5ad", "path": "x"}, [tmp_path / "n.h5ad"],
                            tmp_path / "copy.h5ad")
    assert (tmp_path / "copy.h5ad").read_bytes() == (tmp_path / "n.h5ad").read_bytes()


def test_user_file_breaking_the_contract(tmp_path):
    bad = ad.AnnData(np.full((4, 3), 0.5, np.float32),
                     obs=pd.DataFrame({"perturbation": ["non-targeting", "A", "B", "A+B"]},
                                       index=["c0", "c1", "c2", "c3"]))
    bad.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(contract.ContractError, match="bad.h5ad.*non-integer"):
        prepare.prepare({"source": "h5ad", "path": "x"}, [tmp_path / "bad.h5ad"],
                                tmp_path / "out.h5ad")
    assert not (tmp_path / "out.h5ad").exists()


def test_prepare_simulate(tmp_path):
    pytest.importorskip("samsbench.data.simulate")
    prepare.prepare({"source": "simulate", "simulate": {"seed": 0}}, [],
                            tmp_path / "s.h5ad")
    contract.read(tmp_path / "s.h5ad")
