"""Seed sweep of one model on the default simulated benchmark (docs/mask_recovery.md): per
training seed, planted programs recovered (and each program's FDR), complex-recovery AUROCs and
the planted-mask AUROC. Run once per floating-point path, e.g. a second time with
ATEN_CPU_CAPABILITY=default, to see how much rounding alone moves a run.

Usage: OMP_NUM_THREADS=1 python bench/studies/program_recovery_seeds.py MODEL SEED [SEED ...]
Appends one row per seed to results/studies/program_recovery_seeds.tsv.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import anndata as ad
import pandas as pd
import torch

from samsbench import config
from samsbench.data import contract
from samsbench.data.simulate import simulate
from samsbench.enrichment import gene_sets, recovery
from samsbench.stages import data as data_stage
from samsbench.stages import enrich as stage
from samsbench.stages import train as train_stage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "results", "studies", "program_recovery_seeds.tsv")


def main(model: str, seeds: list[int]) -> None:
    torch.set_num_threads(1)
    cfg = config.load(os.path.join(ROOT, "config.yaml"))
    experiment = cfg["experiments"]["simulated"]
    split = experiment["splits"][0]
    work = tempfile.mkdtemp()
    data_path, split_path = os.path.join(work, "data.h5ad"), os.path.join(work, "split.tsv")
    data = simulate(**cfg["datasets"]["simulated"]["simulate"])
    contract.write(data, data_path)
    data_stage.split(data_path, cfg["splits"][split], split_path)
    library, _ = gene_sets.simulation_programs(data)
    libraries = {library: stage.load_gene_sets(library),
                 "pathways": stage.load_gene_sets("pathways", None, data)}
    labels, true_mask = recovery.planted_mask(data.uns)
    settings = {"gene_sets": [library], "threshold": 0.5, "min_set_size": 3,
                "recovery_library": "pathways", "heatmap_library": "auto", "alpha": 0.05,
                "models": None}
    path = os.environ.get("ATEN_CPU_CAPABILITY", "native")
    for seed in seeds:
        start = time.time()
        run_dir = os.path.join(work, f"{model}_seed{seed}")
        train_stage.train(data_path, split_path,
                          config.model_hyperparameters(cfg, "simulated", model),
                          dict(experiment["training"]), run_dir, seed, progress=False,
                          identity={"model": model, "split": split})
        identity = {"model": model, "split": split, "seed": seed, "family": model}
        out = stage.run_tables(run_dir, libraries, settings, data, identity)
        row = {"model": model, "seed": seed, "fp_path": path,
               "seconds": round(time.time() - start)}
        for kind, auroc in out["complex_recovery"].set_index("similarity")["auroc"].items():
            row[f"complex_{kind}"] = round(float(auroc), 3)
        latents = ad.read_h5ad(os.path.join(run_dir, "perturbation_latents.h5ad"))
        masks = recovery.planted_mask_recovery(labels, true_mask, latents)
        for matching, auroc in zip(masks["matching"], masks["auroc"]):
            row[f"mask_auroc_{matching}"] = round(float(auroc), 3)
        planted = out["planted_programs"]
        if len(planted):
            per = planted.groupby("program").agg(recovered=("recovered", "all"),
                                                 fdr=("program_fdr", "max"))
            row["n_recovered"] = int(per["recovered"].sum())
            row.update({f"fdr {p}": round(float(f), 4) for p, f in per["fdr"].items()})
        print(row, flush=True)
        os.makedirs(os.path.dirname(OUT), exist_ok=True)
        pd.DataFrame([row]).to_csv(OUT, sep="\t", mode="a", header=not os.path.exists(OUT),
                                   index=False)


if __name__ == "__main__":
    main(sys.argv[1], [int(s) for s in sys.argv[2:]])
