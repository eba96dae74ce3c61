"""Mask stability across seeds: Hungarian matching and the agreement measures, by hand."""

import math
import os

import numpy as np
import pandas as pd
import pytest

from samsbench.enrichment import stability as ms

# 4 perturbations x 3 dims
A = np.array([[0.9, 0.1, 0.0],
              [0.8, 0.0, 0.2],
              [0.1, 0.7, 0.0],
              [0.0, 0.6, 0.95]])


def test_a_permuted_mask_agrees_perfectly():
    perm = [2, 0, 1]
    B = A[:, perm]
    assert ms.jaccard(A, B) == 1.0
    assert ms.entry_agreement(A, B) == 1.0
    assert ms.q_correlation(A, B) == pytest.approx(1.0)
    np.testing.assert_array_equal(B[:, ms.match_thresholded(A, B)] > 0.5, A > 0.5)


def test_known_case_by_hand():
    # Active entries of A: (0,0) (1,0) (2,1) (3,1) (3,2): five.
    # B, columns permuted from a mask that drops (1,0) and adds (0,2):
    #   matched: shared 4, union 6 -> Jaccard 4/6; entries differing 2 of 12 -> agreement 10/12
    hard = np.array([[1, 0, 1],
                     [0, 0, 0],
                     [0, 1, 0],
                     [0, 1, 1]], dtype=float)
    B = hard[:, [1, 2, 0]]
    assert ms.jaccard(A, B) == pytest.approx(4 / 6)
    assert ms.entry_agreement(A, B) == pytest.approx(10 / 12)


def test_q_correlation_by_hand():
    # 2 x 2: b is a with columns swapped and one value changed; after matching the flattened
    # pairs are (1,1) (0,0) (0,0) (1,0.5): r computed by hand.
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[0.0, 1.0], [0.5, 0.0]])
    x = np.array([1.0, 0.0, 0.0, 1.0])
    y = np.array([1.0, 0.0, 0.0, 0.5])
    xc, yc = x - x.mean(), y - y.mean()
    expected = (xc @ yc) / math.sqrt((xc @ xc) * (yc @ yc))
    assert ms.q_correlation(a, b) == pytest.approx(expected)
    assert expected == pytest.approx(0.9045340337)


def test_empty_masks_and_constant_probabilities_are_nan():
    zeros = np.zeros((3, 2))
    assert math.isnan(ms.jaccard(zeros, zeros))
    assert ms.entry_agreement(zeros, zeros) == 1.0
    assert math.isnan(ms.q_correlation(zeros, A[:3, :2]))
    with pytest.raises(ValueError, match="equally shaped"):
        ms.jaccard(A, A[:, :2])


def test_mask_off_ablation_is_not_a_learned_mask():
    assert not ms.is_masked(np.ones((3, 2)))
    assert not ms.is_masked(None)
    assert ms.is_masked(A)


def test_pair_table_aligns_perturbations_and_skips_single_seeds():
    index = ["p0", "p1", "p2", "p3"]
    masks = {
        ("sams", "random", 0): pd.DataFrame(A, index=index),
        ("sams", "random", 1): pd.DataFrame(A[::-1, [1, 2, 0]], index=index[::-1]),
        ("sams", "random", 2): pd.DataFrame(A, index=index),
        ("other", "random", 0): pd.DataFrame(A, index=index),
    }
    table = ms.pair_table(masks)
    assert list(zip(table.seed_a, table.seed_b)) == [(0, 1), (0, 2), (1, 2)]
    assert set(table.model) == {"sams"}
    assert np.allclose(table.jaccard, 1.0) and np.allclose(table.q_correlation, 1.0)
    assert table.active_a.iloc[0] == pytest.approx(5 / 12)


def test_seed_support_counts_seeds_per_term():
    rows = [  # term X in seeds 0 and 2 (twice in seed 0: two dims), Y in seed 1, Z not significant
        ("sams", "random", 0, "KEGG", "X", 0.01),
        ("sams", "random", 0, "KEGG", "X", 0.02),
        ("sams", "random", 2, "KEGG", "X", 0.04),
        ("sams", "random", 1, "KEGG", "Y", 0.01),
        ("sams", "random", 1, "KEGG", "Z", 0.30),
    ]
    table = pd.DataFrame(rows, columns=["model", "split", "seed", "library", "term", "fdr"])
    out = ms.seed_support(table, {("sams", "random"): [0, 1, 2]}, alpha=0.05)
    got = {t: (n, s) for t, n, s in zip(out.term, out.n_seeds_found, out.stable)}
    assert got == {"X": (2, True), "Y": (1, False)}
    assert set(out.n_seeds) == {3} and set(out.min_seeds) == {2}
    strict = ms.seed_support(table, {("sams", "random"): [0, 1, 2]}, min_seeds=3)
    assert not strict.stable.any()


