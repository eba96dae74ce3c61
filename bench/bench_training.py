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

from child import peak_rss_mb, run_child


def make_data(cells: int, genes: int, perturbations: int, combinations: int = 0):
    """The generated counts (float32, cells x genes) and each cell's label: negative-binomial-
    like counts, 2,000 control cells, the rest spread over the perturbations (and, for a
    Norman shape, fixed pairs of singles)."""
    import numpy as np

    rng = np.random.default_rng(0)
    n, G, T = cells, genes, perturbations
    labels = ["non-targeting"] + [f"P{i:03d}" for i in range(T)]
    pairs = [f"P{i:03d}+P{(7 * i + 3) % T:03d}" for i in range(combinations)
             if (7 * i + 3) % T != i]
    labels = np.array(labels + pairs, dtype=object)
    obs_labels = labels[np.concatenate([np.zeros(2000, int),
                                        rng.integers(1, len(labels), n - 2000)])]
    X = np.empty((n, G), dtype=np.float32)
    mean = rng.gamma(0.5, 2.0, G).astype(np.float32)
    for s in range(0, n, 8192):  # chunked, so generation itself stays small
        rows = min(8192, n - s)
        X[s:s + rows] = rng.poisson(mean * rng.gamma(2.0, 0.5, (rows, 1)))
    return X, obs_labels.astype(str)


def write_data(folder: str, cells: int, genes: int, perturbations: int,
               combinations: int = 0) -> str:
    """``make_data`` once, to ``folder`` (X.npy, labels.npy), for processes that share it
    (``train_steps``' ``data_dir``): each reads the file instead of generating it again."""
    import os

    import numpy as np

    X, labels = make_data(cells, genes, perturbations, combinations)
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "labels.npy"), labels)
    np.save(os.path.join(folder, "X.npy"), X)
    return folder


def train_steps(args: dict) -> dict:
    """One measurement, meant for a fresh process (``measure``): load or generate the data,
    build the model, take 5 untimed steps, then time blocks of 10 steps. The step is the
    engine's (``inference.make_step``; ``compile``: the training setting, auto = compiled on
    CUDA), on minibatches of 512 cells drawn on the device."""
    import os
    import resource
    import time

    import numpy as np
    import torch

    torch.set_num_threads(args["threads"])
    import anndata as ad
    import pandas as pd

    from samsbench import inference
    from samsbench import models as registry
    from samsbench.data.splits import random_split
    from samsbench.data.tensors import PerturbationData

    device = torch.device(args.get("device", "cpu"))
    if not args["plain_allocator"] and device.type == "cpu":
        inference.keep_freed_memory()  # as inference.train does on CPU
    inference.unchecked_distributions().__enter__()  # as inference.train: no argument checks

    if args.get("data_dir"):  # written once by write_data, shared by the packed processes
        import warnings

        # read-only memory map: on CPU the packed processes share its pages; nothing writes X
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        X = np.load(os.path.join(args["data_dir"], "X.npy"), mmap_mode="r")
        obs_labels = np.load(os.path.join(args["data_dir"], "labels.npy"))
    else:
        X, obs_labels = make_data(args["cells"], args["genes"], args["perturbations"],
                                  args.get("combinations", 0))
    n, G = X.shape
    adata = ad.AnnData(X=X, obs=pd.DataFrame({"perturbation": obs_labels},
                                             index=[f"c{i}" for i in range(n)]),
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
    compiled = inference.use_compile(args.get("compile", "auto"), device)
    train_step = inference.make_step(model, data, inv, 5, None, compiled=compiled, strict=True)
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        # always 512 cells (one compiled graph), drawn on the device: no copy from the host
        rows = index[torch.randint(len(index), (512,), generator=gen, device=device)]
        return train_step(rows, optim)[0]

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
    while (len(seconds) < max(1, args["steps"] // 10)
           or time.perf_counter() - begin < args.get("seconds", 0)):
        start = time.perf_counter()
        for _ in range(10):
            loss = step()
        loss.item()  # one read per block: the device has finished the block's steps
        seconds.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (10 * len(seconds))
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {"steps_per_second": 10 * len(seconds) / sum(seconds),
            "median_steps_per_second": 10 / float(np.median(seconds)),
            "page_faults_per_step": faults, "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": gpu_peak, "compiled": compiled}


def measure(**kwargs) -> dict:
    """``train_steps`` in a fresh process: its own peak RSS."""
    return run_child(train_steps, kwargs)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=118_641)
    parser.add_argument("--genes", type=int, default=1_187)
    parser.add_argument("--perturbations", type=int, default=722)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--families", nargs="+", default=["sams_vae", "sams_vae_mean_field"])
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                        help="training.compile for the step (auto: compiled on CUDA only)")
    parser.add_argument("--plain-allocator", action="store_true",
                        help="skip inference.keep_freed_memory (glibc defaults), for comparison")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'family':22s} {'cells':>8s} {'genes':>6s} {'steps/s':>8s} {'median':>7s} "
          f"{'faults/step':>11s} {'peak RSS MB':>12s}")
    for family in args.families:
        r = measure(cells=args.cells, genes=args.genes, perturbations=args.perturbations,
                    steps=args.steps, threads=args.threads, family=family,
                    plain_allocator=args.plain_allocator, compile=args.compile)
        rows.append({"family": family, **r})
        print(f"{family:22s} {args.cells:8d} {args.genes:6d} {r['steps_per_second']:8.2f} "
              f"{r['median_steps_per_second']:7.2f} {r['page_faults_per_step']:11.0f} "
              f"{r['peak_rss_mb']:12.0f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
