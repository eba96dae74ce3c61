"""`make bench`: every benchmark of the project, printed as tables.

Training speed and peak memory in the Replogle-shaped setting and the validation IWELBO of
the fast step against the direct formulas at equal steps (issue 3), the data ATE and the
model ATE at Replogle scale (issue 4), and peak memory of streaming the raw genome-wide
Replogle file at two sizes (issue 5). Pass --quick for smaller sizes.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from child import run_child  # noqa: E402  (bench/ is on the path only from here on)


def model_ate_seconds(args: dict) -> dict:
    """Seconds for the predicted means (the model ATE) of ``perturbations`` x ``particles``
    with the Replogle-sized SAMS-VAE; meant for a fresh process (``model_ate``)."""
    import time

    import numpy as np
    import torch

    torch.set_num_threads(args["threads"])
    from samsbench import inference
    from samsbench import models as registry
    from samsbench.data.tensors import Dosage

    G, T = args["genes"], args["perturbations"]
    hp = dict(n_latent=100, n_layers=1, encoder_n_hidden=400, decoder_n_hidden=400,
              embedding_encoder_n_layers=2, embedding_encoder_n_hidden=200, mask_prior_prob=0.01)
    torch.manual_seed(0)
    model = registry.build("sams_vae", G, [f"P{i}" for i in range(T)], hp).eval()

    class Data:  # the two things predicted_means reads from a dataset
        X = torch.zeros(1, G)

        def dosage(self, codes):
            return Dosage(codes, T)

        def dosage_for_labels(self, labels):
            codes = torch.tensor([[T] if label == "control" else [int(label[1:])]
                                  for label in labels])
            return Dosage(codes, T)

    labels = ["control"] + [f"P{i}" for i in range(T)]
    start = time.perf_counter()
    means = inference.predicted_means(model, Data(), labels, n_particles=args["particles"])
    seconds = time.perf_counter() - start
    if not np.isfinite(means).all():
        raise RuntimeError("model ATE: non-finite predicted means")
    return {"seconds": seconds}


def model_ate(perturbations=722, particles=2500, genes=1187, threads=2) -> float:
    args = dict(perturbations=perturbations, particles=particles, genes=genes, threads=threads)
    return run_child(model_ate_seconds, args)["seconds"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    args = parser.parse_args(argv)
    import bench_evaluate
    import bench_replogle_raw
    import bench_training
    import equal_steps

    print("\n== Training step, Replogle-shaped (SAMS-VAE, batch 512, 5 particles, K 100, H 400) ==")
    bench_training.main(["--cells", "20000" if args.quick else "118641", "--steps",
                         "10" if args.quick else "100"])
    print("\n== Validation IWELBO at equal steps: fast step vs direct formulas (SAMS-VAE) ==")
    equal_steps.main(["--steps", "200" if args.quick else "2000"])
    print("\n== Model ATE (sampled counts, library 10,000, SAMS-VAE correlated) ==")
    perts, particles = (50, 200) if args.quick else (722, 2500)
    seconds = model_ate(perturbations=perts, particles=particles)
    print(f"{perts} perturbations x {particles} particles x 1187 genes: {seconds:.1f} s")
    print("\n== Data ATE ==")
    bench_evaluate.main(["--cells", "20000", "--repeats", "1"] if args.quick else [])
    print("\n== Streaming the raw genome-wide Replogle file (route b) ==")
    bench_replogle_raw.main(["--sizes-gb", "0.2", "0.4"] if args.quick else [])


if __name__ == "__main__":
    main()
