"""Train SAMS-VAE on a simulated data set and report how well it recovers the planted masks.

Usage: python bench/mask_recovery.py DATA.h5ad SPLIT.tsv LR STEPS [JSON overrides]
Overrides are model hyperparameters plus ``batch_size`` and ``glr`` (the training's
global_lr_multiplier). Used for docs/mask_recovery.md.
"""

import json
import os
import sys
import tempfile
import time

import anndata as ad
import torch

from samsbench import config, tasks
from samsbench.recovery import mask_stats


def main(argv):
    data_path, split_path, lr, steps = argv[0], argv[1], float(argv[2]), int(argv[3])
    extra = json.loads(argv[4]) if len(argv) > 4 else {}
    torch.set_num_threads(1)
    cfg = config.load()
    hp = config.model_hyperparameters(cfg, "simulated", extra.pop("model", "sams_vae"))
    training = dict(cfg["experiments"]["simulated"]["training"])
    training.update(max_steps=steps, lr=lr, batch_size=int(extra.pop("batch_size", 128)),
                    global_lr_multiplier=float(extra.pop("glr", 1)))
    hp.update(extra)
    start = time.time()
    with tempfile.TemporaryDirectory() as run_dir:
        summary = tasks.train_run(data_path, split_path, hp, training, run_dir, 0, progress=False)
        latents = ad.read_h5ad(os.path.join(run_dir, "perturbation_latents.h5ad"))
    sim = ad.read_h5ad(data_path).uns["simulation"]
    rows = [list(latents.obs_names).index(p) for p in sim["perturbations"]]
    stats = mask_stats(sim["true_mask"], latents.layers["mask_prob"][rows])
    stats.pop("assignment")
    print(argv[2:], {k: round(v, 3) for k, v in stats.items()},
          "val_iwelbo", round(summary["val_iwelbo"], 2), "seconds", round(time.time() - start))


if __name__ == "__main__":
    main(sys.argv[1:])
