"""The paper's selection and aggregation rules, as tables (pandas only; figures: plots.paper,
files: stages.figures). Follows the reference implementation's result tables:

* one row per run with its settings and metrics (the reference's results CSV);
* mean, sd (ddof 1) and count over seeds (split seeds on Norman, training seeds on Replogle);
* relative IWELBO per split seed against SAMS-VAE (correlated guide, additive encoding,
  non-mean-field encoder) at fraction 0 with the same n_layers, before averaging;
* Norman: the n_layers table at the largest fraction, then the main table at the chosen
  n_layers with the non-mean-field encoder;
* Replogle: settings at one n_latent ranked by mean validation IWELBO; per model the best
  setting, and in it the seed with the best test IWELBO for the figures.
"""

from __future__ import annotations


import numpy as np
import pandas as pd

# Families in the order of the reference's bar plots and tables.
FAMILY_ORDER = ["sams_vae", "sams_vae_mean_field", "cpa_vae", "conditional_vae", "svae_plus",
                "additive_mean", "control_mean", "train_mean", "linear", "replicate"]
# The bar plots leave the mean-field guide out (it is in the tables and line plots).
# Models without a likelihood (no IWELBO): kept in the tables although they have none.
MEAN_FAMILIES = ["additive_mean", "control_mean", "train_mean", "linear", "replicate"]
BAR_FAMILIES = ["sams_vae", "cpa_vae", "conditional_vae", "svae_plus"]
BASELINE = {"family": "sams_vae", "encoding": "additive", "mean_field_encoder": False,
            "fraction": 0.0}
SETTING_COLUMNS = ["n_latent", "n_layers", "encoding", "mean_field_encoder", "mask_prior_prob",
                   "mask_beta_concentration_2"]
RUN_KEYS = ["model", "split", "seed"]
# Norman main-table metrics (reference columns: val/IWELBO, its relative value, test/IWELBO,
# its relative value, ATE_pearsonr-test, ATE_pearsonr_top20-test). The ATE columns are the
# ``paper_*`` rows of metrics.tsv: the paper's convention (all cells of a perturbation as the
# truth, training cells included; 10,000 counts per predicted cell), not the benchmark's
# held-out, depth-matched metrics.
NORMAN_METRICS = ["val_iwelbo", "val_iwelbo_relative", "test_iwelbo", "test_iwelbo_relative",
                  "paper_ate_pearson_test", "paper_ate_pearson_top20_test"]
REPLOGLE_METRICS = ["val_iwelbo", "test_iwelbo", "paper_ate_pearson_all",
                    "paper_ate_pearson_top20_all"]
METRIC_LABELS = {
    "val_iwelbo": "val IWELBO",
    "val_iwelbo_relative": "val IWELBO (relative)",
    "test_iwelbo": "test IWELBO",
    "test_iwelbo_relative": "test IWELBO (relative)",
    "paper_ate_pearson_test": "ATE r (test; paper: all cells)",
    "paper_ate_pearson_top20_test": "ATE r top-20 (test; paper: all cells)",
    "paper_ate_pearson_all": "ATE r (paper)",
    "paper_ate_pearson_top20_all": "ATE r top-20 (paper)",
}


# ----------------------------------------------------------------------------- run table


def metric_column(metric: str, subset: str) -> str:
    """Wide column name: IWELBOs keep their name (their subset is in it), others metric_subset."""
    return metric if metric.endswith("iwelbo") else f"{metric}_{subset}"


def run_table(metrics: pd.DataFrame, settings: list[dict]) -> pd.DataFrame:
    """One row per run: its settings (config.experiment_run_settings) and metrics, wide."""
    runs = pd.DataFrame(settings)
    if metrics.empty:
        return runs
    wide = metrics.assign(column=[metric_column(m, s) for m, s in
                                  zip(metrics["metric"], metrics["subset"])])
    wide = wide.pivot_table(index=RUN_KEYS, columns="column", values="value", aggfunc="first")
    wide.columns.name = None
    table = runs.merge(wide.reset_index(), on=RUN_KEYS, how="left")
    return table


def family_rank(family: str) -> int:
    return FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)


def sort_families(frame: pd.DataFrame, *then: str) -> pd.DataFrame:
    keys = frame.assign(_rank=frame["family"].map(family_rank))
    return keys.sort_values(["_rank", "family", *then], kind="stable").drop(columns="_rank")


# ----------------------------------------------------------------------------- statistics


