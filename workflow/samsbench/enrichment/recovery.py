"""Recovery: of known complexes by a run's similarities, of planted programs and of planted
masks on simulated data.

* complex recovery: are perturbations whose targets share a gene set more similar (mask
  Jaccard, |embedding cosine|, |effect correlation|) than other pairs? One AUROC and average
  precision per run and similarity, so that every model, baselines included, compares on one
  number;
* planted programs: does the dimension carrying a simulated program have it as top term;
* mask recovery: latent dimensions are identifiable only up to permutation, so learned
  dimensions are matched one-to-one to true ones by the Hungarian algorithm, on the
  co-occurrence of the true mask with the thresholded q(mask) (``matching="mask"``, the
  reference's convention) or with q(mask) itself (``"probability"``, ours).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import roc_auc_score

from samsbench.enrichment.gene_sets import normalise, normalise_library, perturbation_targets
from samsbench.enrichment.ora import DEFAULT_THRESHOLD, top_hits

# Layers of perturbation_latents.h5ad (see the run-directory contract in docs/architecture.md).
MASK_LAYER = "mask_prob"
EMBEDDING_LAYER = "embedding_mean"
# Columns of one run's tables, before the run's identity (model, split, seed).
RECOVERY_COLUMNS = ["library", "similarity", "auroc", "average_precision", "n_perturbations",
                    "n_pairs", "n_positive_pairs"]
PROGRAM_COLUMNS = ["library", "program", "latent_dim", "jaccard", "top_term", "top_fdr",
                   "program_fdr", "recovered"]


# Columns of the planted-program rate over seeds (``program_recovery_rate``).
PROGRAM_RATE_COLUMNS = ["model", "split", "program", "n_seeds", "n_recovered", "rate",
                        "median_fdr", "seeds", "fdrs"]

MATCHINGS = ("mask", "probability")
# Columns of the planted-mask table (one row per run and matching), after the run's identity.
MASK_RECOVERY_COLUMNS = ["matching", "threshold", "n_perturbations", "true_density", "density",
                         "precision", "recall", "f1", "auroc"]


def mask_stats(true_mask: np.ndarray, mask_prob: np.ndarray, threshold: float = 0.5,
               matching: str = "probability") -> dict:
    """Hungarian-matched precision, recall and F1 of ``mask_prob > threshold`` against the true
    (T x K_true) mask, and the AUROC of the matched probabilities against the true entries.

    ``matching`` chooses what the learned columns are matched on: ``"mask"`` is the reference's
    convention (the reference's get_mask_stats: co-occurrence of the true and the thresholded masks), and
    ``"probability"`` ours (co-occurrence of the true mask with q(mask), so that a model with no
    entry above the threshold still gets a meaningful assignment for the AUROC). Both give the
    same columns when q is close to 0/1; on a dense q they can differ, and so can every score.
    """
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
    true_mask = np.asarray(true_mask) > 0
    mask_prob = np.asarray(mask_prob, dtype=float)
    if true_mask.ndim != 2 or mask_prob.ndim != 2 or true_mask.shape[0] != mask_prob.shape[0]:
        raise ValueError(f"true mask {true_mask.shape} and mask probabilities {mask_prob.shape} "
                         "must be (perturbations x dims) with the same perturbations")
    if not np.all(np.isfinite(mask_prob)):
        raise ValueError("mask probabilities contain NaN or infinite values")
    hard = mask_prob > threshold
    scores = hard.astype(float) if matching == "mask" else mask_prob
    rows, cols = linear_sum_assignment(true_mask.T.astype(float) @ scores, maximize=True)
    matched_hard = hard[:, cols]
    tp = float((true_mask[:, rows] & matched_hard).sum())
    n_hat, n_true = float(hard.sum()), float(true_mask.sum())
    truth = true_mask[:, rows].ravel()
    matched_prob = mask_prob[:, cols].ravel()
    auroc = (float(roc_auc_score(truth, matched_prob)) if 0 < truth.sum() < truth.size
             else float("nan"))
    return {
        "precision": tp / n_hat if n_hat else 0.0,
        "recall": tp / n_true if n_true else 0.0,
        "f1": 2 * tp / (n_hat + n_true) if n_hat + n_true else 0.0,
        "auroc": auroc,
        "density": float(hard.mean()),
        "assignment": cols.tolist(),
    }


def planted_mask(uns: Mapping) -> tuple[list[str], np.ndarray]:
    """(perturbation labels, true mask) from a simulated dataset's ``uns["simulation"]``
    (``perturbations``: row labels; ``true_mask``: perturbations x true latent dims); a clear
    error if absent. Both the embedded simulation and ``reference_sim`` write them."""
    sim = uns.get("simulation")
    if not isinstance(sim, Mapping) or "true_mask" not in sim or "perturbations" not in sim:
        raise ValueError('the dataset has no planted mask (uns["simulation"] with '
                         '"perturbations" and "true_mask")')
    labels = [str(p) for p in np.asarray(sim["perturbations"])]
    mask = np.asarray(sim["true_mask"], dtype=float)
    if mask.ndim != 2 or mask.shape[0] != len(labels):
        raise ValueError(f'uns["simulation"]["true_mask"] has shape {mask.shape} for '
                         f"{len(labels)} perturbations")
    return labels, mask


def planted_mask_recovery(labels: list[str], true_mask: np.ndarray, latents,
                          threshold: float = 0.5) -> pd.DataFrame:
    """One row per matching convention (``MASK_RECOVERY_COLUMNS``) for one run's latents
    (rows by perturbation name, layer ``mask_prob``); empty when the run has no mask."""
    if MASK_LAYER not in latents.layers:
        return pd.DataFrame(columns=MASK_RECOVERY_COLUMNS)
    names = latents.obs_names.astype(str)
    position = {n: i for i, n in enumerate(names)}
    missing = [p for p in labels if p not in position]
    if missing:
        raise ValueError(f"no mask row for planted perturbations {missing[:5]}")
    q = np.asarray(latents.layers[MASK_LAYER], dtype=float)[[position[p] for p in labels]]
    rows = []
    for matching in MATCHINGS:
        stats = mask_stats(true_mask, q, threshold=threshold, matching=matching)
        rows.append({"matching": matching, "threshold": threshold,
                     "n_perturbations": len(labels),
                     "true_density": float((np.asarray(true_mask) > 0).mean()),
                     **{k: stats[k] for k in ("density", "precision", "recall", "f1", "auroc")}})
    return pd.DataFrame(rows, columns=MASK_RECOVERY_COLUMNS)


def _jaccard(active: np.ndarray) -> np.ndarray:
    a = active.astype(float)
    inter = a @ a.T
    size = a.sum(1)
    union = size[:, None] + size[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)  # two empty masks share nothing


def _cosine(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norm, out=np.zeros_like(x, dtype=float), where=norm > 0)
    return unit @ unit.T


def _pearson(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=1, keepdims=True)
    return _cosine(centred)  # a constant (e.g. zero) effect correlates with nothing: 0


def similarity_matrix(values: np.ndarray, kind: str, threshold=DEFAULT_THRESHOLD) -> np.ndarray:
    """Pairwise similarity of the rows. The runs use the sign-free kinds: a perturbation
    that moves a program's dimension down is as much a member as one that moves it up, and
    signed cosine / Pearson rank such same-program pairs last (``embedding_cosine`` and
    ``effect_pearson`` are kept for comparison only)."""
    if kind == "embedding_abs_cosine":
        return np.abs(_cosine(np.asarray(values, dtype=float)))
    if kind == "effect_abs_pearson":
        return np.abs(_pearson(np.asarray(values, dtype=float)))
    if kind == "mask_jaccard":
        return _jaccard(np.asarray(values) > threshold)
    if kind == "embedding_cosine":
        return _cosine(np.asarray(values, dtype=float))
    if kind == "effect_pearson":
        return _pearson(np.asarray(values, dtype=float))
    raise ValueError(f"unknown similarity {kind!r}")


def shared_set_labels(genes: list[str], sets: Mapping[str, set[str]]) -> np.ndarray:
    """n × n boolean: do the targets of perturbations i and j share a gene set?"""
    terms = list(sets)
    member = np.zeros((len(genes), len(terms)), dtype=float)
    index = {g: i for i, g in enumerate(genes)}
    for j, t in enumerate(terms):
        for g in sets[t]:
            if g in index:
                member[index[g], j] = 1.0
    # genes can repeat (two guides of one gene): fill every row of a gene
    for i, g in enumerate(genes):
        member[i] = member[index[g]]
    return (member @ member.T) > 0


def recovery_scores(
    profiles: pd.DataFrame | np.ndarray,
    genes: list[str],
    sets: Mapping[str, Iterable[str]],
    kind: str,
    threshold: float = DEFAULT_THRESHOLD,
    annotated_only: bool = True,
) -> dict:
    """AUROC and average precision of pairwise similarity for "targets share a gene set".

    Pairs are single perturbations; a pair of perturbations of the same gene is skipped (that
    is guide agreement, not complex recovery). With ``annotated_only`` only perturbations whose
    target is in some set take part, as in the paper's pathway heatmaps: an unannotated gene
    is unknown, not a negative.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    values = np.asarray(profiles, dtype=float)
    genes = [normalise(g) for g in genes]
    sets = normalise_library(sets)
    annotated = set().union(*sets.values()) if sets else set()
    keep = np.array([(g in annotated) or not annotated_only for g in genes], dtype=bool)
    values, genes = values[keep], [g for g, k in zip(genes, keep) if k]
    n = len(genes)
    result = {
        "auroc": np.nan,
        "average_precision": np.nan,
        "n_perturbations": n,
        "n_pairs": 0,
        "n_positive_pairs": 0,
    }
    if n < 2:
        return result
    sim = similarity_matrix(values, kind, threshold)
    label = shared_set_labels(genes, sets)
    iu, ju = np.triu_indices(n, k=1)
    g = np.asarray(genes)
    distinct = g[iu] != g[ju]
    y, s = label[iu, ju][distinct], sim[iu, ju][distinct]
    result.update(n_pairs=int(len(y)), n_positive_pairs=int(y.sum()))
    if 0 < y.sum() < len(y):
        result["auroc"] = float(roc_auc_score(y, s))
        result["average_precision"] = float(average_precision_score(y, s))
    return result


def run_profiles(latents=None, predictions=None) -> dict[str, tuple[pd.DataFrame, list[str]]]:
    """{similarity: (singles × features, target gene per row)} that a run supports.

    Masks (thresholded) give mask_jaccard; embeddings give embedding_abs_cosine, on the
    expected latent shift (mask probability × embedding mean) where the model has masks, since
    an embedding coordinate behind a closed mask does not act; predictions give
    effect_abs_pearson (predicted mean minus the control's), for every model including the
    baselines. All three are sign-free (see ``similarity_matrix``).
    """
    out: dict[str, tuple[pd.DataFrame, list[str]]] = {}
    if latents is not None and latents.n_obs:
        targets = perturbation_targets(latents)
        single = targets.map(len).eq(1).to_numpy()
        genes = [t[0] for t in targets[single]]
        names = latents.obs_names[single]
        layers = latents.layers
        mask = np.asarray(layers[MASK_LAYER]) if MASK_LAYER in layers else None
        if mask is not None:
            out["mask_jaccard"] = (pd.DataFrame(mask[single], index=names), genes)
        if EMBEDDING_LAYER in layers:
            emb = np.asarray(layers[EMBEDDING_LAYER], dtype=float)
            if mask is not None:
                emb = emb * mask
            out["embedding_abs_cosine"] = (pd.DataFrame(emb[single], index=names), genes)
    if predictions is not None and predictions.n_obs:
        labels = (
            predictions.obs["perturbation"].astype(str)
            if "perturbation" in predictions.obs
            else pd.Series(predictions.obs_names, index=predictions.obs_names)
        )
        control = str(predictions.uns.get("control_label", "non-targeting"))
        is_control = (labels == control).to_numpy()
        if is_control.sum() != 1:
            raise ValueError(f"predictions need exactly one control row {control!r}")
        X = (
            predictions.X.toarray()
            if hasattr(predictions.X, "toarray")
            else np.asarray(predictions.X)
        )
        effect = X - X[is_control]
        targets = perturbation_targets(predictions)
        single = (~is_control) & targets.map(len).eq(1).to_numpy()
        genes = [t[0] for t in targets[single]]
        out["effect_abs_pearson"] = (pd.DataFrame(effect[single], index=labels[single]), genes)
    return out


def complex_recovery(
    profiles, sets, threshold=DEFAULT_THRESHOLD, annotated_only=True
) -> pd.DataFrame:
    rows = []
    for kind, (values, genes) in profiles.items():
        score = recovery_scores(values, genes, sets, kind, threshold, annotated_only)
        rows.append({"similarity": kind, **score})
    return pd.DataFrame(rows)


def planted_program_recovery(
    enrichment: pd.DataFrame,
    mask_prob: pd.DataFrame,
    programs: Mapping[str, Iterable[str]],
    library: str,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """For each planted program, the learned dims that carry it and their top enrichment hit.

    Learned dims are not aligned with the true ones, so a program's dims are found from the
    masks: those whose active perturbations overlap the program's members with Jaccard >= 0.5
    (or, if none does, the single best one). The program counts as recovered when every such
    dim has the program's gene set as its top hit in ``library`` at FDR < alpha.
    """
    active = mask_prob.to_numpy() > threshold
    rows_index = {str(p): i for i, p in enumerate(mask_prob.index)}
    hits = top_hits(enrichment[enrichment["library"] == library]) if len(enrichment) else enrichment
    hits = hits.set_index("latent_dim") if len(hits) else hits
    out = []
    for program, members in programs.items():
        rows = [rows_index[str(m)] for m in members if str(m) in rows_index]
        if not rows:
            continue
        member = np.zeros(len(mask_prob), dtype=bool)
        member[rows] = True
        inter = (active & member[:, None]).sum(0)
        union = (active | member[:, None]).sum(0)
        jac = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        dims = np.flatnonzero(jac >= 0.5)
        if len(dims) == 0:
            dims = np.array([int(np.argmax(jac))])
        sub = enrichment[(enrichment["library"] == library) & (enrichment["term"] == program)]
        for j in dims:
            dim = mask_prob.columns[j]
            top = hits.loc[dim] if len(hits) and dim in hits.index else None
            own = sub.loc[sub["latent_dim"] == dim, "fdr"]
            top_term = None if top is None else str(top["term"])
            top_fdr = np.nan if top is None else float(top["fdr"])
            out.append(
                {
                    "library": library,
                    "program": program,
                    "latent_dim": dim,
                    "jaccard": float(jac[j]),
                    "top_term": top_term,
                    "top_fdr": top_fdr,
                    "program_fdr": float(own.min()) if len(own) else np.nan,
                    "recovered": bool(top_term == program and top_fdr < alpha),
                }
            )
    return pd.DataFrame(out, columns=PROGRAM_COLUMNS)


def program_recovery_rate(planted: pd.DataFrame) -> pd.DataFrame:
    """Planted-program recovery as a rate over seeds, per model, split and program (issue 22):
    one seed's result is a coin flip, the rate over seeds is the claim.

    ``planted``: the merged ``planted_programs.tsv`` (one row per run, program and carrying
    dimension). A program is recovered in a run when every carrying dimension is
    (``planted_program_recovery``); its FDR in the run is the largest over those dimensions
    (the weakest). ``fdrs`` lists the FDR per seed, in the order of ``seeds``.
    """
    if planted.empty:
        return pd.DataFrame(columns=PROGRAM_RATE_COLUMNS)
    per_run = planted.groupby(["model", "split", "program", "seed"], sort=True).agg(
        recovered=("recovered", "all"), fdr=("program_fdr", "max")).reset_index()
    rows = []
    for (model, split, program), g in per_run.groupby(["model", "split", "program"], sort=True):
        rows.append({
            "model": model, "split": split, "program": program, "n_seeds": len(g),
            "n_recovered": int(g["recovered"].sum()),
            "rate": float(g["recovered"].mean()),
            "median_fdr": float(g["fdr"].median()),
            "seeds": ", ".join(str(s) for s in g["seed"]),
            "fdrs": ", ".join(f"{f:.2g}" for f in g["fdr"]),
        })
    return pd.DataFrame(rows, columns=PROGRAM_RATE_COLUMNS)
