"""The ceiling and the noise of the scores (issue 22).

The ceiling is what a model that knew the true effects would score against the observed test
truth: ``ceiling_values`` estimates it from two halves of the truth cells (the replicate's
rows, ``ceiling_metrics``). The noise: ``perturbation_rows`` keeps per test perturbation what
the metrics are made of, and ``paired_bootstrap`` resamples test perturbations and seeds, the
same draw for every model, for intervals of values and of differences between models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from samsbench import metrics

# --------------------------------------------------------------------------------------------
# The ceiling: what a model that knew the true effects would score against the test truth
# --------------------------------------------------------------------------------------------

SPLIT_HALF_PREFIX = "split_half_"


def attenuation_bound(r):
    """sqrt of the full-sample reliability from a split-half correlation r (Spearman-Brown:
    2r / (1 + r)); 0 where r <= 0, NaN where r is NaN. A predictor equal to the true effects
    correlates with a truth of reliability rho at sqrt(rho) in expectation."""
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(r > 0, 2 * r / (1 + r), 0.0)
    return np.where(np.isnan(r), np.nan, np.sqrt(np.clip(rho, 0.0, 1.0)))


def ceiling_values(half_a: np.ndarray, half_b: np.ndarray, ref_a=None, ref_b=None) -> dict:
    """Ceilings from two independent halves A, B of the truth cells (perturbations x genes
    ATEs): the expected score of the true effects mu against the whole truth T ~ (A + B) / 2.
    Correlations: the attenuation bound of the split-half r (per perturbation for the
    pearson_delta family, then averaged). R2 and RMSE: the truth's noise variance is
    E[(A - B)^2] / 4, so R2 = 1 - sum((A - B)^2) / 4 / sum((T - mean T)^2) and
    RMSE = sqrt(mean((A - B)^2) / 4). Other metrics have no ceiling here."""
    full = (half_a + half_b) / 2
    rows = np.arange(full.shape[0])[:, None]
    top = metrics.top_gene_indices(full)

    def r2(a, b, t):
        ss_tot = float(np.sum((t - t.mean()) ** 2))
        return 1 - float(np.sum((a - b) ** 2)) / 4 / ss_tot if ss_tot > 0 else math.nan

    out = {
        "ate_pearson": float(attenuation_bound(
            metrics._pearson(half_a.ravel(), half_b.ravel()))),
        "ate_r2": r2(half_a, half_b, full),
        "ate_pearson_top20": float(attenuation_bound(
            metrics._pearson(half_a[rows, top].ravel(), half_b[rows, top].ravel()))),
        "ate_r2_top20": r2(half_a[rows, top], half_b[rows, top], full[rows, top]),
        "pearson_delta": metrics._nanmean(attenuation_bound(
            metrics._row_pearson(half_a, half_b))),
        "pearson_delta_top20": metrics._nanmean(attenuation_bound(
            metrics._row_pearson(half_a[rows, top], half_b[rows, top]))),
        "effect_rmse": float(np.sqrt(np.mean((half_a - half_b) ** 2) / 4)),
    }
    if ref_a is not None and ref_b is not None:
        out["pearson_delta_perturbed"] = metrics._nanmean(attenuation_bound(
            metrics._row_pearson(half_a - ref_a, half_b - ref_b)))
    return out


def ceiling_metrics(truths_a: dict, truths_b: dict, subsets: dict) -> pd.DataFrame:
    """The replicate's rows: per subset, the ceiling (``ceiling_values``) under each metric's
    own name and every metric of half A scored against half B as ``split_half_*`` (what the
    split-half replicate scores itself: it understates the ceiling, each half having half the
    cells). ``truths_a``/``truths_b``: ``truth_by_split`` of the two halves of the cells."""
    records, raw = [], []
    for name in metrics._ordered(subsets):
        key = metrics.subset_truth(name)
        if key not in truths_a or key not in truths_b:
            continue
        (ate_a, cells_a), (ate_b, cells_b) = truths_a[key], truths_b[key]
        members = pd.Index(pd.unique(np.asarray(subsets[name], dtype=str)))
        labels = [lab for lab in ate_b.index if lab in set(members) and lab in ate_a.index]
        if not labels:
            continue
        ref_a = metrics.perturbed_reference(ate_a, cells_a)
        ref_b = metrics.perturbed_reference(ate_b, cells_b)
        genes = ate_b.columns
        a = ate_a.loc[labels, genes].to_numpy(dtype=np.float64)
        b = ate_b.loc[labels, genes].to_numpy(dtype=np.float64)
        for metric, value in ceiling_values(a, b, ref_a, ref_b).items():
            if np.isfinite(value):
                records.append((metric, name, value))
        raw.append(metrics.ate_metrics(ate_a.loc[labels], ate_b, {name: labels}, ref_b))
    table = pd.DataFrame.from_records(records, columns=metrics.METRIC_COLUMNS)
    if raw:
        raw = pd.concat(raw, ignore_index=True)
        table = pd.concat([table, raw.assign(metric=SPLIT_HALF_PREFIX + raw["metric"])],
                          ignore_index=True)
    return table


# --------------------------------------------------------------------------------------------
# Per-perturbation rows, for a paired bootstrap over test perturbations and seeds (issue 22)
# --------------------------------------------------------------------------------------------

# Per test perturbation: the sums that the pooled metrics are made of (n, sums of p, t, p^2,
# t^2, p*t over its genes) and the values of the metrics that are means over perturbations.
SUM_COLUMNS = ("n", "sp", "st", "spp", "stt", "spt")
ROW_METRICS = ("pearson_delta", "pearson_delta_top20", "pearson_delta_perturbed")
POOLED_METRICS = ("ate_pearson", "ate_r2", "effect_rmse")
BOOTSTRAP_METRICS = POOLED_METRICS + ROW_METRICS


def perturbation_rows(pred: np.ndarray, true: np.ndarray, reference=None,
                      ceiling: bool = False) -> pd.DataFrame:
    """One row per perturbation (row of ``pred``/``true``): SUM_COLUMNS and ROW_METRICS.
    ``ceiling``: pred and true are the two halves A and B of the truth and the row metrics
    are their attenuation bounds (``ceiling_values``, per perturbation)."""
    top = metrics.top_gene_indices((pred + true) / 2 if ceiling else true)
    rows = np.arange(pred.shape[0])[:, None]
    out = pd.DataFrame({"n": float(pred.shape[1]), "sp": pred.sum(1), "st": true.sum(1),
                        "spp": (pred ** 2).sum(1), "stt": (true ** 2).sum(1),
                        "spt": (pred * true).sum(1)})
    bound = attenuation_bound if ceiling else (lambda r: r)
    out["pearson_delta"] = bound(metrics._row_pearson(pred, true))
    out["pearson_delta_top20"] = bound(metrics._row_pearson(pred[rows, top], true[rows, top]))
    if reference is not None:
        ref_p, ref_t = reference if ceiling else (reference, reference)
        out["pearson_delta_perturbed"] = bound(metrics._row_pearson(pred - ref_p, true - ref_t))
    return out


def metrics_from_rows(weights: np.ndarray, rows: pd.DataFrame, ceiling: bool = False) -> dict:
    """BOOTSTRAP_METRICS from per-perturbation rows weighted by ``weights`` (one vector, or a
    matrix with one resample per row: the multiplicity of each perturbation). Pooled metrics
    come from the weighted sums; ``ceiling``: rows of a replicate, whose pooled values become
    ceilings as in ``ceiling_values`` (p = half A, t = half B)."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n, sp_, st, spp, stt, spt = (w @ rows[c].to_numpy(dtype=np.float64) for c in SUM_COLUMNS)
    with np.errstate(invalid="ignore", divide="ignore"):
        var_p, var_t = spp - sp_ ** 2 / n, stt - st ** 2 / n
        pearson = (spt - sp_ * st / n) / np.sqrt(var_p * var_t)
        sq_diff = spp - 2 * spt + stt  # sum of (p - t)^2
        if ceiling:
            s_t, s_tt = (sp_ + st) / 2, (spp + 2 * spt + stt) / 4  # T = (A + B) / 2
            out = {"ate_pearson": attenuation_bound(pearson),
                   "ate_r2": 1 - sq_diff / 4 / (s_tt - s_t ** 2 / n),
                   "effect_rmse": np.sqrt(sq_diff / 4 / n)}
        else:
            out = {"ate_pearson": pearson, "ate_r2": 1 - sq_diff / var_t,
                   "effect_rmse": np.sqrt(sq_diff / n)}
        for metric in ROW_METRICS:
            if metric in rows:
                v = rows[metric].to_numpy(dtype=np.float64)
                ok = np.isfinite(v)
                out[metric] = (w[:, ok] @ v[ok]) / w[:, ok].sum(1)
    return {k: np.asarray(v).ravel() for k, v in out.items()}