def mean_sd(frame: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean, sd (pandas default ddof 1, NaN for one seed) and count of each column per group;
    columns {c}_mean, {c}_sd, {c}_n. Missing columns give NaN, so a table always has its shape."""
    frame = frame.copy()
    for column in columns:
        if column not in frame:
            frame[column] = np.nan
    grouped = frame.groupby(by, dropna=False, sort=False)[columns]
    out = grouped.agg(["mean", "std", "count"])
    out.columns = [f"{c}_{'sd' if s == 'std' else 'n' if s == 'count' else s}"
                   for c, s in out.columns]
    return out.reset_index()


def format_mean_sd(mean: float, sd: float, digits: int = 2) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}f}"
    if sd is not None and np.isfinite(sd):
        text += f" ± {sd:.{digits}f}"
    return text.replace("-", "−")


# ----------------------------------------------------------------------------- Norman


def add_relative_iwelbo(table: pd.DataFrame) -> pd.DataFrame:
    """val/test IWELBO minus that of the baseline run (SAMS-VAE correlated, additive, non-MF
    encoder, fraction 0) with the same split seed, n_layers and training seed."""
    table = table.copy()
    keys = ["split_seed", "n_layers", "seed"]
    is_base = np.ones(len(table), dtype=bool)
    for column, value in BASELINE.items():
        is_base &= (table[column] == value).to_numpy()
    for metric in ("val_iwelbo", "test_iwelbo"):
        if metric not in table:
            table[metric] = np.nan
        base = table.loc[is_base, keys + [metric]].drop_duplicates(keys)
        base = base.rename(columns={metric: "_base"})
        merged = table[keys].merge(base, on=keys, how="left")
        table[f"{metric}_relative"] = table[metric].to_numpy() - merged["_base"].to_numpy()
    return table


def largest_fraction(table: pd.DataFrame) -> float:
    return float(table["fraction"].max())


def layer_table(table: pd.DataFrame) -> pd.DataFrame:
    """Validation IWELBO mean ± sd over split seeds per model, encoding and n_layers, at the
    largest fraction (1 in the paper), non-mean-field encoder."""
    part = table[(table["fraction"] == largest_fraction(table)) & ~table["mean_field_encoder"]]
    part = part[part["val_iwelbo"].notna()] if "val_iwelbo" in part else part
    out = mean_sd(part, ["family", "encoding", "n_layers"], ["val_iwelbo"])
    out.insert(3, "fraction", largest_fraction(table))
    return sort_families(out, "encoding", "n_layers").reset_index(drop=True)


def choose_layers(layers: pd.DataFrame, rule) -> dict:
    """(family, encoding) -> n_layers: a fixed integer (the reference: 1; the nearest available
    if absent), or 'best' = the highest mean validation IWELBO in the layer table."""
    chosen = {}
    for (family, encoding), part in layers.groupby(["family", "encoding"], sort=False):
        available = sorted(part["n_layers"].unique())
        if rule == "best" and part["val_iwelbo_mean"].notna().any():
            chosen[(family, encoding)] = int(part.loc[part["val_iwelbo_mean"].idxmax(), "n_layers"])
        else:
            want = 1 if rule == "best" else int(rule)
            chosen[(family, encoding)] = int(min(available, key=lambda n: (abs(n - want), n)))
    return chosen


def norman_main_table(table: pd.DataFrame, chosen_layers: dict) -> pd.DataFrame:
    """Mean ± sd over split seeds of NORMAN_METRICS per encoding, model and fraction, at the
    chosen n_layers, non-mean-field encoder (the reference's main table)."""
    keep = ~table["mean_field_encoder"].to_numpy()
    wanted = [chosen_layers.get((f, e)) for f, e in zip(table["family"], table["encoding"])]
    keep &= np.array([w is not None and n == w for w, n in zip(wanted, table["n_layers"])])
    part = table[keep]
    if "val_iwelbo" in part:  # the reference drops runs without a validation IWELBO
        part = part[part["val_iwelbo"].notna() | (part["family"].isin(MEAN_FAMILIES))]
    out = mean_sd(part, ["encoding", "family", "fraction", "n_layers"], NORMAN_METRICS)
    out = sort_families(out, "fraction")
    out["_enc"] = (out["encoding"] != "additive").astype(int)
    out = out.sort_values(["_enc"], kind="stable").drop(columns="_enc")
    return out.reset_index(drop=True)


def figure_rows(main: pd.DataFrame, families=None) -> pd.DataFrame:
    """The main-table rows the figures draw: per model the additive encoding when it has one
    (models that cannot compose, SVAE+, only have unique)."""
    rows = []
    for family, part in main.groupby("family", sort=False):
        if families is not None and family not in families:
            continue
        encodings = set(part["encoding"])
        encoding = "additive" if "additive" in encodings else sorted(encodings)[0]
        rows.append(part[part["encoding"] == encoding])
    if not rows:
        return main.iloc[:0]
    return sort_families(pd.concat(rows), "fraction").reset_index(drop=True)


def determinism_table(this: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """Validation IWELBO of matching runs (model, split seed, training seed) at fraction 1 in
    two experiments whose splits share train and val cells there (OOD and data efficiency)."""
    keys = ["model", "split_seed", "seed"]

    def at_one(frame):
        part = frame[frame["fraction"] == 1.0]
        cols = keys + ["val_iwelbo"] if "val_iwelbo" in part else keys
        return part[cols].dropna()

    merged = at_one(this).merge(at_one(other), on=keys, suffixes=("", "_other"))
    if "val_iwelbo" not in merged:
        merged["val_iwelbo"] = merged["val_iwelbo_other"] = np.nan
    merged["abs_difference"] = (merged["val_iwelbo"] - merged["val_iwelbo_other"]).abs()
    merged["identical"] = merged["abs_difference"] <= 1e-6 * merged["val_iwelbo"].abs().clip(1)
    return merged.sort_values(keys).reset_index(drop=True)


# ----------------------------------------------------------------------------- Replogle


def varying_settings(table: pd.DataFrame, family: str) -> list[str]:
    part = table[table["family"] == family]
    return [c for c in SETTING_COLUMNS if c in part and part[c].nunique(dropna=False) > 1]


def describe_setting(row: pd.Series, columns: list[str]) -> str:
    names = {"n_latent": "K", "n_layers": "layers", "mask_prior_prob": "mask prior",
             "mask_beta_concentration_2": "c2", "encoding": "encoding"}
    parts = []
    for column in columns:
        value = row[column]
        if column == "mean_field_encoder":
            parts.append("mean-field encoder" if value else "joint encoder")
        else:
            parts.append(f"{names.get(column, column)}={value:g}" if isinstance(value, float)
                         else f"{names.get(column, column)}={value}")
    return ", ".join(parts) or "–"


def replogle_settings(table: pd.DataFrame, n_latent: int) -> pd.DataFrame:
    """Every setting at n_latent (the reference keeps 100), mean/sd/count over training seeds,
    ranked by mean validation IWELBO; best_for_model marks the first setting of each model."""
    part = table[table["n_latent"] == n_latent]
    if part.empty:  # e.g. a smoke run at another K: use the smallest there is
        part = table[table["n_latent"] == table["n_latent"].min()]
    by = ["family", "model"] + [c for c in SETTING_COLUMNS if c != "n_latent"]
    out = mean_sd(part, by, REPLOGLE_METRICS)
    out.insert(2, "n_latent", part["n_latent"].iloc[0] if len(part) else n_latent)
    out["setting"] = [describe_setting(row, varying_settings(part, row["family"]))
                      for _, row in out.iterrows()]
    out["_rank"] = out["family"].map(family_rank)
    out = out.sort_values(["_rank", "val_iwelbo_mean"], ascending=[True, False],
                          kind="stable", na_position="last").drop(columns="_rank")
    out["best_for_model"] = ~out.duplicated("family")
    return out.reset_index(drop=True)


def replogle_models(table: pd.DataFrame, settings: pd.DataFrame) -> pd.DataFrame:
    """One row per model family: its best setting's metrics (mean ± sd over seeds) and the
    figure run, the seed with the best test IWELBO within that setting."""
    best = settings[settings["best_for_model"]].copy()
    figure_seed, figure_dir = [], []
    for _, row in best.iterrows():
        runs = table[table["model"] == row["model"]]
        if "test_iwelbo" in runs and runs["test_iwelbo"].notna().any():
            pick = runs.loc[runs["test_iwelbo"].idxmax()]
        else:
            pick = runs.sort_values("seed").iloc[0]
        figure_seed.append(int(pick["seed"]))
        figure_dir.append(pick["dir"])
    best["figure_seed"] = figure_seed
    best["figure_run"] = figure_dir
    return best.drop(columns=["best_for_model"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- display


def display_table(frame: pd.DataFrame, metrics: list[str], keys: list[str],
                  labels: dict, digits: dict | None = None) -> pd.DataFrame:
    """Strings for a rendered table: key columns, then 'mean ± sd' per metric."""
    digits = digits or {}
    out = pd.DataFrame({labels.get(k, k): frame[k].map(_plain) for k in keys})
    for metric in metrics:
        d = digits.get(metric, 3 if metric.startswith("ate") else 2)
        out[METRIC_LABELS.get(metric, metric)] = [
            format_mean_sd(m, s, d) for m, s in zip(frame[f"{metric}_mean"], frame[f"{metric}_sd"])
        ]
    n_columns = [f"{m}_n" for m in metrics if f"{m}_n" in frame]
    if n_columns:
        out["n"] = frame[n_columns].max(axis=1).astype(int).to_numpy()
    return out


def _plain(value):
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return value


def layer_display(layers: pd.DataFrame, chosen: dict, family_labels: dict) -> pd.DataFrame:
    """The reference's layout: one row per model and encoding, one column per n_layers."""
    rows = []
    for (family, encoding), part in layers.groupby(["family", "encoding"], sort=False):
        row = {"model": family_labels.get(family, family), "encoding": encoding}
        for _, r in part.iterrows():
            mark = " *" if chosen.get((family, encoding)) == r["n_layers"] else ""
            row[f"n_layers={int(r['n_layers'])}"] = (
                format_mean_sd(r["val_iwelbo_mean"], r["val_iwelbo_sd"], 3) + mark)
        rows.append(row)
    out = pd.DataFrame(rows)
    layer_cols = sorted([c for c in out if c.startswith("n_layers=")],
                        key=lambda c: int(c.split("=")[1]))
    return out[["model", "encoding"] + layer_cols].fillna("–") if len(out) else out
