"""One-command GPU check (issue 16): the ``gpu`` tests, then one table of measured speed.

    python bench/gpu_check.py                 # on a machine with one CUDA GPU (make gpu-check)
    python bench/gpu_check.py --device cpu    # the same measurements on the CPU
    python bench/gpu_check.py --device cpu --smoke   # tiny sizes: the suite's smoke test

Rows of the table (each measurement in a fresh process, bench/bench_training.py's setting):
- ``train`` on Replogle-shaped data (118,641 cells x 1,187 genes, 722 perturbations, the
  paper's Replogle sizes: latent 100, hidden 400, guide 2 x 200) for SAMS-VAE (correlated),
  CPA-VAE, the conditional VAE and SVAE+; and SAMS-VAE on Norman-shaped data (111,000 cells x
  5,000 genes, 105 singles and 131 pairs, latent 200, guide 4 x 400): steps/s, peak memory
  (GPU memory allocated by torch on CUDA, resident set size on CPU).
- ``model_ate``: seconds for the model ATE (predicted means) of 722 perturbations x 2,500
  particles with the Replogle-sized SAMS-VAE.
- ``packed``: 1, 2, 4 and 8 Norman-sized training processes started together on the one
  device; their summed steps/s over the same time window.
- ``equal_steps``: validation IWELBO after the same number of steps of the workflow's step
  (compiled on CUDA) and of the direct formulas (bench/equal_steps.py), per seed; the row's
  value is the largest |fast - direct| over the seeds, beside the seed-to-seed spread.
Batch 512, 5 particles, fused Adam as in training; the training step is the engine's
(``training.compile: auto``, so compiled on CUDA). The synthetic data of each shape are
generated once, written to a temporary folder and read by every process that needs them. No
number here is a guess: each is measured when the script runs. ``--out`` writes the table as
TSV as well.

Designed to finish in under 5 minutes on one H200 (not yet timed on one: no GPU was lent to
the session that wrote it). On a machine without CUDA it stops at once with a message.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_training import measure, train_steps, write_data  # noqa: E402
from child import child_command, collect, peak_rss_mb, run_child  # noqa: E402

REPLOGLE = dict(cells=118_641, genes=1_187, perturbations=722, combinations=0)
NORMAN = dict(cells=111_000, genes=5_000, perturbations=105, combinations=131)
NORMAN_HP = dict(n_latent=200, embedding_encoder_n_layers=4, embedding_encoder_n_hidden=400)
FAMILIES = ["sams_vae", "cpa_vae", "conditional_vae", "svae_plus"]
PACKING = [1, 2, 4, 8]
# --smoke: every row, at sizes that take seconds on two CPU cores.
SMOKE_DATA = dict(cells=2_500, genes=40, perturbations=20)
SMOKE_HP = dict(n_latent=8, encoder_n_hidden=32, decoder_n_hidden=32,
                embedding_encoder_n_hidden=16)


def model_ate(args: dict) -> dict:
    """Seconds and peak memory of the predicted means (the model ATE) on ``device``; run in a
    fresh process (``run_child``) except at smoke sizes."""
    import numpy as np
    import torch

    torch.set_num_threads(args["threads"])
    import anndata as ad
    import pandas as pd

    from samsbench import inference
    from samsbench import models as registry
    from samsbench.data.tensors import PerturbationData

    device = torch.device(args["device"])
    T, G = args["perturbations"], args["genes"]
    labels = ["non-targeting"] + [f"P{i:03d}" for i in range(T)]
    obs = pd.DataFrame({"perturbation": labels * 2},
                       index=[f"c{i}" for i in range(2 * len(labels))])
    adata = ad.AnnData(X=np.ones((len(obs), G), dtype=np.float32), obs=obs,
                       var=pd.DataFrame(index=[f"g{j}" for j in range(G)]))
    data = PerturbationData(adata, np.array(["train"] * len(obs), dtype=object), device=device)
    torch.manual_seed(0)
    model = registry.build("sams_vae", G, data.columns, args["hp"]).to(device).eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    means = inference.predicted_means(model, data, labels, n_particles=args["particles"])
    seconds = time.perf_counter() - start  # predicted_means returns host numbers: device done
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {"seconds": seconds, "finite": bool(np.isfinite(means).all()),
            "peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": gpu}


def hp_for(base: dict, smoke: bool) -> dict:
    return {**base, **(SMOKE_HP if smoke else {})}


def packed(n: int, data_dir: str, hp: dict, device: str, threads: int, seconds: float,
           steps: int) -> dict:
    """``n`` training processes that start their timed steps together (a file barrier) and
    run for the same wall time; the aggregate is the sum of their rates. They all read the
    data written once to ``data_dir``."""
    with tempfile.TemporaryDirectory() as barrier:
        procs = [subprocess.Popen(
            child_command(train_steps,
                          {"data_dir": data_dir, "family": "sams_vae", "hp": hp,
                           "device": device, "threads": threads, "steps": steps,
                           "seconds": seconds, "plain_allocator": False,
                           "barrier": barrier}),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
        while sum(f.startswith("ready-") for f in os.listdir(barrier)) < n:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
        open(os.path.join(barrier, "go"), "w").close()
        results = collect(procs, "packed training process")
    return {"steps_per_second": sum(r["steps_per_second"] for r in results),
            "peak_gpu_mb": max(r["peak_gpu_mb"] for r in results),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}


def run_gpu_tests(device: str) -> str:
    """The ``gpu`` tests; on CPU they skip (no CUDA) unless asked to use the CPU as device."""
    env = dict(os.environ)
    if device != "cuda":
        env.pop("SAMSBENCH_TEST_DEVICE", None)
    root = os.path.dirname(HERE)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p",
                          "no:cacheprovider", os.path.join(root, "tests", "test_gpu.py")],
                         capture_output=True, text=True, env=env, cwd=root)
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:]
    if out.returncode not in (0, 5):
        print(out.stdout[-4000:], out.stderr[-2000:], sep="\n")
        raise SystemExit(f"gpu tests failed: {summary}")
    return summary


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds on a CPU)")
    parser.add_argument("--skip-tests", action="store_true", help="only the measurements")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per process (default 2; 1 with --smoke)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per training row")
    parser.add_argument("--pack-seconds", type=float, default=None,
                        help="timed window of the packed runs")
    parser.add_argument("--equal-steps", type=int, default=None,
                        help="steps of the equal-steps IWELBO row (0 = skip the row)")
    parser.add_argument("--out", help="also write the table here (TSV)")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device visible; use --device cpu to run the "
                             "same measurements on the CPU")
    smoke = args.smoke
    args.threads = args.threads or (1 if smoke else 2)
    steps = args.steps or (10 if smoke else 200)
    pack_seconds = args.pack_seconds if args.pack_seconds is not None else (0 if smoke else 10)
    equal_steps = args.equal_steps if args.equal_steps is not None else (20 if smoke else 1000)
    replogle = {**REPLOGLE, **(SMOKE_DATA if smoke else {})}
    norman = {**NORMAN, **(dict(SMOKE_DATA, perturbations=10, combinations=8) if smoke else {})}
    ate = {"perturbations": 30 if smoke else 722, "genes": 40 if smoke else 1_187,
           "particles": 100 if smoke else 2_500}
    started = time.perf_counter()
    if not args.skip_tests:
        print(f"gpu tests: {run_gpu_tests(args.device)}", flush=True)

    rows = []

    def add(what, setting, family, value, unit, memory):
        rows.append({"what": what, "setting": setting, "family": family, "value": value,
                     "unit": unit, "peak_memory_mb": memory})
        print(f"  {what:10s} {setting:16s} {family:16s} {value:10.3f} {unit:10s} {memory:9.0f}",
              flush=True)

    mem_key = "peak_gpu_mb" if args.device == "cuda" else "peak_rss_mb"
    print(f"device {args.device}{' (smoke sizes)' if smoke else ''}; peak memory = "
          f"{'GPU memory allocated by torch' if args.device == 'cuda' else 'resident set size'}")
    print(f"  {'what':10s} {'setting':16s} {'family':16s} {'value':>10s} {'unit':10s} "
          f"{'peak MB':>9s}")
    common = dict(steps=steps, threads=args.threads, plain_allocator=False, device=args.device)
    # --smoke: each measurement in this process, which saves a Python start per row (the
    # peak RSS is then this process's); otherwise each in a fresh process
    train = (lambda **kw: train_steps(kw)) if smoke else measure
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        # each shape generated once; every process of that shape reads it
        replogle_dir = write_data(os.path.join(work, "replogle"), **replogle)
        norman_dir = write_data(os.path.join(work, "norman"), **norman)
        for family in FAMILIES:
            r = train(data_dir=replogle_dir, family=family, hp=hp_for({}, smoke), **common)
            add("train", "replogle-shaped", family, r["steps_per_second"], "steps/s",
                r[mem_key])
        r = train(data_dir=norman_dir, family="sams_vae", hp=hp_for(NORMAN_HP, smoke), **common)
        add("train", "norman-shaped", "sams_vae", r["steps_per_second"], "steps/s", r[mem_key])
        ate_hp = dict(n_latent=100, n_layers=1, encoder_n_hidden=400, decoder_n_hidden=400,
                      embedding_encoder_n_layers=2, embedding_encoder_n_hidden=200,
                      mask_prior_prob=0.01, likelihood="library_nb",
                      encoder_input_normalization="log_standardize")
        ate_args = {**ate, "device": args.device, "threads": args.threads,
                    "hp": hp_for(ate_hp, smoke)}
        r = model_ate(ate_args) if smoke else run_child(model_ate, ate_args)
        if not r["finite"]:
            raise SystemExit("model ATE gave non-finite predicted means")
        add("model_ate", f"{ate['perturbations']}x{ate['particles']}", "sams_vae", r["seconds"],
            "seconds", r[mem_key])
        for n in PACKING:
            r = packed(n, norman_dir, hp_for(NORMAN_HP, smoke), args.device,
                       1 if args.device == "cpu" else args.threads, pack_seconds, steps)
            add("packed", f"norman-shaped-x{n}", "sams_vae", r["steps_per_second"],
                "steps/s (sum)", r[mem_key])
    if equal_steps:
        import equal_steps as eq

        results = eq.main(["--steps", str(equal_steps), "--device", args.device, "--threads",
                           str(args.threads), "--parallel", *(["--smoke"] if smoke else [])])
        gap = max(abs(a["val_iwelbo"] - b["val_iwelbo"]) for a in results for b in results
                  if a["seed"] == b["seed"] and a["mode"] == "fast" and b["mode"] == "direct")
        fast = [r["val_iwelbo"] for r in results if r["mode"] == "fast"]
        spread = max(fast) - min(fast)
        print(f"  equal steps: largest |fast - direct| {gap:.3f} nats, seed-to-seed spread "
              f"{spread:.3f}", flush=True)
        add("equal_steps", f"{equal_steps}-steps", "sams_vae", gap, "nats |fast-direct|",
            float("nan"))
    print(f"total {time.perf_counter() - started:.0f} s")
    bad = [r for r in rows if not math.isfinite(r["value"])
           or (r["value"] <= 0 and r["what"] != "equal_steps")]
    if bad:
        raise SystemExit(f"non-finite or non-positive measurements: {bad}")
    if args.out:
        import pandas as pd

        tmp = f"{args.out}.tmp-{os.getpid()}"
        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False)
        os.replace(tmp, args.out)
    return rows


if __name__ == "__main__":
    main()
