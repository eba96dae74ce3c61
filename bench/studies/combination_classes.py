"""The default simulation's combination classes on the data themselves (docs/simulation.md):
per class, the additive prediction (the sum of the two singles' observed effects) and a
split-half of the cells (one half's effects against the other's), on pearson_delta and R².

Usage: python bench/studies/combination_classes.py ['{simulate overrides}']
Data: config.yaml's datasets.simulated.simulate, with the overrides on top.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pandas as pd

from samsbench import config, metrics
from samsbench.data.simulate import CLASS_KEY, simulate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(overrides: dict) -> pd.DataFrame:
    cfg = config.load(os.path.join(ROOT, "config.yaml"))
    data = simulate(**{**cfg["datasets"]["simulated"]["simulate"], **overrides})
    classes = data.obs.groupby("perturbation", observed=True)[CLASS_KEY].first().astype(str)
    ate = metrics.data_ate(data)
    control = (data.obs["perturbation"] == data.uns["control_label"]).to_numpy()
    half = np.random.default_rng(0).random(data.n_obs) < 0.5
    a, b = metrics.data_ate(data[half | control]), metrics.data_ate(data[~half | control])
    rows = []
    for name in sorted(set(classes) - {"single", "control"}):
        labels = [lab for lab in ate.index if classes.get(lab) == name]
        true = ate.loc[labels].to_numpy()
        summed = np.stack([ate.loc[lab.split("+")].to_numpy().sum(0) for lab in labels])
        pa, pb = a.loc[labels].to_numpy(), b.loc[labels].to_numpy()
        rows.append({
            "class": name, "n": len(labels),
            "additive_pearson_delta": metrics.METRICS["pearson_delta"](summed, true, None),
            "split_half_pearson_delta": metrics.METRICS["pearson_delta"](pa, pb, None),
            "additive_r2": metrics.METRICS["ate_r2"](summed, true, None),
            "split_half_r2": metrics.METRICS["ate_r2"](pa, pb, None),
            "mean_abs_effect": float(np.abs(true).mean()),
        })
    return pd.DataFrame(rows)


if __name__ == "__main__":
    table = main(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
    print(table.round(3).to_string(index=False))
