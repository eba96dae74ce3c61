"""Mask enrichment and complex recovery (samsbench.enrichment, samsbench.stages.enrich): GMT parsing, ORA, negative control,
complex recovery, one run end to end and the figures. Fast: synthetic masks, real KEGG/GO sets
from the blitzgsea package, no training."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from samsbench import io as sbio
from samsbench.enrichment import gene_sets, ora, recovery
from samsbench.enrichment.gene_sets import GeneSetError
from samsbench.stages import enrich as stage

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"gene_sets": ["KEGG_2021_Human"], "threshold": 0.5, "min_set_size": 3,
            "recovery_library": "programs", "heatmap_library": "auto", "alpha": 0.05,
            "models": None}


def _write_gmt(sets, path):
    sbio.write_text(gene_sets.format_gmt(sets), path)


@pytest.fixture(scope="module")
def kegg():
    return stage.load_gene_sets("KEGG_2021_Human")


@pytest.fixture(scope="module")
def go():
    return stage.load_gene_sets("GO_Biological_Process_2023")


# ---------------------------------------------------------------------------------- GMT parsing


def test_gmt_enrichr_blank_description_duplicates_empty_sets(tmp_path, caplog):
    gmt = tmp_path / "lib.gmt"
    gmt.write_text(
        "SET_A\t\tG1\tG2\tG2\tG3\t\n"  # Enrichr: blank description, trailing tab, a duplicate
        "SET_B\thttp://example.org/b\tG4\tG5\n"  # MSigDB-style description
        "\n"  # a blank line carries nothing
        "EMPTY\t\t\t\n"  # an empty set is dropped with a note
        "SET_A\t\tG9\n"  # the same name again is merged
    )
    with caplog.at_level(logging.INFO, logger="samsbench.enrichment.gene_sets"):
        sets = stage.read_gene_set_file(gmt)
    assert sets == {"SET_A": {"G1", "G2", "G3", "G9"}, "SET_B": {"G4", "G5"}}
    assert "EMPTY" in caplog.text and "duplicate" in caplog.text


def test_gmt_malformed_line_names_file_and_line(tmp_path):
    gmt = tmp_path / "bad.gmt"
    gmt.write_text("SET_A\t\tG1\tG2\nSET_B G3 G4 G5\n")  # spaces instead of tabs
    with pytest.raises(GeneSetError, match=r"bad\.gmt:2: malformed GMT line"):
        stage.read_gene_set_file(gmt)
    gmt.write_text("\t\tG1\n")
    with pytest.raises(GeneSetError, match=r"bad\.gmt:1: .*empty gene-set name"):
        stage.read_gene_set_file(gmt)
    gmt.write_text("EMPTY\t\t\n")
    with pytest.raises(GeneSetError, match="no non-empty gene sets"):
        stage.read_gene_set_file(gmt)
    gmt.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(GeneSetError, match="not a UTF-8"):
        stage.read_gene_set_file(gmt)


def test_gmt_inside_zip(tmp_path):
    # Reactome ships its GMT zipped
    path = tmp_path / "ReactomePathways.gmt.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ReactomePathways.gmt", "Pathway X\tR-HSA-1\tA\tB\tC\n")
    assert stage.load_gene_sets(str(path)) == {"Pathway X": {"A", "B", "C"}}
    assert gene_sets.library_name(str(path)) == "ReactomePathways"


def test_unknown_library_is_a_clear_error(tmp_path):
    with pytest.raises(
        GeneSetError, match=r"unknown gene-set library 'KEGG_1999'.*known: .*KEGG_2021_Human"
    ):
        stage.load_gene_sets("KEGG_1999", {})
    with pytest.raises(GeneSetError, match="unknown source 'ftp'"):
        stage.load_gene_sets("mine", {"mine": {"source": "ftp"}})
    with pytest.raises(GeneSetError, match="has no gene-set library 'Nope'"):
        stage.load_gene_sets(
            "x", {"x": {"source": "package", "package": "blitzgsea", "library": "Nope"}}
        )


def test_package_libraries_and_dataset_sources(kegg, go, tmp_path):
    assert len(kegg) > 300 and "Proteasome" in kegg and "PSMA1" in kegg["Proteasome"]
    assert len(go) > 5000
    # config entries extend the built-in table; a 'path' source reads a local GMT
    own = tmp_path / "own.gmt"
    _write_gmt({"S": ["A", "B"]}, own)
    assert stage.load_gene_sets("own", {"own": {"source": "path", "path": str(own)}}) == {
        "S": {"A", "B"}
    }
    data = ad.AnnData(np.zeros((1, 1)))
    with pytest.raises(GeneSetError, match=r"no uns\['pathways'\]"):
        stage.load_gene_sets("pathways", None, data)
    with pytest.raises(GeneSetError, match="needs the dataset"):
        stage.load_gene_sets("programs", None, None)
    data.uns["pathways"] = {"EXOSOME": ["EXOSC2", "EXOSC3"]}
    data.uns["simulation"] = {
        "programs": {"P": ["KLF1", "GATA1"]},
        "program_library": "KEGG_2021_Human",
    }
    assert stage.load_gene_sets("pathways", None, data) == {"EXOSOME": {"EXOSC2", "EXOSC3"}}
    assert stage.load_gene_sets("programs", None, data) == {"P": {"KLF1", "GATA1"}}
    assert gene_sets.simulation_programs(data) == ("KEGG_2021_Human", {"P": ["KLF1", "GATA1"]})
    # a dataset without pathways becomes an empty library in the workflow, not a failure
    out = tmp_path / "pathways.gmt"
    assert stage.materialise("pathways", None, ad.AnnData(np.zeros((1, 1))), out) == 0
    assert stage.read_library(out) == {}
    # the report's table of sources: name, origin, version, licence, size
    kegg_gmt = tmp_path / "KEGG_2021_Human.gmt"
    stage.materialise("KEGG_2021_Human", None, None, kegg_gmt)
    table = stage.sources([kegg_gmt, out], None, tmp_path / "sources.tsv").set_index("library")
    assert table.loc["KEGG_2021_Human", "n_sets"] == len(kegg)
    assert "academic" in table.loc["KEGG_2021_Human", "licence"]
    assert table.loc["pathways", "n_sets"] == 0


def test_url_source_downloads_once(tmp_path, monkeypatch):
    import samsbench.data.download as dl

    calls = []

    def fake_download(urls, out, sha256=None, checksums_tsv=None, **kw):
        calls.append((list(urls), str(out), sha256, checksums_tsv))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("COMPLEX_1\t\tA\tB\n")
        return out

    monkeypatch.setattr(dl, "download", fake_download)
    entry = {
        "source": "url",
        "urls": ["https://example.org/x.gmt"],
        "path": str(tmp_path / "x.gmt"),
    }
    manifest = str(tmp_path / "checksums.tsv")
    for _ in range(2):  # present and unverifiable the second time: not fetched again
        sets = stage.load_gene_sets("X", {"X": entry}, checksums_tsv=manifest)
        assert sets == {"COMPLEX_1": {"A", "B"}}
    assert calls == [(["https://example.org/x.gmt"], str(tmp_path / "x.gmt"), None, manifest)]
    # a known checksum always goes through download(), which verifies it
    stage.load_gene_sets("X", {"X": {**entry, "sha256": "ab" * 32}}, checksums_tsv=manifest)
    assert len(calls) == 2 and calls[-1][2] == "ab" * 32


def test_corum_table(tmp_path):
    path = tmp_path / "corum_humanComplexes.txt"
    path.write_text(
        "ComplexID\tComplexName\tOrganism\tsubunits(Gene name)\n"
        "1\tBRCA1-A complex\tHuman\tBRCA1;UIMC1;BRE\n"
        "2\tMouse thing\tMouse\tAbc1;Abc2\n"
    )
    assert stage.load_gene_sets(str(path)) == {"BRCA1-A complex": {"BRCA1", "UIMC1", "BRE"}}


# ---------------------------------------------------------------------------------- ORA


def _planted(kegg, n_programs=8, n_dims=16, n_noise=120, seed=1):
    """Targets drawn from real KEGG sets; dim k < n_programs is active on set k's targets."""
    rng = np.random.default_rng(seed)
    names = sorted(n for n, g in kegg.items() if 20 <= len(g) <= 60)
    chosen = [str(n) for n in rng.choice(names, n_programs, replace=False)]
    genes = set()
    for name in chosen:
        genes |= set(rng.choice(sorted(kegg[name]), 8, replace=False))
    universe = sorted(set().union(*kegg.values()))
    genes = sorted(genes | set(rng.choice(universe, n_noise, replace=False)))
    row = {g: i for i, g in enumerate(genes)}
    mask = rng.random((len(genes), n_dims)) * 0.3
    for k, name in enumerate(chosen):
        mask[[row[g] for g in kegg[name] if g in row], k] = 0.95
    extra = np.arange(n_programs, n_dims)  # the rest: sparse random activity
    mask[:, extra] = np.where(rng.random((len(genes), len(extra))) < 0.08, 0.9, 0.1)
    frame = pd.DataFrame(mask, index=genes, columns=[f"z{k}" for k in range(n_dims)])
    targets = pd.Series([[g] for g in genes], index=genes)
    return frame, targets, chosen