BOOTSTRAP_COLUMNS = ["split", "metric", "model", "family", "value", "lo", "hi", "baseline",
                     "diff_baseline", "diff_lo", "diff_hi", "best", "ceiling", "gap_lo",
                     "gap_hi", "discriminative"]


def paired_bootstrap(rows: pd.DataFrame, roles: Mapping[str, str], n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Paired bootstrap over test perturbations and seeds of BOOTSTRAP_METRICS, per split.

    ``rows``: the experiment's per-perturbation rows (RUN_KEYS, perturbation, SUM_COLUMNS,
    ROW_METRICS; ``perturbation_rows``). Every resample draws the perturbations (those every
    run of the split scores) and the seeds with replacement, the same draw for every model,
    so differences between models are paired. Per split x metric x model: the value and its
    interval, the difference to the best simple baseline (families of role "baseline" in
    ``roles``, {family: role} from the model registry; best point value) and its interval,
    ``best`` (the best contender beats the runner-up: the interval of their difference
    excludes 0), and the ceiling (role "ceiling") minus the best baseline with
    ``discriminative`` (its interval excludes 0: normalised scores mean something)."""
    if rows.empty:
        return pd.DataFrame(columns=BOOTSTRAP_COLUMNS)
    rng = np.random.default_rng(seed)
    q = [(1 - level) / 2, (1 + level) / 2]
    out = []
    rows = rows.assign(family=rows["family"].fillna("").astype(str),
                       perturbation=rows["perturbation"].astype(str))
    for split, part in rows.groupby("split", sort=True):
        runs = part.groupby(["model", "seed"])["perturbation"].apply(set)
        perts = sorted(set.intersection(*runs.tolist()))
        if len(perts) < 2:
            continue
        seeds = sorted(part["seed"].unique())
        wp = np.vstack([np.ones(len(perts)), rng.multinomial(len(perts), [1 / len(perts)] *
                                                             len(perts), size=n_boot)])
        ws = np.vstack([np.ones(len(seeds)), rng.multinomial(len(seeds), [1 / len(seeds)] *
                                                             len(seeds), size=n_boot)])
        draws, families = {}, {}
        for model, runs_of in part.groupby("model", sort=False):
            families[model] = runs_of["family"].iloc[0]
            ceiling = roles.get(families[model]) == "ceiling"
            total, weight = {}, np.zeros(n_boot + 1)
            for s, run in runs_of.groupby("seed"):
                run = run.drop_duplicates("perturbation").set_index("perturbation").loc[perts]
                w = ws[:, seeds.index(s)]
                for metric, v in metrics_from_rows(wp, run, ceiling).items():
                    total[metric] = total.get(metric, 0) + w * v
                weight += w
            with np.errstate(invalid="ignore", divide="ignore"):
                draws[model] = {m: v / weight for m, v in total.items()}
        for metric in BOOTSTRAP_METRICS:
            have = {m: d[metric] for m, d in draws.items() if metric in d}
            if not have:
                continue
            sign = -1.0 if metrics.lower_is_better(metric) else 1.0
            contenders = sorted((m for m in have if roles.get(families[m]) != "ceiling"
                                 and np.isfinite(have[m][0])),
                                key=lambda m: -sign * have[m][0])
            bases = [m for m in contenders if roles.get(families[m]) == "baseline"]
            base = bases[0] if bases else None
            ceilings = [m for m in have if roles.get(families[m]) == "ceiling"]
            ceil = np.nanmean([have[m] for m in ceilings], axis=0) if ceilings else None
            best = None
            if len(contenders) >= 2:
                lead = sign * (have[contenders[0]] - have[contenders[1]])
                if np.nanquantile(lead[1:], q[0]) > 0:
                    best = contenders[0]
            gap = (sign * (ceil - have[base]) if ceil is not None and base is not None
                   else None)
            for model, v in have.items():
                diff = v - have[base] if base is not None else np.full_like(v, np.nan)
                out.append({
                    "split": split, "metric": metric, "model": model,
                    "family": families[model], "value": v[0],
                    "lo": _quantile(v[1:], q[0]), "hi": _quantile(v[1:], q[1]),
                    "baseline": base or "", "diff_baseline": diff[0],
                    "diff_lo": _quantile(diff[1:], q[0]), "diff_hi": _quantile(diff[1:], q[1]),
                    "best": model == best,
                    "ceiling": ceil[0] if ceil is not None else math.nan,
                    "gap_lo": _quantile(gap[1:], q[0]) if gap is not None else math.nan,
                    "gap_hi": _quantile(gap[1:], q[1]) if gap is not None else math.nan,
                    "discriminative": bool(gap is not None and _quantile(gap[1:], q[0]) > 0),
                })
    return pd.DataFrame(out, columns=BOOTSTRAP_COLUMNS)


def _quantile(values: np.ndarray, q: float) -> float:
    values = values[np.isfinite(values)]
    return float(np.quantile(values, q)) if values.size else math.nan


