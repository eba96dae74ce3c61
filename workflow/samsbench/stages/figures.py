"""The figure steps: the experiment's figures, the enrichment figures and the paper's tables
and figures. Inputs are read here and the drawing is done by samsbench.plots; every file is
written through samsbench.io."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from samsbench import io as sbio
from samsbench import paper
from samsbench.plots import enrichment as plot_enrichment
from samsbench.plots import experiment as pe
from samsbench.plots import paper as pp

log = logging.getLogger(__name__)


def _png(fig, path: str, dpi: int = 120) -> None:
    sbio.write_png(fig, path, dpi=dpi)
    log.info("wrote %s", path)


def _table_png(frame: pd.DataFrame, path: str, title: str, note: str = "") -> None:
    # dpi 130 and no tight bounding box: table_figure lays the page out exactly
    fig = pp.table_figure(frame, title, note)
    sbio.write_png(fig, path, dpi=130, tight=False)


def _history(run_dir: str) -> pd.DataFrame:
    path = sbio.run_file(run_dir, "history")
    return pd.read_csv(path, sep="\t") if os.path.exists(path) else pd.DataFrame()


# ------------------------------------------------------------------------------ experiment


def experiment(metrics_path: str, runs: list[dict], outputs: dict) -> None:
    """ATE metrics and IWELBO (relative to a reference model) as dot plots with seeds as
    points, and training curves of an experiment."""
    from samsbench.stages.report import undefined_reason

    metrics = pd.read_csv(metrics_path, sep="\t")
    models = pd.DataFrame([{"model": r["model"], "family": r["family"]} for r in runs])
    models = models.drop_duplicates("model")
    reasons = {(m, metric): undefined_reason(metric, f, short=True) for m, f in
               zip(models["model"], models["family"]) for metric in
               ("ate_pearson", "ate_r2", "ate_pearson_top20", "test_iwelbo", "val_iwelbo")}
    ate = [(m, "test", label) for m, label in (("ate_pearson", "Pearson r"), ("ate_r2", "R²"),
                                               ("ate_pearson_top20", "Pearson r, top-20 genes"))]
    _png(pe.metric_dots(metrics, ate, models, "Average treatment effects on the test "
                        "perturbations (higher is better)", reasons), outputs["ate"])
    reference = iwelbo_reference(metrics, runs)
    if reference is None:
        relative, title = metrics.iloc[:0], "Held-out IWELBO: no model has a likelihood"
    else:
        relative = pe.relative_to(metrics, reference)
        ref = metrics[(metrics["model"] == reference) & (metrics["metric"] == "test_iwelbo")]
        title = (f"Held-out IWELBO relative to {reference} (per seed; higher is better); "
                 f"{reference}'s test IWELBO = {ref['value'].mean():.2f} nats per cell")
    panels = [("test_iwelbo", "test", "IWELBO − reference (nats per cell)"),
              ("val_iwelbo", "val", "IWELBO − reference (nats per cell)")]
    _png(pe.metric_dots(relative, panels, models, title, reasons, reference_line=0.0,
                         reference=reference),
         outputs["iwelbo"])
    _png(pe.training_curves(runs, [_history(r["dir"]) for r in runs]), outputs["curves"])


def iwelbo_reference(metrics: pd.DataFrame, runs: list[dict]) -> str | None:
    """The model the IWELBO figure is relative to: the first SAMS-VAE (correlated guide) of the
    experiment, as the paper's, else the first model with a test IWELBO."""
    have = set(metrics.loc[metrics["metric"] == "test_iwelbo", "model"])
    order = list(dict.fromkeys(r["model"] for r in runs))
    family = {r["model"]: r["family"] for r in runs}
    for model in order:
        if model in have and family[model] == "sams_vae":
            return model
    return next((m for m in order if m in have), None)


# ------------------------------------------------------------------------------ enrichment


