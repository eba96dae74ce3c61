"""Training speed and peak memory in the Replogle-shaped setting (issue 3's target).

118,641 cells x 1,187 genes (generated negative-binomial-like counts, dense float32 as the
real file), 722 perturbations, SAMS-VAE with the correlated guide (embedding encoder 2 x 200),
latent 100, hidden 400, batch 512, 5 particles, fused Adam as in training. Each measurement
runs in a fresh process that reports its own peak RSS (VmHWM) and minor page faults per step;
after 5 untimed steps the steps are timed in blocks of 10, and the median block's rate is
reported beside the mean, because other load on a shared machine slows single blocks.
"""

from __future__ import annotations

import argparse

from child import run_child

CHILD = r"""
import json, os, resource, sys, time
import numpy as np, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
import anndata as ad, pandas as pd
from samsbench import inference
device = torch.device(args.get("device", "cpu"))
if not args["plain_allocator"] and device.type == "cpu":
    inference.keep_freed_memory()  # as inference.train does on CPU
inference.unchecked_distributions().__enter__()  # as inference.train: no argument checks
from samsbench import models as registry
from samsbench.data.splits import random_split
from samsbench.data.tensors import PerturbationData

rng = np.random.default_rng(0)
n, G, T = args["cells"], args["genes"], args["perturbations"]
labels = ["non-targeting"] + [f"P{i:03d}" for i in range(T)]
# Optional double perturbations (Norman-shaped): fixed pairs of singles, additive encoding.
pairs = [f"P{i:03d}+P{(7 * i + 3) % T:03d}" for i in range(args.get("combinations", 0))
         if (7 * i + 3) % T != i]
labels = np.array(labels + pairs, dtype=object)
obs_labels = labels[np.concatenate([np.zeros(2000, int), rng.integers(1, len(labels), n - 2000)])]
X = np.empty((n, G), dtype=np.float32)
mean = rng.gamma(0.5, 2.0, G).astype(np.float32)
for s in range(0, n, 8192):  # chunked, so generation itself stays small
    rows = min(8192, n - s)
    X[s:s + rows] = rng.poisson(mean * rng.gamma(2.0, 0.5, (rows, 1)))
adata = ad.AnnData(X=X, obs=pd.DataFrame({"perturbation": obs_labels}, index=[f"c{i}" for i in range(n)]),
                   var=pd.DataFrame(index=[f"g{j}" for j in range(G)]))
del X
data = PerturbationData(adata, random_split(n, 0), device=device)
del adata
hp = dict(n_latent=100, n_layers=1, encoder_n_hidden=400, decoder_n_hidden=400,
          embedding_encoder_n_layers=2, embedding_encoder_n_hidden=200, mask_prior_prob=0.01,
          likelihood="library_nb", encoder_input_normalization="log_standardize",
          mask_beta_concentration_1=1.0, mask_beta_concentration_2=2.0)
hp.update(args.get("hp", {}))
torch.manual_seed(0)
declared = registry.declared(args["family"])  # the settings above that the family has
hp = {k: v for k, v in hp.items() if k in declared}
model = registry.build(args["family"], G, data.columns, hp)
model.set_input_statistics(*data.input_statistics(model.normalization))
model.to(device)
optim = inference.make_optimizer(model, 3e-4, 1e-6)  # as training: fused Adam
index = data.split_index("train")
inv = inference.inverse_counts(data.dose_counts("train"))
def step():
    rows = index[torch.randint(len(index), (512,)).to(device)]
    x, D = data.X[rows], data.dosage(data.codes[rows])
    out = inference.minibatch_loss(model, x, D, inv, 5)  # as a training step
    optim.zero_grad(set_to_none=True); out.loss.backward(); optim.step()
    return out.loss
for _ in range(5):
    step().item()
if args.get("barrier"):  # start the timed steps together with the other processes
    open(os.path.join(args["barrier"], f"ready-{os.getpid()}"), "w").close()
    while not os.path.exists(os.path.join(args["barrier"], "go")):
        time.sleep(0.01)
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
seconds = []  # per block of 10 steps: the median resists other load on a shared machine
begin = time.perf_counter()
while len(seconds) < max(1, args["steps"] // 10) or time.perf_counter() - begin < args.get("seconds", 0):
    start = time.perf_counter()
    for _ in range(10):
        loss = step()
    loss.item()  # one read per block: the device has finished the block's steps
    seconds.append(time.perf_counter() - start)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (10 * len(seconds))
peak = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
print(json.dumps({"steps_per_second": 10 * len(seconds) / sum(seconds),
                  "median_steps_per_second": 10 / float(np.median(seconds)),
                  "page_faults_per_step": faults, "peak_rss_mb": peak,
                  "peak_gpu_mb": gpu_peak}))
"""


def measure(**kwargs) -> dict:
    return run_child(CHILD, kwargs)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=118_641)
    parser.add_argument("--genes", type=int, default=1_187)
    parser.add_argument("--perturbations", type=int, default=722)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--families", nargs="+", default=["sams_vae", "sams_vae_mean_field"])
    parser.add_argument("--plain-allocator", action="store_true",
                        help="skip inference.keep_freed_memory (glibc defaults), for comparison")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'family':22s} {'cells':>8s} {'genes':>6s} {'steps/s':>8s} {'median':>7s} "
          f"{'faults/step':>11s} {'peak RSS MB':>12s}")
    for family in args.families:
        r = measure(cells=args.cells, genes=args.genes, perturbations=args.perturbations,
                    steps=args.steps, threads=args.threads, family=family,
                    plain_allocator=args.plain_allocator)
        rows.append({"family": family, **r})
        print(f"{family:22s} {args.cells:8d} {args.genes:6d} {r['steps_per_second']:8.2f} "
              f"{r['median_steps_per_second']:7.2f} {r['page_faults_per_step']:11.0f} "
              f"{r['peak_rss_mb']:12.0f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
