"""Split invariants (reference §3.4) on a Norman-shaped label vector, plus the exact procedure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

import fixtures_real as fr
from samsbench.data import splits

FRACTIONS = [0.0, 0.2, 0.25, 0.4, 0.5, 0.6, 0.75, 0.8, 1.0]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def norman_like():
    labels, identities = fr.norman_shaped_labels()
    is_combo = np.array(["+" in lab for lab in labels])
    return labels, identities, is_combo


def _split(kind, labels, fraction, seed, identities=None):
    if kind == "ood":
        return splits.ood_split(labels, fraction, seed, 0.25, combination_ids=identities)
    return splits.data_efficiency_split(labels, fraction, seed)


# ----------------------------------------------------------------------------- random


def test_random_split_sizes_are_64_16_20():
    labels = splits.random_split(118_641, seed=0)
    counts = pd.Series(labels).value_counts().to_dict()
    assert counts == {"train": 75_929, "test": 23_729, "val": 18_983}


def test_random_split_matches_two_train_test_splits():
    n = 1003
    idx = np.arange(n)
    trval, test = train_test_split(idx, train_size=0.8, random_state=3)
    train, val = train_test_split(trval, train_size=0.8, random_state=3)
    labels = splits.random_split(n, seed=3)
    for name, members in (("train", train), ("val", val), ("test", test)):
        assert set(np.flatnonzero(labels == name)) == set(members)
    assert (labels != "unused").all()  # a partition: every cell exactly one label


def test_random_split_reproducible_and_seeded():
    a, b = splits.random_split(5000, 0), splits.random_split(5000, 0)
    np.testing.assert_array_equal(a, b)
    assert (a != splits.random_split(5000, 1)).any()


# ----------------------------------------------------------------------------- both Norman kinds


@pytest.mark.parametrize("kind", ["ood", "data_efficiency"])
@pytest.mark.parametrize("seed", SEEDS)
def test_monotone_growth_with_fraction(norman_like, kind, seed):
    labels, _, _ = norman_like
    previous = None
    for fraction in FRACTIONS:
        current = _split(kind, labels, fraction, seed)
        if previous is not None:
            labelled = previous != "unused"
            np.testing.assert_array_equal(current[labelled], previous[labelled])
        previous = current


@pytest.mark.parametrize("kind", ["ood", "data_efficiency"])
def test_controls_and_singles_never_in_test(norman_like, kind):
    labels, _, is_combo = norman_like
    for fraction in (0.0, 0.5, 1.0):
        out = _split(kind, labels, fraction, 0)
        assert set(out[~is_combo]) == {"train", "val"}
        single_val = np.mean(out[~is_combo] == "val")
        assert single_val == pytest.approx(0.2, abs=0.001)


@pytest.mark.parametrize("kind", ["ood", "data_efficiency"])
def test_seeds_differ_and_same_seed_reproduces(norman_like, kind):
    labels, _, _ = norman_like
    a = _split(kind, labels, 0.5, 0)
    np.testing.assert_array_equal(a, _split(kind, labels, 0.5, 0))
    assert (a != _split(kind, labels, 0.5, 1)).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_ood_and_data_efficiency_agree_on_train_val_at_full_fraction(norman_like, seed):
    labels, identities, _ = norman_like
    for ids in (None, identities):
        ood = _split("ood", labels, 1.0, seed, ids)
        de = _split("data_efficiency", labels, 1.0, seed)
        for name in ("train", "val"):
            np.testing.assert_array_equal(ood == name, de == name)
    # Only test differs: OOD holds out a quarter of the combinations, DE all of them.
    assert (ood == "test").sum() < (de == "test").sum()


# ----------------------------------------------------------------------------- OOD


def _combos_in(out, groups, is_combo, names):
    return set(groups[is_combo & np.isin(out, names)])


@pytest.mark.parametrize("use_identities", [False, True], ids=["labels", "guide_identity"])
@pytest.mark.parametrize("seed", SEEDS)
def test_ood_fractions_and_disjointness(norman_like, seed, use_identities):
    labels, identities, is_combo = norman_like
    groups = identities if use_identities else labels
    n = len(set(groups[is_combo]))
    assert n == (132 if use_identities else 131)
    for fraction in FRACTIONS:
        out = _split("ood", labels, fraction, seed, identities if use_identities else None)
        seen = _combos_in(out, groups, is_combo, ["train", "val"])
        tested = _combos_in(out, groups, is_combo, ["test"])
        assert len(seen) / n == pytest.approx(fraction, abs=0.01)
        assert len(seen) == int(fraction * n)
        assert len(tested) / n == pytest.approx(0.25, abs=0.01)
        assert len(tested) == math.ceil(0.25 * n)
        # The first int(f n) shuffled combinations train, the last ceil(0.25 n) test: they
        # are disjoint exactly when both fit (every paper fraction below 1).
        fits = int(fraction * n) + math.ceil(0.25 * n) <= n
        assert (not (seen & tested)) == fits
        if fraction in (0.0, 0.25, 0.5, 0.75):
            assert not (seen & tested)
        if fraction == 1.0:
            assert tested <= seen  # in-distribution test at f = 1


def test_ood_test_fraction_argument(norman_like):
    labels, _, is_combo = norman_like
    out = splits.ood_split(labels, 0.5, 0, test_fraction=0.2)
    assert len(_combos_in(out, labels, is_combo, ["test"])) == math.ceil(0.2 * 131)


def test_ood_combination_ids_must_align(norman_like):
    labels, identities, _ = norman_like
    with pytest.raises(splits.SplitError, match="combination_ids"):
        splits.ood_split(labels, 0.5, 0, combination_ids=identities[:-1])


# ----------------------------------------------------------------------------- data efficiency


@pytest.mark.parametrize("seed", SEEDS)
def test_data_efficiency_fractions(norman_like, seed):
    labels, _, is_combo = norman_like
    n_combo_cells = is_combo.sum()
    every_combo = set(labels[is_combo])
    for fraction in FRACTIONS:
        out = _split("data_efficiency", labels, fraction, seed)
        combo_out = out[is_combo]
        assert np.mean(combo_out == "train") == pytest.approx(0.64 * fraction, abs=0.01)
        assert np.mean(combo_out == "val") == pytest.approx(0.16, abs=0.01)
        assert np.mean(combo_out == "test") == pytest.approx(0.2, abs=0.01)
        assert (combo_out == "test").sum() == math.ceil(0.2 * n_combo_cells)
        assert set(labels[out == "test"]) == every_combo  # test holds every combination


# ----------------------------------------------------------------------------- exact procedure


def _reference(labels, identities, fraction, seed, kind):
    """The reference data modules' procedure on a DataFrame, written independently."""
    obs = pd.DataFrame({"guide_identity": identities,
                        "num_guides": [lab.count("+") + 1 if lab != "non-targeting" else 0
                                       for lab in labels]})
    combo = obs[obs["num_guides"] == 2]
    no_combo = obs[obs["num_guides"] != 2]
    combo_trval, combo_test = train_test_split(combo, test_size=0.2, random_state=seed)
    combo_train, combo_val = train_test_split(combo_trval, test_size=0.2, random_state=seed)
    single_train, single_val = train_test_split(no_combo, test_size=0.2, random_state=seed)
    split = pd.Series(None, index=obs.index, dtype=object)
    split[single_train.index], split[single_val.index] = "train", "val"
    if kind == "ood":
        names = np.array(sorted(combo["guide_identity"].unique()))
        np.random.default_rng(seed).shuffle(names)
        train_names = names[: int(fraction * len(names))]
        test_names = names[-math.ceil(0.25 * len(names)):]
        split[combo_train.index[combo_train["guide_identity"].isin(train_names)]] = "train"
        split[combo_val.index[combo_val["guide_identity"].isin(train_names)]] = "val"
        split[combo_test.index[combo_test["guide_identity"].isin(test_names)]] = "test"
    else:
        split[combo_train.index[: int(fraction * len(combo_train))]] = "train"
        split[combo_val.index], split[combo_test.index] = "val", "test"
    return split.fillna("unused").to_numpy()