def enrichment_heatmap(latents: list[str], titles: list[str], gmts: list[str], out: str) -> None:
    """Mask heatmaps of each model's first run, rows grouped by the first non-empty library."""
    import anndata as ad

    from samsbench.enrichment.gene_sets import perturbation_targets
    from samsbench.enrichment.recovery import MASK_LAYER
    from samsbench.stages.enrich import read_library

    library, sets = None, {}
    for path in gmts:  # candidates in order; the first non-empty library groups rows
        sets = read_library(path)
        if sets:
            library = Path(path).name[: -len(".gmt")]
            break
    panels = []
    for title, path in zip(titles, latents):
        adata = ad.read_h5ad(path)
        if MASK_LAYER not in adata.layers:
            continue
        mask = pd.DataFrame(adata.layers[MASK_LAYER], index=adata.obs_names.astype(str),
                            columns=adata.var_names.astype(str))
        caveat = mask_caveat(mask.to_numpy())
        if caveat:
            log.warning("%s: %s", title, caveat)
        panels.append((title + (f"\n{caveat}" if caveat else ""), mask,
                       perturbation_targets(adata)))
    _png(plot_enrichment.mask_heatmaps(panels, sets, library or ""), out, dpi=150)


# q(mask) starts at sigmoid(mask_init_logits = 0) = 0.5; a mask whose probabilities mostly
# stay near it has not been learned yet (too few steps), whatever the heatmap seems to show.
MASK_INIT_PROB = 0.5


def mask_caveat(mask_prob: np.ndarray, near: float = 0.2, share: float = 0.5) -> str:
    """A warning for a heatmap's title when more than ``share`` of the mask probabilities
    lie within ``near`` of their initial value, else ''."""
    values = np.asarray(mask_prob, dtype=np.float64)
    close = float(np.mean(np.abs(values - MASK_INIT_PROB) < near)) if values.size else 0.0
    if close <= share:
        return ""
    return (f"caveat: {close:.0%} of mask probabilities within {near} of their initial "
            f"{MASK_INIT_PROB} (not learned yet)")


def enrichment_top_terms(table_path: str, library: str, alpha: float, out: str) -> None:
    """Dot plot of the top terms of one library, one facet per model (its first split/seed)."""
    table = pd.read_csv(table_path, sep="\t")
    table = table[table["library"] == library]
    # one facet per model: its first split and seed, so the figure stays readable on big grids
    first = table[["model", "split", "seed"]].drop_duplicates().groupby("model").head(1)
    table = table.merge(first, on=["model", "split", "seed"])
    _png(plot_enrichment.top_terms_dotplot(table, library, alpha), out, dpi=150)


def enrichment_recovery(table_path: str, out: str) -> None:
    _png(plot_enrichment.complex_recovery_plot(pd.read_csv(table_path, sep="\t")), out, dpi=150)


# ------------------------------------------------------------------------------ paper


XLABELS = {"norman_ood": "Fraction of Combinations in Training Set",
           "norman_data_efficiency": "Fraction of Combination Cells in Training Set"}
HELD_OUT = {"norman_ood": "Held Out Combinations", "norman_data_efficiency": "Test Combinations"}


def paper_norman(metrics_path: str, settings: list[dict], options: dict, outputs: dict,
                 benchmark_root: str) -> pd.DataFrame:
    """Every table and figure of one Norman experiment (reference §6.1/6.2)."""
    kind = options["kind"]
    metrics = pd.read_csv(metrics_path, sep="\t")
    runs = paper.add_relative_iwelbo(paper.run_table(metrics, settings))
    sbio.write_tsv(runs, outputs["runs"])

    layers = paper.layer_table(runs)
    chosen = paper.choose_layers(layers, options.get("n_layers", 1))
    layers["selected"] = [chosen.get((f, e)) == n for f, e, n in
                          zip(layers["family"], layers["encoding"], layers["n_layers"])]
    sbio.write_tsv(layers, outputs["layers_tsv"])
    labels = {f: pe.family_label(f) for f in set(layers["family"])}
    _table_png(paper.layer_display(layers, chosen, labels), outputs["layers_png"],
              f"Validation IWELBO by n_layers at fraction {paper.largest_fraction(runs):g} "
              "(mean ± sd over split seeds)", note="* n_layers used in the main table and figures")

    main = paper.norman_main_table(runs, chosen)
    sbio.write_tsv(main, outputs["main_tsv"])
    shown = main.assign(model=[pp.label(f) for f in main["family"]])
    _table_png(paper.display_table(shown, paper.NORMAN_METRICS,
                                  ["encoding", "model", "fraction", "n_layers"], {}),
              outputs["main_png"], "Mean ± sd over split seeds (non-mean-field encoder)")

    rows = paper.figure_rows(main)
    xlabel, held = XLABELS[kind], HELD_OUT[kind]
    _png(pp.norman_bars(rows, "test_iwelbo_relative", f"Relative IWELBO ({held})", xlabel,
                        "Test IWELBO relative to SAMS-VAE at fraction 0"), outputs["bars_iwelbo"])
    _png(pp.norman_bars(rows, "paper_ate_pearson_test",
                        f"Predicted Average Treatment Effect Correlation ({held})", xlabel,
                        "ATE Pearson r on the test perturbations"), outputs["bars_ate"])
    lines = [
        ("lines_relative_iwelbo", "test_iwelbo_relative", f"Relative IWELBO ({held})", True),
        ("lines_ate", "paper_ate_pearson_test", f"ATE Pearson r ({held})", True),
        ("lines_ate_top20", "paper_ate_pearson_top20_test", f"ATE Pearson r, top-20 genes ({held})",
         True),
        ("lines_iwelbo", "test_iwelbo", f"Test IWELBO ({held})", False),
        ("lines_iwelbo_band", "test_iwelbo", f"Test IWELBO ({held})", True),
    ]
    for key, metric, ylabel, band in lines:
        _png(pp.norman_lines(rows, metric, ylabel, xlabel, ylabel + (" ± sd" if band else ""),
                             band=band), outputs[key])
    _runtime(settings, benchmark_root, outputs)
    return runs