def test_ora_recovers_a_real_kegg_set_as_top_hit(kegg):
    mask, targets, chosen = _planted(kegg)
    table = ora.enrich_masks(mask, targets, {"KEGG_2021_Human": kegg})
    assert list(table.columns) == [
        c for c in stage.ENRICHMENT_COLUMNS if c not in ("model", "split", "seed")
    ]
    top = ora.top_hits(table).set_index("latent_dim")
    for k, name in enumerate(chosen):
        assert top.loc[f"z{k}", "term"] == name
        assert top.loc[f"z{k}", "fdr"] < 0.05
        # every member in the background is active: overlap == set size within the background
        assert top.loc[f"z{k}", "overlap"] == top.loc[f"z{k}", "set_size"]
    # the background is the perturbed targets: set sizes never exceed it
    assert (table["set_size"] <= table["background_size"]).all()


def test_ora_negative_control_permuted_masks(kegg, go):
    """Masks permuted across perturbations: per library, FDR < 0.05 in at most 5% of dims."""
    mask, targets, _ = _planted(kegg)
    for lib, sets in {"KEGG_2021_Human": kegg, "GO_Biological_Process_2023": go}.items():
        hit, total = 0.0, 0
        for seed in range(5):
            perm = np.random.default_rng(200 + seed).permutation(len(mask))
            shuffled = pd.DataFrame(mask.to_numpy()[perm], index=mask.index, columns=mask.columns)
            table = ora.enrich_masks(shuffled, targets, {lib: sets})
            hit += ora.fraction_dims_enriched(table, mask.shape[1]) * mask.shape[1]
            total += mask.shape[1]
        assert hit / total <= 0.05, (lib, hit / total)


