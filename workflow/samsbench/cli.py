"""``samsbench`` command line: every workflow step without Snakemake."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _simulate(args):
    from samsbench.data import contract
    from samsbench.data.simulate import simulate

    kwargs = json.loads(args.params) if args.params else {}
    contract.write(simulate(seed=args.seed, **kwargs), args.out)
    return 0


def _split(args):
    from samsbench import tasks

    tasks.make_split(args.data, {"kind": args.kind, "seed": args.seed, "fraction": args.fraction,
                                 "test_fraction": args.test_fraction}, args.out)
    return 0


def _train(args):
    import yaml

    from samsbench import config as sbconfig
    from samsbench import tasks

    cfg = sbconfig.load(args.config)
    if args.model not in cfg["models"]:
        raise SystemExit(f"unknown model {args.model!r}; config.yaml defines {sorted(cfg['models'])}")
    hp = sbconfig.model_hyperparameters(cfg, args.experiment, args.model)
    training = dict(cfg["experiments"][args.experiment]["training"])
    if args.max_steps:
        training["max_steps"] = args.max_steps
    summary = tasks.train_run(args.data, args.splits, hp, training, args.out, args.seed,
                              device=args.device)
    print(yaml.safe_dump(summary, sort_keys=True))
    return 0


def _evaluate(args):
    from samsbench import tasks

    run = {"experiment": args.experiment, "dataset": args.dataset, "model": args.name,
           "family": "", "split": args.split_name, "seed": args.seed}
    predictions = args.predictions or f"{args.run}/predictions.h5ad"
    tasks.predict_run(args.data, args.splits, f"{args.run}/model.pt", predictions,
                      n_particles=args.ate_particles, device=args.device)
    table = tasks.evaluate_run(run, args.data, args.splits, predictions, f"{args.run}/model.pt",
                               args.out or f"{args.run}/metrics.tsv",
                               iwelbo_particles=args.iwelbo_particles, device=args.device)
    print(table[["metric", "subset", "value"]].to_string(index=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samsbench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write the simulated screen as a contract h5ad")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--params", help="JSON object of simulate() arguments")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("split", help="write a split TSV (cell_id, split)")
    p.add_argument("--data", required=True)
    p.add_argument("--kind", choices=["random", "ood", "data_efficiency"], default="random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_split)

    p = sub.add_parser("train", help="train one model of config.yaml on one split")
    p.add_argument("--config", default="config.yaml")
    p.add_argument("--experiment", default="simulated")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--splits", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="run directory")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="predictions and every metric of a trained run")
    p.add_argument("--run", required=True, help="run directory (holds model.pt)")
    p.add_argument("--data", required=True)
    p.add_argument("--splits", required=True)
    p.add_argument("--predictions")
    p.add_argument("--out")
    p.add_argument("--ate-particles", type=int, default=2500)
    p.add_argument("--iwelbo-particles", type=int, default=100)
    p.add_argument("--device", default="auto")
    p.add_argument("--experiment", default="")
    p.add_argument("--dataset", default="")
    p.add_argument("--name", default="")
    p.add_argument("--split-name", default="")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_evaluate)

    for module, adder in (("samsbench.evaluate", "add_score_parser"),
                          ("samsbench.data.download", "add_download_parser"),
                          ("samsbench.enrich", "add_enrich_parser"),
                          ("samsbench.plan", "add_plan_parser")):
        try:
            mod = __import__(module, fromlist=[adder])
        except ImportError:
            continue
        if hasattr(mod, adder):
            getattr(mod, adder)(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"samsbench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