def paper_replogle(metrics_path: str, settings: list[dict], options: dict, outputs: dict,
                   benchmark_root: str, data_path: str) -> pd.DataFrame:
    """The Replogle tables (settings ranked by validation IWELBO; the model table), training
    curves and latent heatmaps of each model's figure run (reference §6.3)."""
    import anndata as ad

    metrics = pd.read_csv(metrics_path, sep="\t")
    runs = paper.run_table(metrics, settings)
    sbio.write_tsv(runs, outputs["runs"])
    ranked = paper.replogle_settings(runs, int(options.get("n_latent", 100)))
    sbio.write_tsv(ranked, outputs["settings_tsv"])
    shown = ranked.assign(model=[pp.label(f) for f in ranked["family"]],
                          best=ranked["best_for_model"].map({True: "*", False: ""}))
    _table_png(paper.display_table(shown, paper.REPLOGLE_METRICS,
                                  ["model", "setting", "n_latent", "best"], {}),
              outputs["settings_png"],
              "Settings ranked by mean validation IWELBO (mean ± sd over training seeds)",
              note="* best setting of each model (used in the model table and figures)")
    models = paper.replogle_models(runs, ranked)
    sbio.write_tsv(models, outputs["models_tsv"])
    shown = models.assign(model=[pp.label(f) for f in models["family"]])
    _table_png(paper.display_table(shown, ["test_iwelbo", "paper_ate_pearson_all", "val_iwelbo"],
                                  ["model", "setting", "n_latent", "figure_seed"],
                                  {"figure_seed": "figure seed"}),
              outputs["models_png"], "Replogle: test IWELBO and ATE Pearson r "
              "(mean ± sd over training seeds, best setting per model)")

    curves, panels = [], []
    for _, row in models.iterrows():
        setting = "" if row["setting"] == "–" else f"{row['setting']}, "
        name = f"{pp.label(row['family'])}\n{setting}seed {row['figure_seed']}"
        hist_path = sbio.run_file(row["figure_run"], "history")
        hist = pd.read_csv(hist_path, sep="\t") if os.path.exists(hist_path) else pd.DataFrame()
        curves.append((row["family"], name.replace("\n", ", "), hist))
        latents_path = sbio.run_file(row["figure_run"], "latents")
        if os.path.exists(latents_path):
            panels.append({"name": name, "family": row["family"],
                           "latents": ad.read_h5ad(latents_path)})
    _png(pp.training_curves(curves), outputs["curves"])
    data = ad.read_h5ad(data_path, backed="r")
    pathways = {k: list(v) for k, v in dict(data.uns.get("pathways", {})).items()}
    data.file.close()
    for key, layer, shown_pathways, title in (
            ("masks_all", "mask_prob", None, "Mask probabilities, all perturbations"),
            ("masks_pathways", "mask_prob", pathways or None,
             "Mask probabilities, perturbations in the annotated pathways"),
            ("embeddings_pathways", "embedding_mean", pathways or None,
             "Embedding means, perturbations in the annotated pathways")):
        _png(pp.latent_heatmaps(panels, layer, shown_pathways, title), outputs[key])
    _runtime(settings, benchmark_root, outputs)
    return runs