def test_ora_bh_family_includes_sets_without_overlap():
    sets = {f"S{i}": {f"G{i}a", f"G{i}b", f"G{i}c"} for i in range(10)}
    background = sorted(set().union(*sets.values()))
    res = ora.ora(["G0a", "G0b", "G0c"], sets, background)
    assert list(res["term"]) == ["S0"]
    # one test with p = 1/C(30,3) among 10 offered sets: BH multiplies by 10
    assert res["fdr"].iloc[0] == pytest.approx(10 * res["pvalue"].iloc[0])
    assert len(ora.ora([], sets, background)) == 0


def test_restrict_library_and_case():
    sets = {"A": {"c9orf72", "X1", "X2", "OUT"}, "B": {"X1", "X2"}}
    out = ora.restrict_library(sets, ["C9ORF72", "X1", "X2"], min_set_size=3)
    assert out == {"A": {"C9ORF72", "X1", "X2"}}  # upper-cased, cut to background, B too small


# ---------------------------------------------------------------------------------- recovery


def _blocks(n_sets=5, per_set=6, n_other=6, n_dims=16, seed=0, planted=True):
    rng = np.random.default_rng(seed)
    genes = [f"G{s}_{i}" for s in range(n_sets) for i in range(per_set)] + [
        f"U{i}" for i in range(n_other)
    ]
    sets = {f"SET{s}": {f"G{s}_{i}" for i in range(per_set)} for s in range(n_sets)}
    mask = np.where(rng.random((len(genes), n_dims)) < 0.05, 0.9, 0.05)
    if planted:
        for s in range(n_sets):
            mask[s * per_set : (s + 1) * per_set, 2 * s : 2 * s + 2] = 0.95
    emb = rng.normal(0, 1, (len(genes), n_dims))
    if planted:
        for s in range(n_sets):
            emb[s * per_set : (s + 1) * per_set] = (
                rng.normal(0, 1, n_dims) + 0.2 * emb[s * per_set : (s + 1) * per_set]
            )
    effect = (mask * emb) @ rng.normal(0, 1, (n_dims, 50)) + 0.1 * rng.normal(size=(len(genes), 50))
    return genes, sets, mask, emb, effect


