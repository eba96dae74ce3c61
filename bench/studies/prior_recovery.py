"""SAMS-VAE on data drawn from its own prior: mask recovery and two diagnostics of why it falls
short (docs/mask_recovery.md).

Data: `tests/helpers.py: PRIOR_MATCHED_DATA` (drawn from the model's prior: 48 single
perturbations, K = 12, masks ~ Bernoulli(0.15), embeddings ~ N(0, 2), 150 cells each),
random split. Model: the prior-matched SAMS-VAE of
tests/test_recovery.py (mask prior 0.15, embedding prior scale 2, K = 12).

Usage: python bench/prior_recovery.py STEPS LR
       ['{model overrides}' ['{data overrides}' ['{training overrides}']]]
Prints mask F1 / AUROC / density and
* alignment: the learned mean shift E_q[M * E] regressed on the true shift (T x K each);
  R2 says whether the learned shifts are a linear image of the true ones, and the mean over
  learned dims of the largest share of a regression column (1 = each learned dim reads one
  true dim, i.e. axis-aligned; 1/sqrt(K) = fully rotated);
* absorption: per perturbation, the mean of q(z_basal | x) over its cells minus that of the
  controls (mean |.|), against the mean |E_q[M * E]|: where the effect is represented.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np
import torch

from samsbench import inference
from samsbench.stages import train as train_stage
from samsbench.data import contract, splits
from samsbench.data.simulate import simulate
from samsbench.enrichment.recovery import mask_stats

# the data design is the test suite's (tests/helpers.py), so test and study share it
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
from helpers import PRIOR_MATCHED_DATA  # noqa: E402

MODEL = dict(family="sams_vae", n_latent=12, n_layers=1, encoder_n_hidden=64,
             decoder_n_hidden=64, embedding_encoder_n_layers=2, embedding_encoder_n_hidden=32, mask_prior_prob=0.15,
             embedding_prior_scale=2.0, mean_field_encoder=True)


def main(steps: int, lr: float, model_overrides: dict, data_overrides: dict,
         training_overrides: dict) -> dict:
    torch.set_num_threads(1)
    work = tempfile.mkdtemp()
    data_path, split_path = os.path.join(work, "data.h5ad"), os.path.join(work, "split.tsv")
    contract.write(simulate(**{**PRIOR_MATCHED_DATA, **data_overrides}), data_path)
    adata = contract.read(data_path)
    labels = splits.make_split(adata.obs["perturbation"].to_numpy(), "random", seed=0)
    splits.write_split(adata.obs_names, labels, split_path)
    training = {"max_steps": steps, "batch_size": 128, "lr": lr, "val_every": 100,
                "iwelbo_particles": 20, **training_overrides}
    run_dir = os.path.join(work, "run")
    summary = train_stage.train(data_path, split_path, {**MODEL, **model_overrides}, training,
                              run_dir, 0, progress=False)
    model, record = inference.load_model(os.path.join(run_dir, "model.pt"))
    sim = adata.uns["simulation"]
    rows = [record["columns"].index(p) for p in sim["perturbations"]]
    true_shift = np.asarray(sim["true_shift"])
    with torch.no_grad():
        mean_shift = model.mean_shift()  # E_q[M * E], (T, K)
        learned = mean_shift.numpy()[rows]
        stats = mask_stats(sim["true_mask"], torch.sigmoid(model.mask_logits).numpy()[rows])
        stats.pop("assignment")
        coef, *_ = np.linalg.lstsq(true_shift, learned, rcond=None)
        stats["shift_r2"] = 1 - (learned - true_shift @ coef).var() / learned.var()
        stats["alignment"] = float((np.abs(coef) / np.linalg.norm(coef, axis=0)).max(0).mean())
        data = train_stage.load_data(data_path, split_path)
        shift = data.dosage(data.codes).apply(mean_shift)
        basal = model.local_posterior(model.normalize(data.X), shift).loc.numpy()
    cell_labels = adata.obs["perturbation"].to_numpy()
    control = basal[cell_labels == adata.uns["control_label"]].mean(0)
    offsets = np.stack([basal[cell_labels == p].mean(0) for p in sim["perturbations"]]) - control
    stats["absorbed_in_basal"] = float(np.abs(offsets).mean())
    stats["in_global_shift"] = float(np.abs(learned).mean())
    stats["true_shift"] = float(np.abs(true_shift).mean())
    stats["val_iwelbo"] = summary["val_iwelbo"]
    return stats


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", type=int, help="training steps")
    parser.add_argument("lr", type=float, help="learning rate")
    for name in ("model", "data", "training"):
        parser.add_argument(f"--{name}", type=json.loads, default={},
                            help=f"JSON object of {name} overrides")
    args = parser.parse_args()
    out = main(args.steps, args.lr, args.model, args.data, args.training)
    print(vars(args), {k: round(float(v), 3) for k, v in out.items()}, flush=True)