def _runtime(settings: list[dict], benchmark_root: str, outputs: dict) -> None:
    runtime = runtime_table(settings, benchmark_root)
    sbio.write_tsv(runtime, outputs["runtime_tsv"])
    shown = runtime.assign(model=[pp.label(f) for f in runtime["family"]])
    names = {"steps_per_second": "steps/s", "train_seconds_mean": "train s (mean)",
             "train_hours_total": "train h (total)", "train_max_rss_mb": "train peak MB",
             "evaluate_seconds_mean": "evaluate s (mean)",
             "evaluate_hours_total": "evaluate h (total)",
             "evaluate_max_rss_mb": "evaluate peak MB"}
    shown = shown[["model", "runs", "steps"] + [c for c in names if c in shown]]
    shown = shown.rename(columns=names)
    _table_png(shown.map(lambda v: f"{v:.4g}" if isinstance(v, float) else v),
              outputs["runtime_png"], "Runtime per model (benchmark files of every job)")


def paper_determinism(this_path: str, other_path: str, out_tsv: str, out_png: str) -> None:
    """Validation IWELBO at fraction 1 in both Norman experiments, run by run."""
    table = paper.determinism_table(pd.read_csv(this_path, sep="\t"),
                                    pd.read_csv(other_path, sep="\t"))
    sbio.write_tsv(table, out_tsv)
    shown = table.assign(val_iwelbo=table["val_iwelbo"].map(lambda v: f"{v:.6f}"),
                         val_iwelbo_other=table["val_iwelbo_other"].map(lambda v: f"{v:.6f}"),
                         abs_difference=table["abs_difference"].map(lambda v: f"{v:.2g}"))
    n_same = int(table["identical"].sum())
    _table_png(shown.rename(columns={"val_iwelbo": "val IWELBO", "val_iwelbo_other":
                                    "val IWELBO (other)"}),
              out_png, f"Determinism check at fraction 1: {n_same} of {len(table)} runs identical")


def runtime_table(run_settings: list[dict], benchmark_root: str,
                  steps=("train", "evaluate")) -> pd.DataFrame:
    """Per model family: runs, training wall time (mean and total hours), steps per second
    and peak memory, from each run's summary.json and the train/evaluate benchmark files."""
    rows = []
    for run in run_settings:
        row = {"family": run["family"], "model": run["model"]}
        summary = sbio.read_summary(run["dir"])
        if summary is not None:
            row["steps"] = summary.get("steps")
            row["steps_per_second"] = summary.get("timing", {}).get("steps_per_second")
        for step in steps:
            for found in glob.glob(sbio.run_benchmark(benchmark_root, step, run)):
                bench = pd.read_csv(found, sep="\t")
                row[f"{step}_seconds"] = float(bench["s"].iloc[0])
                if "max_rss" in bench:
                    row[f"{step}_max_rss_mb"] = pd.to_numeric(bench["max_rss"], errors="coerce").iloc[0]
        rows.append(row)
    frame = pd.DataFrame(rows)
    columns = ["steps", "steps_per_second"] + [f"{s}_{c}" for s in steps
                                               for c in ("seconds", "max_rss_mb")]
    for column in columns:
        if column not in frame:
            frame[column] = np.nan
    aggregations = {"runs": ("model", "size"), "steps": ("steps", "median"),
                    "steps_per_second": ("steps_per_second", "mean")}
    for step in steps:
        aggregations[f"{step}_seconds_mean"] = (f"{step}_seconds", "mean")
        aggregations[f"{step}_hours_total"] = (f"{step}_seconds",
                                               lambda s: s.sum(min_count=1) / 3600)
        aggregations[f"{step}_max_rss_mb"] = (f"{step}_max_rss_mb", "max")
    out = frame.groupby("family", sort=False).agg(**aggregations).reset_index()
    return paper.sort_families(out).reset_index(drop=True)
