"""Small shared builders for tests."""

import os

from samsbench.data import contract, splits
from samsbench.data.simulate import simulate

TINY = dict(n_programs=2, targets_per_program=3, n_background=2, n_extra_dims=2, n_doubles=4,
            n_genes=30, cells_per_perturbation=20, n_control=60)

TINY_HP = dict(n_latent=6, n_layers=1, encoder_n_hidden=16, decoder_n_hidden=16,
               embedding_encoder_n_layers=2, embedding_encoder_n_hidden=8, mask_prior_prob=0.2,
               likelihood="library_nb", encoder_input_normalization="log_standardize",
               mask_beta_concentration_1=1.0, mask_beta_concentration_2=2.0)

# ``simulate`` arguments for data drawn from SAMS-VAE's own prior, the setting of the mask
# recovery target (test_recovery.py, bench/studies/prior_recovery.py): 48 single
# perturbations, K = 12, masks ~ Bernoulli(0.15) (74 true entries of 576), embeddings
# ~ N(0, 2), 150 cells each.
PRIOR_MATCHED_DATA = dict(
    n_programs=6, targets_per_program=6, n_background=12, n_extra_dims=0, dims_per_program=2,
    n_doubles=24, n_genes=100, cells_per_perturbation=150, n_control=400, effect_mode="prior",
    mask_prior_prob=0.15, effect_size=2.0,
)


def for_family(family, hp=TINY_HP):
    """The settings of ``hp`` (shared by the tests of every family) that ``family`` declares."""
    from samsbench import models as registry

    declared = set(registry.declared(family))
    return {k: v for k, v in hp.items() if k in declared}


def tiny_dataset(directory, kind="random", fraction=1.0, **overrides):
    """Write a tiny simulated dataset and a split; return both paths."""
    data_path = os.path.join(directory, "data.h5ad")
    split_path = os.path.join(directory, f"{kind}.tsv")
    if not os.path.exists(data_path):
        contract.write(simulate(**{**TINY, **overrides}), data_path)
    adata = contract.read(data_path)
    labels = splits.make_split(adata.obs["perturbation"].to_numpy(), kind, seed=0, fraction=fraction)
    splits.write_split(adata.obs_names, labels, split_path)
    return data_path, split_path
