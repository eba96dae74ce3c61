"""Validation IWELBO at an equal number of steps: the fast training step against the direct
formulas (issue 3: the speed-ups must not cost fit).

"direct" trains with the formulas written out as the reference writes them: the negative
binomial term by term (``nn.nb_log_prob_direct`` on ``library * softmax(logits) + 1e-4``),
the dense dosage product ``D @ (M * E)``, and the globals of every perturbation at every step.
"fast" is the code as it runs in the workflow. Same data, hyperparameters, seeds and steps;
the seed-to-seed spread of each is the yardstick for a difference between them. The data are
the embedded simulation with 120 background perturbations added (152 singles), so that a
minibatch of 128 cells holds only some of the perturbations, as on Replogle.

Usage: python bench/equal_steps.py [--steps N] [--seeds 0 1] [--threads 2] [--device cuda]
[--parallel] [--smoke]. On CUDA "fast" is the compiled step (``training.compile: auto``) and
"direct" the eager direct formulas, so the comparison covers the capture as well. ``--parallel``
runs the runs as processes at the same time (a GPU has room for them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

from child import child_command, collect, run_child


def train_once(args: dict) -> dict:
    """One training run, meant for a fresh process: "direct" patches the classes it trains
    with, which must not leak into the next run. Returns the run's summary."""
    import torch

    torch.set_num_threads(args["threads"])
    from samsbench import nn as sbnn
    from samsbench.data.tensors import Dosage
    from samsbench.models.sams_vae import SamsVAE
    from samsbench.stages import train as train_stage

    if args["mode"] == "direct":
        def log_prob(self, h_in, x, library, x_terms=None):
            logits = self.head(self.trunk(h_in))
            mean = library.unsqueeze(-1) * torch.softmax(logits, -1) + sbnn.NB_MEAN_OFFSET
            return sbnn.nb_log_prob_direct(x, mean, torch.exp(self.log_theta)).sum(-1)

        sbnn.Decoder.log_prob = log_prob
        sbnn.Decoder.cell_terms = lambda self, x: None
        Dosage.apply = lambda self, A: self.dense @ A
        Dosage.charge = lambda self, r: r @ self.dense.T
        SamsVAE.samples_column_subsets = False

    training = {**args["training"],
                "compile": "off" if args["mode"] == "direct" else "auto"}
    return train_stage.train(args["data"], args["split"], args["hp"], training,
                             args["run_dir"], args["seed"], device=args.get("device", "auto"),
                             progress=False)


MODEL = dict(family="sams_vae", n_latent=12, n_layers=1, encoder_n_hidden=128,
             decoder_n_hidden=128, embedding_encoder_n_layers=2, embedding_encoder_n_hidden=64,
             mask_prior_prob=0.1)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--parallel", action="store_true",
                        help="run every (mode, seed) at the same time, one process each")
    parser.add_argument("--smoke", action="store_true", help="a small simulation (seconds)")
    args = parser.parse_args(argv)

    from samsbench.data import contract, splits
    from samsbench.data.simulate import simulate

    with tempfile.TemporaryDirectory(prefix="equal_steps_") as work:
        data_path, split_path = os.path.join(work, "data.h5ad"), os.path.join(work, "split.tsv")
        sim = dict(n_background=12, cells_per_perturbation=20, n_control=100) if args.smoke \
            else dict(n_background=120)
        contract.write(simulate(**sim, seed=0), data_path)
        labels = splits.make_split(contract.read(data_path).obs["perturbation"].to_numpy(),
                                   "random", seed=0)
        splits.write_split(contract.read(data_path).obs_names, labels, split_path)
        training = {"max_steps": args.steps, "batch_size": 128, "lr": 0.002, "val_every": 250}
        rows = []
        print(f"{'mode':7s} {'seed':>4s} {'val IWELBO':>11s} {'best val loss':>14s} "
              f"{'steps/s':>8s}")
        runs = [dict(mode=mode, seed=seed, threads=args.threads, data=data_path,
                     split=split_path, hp=MODEL, training=training, device=args.device,
                     run_dir=os.path.join(work, f"{mode}_{seed}"))
                for seed in args.seeds for mode in ("direct", "fast")]
        if args.parallel:
            procs = [subprocess.Popen(child_command(train_once, run), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for run in runs]
            summaries = collect(procs, "equal-steps run")
        else:
            summaries = (run_child(train_once, run) for run in runs)
        for run, summary in zip(runs, summaries):
            rows.append({"mode": run["mode"], "seed": run["seed"], **summary})
            print(f"{run['mode']:7s} {run['seed']:4d} {summary['val_iwelbo']:11.2f} "
                  f"{summary['best_val_loss']:14.2f} "
                  f"{summary['timing']['steps_per_second']:8.1f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