@pytest.mark.parametrize("kind", ["ood", "data_efficiency"])
@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.75, 1.0])
def test_matches_the_reference_procedure(norman_like, kind, fraction):
    labels, identities, _ = norman_like
    want = _reference(labels, identities, fraction, 1, kind)
    got = _split(kind, labels, fraction, 1, identities)
    np.testing.assert_array_equal(got, want)


def test_split_file_round_trip(tmp_path, norman_like):
    labels, identities, _ = norman_like
    out = _split("ood", labels, 0.5, 0, identities)
    cells = np.array([f"cell{i}" for i in range(len(labels))])
    splits.write_split(cells, out, tmp_path / "s.tsv")
    shuffled = cells[::-1]
    np.testing.assert_array_equal(splits.read_split(tmp_path / "s.tsv", shuffled), out[::-1])


def test_heldout_perturbation_split_holds_out_whole_perturbations():
    from samsbench.data.splits import heldout_perturbation_split

    labels = np.repeat(["non-targeting", "A", "B", "C", "D", "E", "F", "G", "H"], 10)
    out = heldout_perturbation_split(labels, seed=1, test_fraction=0.3)
    held = set(labels[out == "test"])
    assert len(held) == 3  # ceil(0.3 * 8)
    assert "non-targeting" not in held
    # every cell of a held-out perturbation is test, no other cell is
    assert set(out[np.isin(labels, list(held))]) == {"test"}
    assert set(out[~np.isin(labels, list(held))]) == {"train", "val"}
    again = heldout_perturbation_split(labels, seed=1, test_fraction=0.3)
    assert list(out) == list(again)
    with pytest.raises(splits.SplitError, match="at least one must be held out and one kept"):
        heldout_perturbation_split(labels, seed=1, test_fraction=1.0)
