"""Train SAMS-VAE on a simulated data set and report how well it recovers the planted masks.

Usage: python bench/studies/mask_recovery.py DATA.h5ad SPLIT.tsv LR STEPS [--overrides JSON]
(--help lists the arguments). Overrides are model hyperparameters plus ``batch_size`` and ``glr`` (the training's
global_lr_multiplier). Used for docs/mask_recovery.md.
"""

import argparse
import json
import os
import tempfile
import time

import anndata as ad
import torch

from samsbench import config
from samsbench.stages import train as train_stage
from samsbench.enrichment.recovery import mask_stats


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="simulated contract h5ad (with uns['simulation'])")
    p.add_argument("split", help="split TSV")
    p.add_argument("lr", type=float, help="learning rate")
    p.add_argument("steps", type=int, help="training steps")
    p.add_argument("--overrides", type=json.loads, default={},
                   help="JSON object: hyperparameters, batch_size, glr, model")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    data_path, split_path, lr, steps = args.data, args.split, args.lr, args.steps
    extra = dict(args.overrides)
    torch.set_num_threads(1)
    cfg = config.load()
    hp = config.model_hyperparameters(cfg, "simulated", extra.pop("model", "sams_vae"))
    training = dict(cfg["experiments"]["simulated"]["training"])
    training.update(max_steps=steps, lr=lr, batch_size=int(extra.pop("batch_size", 128)),
                    global_lr_multiplier=float(extra.pop("glr", 1)))
    hp.update(extra)
    start = time.time()
    with tempfile.TemporaryDirectory() as run_dir:
        summary = train_stage.train(data_path, split_path, hp, training, run_dir, 0, progress=False)
        latents = ad.read_h5ad(os.path.join(run_dir, "perturbation_latents.h5ad"))
    sim = ad.read_h5ad(data_path).uns["simulation"]
    rows = [list(latents.obs_names).index(p) for p in sim["perturbations"]]
    stats = mask_stats(sim["true_mask"], latents.layers["mask_prob"][rows])
    stats.pop("assignment")
    print([lr, steps, args.overrides], {k: round(v, 3) for k, v in stats.items()},
          "val_iwelbo", round(summary["val_iwelbo"], 2), "seconds", round(time.time() - start))


if __name__ == "__main__":
    main()
