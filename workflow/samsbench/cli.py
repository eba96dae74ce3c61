"""``samsbench`` command line: every workflow step without Snakemake.

Each verb calls the same stage function as the workflow's rule (samsbench.stages). Stage
modules are imported inside the handlers, so ``samsbench --help`` stays fast; a verb whose
module cannot be imported fails with that import error, never silently disappears.

Over 420 lines because every verb's parser, with a help text on each option, lives here
beside its handler; the argument types at the top are the part to move out first.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


# -- argument types: a value out of range is refused by argparse, naming the flag ------------

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def _number(text: str, minimum: float, inclusive: bool) -> float:
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}") from None
    if not (value >= minimum if inclusive else value > minimum):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number {bound}, got {text}")
    return value


def positive_float(text: str) -> float:
    return _number(text, 0.0, inclusive=False)


def non_negative_float(text: str) -> float:
    return _number(text, 0.0, inclusive=True)


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _simulate(args):
    from samsbench.stages import data

    data.simulate(args.out, seed=args.seed, **(args.params or {}))
    return 0


def _prepare(args):
    from samsbench import config as sbconfig
    from samsbench.stages import data

    data.prepare_dataset(sbconfig.load_or_packaged(args.config), args.dataset, args.out)
    return 0


def _split(args):
    from samsbench.stages import data

    data.split(args.data, {"kind": args.kind, "seed": args.seed, "fraction": args.fraction,
                           "test_fraction": args.test_fraction}, args.out)
    return 0


def _train(args):
    import yaml

    from samsbench import config as sbconfig
    from samsbench.stages import train

    # no --config: the packaged paper constants, so `train` works from any directory
    cfg = sbconfig.load(args.config) if args.config else sbconfig.packaged_defaults()
    hp, training, identity = train.resolve_run(cfg, args.experiment, args.model, args.set or [],
                                               args.split_name, args.data, args.max_steps,
                                               args.splits)
    if args.threads:
        train.set_threads(args.threads)
    source = (f"{args.config}, experiment {args.experiment}" if args.experiment else
              f"{args.config or 'the packaged paper constants'}, model_defaults")
    print(f"samsbench train: {args.model} from {source}"
          + (f", with {' '.join(args.set)}" if args.set else ""), file=sys.stderr)
    print(yaml.safe_dump({"hyperparameters": hp, "training": training}, sort_keys=True),
          file=sys.stderr)
    summary = train.train(args.data, args.splits, hp, training, args.out, args.seed,
                          device=args.device, identity=identity)
    summary.pop("provenance", None)  # in summary.json; too long for the terminal
    print(yaml.safe_dump(summary, sort_keys=True))
    return 0


def _evaluate(args):
    from samsbench import io as sbio
    from samsbench.stages import evaluate

    # identity columns: the run's own summary.json, unless given on the command line; a
    # plug-in named only by summary.json is refused; the inputs must be the run's own
    run = evaluate.resolve_identity(args.run, {
        "experiment": args.experiment, "dataset": args.dataset, "model": args.name,
        "family": args.family, "split": args.split_name, "seed": args.seed})
    evaluate.check_run_inputs(args.run, args.data, args.splits)
    if args.threads:
        from samsbench.stages import train

        train.set_threads(args.threads)
    model = sbio.run_file(args.run, "model")
    predictions = args.predictions or sbio.run_file(args.run, "predictions")
    evaluate.predict(args.data, args.splits, model, predictions, n_particles=args.ate_particles,
                     chunk=args.ate_chunk, device=args.device, family=run["family"] or None)
    table = evaluate.score(run, args.data, args.splits, predictions, model,
                           args.out or sbio.run_file(args.run, "metrics"),
                           iwelbo_particles=args.iwelbo_particles, device=args.device)
    print(table[["metric", "subset", "value"]].to_string(index=False))
    return 0


def _score(args):
    from samsbench.stages import evaluate

    run = {"model": args.name, "split": args.split_name}
    table = evaluate.score_external(run, args.data, args.splits, args.predictions, args.out)
    if args.out is None:
        table[["metric", "subset", "value"]].to_csv(sys.stdout, sep="\t", index=False)
    return 0


def _download(args):
    from samsbench.stages import data

    # a DownloadError is a RuntimeError: main() prints it as the verb's error
    limits = {k: v for k, v in (("deadline", args.deadline), ("min_rate", args.min_rate),
                                ("rate_window", args.rate_window)) if v is not None}
    if limits.get("deadline") == 0:
        limits["deadline"] = None  # 0: no deadline
    data.download(args.url, args.out, sha256=args.sha256, checksums_tsv=args.checksums,
                  require_checksum=args.require_checksum, retries=args.retries,
                  timeout=args.timeout, **limits)
    return 0


def _enrich(args):
    from samsbench import config as sbconfig
    from samsbench.stages import enrich

    cfg = sbconfig.load_or_packaged(args.config)
    tables = enrich.run_from_config(
        cfg, args.experiment, args.run, args.dataset, args.out,
        gene_sets=args.gene_sets, threshold=args.threshold, min_set_size=args.min_set_size,
        recovery_library=args.recovery_library)
    enr = tables["enrichment"]
    n_sig = int((enr["fdr"] < 0.05).sum()) if len(enr) else 0
    print(f"{args.out or args.run}: {len(enr)} enrichment rows ({n_sig} at FDR < 0.05); "
          "complex recovery:")
    print(tables["complex_recovery"][["similarity", "auroc", "average_precision"]]
          .to_string(index=False))
    return 0


def _mask_recovery(args):
    from samsbench import io as sbio
    from samsbench.stages import enrich, evaluate

    runs = [enrich.read_identity(run) for run in args.run]
    latents = [sbio.run_file(run, "latents") for run in args.run]
    table = evaluate.mask_recovery(args.data, latents, runs, args.out, threshold=args.threshold)
    if args.out is None:
        table.to_csv(sys.stdout, sep="\t", index=False)
    return 0


def _export(args):
    from samsbench import io as sbio
    from samsbench.stages import evaluate, export

    export.check_out_dir(args.out)
    evaluate.check_run_inputs(args.run, args.data, args.splits)
    paths = export.export_cell_eval(
        sbio.run_file(args.run, "model"), args.data, args.splits, args.out, n_cells=args.cells,
        mode=args.mode, predictions_path=sbio.run_file(args.run, "predictions"),
        seed=args.seed, device=args.device, family=args.family or None, clip=not args.no_clip)
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


def _plan(args):
    from samsbench.stages import plan

    return plan.print_plans(args.config, args.run, gpus=args.gpus, pack=args.pack,
                            pack_gain=args.pack_gain, device=args.device,
                            speed_table=args.speed_table)


def _config_options(p, experiment=True, optional=False):
    if optional:
        p.add_argument("--config", default=None,
                       help="config.yaml to read (validated); default: the packaged paper "
                       "constants (model_defaults), so the command works from any directory")
    else:
        p.add_argument("--config", default=None,
                       help="config.yaml to read (validated; default ./config.yaml, else the "
                       "packaged defaults, so the command works from any directory)")
    if experiment:
        p.add_argument("--experiment", default=None if optional else "simulated",
                       help="experiment of the config whose settings apply" +
                       (" (default: none; the config's model_defaults and the schema's "
                        "training defaults)" if optional else " (default simulated)"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samsbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write the simulated screen as a contract h5ad")
    p.add_argument("--out", required=True, help="h5ad to write")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--params", type=json_object, help="JSON object of samsbench.data.simulate.simulate arguments")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("prepare", help="write one dataset of config.yaml as a contract h5ad")
    _config_options(p, experiment=False)
    p.add_argument("--dataset", required=True, help="name under datasets: in the config")
    p.add_argument("--out", required=True, help="h5ad to write")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("split", help="write a split TSV (cell_id, split)")
    p.add_argument("--data", required=True, help="prepared dataset h5ad")
    p.add_argument("--kind", choices=["random", "ood", "data_efficiency"], default="random",
                   help="split kind (default random)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="split seed (default 0)")
    p.add_argument("--fraction", type=fraction, default=1.0,
                   help="ood / data_efficiency: fraction of combinations in training (default 1)")
    p.add_argument("--test-fraction", type=fraction, default=0.25,
                   help="ood: fraction of combinations held out for test (default 0.25)")
    p.add_argument("--out", required=True, help="split TSV to write")
    p.set_defaults(func=_split)

    p = sub.add_parser(
        "train", help="train one model on one split",
        description="Train one model on one split. Without --config the paper's constants "
        "(model_defaults) and the schema's training defaults apply; --set overrides any "
        "training setting or hyperparameter. The resolved settings are printed first.")
    _config_options(p, optional=True)
    p.add_argument("--model", required=True,
                   help="model name under models: in the config, or a family name "
                   "(sams_vae, cpa_vae, conditional_vae, svae_plus, ...)")
    p.add_argument("--data", required=True, help="prepared dataset h5ad")
    p.add_argument("--splits", required=True, help="split TSV")
    p.add_argument("--split-name", default="",
                   help="the split's name, recorded in summary.json (default: the split "
                   "file's stem)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="training seed (default 0)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a training setting (max_steps=500, lr=1e-3) or a "
                   "hyperparameter (n_latent=20); repeat for several")
    p.add_argument("--max-steps", type=positive_int, help="override max_steps (as --set)")
    p.add_argument("--threads", type=positive_int,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--out", required=True, help="run directory")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="predictions and every metric of a trained run")
    p.add_argument("--run", required=True, help="run directory (holds model.pt)")
    p.add_argument("--data", required=True, help="prepared dataset h5ad")
    p.add_argument("--splits", required=True, help="split TSV")
    p.add_argument("--predictions", help="predictions h5ad to write (default: in the run)")
    p.add_argument("--out", help="metrics TSV to write (default: metrics.tsv in the run)")
    p.add_argument("--ate-particles", type=positive_int, default=2500,
                   help="prior draws per perturbation for the predicted means (default 2500)")
    p.add_argument("--ate-chunk", type=positive_int, default=128,
                   help="draws per batch when predicting (default 128)")
    p.add_argument("--iwelbo-particles", type=positive_int, default=100,
                   help="importance samples per cell for the IWELBO (default 100)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--threads", type=positive_int,
                   help="torch CPU threads (default: torch's choice)")
    for name, what in (("experiment", "experiment"), ("dataset", "dataset"),
                       ("name", "model name"), ("family", "model family"),
                       ("split-name", "split name")):
        p.add_argument(f"--{name}", default="", help=f"{what} recorded in the metrics rows "
                       "(default: from the run's summary.json)")
    p.add_argument("--seed", type=non_negative_int, default=None,
                   help="seed recorded in the metrics rows (default: from summary.json)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "score", help="score a predictions h5ad (mean log2(CP10k+1) per perturbation)",
        description="Score predicted mean expression per perturbation against the data ATE. "
        'The file needs obs["perturbation"] (one row per perturbation, the control '
        "included), the dataset's genes as var names, and X = predicted mean log2(CP10k + 1).")
    p.add_argument("--predictions", required=True, help="predictions .h5ad")
    p.add_argument("--data", required=True, help="prepared dataset .h5ad (raw counts)")
    p.add_argument("--splits", required=True, help="split TSV (cell_id, split)")
    p.add_argument("--name", default="external", help="model name recorded in the rows")
    p.add_argument("--split-name", default="", help="split name recorded in the rows")
    p.add_argument("--out", default=None, help="metrics TSV to write (default: stdout)")
    p.set_defaults(func=_score)

    p = sub.add_parser(
        "download", help="download a file with retries, format and checksum checks",
        description="Download one file: mirrors tried in order, streamed to a temporary file "
        "and renamed only when the format and the sha256 check pass.")
    p.add_argument("--url", action="append", required=True, help="source URL; repeat for mirrors")
    p.add_argument("--out", required=True, help="destination path")
    p.add_argument("--sha256", default=None, help="expected sha256 (hex)")
    p.add_argument("--checksums", default=None, metavar="TSV",
                   help="checksums manifest to read the expected sha256 from and to record it "
                   "in when unknown (for example data/checksums.tsv)")
    p.add_argument("--require-checksum", action="store_true", help="fail when no sha256 is known")
    p.add_argument("--retries", type=non_negative_int, default=4, help="retries per URL (default 4)")
    p.add_argument("--timeout", type=positive_float, default=60.0,
                   help="socket timeout in seconds (default 60)")
    # defaults live in samsbench.data.download (not imported here: --help stays fast)
    p.add_argument("--deadline", type=non_negative_float,
                   help="give up after this many seconds in all (default 86400; 0: none)")
    p.add_argument("--min-rate", type=non_negative_float,
                   help="drop a transfer slower than this many bytes/s (default 1024)")
    p.add_argument("--rate-window", type=positive_float,
                   help="seconds over which --min-rate is measured (default 120)")
    p.set_defaults(func=_download)

    p = sub.add_parser(
        "enrich", help="gene-set enrichment of learned masks and complex recovery of a run",
        description="Over-representation of each latent dimension's active perturbations "
        "against gene-set libraries, and complex recovery, for one trained run: the workflow's "
        "enrich_run step. Settings come from the experiment's enrichment: block; an option "
        "given here overrides that setting.")
    _config_options(p)
    p.add_argument("--run", required=True, help="run directory (holds summary.json and latents)")
    p.add_argument("--dataset", required=True,
                   help="the prepared h5ad (serves the 'pathways' and 'programs' libraries)")
    p.add_argument("--gene-sets", nargs="+", metavar="NAME|PATH",
                   help="libraries (config gene_sets names or GMT files) to test "
                   "(default: the experiment's enrichment.gene_sets)")
    p.add_argument("--threshold", type=fraction,
                   help="mask probability above which a perturbation is active "
                   "(default: enrichment.threshold)")
    p.add_argument("--min-set-size", type=positive_int,
                   help="skip sets with fewer genes in the background (default: enrichment)")
    p.add_argument("--recovery-library", metavar="NAME|PATH",
                   help="library labelling pairs; 'auto' = pathways, else programs, else "
                   "KEGG_2021_Human (default: enrichment.recovery_library)")
    p.add_argument("--out", help="output directory (default: the run directory)")
    p.set_defaults(func=_enrich)

    p = sub.add_parser(
        "mask-recovery", help="recovery of a simulated dataset's planted mask by trained runs",
        description="Precision, recall, F1 and AUROC of each run's q(mask) against the true "
        'mask in the dataset\'s uns["simulation"], under both matching conventions (the '
        "workflow's mask_recovery step; docs/mask_recovery.md). Runs without a mask are "
        "skipped.")
    p.add_argument("--data", required=True, help="prepared dataset h5ad with a planted mask")
    p.add_argument("--run", action="append", required=True,
                   help="run directory (holds summary.json and the latents); repeat for several")
    p.add_argument("--threshold", type=fraction, default=0.5,
                   help="q(mask) above which an entry is active (default 0.5)")
    p.add_argument("--out", default=None, help="TSV to write (default: stdout)")
    p.set_defaults(func=_mask_recovery)

    p = sub.add_parser(
        "export", help="export a run's test perturbations as cells for another scorer (cell-eval)",
        description="Write predicted.h5ad and real.h5ad (cells of the test perturbations and "
        "the real control cells, ln(1 + CP10k)) for cell-eval: the workflow's export_cell_eval "
        "step.")
    p.add_argument("--format", choices=["cell-eval"], default="cell-eval", help="target scorer")
    p.add_argument("--run", required=True, help="run directory (model.pt, predictions.h5ad)")
    p.add_argument("--data", required=True, help="prepared dataset .h5ad")
    p.add_argument("--splits", required=True, help="split TSV (cell_id, split)")
    p.add_argument("--out", required=True, help="directory for predicted.h5ad and real.h5ad")
    p.add_argument("--cells", type=positive_int, default=100,
                   help="predicted cells per test perturbation (default 100)")
    # the choices are samsbench.stages.export.MODES (not imported here: --help stays fast)
    p.add_argument("--mode", choices=["auto", "mean", "sample"], default="auto",
                   help="sample cells from the model, or copies of its predicted mean; auto: "
                   "sample for a model with a likelihood (default auto)")
    p.add_argument("--no-clip", action="store_true",
                   help="mean mode: instead of setting predicted values below 0 to 0, shift each "
                   "gene in both files so none is negative (deltas unchanged: cell-eval's "
                   "pearson_delta equals ours)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default 0)")
    p.add_argument("--family", default="", help="the config's family (needed for a plug-in)")
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda (default cpu)")
    p.set_defaults(func=_export)

    p = sub.add_parser("plan", help="runs, steps and estimated device-hours of experiments",
                       description="Jobs x optimiser steps per experiment, and device-hours and "
                       "wall time from the measured speed table (docs/reproducing_the_paper.md).")
    _config_options(p, experiment=False)
    p.add_argument("--run", nargs="+", help="experiments (default: the config's run list)")
    p.add_argument("--gpus", type=positive_int, default=1, help="devices working at once")
    p.add_argument("--pack", type=positive_int,
                   help="runs per device (default: the config's cluster.runs_per_gpu)")
    p.add_argument("--pack-gain", type=positive_float, default=None,
                   help="throughput of --pack runs on one device over one run's (default: "
                   "the speed table's packed rows; 1 where not measured)")
    p.add_argument("--device", choices=["cuda", "cpu"], help="device to plan for (default: both)")
    p.add_argument("--speed-table", help="speed table TSV (default: the packaged one)")
    p.set_defaults(func=_plan)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"samsbench {args.command}: interrupted (Ctrl-C); no output was half-written"
              + ("; run the same command again to resume from the last checkpoint"
                 if args.command == "train" else ""), file=sys.stderr)
        return 130
    except ImportError as exc:
        # a verb's module (imported in its handler) is broken or a dependency is missing
        print(f"samsbench {args.command}: error: cannot import what this command needs: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    except MemoryError as exc:  # the memory pre-flight's refusal, or an allocation failing
        print(f"samsbench {args.command}: error: {exc or 'out of memory'}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as exc:
        # user mistakes: a bad value, a missing or unwritable path, a refused input
        print(f"samsbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        import traceback

        traceback.print_exc()
        print(f"samsbench {args.command}: this is a bug in samsbench, not a mistake of yours; "
              "please report it (an issue in the project's repository) with the command you "
              "ran and the traceback above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
