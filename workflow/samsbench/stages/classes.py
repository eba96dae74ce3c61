"""Scores per combination class of a simulation (issue 22; docs/simulation.md): from an
experiment's metrics.tsv, one row per model x split x class with each metric's mean and sd over
seeds on the held-out combinations of that class, and the whole test set beside them. The
classes are subsets of metrics.tsv (samsbench.metrics.class_subsets); this only gathers them
into the table and figure a reader compares models on."""

from __future__ import annotations

import pandas as pd

from samsbench import io as sbio
from samsbench.data.simulate import COMBINATION_CLASSES

CLASS_METRICS = ("pearson_delta", "ate_r2", "effect_rmse")
COLUMNS = ["model", "family", "split", "subset", "metric", "n_seeds", "mean", "sd"]


def class_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds of ``CLASS_METRICS`` per model, split and class (and ``test``)."""
    subsets = ["test", *COMBINATION_CLASSES]
    part = metrics[metrics["subset"].isin(subsets) & metrics["metric"].isin(CLASS_METRICS)]
    if part.empty:
        return pd.DataFrame(columns=COLUMNS)
    table = part.groupby(["model", "family", "split", "subset", "metric"], sort=False)[
        "value"].agg(n_seeds="count", mean="mean", sd="std").reset_index()
    order = {s: i for i, s in enumerate(subsets)}
    table = table.sort_values(["split", "metric", "model", "subset"], kind="stable",
                              key=lambda c: c.map(order) if c.name == "subset" else c)
    return table[COLUMNS].reset_index(drop=True)


def run(metrics_tsv, out_tsv, out_png) -> pd.DataFrame:
    """The workflow's step: the class table and its figure from an experiment's metrics."""
    from samsbench.plots.experiment import class_scores_plot

    table = class_table(pd.read_csv(metrics_tsv, sep="\t"))
    sbio.write_tsv(table, out_tsv)
    sbio.write_png(class_scores_plot(table), out_png)
    return table
