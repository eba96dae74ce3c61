"""The embedded default dataset: a screen drawn from the SAMS-VAE generative process.

Real gene symbols (from a gene-set library that ships inside ``blitzgsea``) name the measured
genes and the perturbation targets. Planted programs: the perturbations whose targets belong to
one real gene set switch on the same latent dimensions, so mask recovery and enrichment have a
known answer. Counts are negative binomial around ``library * softmax(decoder(z))`` with a
per-cell library size, the likelihood the models use. Ground truth goes to ``uns["simulation"]``.

With ``combination_classes`` the double perturbations come in named classes (issue 22;
docs/simulation.md), each cell's class in ``obs["combination_class"]``:

* ``additive_expression``: the decoder's log-expression of the pair is the sum of the two
  singles' (per cell: f(z + s_a) + f(z + s_b) - f(z)), so adding the singles' effects in
  expression is right;
* ``additive_latent``: the latent shifts add (z + s_a + s_b) and the nonlinear decoder makes
  the expression effect non-additive (the SAMS-VAE / CPA premise);
* ``synergy``, ``buffering``: the latent shift is ``SYNERGY_GAIN`` or ``BUFFERING_GAIN`` times
  the sum (stronger or weaker than additive, as Norman et al. 2019 classify pairs);
* ``dominant``: the pair acts as one of its two singles, drawn at random and recorded in
  ``uns["simulation"]["dominant"]``; the other's effect is masked.
"""

from __future__ import annotations

import os
from importlib import resources

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from samsbench.data.contract import DEFAULT_CONTROL, validate

GENE_SET_LIBRARY = "KEGG_2021_Human"
COMBINATION_CLASSES = ("additive_expression", "additive_latent", "synergy", "buffering",
                       "dominant")
CLASS_KEY = "combination_class"  # obs column: a double's class; "single" / "control" otherwise
SYNERGY_GAIN = 2.0  # latent shift of a synergistic pair: this times the sum of its singles'
BUFFERING_GAIN = 0.5  # ... of a buffering pair
SYMBOL_LIBRARY = "GO_Biological_Process_2023"


def package_library_path(name: str) -> str:
    """Path of an Enrichr-format GMT library shipped inside the blitzgsea package."""
    path = os.fspath(resources.files("blitzgsea") / "data" / name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"gene-set library {name!r} not found in blitzgsea ({path})")
    return path


def read_gmt_simple(path: str) -> dict[str, list[str]]:
    sets = {}
    with open(path) as fh:
        for line in fh:
            fields = line.rstrip("\n").split("\t")
            genes = list(dict.fromkeys(g for g in fields[2:] if g))
            if fields[0] and genes:
                sets[fields[0]] = genes
    return sets


def _choose_programs(rng, library, n_programs, n_per_program, min_size=15, max_size=150):
    """Disjoint real gene sets, n_per_program targets from each (no target in two programs)."""
    names = sorted(n for n, g in library.items() if min_size <= len(g) <= max_size)
    rng.shuffle(names)
    programs, used = {}, set()
    for name in names:
        free = [g for g in library[name] if g not in used]
        # A target may belong to other chosen sets too; keep programs mutually exclusive.
        if len(free) < n_per_program or any(set(library[name]) & set(library[p]) for p in programs):
            continue
        targets = sorted(rng.choice(free, n_per_program, replace=False).tolist())
        programs[name] = targets
        used.update(library[name])
        if len(programs) == n_programs:
            return programs
    raise ValueError(f"could not find {n_programs} disjoint gene sets in the library")


