"""Measure training steps/s per family on the Replogle- and Norman-shaped settings of
bench/gpu_check.py and write them as rows of the speed table that ``samsbench plan`` reads
(workflow/samsbench/data/resources/speed_table.tsv): family, dataset, device, steps/s (kind
``train``: one run), and where, when and how they were measured. Existing rows of other
devices or hosts are kept. Packed rows (kind ``packed``: the summed steps/s of
``runs_per_device`` runs on one device, from gpu_check's packed rows) are added by hand with
their provenance; ``samsbench plan`` takes the packing gain from them.

    python bench/speed_table.py --device cpu --steps 30      # what this repository holds
    python bench/speed_table.py --device cuda                # on a GPU machine
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_training import measure  # noqa: E402
from gpu_check import NORMAN, NORMAN_HP, REPLOGLE  # noqa: E402

TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "workflow/samsbench/data/resources/speed_table.tsv")
FAMILIES = ["sams_vae", "sams_vae_mean_field", "cpa_vae", "conditional_vae", "svae_plus"]
SETTINGS = {"replogle": (REPLOGLE, {}), "norman": (NORMAN, NORMAN_HP)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cells", type=int, help="fewer cells than the real shape: a step's "
                        "cost depends on batch, genes and model, not on the cells held")
    parser.add_argument("--datasets", nargs="+", default=list(SETTINGS))
    parser.add_argument("--families", nargs="+", default=FAMILIES)
    parser.add_argument("--where", default=f"{platform.node()} ({os.cpu_count()} CPUs, "
                        f"load {os.getloadavg()[0]:.1f} at start)")
    parser.add_argument("--table", default=TABLE)
    args = parser.parse_args(argv)
    when = datetime.date.today().isoformat()
    rows = []
    for dataset in args.datasets:
        shape, hp = SETTINGS[dataset]
        shape = {**shape, **({"cells": args.cells} if args.cells else {})}
        for family in args.families:
            r = measure(**shape, family=family, hp=hp, steps=args.steps, threads=args.threads,
                        plain_allocator=False, device=args.device)
            rows.append({"family": family, "dataset": dataset, "device": args.device,
                         "steps_per_second": round(r["median_steps_per_second"], 3),
                         "kind": "train", "runs_per_device": 1,
                         "threads": args.threads, "measured_on": args.where, "date": when,
                         "how": f"bench/speed_table.py --device {args.device} "
                                f"--steps {args.steps} --threads {args.threads}"
                                + (f" --cells {args.cells}" if args.cells else "")})
            print(rows[-1], flush=True)
    new = pd.DataFrame(rows)
    if os.path.exists(args.table):
        old = pd.read_csv(args.table, sep="\t")
        keys = ["family", "dataset", "device", "kind", "runs_per_device", "measured_on"]
        for column, default in (("kind", "train"), ("runs_per_device", 1)):
            old[column] = old[column].fillna(default) if column in old else default
        old = old[~old[keys].apply(tuple, axis=1).isin(new[keys].apply(tuple, axis=1))]
        new = pd.concat([old, new], ignore_index=True)
    tmp = f"{args.table}.tmp-{os.getpid()}"
    new.to_csv(tmp, sep="\t", index=False)
    os.replace(tmp, args.table)


if __name__ == "__main__":
    main()