KINDS = {"mask_jaccard": "mask", "embedding_cosine": "emb", "effect_pearson": "effect",
         "embedding_abs_cosine": "emb", "effect_abs_pearson": "effect"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_complex_recovery_planted_blocks_and_random(kind):
    genes, sets, mask, emb, effect = _blocks()
    values = {"mask": mask, "emb": mask * emb, "effect": effect}[KINDS[kind]]
    score = recovery.recovery_scores(values, genes, sets, kind)
    assert score["auroc"] > 0.95 and score["average_precision"] > 0.8
    assert score["n_perturbations"] == 30  # unannotated U* are left out
    assert score["n_pairs"] == 30 * 29 // 2 and score["n_positive_pairs"] == 5 * 15
    aurocs = []
    for seed in range(5):
        genes, sets, mask, emb, effect = _blocks(seed=seed, planted=False)
        values = {"mask": mask, "emb": mask * emb, "effect": effect}[KINDS[kind]]
        aurocs.append(recovery.recovery_scores(values, genes, sets, kind)["auroc"])
    assert abs(np.mean(aurocs) - 0.5) < 0.08


def test_signed_similarity_is_capped_at_0_55_and_the_sign_free_one_is_not():
    """The old default run's artefact, rebuilt: 4 programs of 6 targets on their own latent
    dimension, each target with a random sign. Within a program split (6, 0) there are 15
    same-sign pairs; split (3, 3), 6 same-sign and 9 opposite-sign pairs. With splits
    (6,0), (3,3), (3,3), (3,3): 33 of the 60 positive pairs have the same sign, rank above
    every negative (similarity 0) and the 27 others rank below: AUROC 33/60 = 0.55."""
    rng = np.random.default_rng(0)
    genes, sets, rows = [], {}, []
    for p, n_plus in enumerate((6, 3, 3, 3)):
        members = [f"P{p}_{i}" for i in range(6)]
        sets[f"SET{p}"] = set(members)
        for i, gene in enumerate(members):
            row = np.zeros(10)
            sign = 1.0 if i < n_plus else -1.0
            row[p] = sign * rng.uniform(0.5, 4.0)  # magnitudes differ; the sign is the point
            genes.append(gene)
            rows.append(row)
    shift = np.array(rows)
    signed = recovery.recovery_scores(shift, genes, sets, "embedding_cosine")
    assert signed["n_positive_pairs"] == 60 and signed["auroc"] == pytest.approx(0.55)
    assert recovery.recovery_scores(shift, genes, sets, "embedding_abs_cosine")["auroc"] == 1.0
    # the same through a linear map to 40 "genes": Pearson is capped, |Pearson| is not
    effect = shift @ rng.normal(0, 1, (10, 40))
    assert recovery.recovery_scores(effect, genes, sets, "effect_pearson")["auroc"] < 0.6
    assert recovery.recovery_scores(effect, genes, sets, "effect_abs_pearson")["auroc"] > 0.9
    # mask Jaccard is sign-free already
    mask = (shift != 0).astype(float)
    assert recovery.recovery_scores(mask, genes, sets, "mask_jaccard")["auroc"] == 1.0


def test_complex_recovery_edge_cases():
    genes = ["A", "A", "B", "C"]  # two guides of A: their pair is skipped
    sets = {"S": {"A", "B"}, "T": {"C", "D"}}
    zero = np.zeros((4, 5))  # the control_mean baseline: no effect at all -> chance
    score = recovery.recovery_scores(zero, genes, sets, "effect_pearson")
    assert score["n_pairs"] == 5 and score["n_positive_pairs"] == 2 and score["auroc"] == 0.5
    one = recovery.recovery_scores(zero[:1], genes[:1], sets, "effect_pearson")
    assert np.isnan(one["auroc"])
    with pytest.raises(ValueError, match="unknown similarity"):
        recovery.similarity_matrix(zero, "euclid")


def _default_simulation():
    """The default benchmark's dataset (config.yaml's ``datasets.simulated``)."""
    from samsbench import config
    from samsbench.data.simulate import simulate

    cfg = config.load(str(ROOT / "config.yaml"))
    return simulate(**cfg["datasets"]["simulated"]["simulate"])


def test_true_mask_of_the_simulator_recovers_every_program(kegg):
    """Exact half of the acceptance (issue 22): the default benchmark's ground truth through
    the same enrichment code, as an oracle model's masks, recovers 4 of 4 programs, each at
    FDR < 0.05. What a trained model reaches is a rate over seeds
    (test_default_benchmark_program_recovery_rate)."""
    from samsbench.data.simulate import simulate

    data = _default_simulation()
    sim = data.uns["simulation"]
    labels = [str(x) for x in sim["perturbations"]]
    truth = np.asarray(sim["true_mask"], dtype=float)
    mask = pd.DataFrame(truth, index=labels, columns=[f"z{k}" for k in range(truth.shape[1])])
    targets = pd.Series([[lab] for lab in labels], index=labels)
    library, programs = gene_sets.simulation_programs(data)
    table = ora.enrich_masks(mask, targets, {library: kegg})
    found = recovery.planted_program_recovery(table, mask, programs, library)
    assert set(found["program"]) == set(programs) and found["recovered"].all(), found
    assert len(programs) == 4 and (found["program_fdr"] < 0.05).all()
    rate = recovery.program_recovery_rate(found.assign(model="oracle", split="s", seed=0))
    assert list(rate["n_recovered"]) == [1] * 4 and (rate["rate"] == 1.0).all()
    pathways = stage.load_gene_sets("pathways", None, data)
    # Programs share dimensions (issue 13), so even the true masks do not separate every
    # pair: the oracle's Jaccard AUROC is 0.943 (the ceiling); clean programs give 1.
    oracle = recovery.recovery_scores(truth, labels, pathways, "mask_jaccard")["auroc"]
    assert 0.85 < oracle < 0.99
    clean = simulate(seed=0, magnitude_sd=0, share_prob=0, shift_noise=0).uns["simulation"]
    assert recovery.recovery_scores(np.asarray(clean["true_mask"]), labels, pathways,
                                  "mask_jaccard")["auroc"] == 1.0


def test_program_recovery_rate_by_hand(tmp_path):
    # program P on two dims in seed 0 (one recovered, one not: not recovered, FDR the larger),
    # recovered in seeds 1 and 2; program Q recovered in seed 2 only
    rows = [("m", "s", 0, "P", True, 0.01), ("m", "s", 0, "P", False, 0.2),
            ("m", "s", 1, "P", True, 0.03), ("m", "s", 2, "P", True, 0.001),
            ("m", "s", 0, "Q", False, 0.5), ("m", "s", 1, "Q", False, 1.0),
            ("m", "s", 2, "Q", True, 0.04)]
    planted = pd.DataFrame(rows, columns=["model", "split", "seed", "program", "recovered",
                                          "program_fdr"])
    rate = recovery.program_recovery_rate(planted).set_index("program")
    assert list(rate.columns) == recovery.PROGRAM_RATE_COLUMNS[:2] + recovery.PROGRAM_RATE_COLUMNS[3:]
    assert (rate.loc["P", "n_seeds"], rate.loc["P", "n_recovered"]) == (3, 2)
    assert rate.loc["P", "rate"] == pytest.approx(2 / 3)
    assert rate.loc["P", "fdrs"] == "0.2, 0.03, 0.001" and rate.loc["P", "seeds"] == "0, 1, 2"
    assert rate.loc["P", "median_fdr"] == pytest.approx(0.03)
    assert (rate.loc["Q", "n_recovered"], rate.loc["Q", "median_fdr"]) == (1, 0.5)
    assert recovery.program_recovery_rate(planted.iloc[0:0]).empty
    # the workflow's step: table and figure, also from an empty merged table
    path = tmp_path / "planted.tsv"
    planted.to_csv(path, sep="\t", index=False)
    out = stage.program_rate(path, tmp_path / "rate.tsv", tmp_path / "rate.png")
    assert len(out) == 2 and (tmp_path / "rate.png").stat().st_size > 1000
    path.write_text("")
    assert stage.program_rate(path, tmp_path / "rate.tsv", tmp_path / "empty.png").empty
    assert (tmp_path / "empty.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------- one run


def _write_run(run_dir, genes, mask=None, emb=None, effect=None, family="sams_vae"):
    run_dir.mkdir(parents=True)
    n_latent = 0 if mask is None else mask.shape[1]
    latents = ad.AnnData(
        np.zeros((len(genes), n_latent), dtype=np.float32),
        obs=pd.DataFrame({"target_genes": genes}, index=genes),
        var=pd.DataFrame(index=[f"z{k}" for k in range(n_latent)]),
    )
    if mask is not None:
        latents.layers["mask_prob"] = mask.astype(np.float32)
        latents.layers["embedding_mean"] = emb.astype(np.float32)
    latents.write_h5ad(run_dir / "perturbation_latents.h5ad")
    labels = ["non-targeting", *genes, f"{genes[0]}+{genes[1]}"]
    X = np.vstack([np.zeros((1, effect.shape[1])), effect, effect[0] + effect[1]]) + 5.0
    pred = ad.AnnData(X, obs=pd.DataFrame({"perturbation": labels}, index=labels))
    pred.uns["control_label"] = "non-targeting"
    pred.write_h5ad(run_dir / "predictions.h5ad")
    model = run_dir.parts[-3]
    (run_dir / "summary.json").write_text(
        json.dumps({"model": model, "family": family, "split": "random", "seed": 0})
    )


def test_run_tables_merge_and_figures(kegg, tmp_path):
    mask, targets, chosen = _planted(kegg, n_programs=4, n_dims=8, n_noise=40)
    genes = list(mask.index)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=mask.shape)
    effect = (mask.to_numpy() * emb) @ rng.normal(size=(mask.shape[1], 30))
    sams = tmp_path / "runs" / "sams_vae" / "random" / "seed0"
    base = tmp_path / "runs" / "control_mean" / "random" / "seed0"
    _write_run(sams, genes, mask.to_numpy(), emb, effect)
    _write_run(base, genes, effect=np.zeros_like(effect), family="control_mean")

    programs = {name: sorted(g for g in kegg[name] if g in set(genes)) for name in chosen}
    dataset = ad.AnnData(np.zeros((1, 1)))
    dataset.uns["simulation"] = {"programs": programs, "program_library": "KEGG_2021_Human"}
    libraries = {"KEGG_2021_Human": kegg, "programs": {k: set(v) for k, v in programs.items()}}
    out = stage.run_tables(sams, libraries, SETTINGS, dataset, stage.read_identity(sams))
    assert list(out["enrichment"].columns) == stage.ENRICHMENT_COLUMNS
    assert set(out["enrichment"]["model"]) == {"sams_vae"}
    rec = out["complex_recovery"].set_index("similarity")
    assert list(out["complex_recovery"].columns) == stage.RECOVERY_COLUMNS
    assert set(rec.index) == {"mask_jaccard", "embedding_abs_cosine", "effect_abs_pearson"}
    assert rec.loc["mask_jaccard", "auroc"] > 0.95
    planted = out["planted_programs"]
    assert set(planted["program"]) == set(chosen) and planted["recovered"].all()

    base_out = stage.run_tables(base, libraries, SETTINGS, dataset, stage.read_identity(base))
    assert len(base_out["enrichment"]) == 0  # no masks: no enrichment, but still a recovery row
    assert list(base_out["complex_recovery"]["similarity"]) == ["effect_abs_pearson"]
    assert base_out["complex_recovery"]["auroc"].iloc[0] == 0.5

    # an empty recovery library list is an error naming the candidates
    with pytest.raises(GeneSetError, match="no non-empty library"):
        stage.run_tables(sams, {**libraries, "programs": {}}, SETTINGS, dataset,
                         stage.read_identity(sams))

    # merge across runs (the workflow's enrich_merge), then the figures
    paths = {}
    for name, tables in (("sams", out), ("base", base_out)):
        paths[name] = {k: tmp_path / name / f"{k}.tsv" for k in stage.TABLES}
        stage.write_tables(tables, paths[name])
    merged_paths = {k: tmp_path / f"merged_{k}.tsv" for k in stage.TABLES}
    stage.merge({k: [paths["sams"][k], paths["base"][k]] for k in stage.TABLES}, merged_paths)
    merged = pd.read_csv(merged_paths["complex_recovery"], sep="\t")
    assert len(merged) == 4 and list(merged.columns) == stage.RECOVERY_COLUMNS
    # the workflow's one job per experiment (run_experiment) writes the same tables
    gmts = []
    for name, sets in libraries.items():
        gmts.append(tmp_path / "gmt" / f"{name}.gmt")
        gmts[-1].parent.mkdir(exist_ok=True)
        gmts[-1].write_text("".join(f"{term}\t\t" + "\t".join(sorted(genes)) + "\n"
                                    for term, genes in sets.items()))
    together = {k: tmp_path / f"together_{k}.tsv" for k in stage.TABLES}
    stage.run_experiment([sams, base], [stage.read_identity(sams), stage.read_identity(base)],
                         gmts, SETTINGS, dataset, together)
    for key in stage.TABLES:
        assert together[key].read_text() == merged_paths[key].read_text(), key
    from samsbench.plots import enrichment as pe

    figures = {
        "heat": pe.mask_heatmaps([("sams_vae", mask, targets)], programs, "programs"),
        "dots": pe.top_terms_dotplot(out["enrichment"], "KEGG_2021_Human"),
        "rec": pe.complex_recovery_plot(
            pd.concat([out["complex_recovery"], base_out["complex_recovery"]])),
        "none": pe.top_terms_dotplot(out["enrichment"].iloc[0:0]),
    }
    for name, fig in figures.items():
        sbio.write_png(fig, tmp_path / "fig" / f"{name}.png")
        assert (tmp_path / "fig" / f"{name}.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------- default run

# The training seeds of the model-skill acceptance: one seed's result is a coin flip.
SKILL_SEEDS = (0, 1, 2)


@pytest.mark.slow
def test_default_benchmark_program_recovery_rate(kegg, tmp_path):
    """Model-skill half of the acceptance (issues 6, 13, 22): ``sams_vae_aligned`` with the
    default config's data, split and hyperparameters, trained here on seeds 0, 1, 2 (one
    thread, as the workflow's train rule). The exact half (the true masks recover 4 of 4
    programs) is test_true_mask_of_the_simulator_recovers_every_program.

    Measured with exactly this code (issue 22's default simulation; one thread), programs
    recovered of 4 per training seed 0 / 1 / 2 / 3: 1 / 2 / 1 / 1 on the native kernels and
    1 / 2 / 2 / 1 with ``ATEN_CPU_CAPABILITY=default`` (Histidine in every run, IL-17 in 3 of
    8, Glyoxylate and Porphyrin in none, at FDR 0.16-1.0): over seeds 0-2, 4 and 5 of 12.
    Mask-Jaccard AUROC (complex recovery; the true masks: 0.943) per seed 0.708 / 0.782 /
    0.709 / 0.788 and 0.716 / 0.793 / 0.682 / 0.814, mean over seeds 0-2 0.733 and 0.730;
    planted-mask AUROC 0.887 / 0.929 / 0.936 / 0.921 and 0.899 / 0.924 / 0.933 / 0.923, mean
    over seeds 0-2 0.917 and 0.919. Asserted with margins: at least 2 of 12 programs (one seed
    alone always had at least 1), mean Jaccard AUROC above 0.62 (0.06 below the worst single
    seed) and mean mask AUROC above 0.86 (0.027 below the worst single seed).
    """
    from samsbench import config
    from samsbench.data import contract
    from samsbench.stages import data as data_stage
    from samsbench.stages import train as train_stage

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    cfg = config.load(str(ROOT / "config.yaml"))
    experiment = cfg["experiments"]["simulated"]
    data_path, split_path = tmp_path / "data.h5ad", tmp_path / "split.tsv"
    data = _default_simulation()
    contract.write(data, str(data_path))
    split = experiment["splits"][0]
    data_stage.split(str(data_path), cfg["splits"][split], str(split_path))
    library, programs = gene_sets.simulation_programs(data)
    pathways = stage.load_gene_sets("pathways", None, data)
    labels, true_mask = recovery.planted_mask(data.uns)
    model = "sams_vae_aligned"
    settings = {**SETTINGS, "gene_sets": [library], "recovery_library": "pathways"}
    planted, jaccard, auroc = [], [], []
    for seed in SKILL_SEEDS:
        run_dir = tmp_path / f"seed{seed}"
        train_stage.train(str(data_path), str(split_path),
                          config.model_hyperparameters(cfg, "simulated", model),
                          dict(experiment["training"]), str(run_dir), seed, progress=False,
                          identity={"model": model, "split": split})
        identity = {"model": model, "split": split, "seed": seed, "family": "sams_vae"}
        out = stage.run_tables(run_dir, {library: kegg, "pathways": pathways}, settings, data,
                               identity)
        planted.append(out["planted_programs"])
        rec = out["complex_recovery"].set_index("similarity")["auroc"]
        jaccard.append(rec["mask_jaccard"])
        latents = ad.read_h5ad(run_dir / "perturbation_latents.h5ad")
        masks = recovery.planted_mask_recovery(labels, true_mask, latents)
        auroc.append(float(masks.set_index("matching").loc["probability", "auroc"]))
    planted = pd.concat(planted, ignore_index=True)
    rate = recovery.program_recovery_rate(planted)
    print(rate.to_string(index=False), "\nmask-Jaccard AUROC", jaccard, "mask AUROC", auroc)
    assert set(rate["program"]) == set(programs) and set(rate["n_seeds"]) == {len(SKILL_SEEDS)}
    # what "recovered" means holds exactly, whatever the seed
    hits = planted[planted["recovered"]]
    assert (hits["top_term"] == hits["program"]).all() and (hits["top_fdr"] < 0.05).all()
    # the model's skill, with the margins measured over seeds and two floating-point paths
    assert rate["n_recovered"].sum() >= 2, rate.to_string(index=False)
    assert 0.62 < np.mean(jaccard) < 0.943  # above chance, below the true masks
    assert np.mean(auroc) > 0.86


def test_replogle_guide_pair_labels_map_to_their_gene():
    labels = [
        "PSMA1_-_123.23-P1P2|PSMA1_-_456.23-P1P2",
        "PSMA1_plus_789.23-P1|PSMA1_plus_790.23-P2",  # a second guide pair of the same gene
        "PSMB2_-_11.23-P1P2|PSMB2_-_12.23-P1P2",
        "MED1_-_5.23-P1P2|MED1_-_6.23-P1P2",
    ]
    latents = ad.AnnData(np.zeros((4, 0)), obs=pd.DataFrame({"target_genes": labels}, index=labels))
    assert [t for t in gene_sets.perturbation_targets(latents)] == [
        ["PSMA1"],
        ["PSMA1"],
        ["PSMB2"],
        ["MED1"],
    ]
    # uns["pathways"] in the contract's form lists perturbation labels; the library is genes
    data = ad.AnnData(np.zeros((1, 1)))
    data.uns["pathways"] = {"PROTEASOME": labels[:3], "MEDIATOR": labels[3:]}
    assert stage.load_gene_sets("pathways", None, data) == {
        "PROTEASOME": {"PSMA1", "PSMB2"},
        "MEDIATOR": {"MED1"},
    }