def test_model_seeds_override_the_experiment_seeds(repo_root):
    import copy
    import os

    import yaml

    from samsbench import config as sbconfig
    from samsbench.stages.stability import masked_groups

    with open(os.path.join(repo_root, "config.yaml")) as fh:
        base = yaml.safe_load(fh)
    cfg = copy.deepcopy(base)
    cfg["experiments"]["simulated"]["model_seeds"] = {"sams_vae": [0, 1, 2]}
    sbconfig.validate(cfg)
    runs = sbconfig.runs(cfg, "simulated")
    seeds = {}
    for run in runs:
        seeds.setdefault(run["model"], []).append(run["seed"])
    assert seeds["sams_vae"] == [0, 1, 2] and seeds["cpa_vae"] == [0]
    assert list(masked_groups(runs)) == [("sams_vae", "ood_half")]
    bad = copy.deepcopy(base)
    bad["experiments"]["simulated"]["model_seeds"] = {"nope": [0, 1]}
    with pytest.raises(sbconfig.ConfigError, match="model_seeds names 'nope'"):
        sbconfig.validate(bad)


def test_only_perturbations_with_training_cells_are_compared(tmp_path):
    import anndata as ad

    from samsbench.data import contract, splits
    from samsbench.stages.stability import trained_perturbations

    labels = ["non-targeting", "A", "A", "B", "A+C", "D"]
    adata = ad.AnnData(np.ones((6, 2), dtype=np.int32),
                       obs=pd.DataFrame({"perturbation": labels},
                                        index=[f"c{i}" for i in range(6)]))
    contract.write(adata, tmp_path / "d.h5ad")
    splits.write_split(adata.obs_names, ["train", "train", "val", "test", "train", "test"],
                       tmp_path / "s.tsv")
    got = trained_perturbations(str(tmp_path / "d.h5ad"), {"s": str(tmp_path / "s.tsv")})
    # B and D have no training cell; C is trained through the combination A+C
    assert got == {"s": {"non-targeting", "A", "A+C", "C"}}


def test_the_stage_writes_pairs_support_and_figure(tmp_path):
    """Files in, files out: two seeds of a masked model (one a permuted copy), the mask-off
    ablation (all ones, left out) and a held-out perturbation dropped by the split."""
    import anndata as ad

    from samsbench.data import contract, splits
    from samsbench.stages import stability

    index = ["p0", "p1", "p2", "p3"]
    labels = ["non-targeting"] * 2 + index * 2
    data = ad.AnnData(np.ones((len(labels), 2), dtype=np.int32),
                      obs=pd.DataFrame({"perturbation": labels},
                                       index=[f"c{i}" for i in range(len(labels))]))
    contract.write(data, tmp_path / "d.h5ad")
    # p3 has no training cell on this split
    roles = ["train", "val", "train", "train", "train", "test", "val", "val", "train", "test"]
    splits.write_split(data.obs_names, roles, tmp_path / "random.tsv")
    # row p3 differs between the seeds; it must not count
    second = A[:, [1, 2, 0]].copy()
    second[3] = [0.0, 0.0, 0.0]
    layers = {("sams", 0): A, ("sams", 1): second, ("ablation", 0): np.ones_like(A),
              ("ablation", 1): np.ones_like(A)}
    runs, paths = [], []
    for (model, seed), mask in layers.items():
        path = tmp_path / f"{model}{seed}.h5ad"
        ad.AnnData(np.zeros((4, 3), dtype=np.float32), obs=pd.DataFrame(index=index),
                   layers={"mask_prob": mask.astype(np.float32)}).write_h5ad(path)
        runs.append({"model": model, "split": "random", "seed": seed})
        paths.append(str(path))
    enrichment = pd.DataFrame(
        [("sams", "random", 0, "KEGG", 0, "X", 0.01), ("sams", "random", 1, "KEGG", 2, "X", 0.02),
         ("ablation", "random", 0, "KEGG", 0, "Y", 0.01)],
        columns=["model", "split", "seed", "library", "latent_dim", "term", "fdr"])
    enrichment.to_csv(tmp_path / "enrichment.tsv", sep="\t", index=False)
    out = {k: str(tmp_path / "out" / f"{k}.{e}") for k, e in
           (("pairs", "tsv"), ("support", "tsv"), ("figure", "png"))}
    stability.mask_stability(runs, paths, str(tmp_path / "d.h5ad"), [str(tmp_path / "random.tsv")],
                             str(tmp_path / "enrichment.tsv"), out["pairs"], out["support"],
                             out["figure"])
    pairs = pd.read_csv(out["pairs"], sep="\t")
    assert list(pairs.model) == ["sams"]
    assert pairs.n_perturbations.iloc[0] == 3
    assert pairs.jaccard.iloc[0] == pytest.approx(1.0)  # p3 left out: a permuted copy
    support = pd.read_csv(out["support"], sep="\t")
    assert support[["model", "term", "n_seeds_found", "stable"]].values.tolist() == [
        ["sams", "X", 2, True]]
    assert os.path.getsize(out["figure"]) > 0