def simulate(
    n_programs: int = 4,
    targets_per_program: int = 6,
    n_background: int = 8,
    dims_per_program: int = 1,
    n_extra_dims: int = 8,
    n_doubles: int = 16,
    n_genes: int = 200,
    cells_per_perturbation: int = 80,
    n_control: int = 600,
    effect_mode: str = "programs",
    effect_size: float = 2.0,
    magnitude_sd: float = 0.5,
    share_prob: float = 0.3,
    shift_noise: float = 0.25,
    mask_prior_prob: float = 0.1,
    decoder_hidden: int = 64,
    library_mean: float = 4000.0,
    dispersion: float = 4.0,
    combination_classes: dict[str, int] | None = None,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate a screen; ``effect_mode`` is ``programs`` (planted gene-set programs) or
    ``prior`` (masks ~ Bernoulli(mask_prior_prob), embeddings ~ N(0, effect_size), drawn exactly
    from the SAMS-VAE prior).

    A program acts through one latent dimension by default. With two, every target's shift
    in that plane is (±a, ±a), which a 45° rotation makes sparser (one active dimension per
    target), so the model rightly prefers a basis that splits the program in two
    (docs/mask_recovery.md).

    So that complex recovery in effect space is not trivially perfect (issue 13), programs
    are not clean blocks: each target's magnitude is scaled by exp(N(0, magnitude_sd)); with
    probability ``share_prob`` a program target also acts (at half its magnitude, random sign)
    on the dimension of another program; and every perturbation's latent shift gets dense
    N(0, shift_noise) noise on all dimensions (in ``true_shift``, not in ``true_mask``). These
    draws come from a second generator, so ``effect_mode: prior`` data and the rest of the
    screen do not depend on them; setting all three to 0 gives the clean programs.

    ``combination_classes`` ({class: number of doubles}, classes from ``COMBINATION_CLASSES``)
    replaces ``n_doubles`` with doubles of those classes (module docstring); None keeps every
    double additive in the latent space, as before."""
    if combination_classes is not None:
        unknown = sorted(set(combination_classes) - set(COMBINATION_CLASSES))
        if unknown:
            raise ValueError(f"unknown combination classes {unknown}; "
                             f"known: {list(COMBINATION_CLASSES)}")
        n_doubles = int(sum(combination_classes.values()))
    rng = np.random.default_rng(seed)
    library = read_gmt_simple(package_library_path(GENE_SET_LIBRARY))
    programs = _choose_programs(rng, library, n_programs, targets_per_program)
    program_genes = {g for gs in programs.values() for g in gs}
    program_sets = set().union(*(library[p] for p in programs))
    pool = sorted({g for gs in library.values() for g in gs} - program_sets)
    background = sorted(rng.choice(pool, n_background, replace=False).tolist())
    singles = sorted(program_genes) + background
    T = len(singles)
    K = n_programs * dims_per_program + n_extra_dims

    program_dims: dict[str, list[int]] = {}
    mask = np.zeros((T, K))
    if effect_mode == "programs":
        for p, (name, targets) in enumerate(programs.items()):
            dims = list(range(p * dims_per_program, (p + 1) * dims_per_program))
            program_dims[name] = dims
            for gene in targets:
                mask[singles.index(gene), dims] = 1
        extra = np.arange(n_programs * dims_per_program, K)
        for gene in background:  # unprogrammed perturbations act on their own dimension
            mask[singles.index(gene), rng.choice(extra)] = 1
        signs = rng.choice([-1.0, 1.0], size=(T, K))
        embedding = signs * rng.normal(effect_size, 0.15 * effect_size, size=(T, K))
        messy = np.random.default_rng([seed, 13])  # the issue-13 structure, see the docstring
        embedding *= np.exp(messy.normal(0.0, magnitude_sd, size=(T, 1)))
        names = list(programs)
        for p, name in enumerate(names):
            for gene in programs[name]:
                if len(names) > 1 and messy.random() < share_prob:
                    other = names[(p + 1 + messy.integers(len(names) - 1)) % len(names)]
                    row = singles.index(gene)
                    for d in program_dims[other]:
                        mask[row, d] = 1
                        own = np.abs(embedding[row, program_dims[name]]).mean()
                        embedding[row, d] = messy.choice([-1.0, 1.0]) * 0.5 * own
    elif effect_mode == "prior":
        mask = (rng.random((T, K)) < mask_prior_prob).astype(float)
        embedding = rng.normal(0.0, effect_size, size=(T, K))
    else:
        raise ValueError(f"effect_mode must be 'programs' or 'prior', got {effect_mode!r}")
    shift = mask * embedding
    if effect_mode == "programs" and shift_noise > 0:
        shift = shift + messy.normal(0.0, shift_noise, size=shift.shape)

    # Doubles: pairs of singles, half within a program (shared mechanism) and half across.
    pairs = set()
    groups = list(programs.values())
    while len(pairs) < n_doubles:
        if len(pairs) % 2 == 0:
            a, b = rng.choice(groups[rng.integers(len(groups))], 2, replace=False)
        else:
            a, b = rng.choice(singles, 2, replace=False)
        pairs.add(tuple(sorted((str(a), str(b)))))
    doubles = ["+".join(p) for p in sorted(pairs)]
    pair_class, dominant = {}, {}
    if combination_classes is not None:
        # classes dealt over shuffled pairs, so each mixes within- and across-program pairs
        dealer = np.random.default_rng([seed, 22])
        classes = [c for c in COMBINATION_CLASSES for _ in range(combination_classes.get(c, 0))]
        pair_class = dict(sorted(zip(dealer.permutation(doubles).tolist(), classes)))
        for label in doubles:
            if pair_class[label] == "dominant":
                dominant[label] = str(dealer.choice(label.split("+")))

    symbols = sorted({g for gs in read_gmt_simple(package_library_path(SYMBOL_LIBRARY)).values()
                      for g in gs})
    genes = sorted(rng.choice(symbols, n_genes, replace=False).tolist())

    # Random decoder: K -> hidden (LeakyReLU) -> genes, softmax to expression proportions.
    w1 = rng.normal(0, 1 / np.sqrt(K), (K, decoder_hidden))
    w2 = rng.normal(0, 1.5 / np.sqrt(decoder_hidden), (decoder_hidden, n_genes))
    base = rng.normal(0, 1.0, n_genes)  # baseline gene abundance
    theta = dispersion * np.exp(rng.normal(0, 0.3, n_genes))

    labels = [DEFAULT_CONTROL] * n_control
    for label in singles + doubles:
        labels += [label] * cells_per_perturbation
    labels = np.array(labels, dtype=object)
    index = {g: i for i, g in enumerate(singles)}
    D = np.zeros((len(labels), T))
    for row, label in enumerate(labels):
        if label != DEFAULT_CONTROL:
            for part in label.split("+"):
                D[row, index[part]] = 1
    z_basal = rng.normal(size=(len(labels), K))

    def decode(z):  # the decoder's log-expression before the softmax
        h = z @ w1
        return np.where(h > 0, h, 0.01 * h) @ w2 + base

    if combination_classes is None:
        logits = decode(z_basal + D @ shift)
    else:
        logits = decode(z_basal + _class_shifts(labels, singles, shift, pair_class, dominant))
        for label, kind in pair_class.items():
            if kind == "additive_expression":  # add in log-expression, per cell
                rows = labels == label
                a, b = (shift[singles.index(p)] for p in label.split("+"))
                z0 = z_basal[rows]
                logits[rows] = decode(z0 + a) + decode(z0 + b) - decode(z0)
    rho = np.exp(logits - logits.max(1, keepdims=True))
    rho /= rho.sum(1, keepdims=True)
    lib = np.exp(rng.normal(np.log(library_mean), 0.3, len(labels)))
    mean = lib[:, None] * rho
    counts = rng.poisson(rng.gamma(theta, mean / theta))

    obs = pd.DataFrame(
        {"perturbation": labels, "gene": labels},
        index=[f"cell{i:06d}" for i in range(len(labels))],
    )
    if combination_classes is not None:
        kinds = [pair_class.get(lab, "control" if lab == DEFAULT_CONTROL else "single")
                 for lab in labels]
        obs[CLASS_KEY] = pd.Categorical(kinds)
    adata = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs,
                       var=pd.DataFrame(index=genes))
    adata.uns["control_label"] = DEFAULT_CONTROL
    adata.uns["pathways"] = {name: list(t) for name, t in programs.items()}
    adata.uns["simulation"] = {
        "effect_mode": effect_mode,
        "seed": seed,
        "program_library": GENE_SET_LIBRARY,
        "programs": {name: list(t) for name, t in programs.items()},
        "program_dims": {name: np.array(d, dtype=np.int64) for name, d in program_dims.items()},
        "perturbations": np.array(singles, dtype=object),
        "true_mask": mask,
        "true_embedding": embedding,
        "true_shift": shift,
    }
    if combination_classes is not None:
        adata.uns["simulation"]["combinations"] = np.array(list(pair_class), dtype=object)
        adata.uns["simulation"]["combination_class"] = np.array(list(pair_class.values()),
                                                                dtype=object)
        adata.uns["simulation"]["dominant"] = np.array(
            [dominant.get(lab, "") for lab in pair_class], dtype=object)
    return validate(adata)


def _class_shifts(labels, singles, shift, pair_class, dominant) -> np.ndarray:
    """Each cell's latent shift by its label's class (an ``additive_expression`` pair gets
    the additive one here; the caller replaces its log-expression)."""
    gain = {"synergy": SYNERGY_GAIN, "buffering": BUFFERING_GAIN}
    per_label = {}
    for label in set(labels.tolist()) - {DEFAULT_CONTROL}:
        parts = label.split("+")
        if label in dominant:
            parts = [dominant[label]]
        total = sum(shift[singles.index(p)] for p in parts)
        per_label[label] = gain.get(pair_class.get(label), 1.0) * total
    out = np.zeros((len(labels), shift.shape[1]))
    for label, value in per_label.items():
        out[labels == label] = value
    return out
