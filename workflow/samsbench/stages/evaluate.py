"""The evaluate step: predict, score (metrics of a run), score an external predictions file,
aggregate an experiment's metrics, and score recovery of a planted mask. The maths is in
samsbench.metrics, samsbench.ceiling and samsbench.enrichment.recovery. Its ~450 lines are
mostly the predictions file's reader and writer, whose checks belong with the scoring."""

from __future__ import annotations

import logging
import os

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from samsbench import io as sbio
from samsbench import ceiling, metrics
from samsbench.data import contract
from samsbench.data.splits import read_split

log = logging.getLogger(__name__)

RUN_KEYS = ("experiment", "dataset", "model", "family", "split", "seed")
# uns key of a predictions file naming the cells it is scored against (the replicate ceiling)
TRUTH_CELLS_KEY = "truth_cells"
# layer of a predictions file with the paper's prediction (10,000 counts per sampled cell);
# X holds the depth-matched one (library sizes drawn from each perturbation's own cells)
PAPER_LAYER = "paper_1e4"
# obs column of a simulation's combination classes (samsbench.data.simulate.CLASS_KEY)
CLASS_KEY = "combination_class"


def run_identity(run_dir: str) -> dict:
    """experiment, dataset, model, family, split and seed as the run's summary.json records
    them ({} without one), for the identity columns of its metrics."""
    summary = sbio.read_summary(run_dir)
    if summary is None:
        log.warning("%s: no summary.json; the metrics rows get empty identity columns", run_dir)
        return {}
    return {k: summary[k] for k in RUN_KEYS if k in summary}


def trusted_family(run_dir: str, given: str | None, recorded: str | None) -> str | None:
    """The family to load a run's model with: ``given`` (the user's --family, from their own
    config), else the one summary.json records when it is a registered family. A results
    folder is data: a plug-in it names is never imported on its word."""
    from samsbench import models as registry

    if given:
        return given
    if not recorded or recorded in registry.FAMILIES:
        return recorded or None
    raise ValueError(f"{run_dir}: summary.json names the plug-in family {recorded!r}, which is "
                     "not imported on a results folder's word; if it is your plug-in, pass "
                     f"--family {recorded} (as in your config)")


def check_run_inputs(run_dir: str, data_path: str, split_path: str) -> None:
    """The dataset and split file are those the run was trained on: their sha256 equals what
    its summary.json recorded (a run without that record is not checked, with a warning)."""
    summary = sbio.read_summary(run_dir) or {}
    recorded = (summary.get("provenance") or {}).get("sha256") or {}
    if not recorded:
        log.warning("%s: summary.json records no input checksums; cannot check that %s and %s "
                    "are the run's training inputs", run_dir, data_path, split_path)
        return
    for label, option, path in (("dataset", "--data", data_path),
                                ("split", "--splits", split_path)):
        want = recorded.get(label)
        if want and sbio.sha256_file(path) != want:
            raise ValueError(f"{option} {path} is not the {label} file this run was trained on "
                             f"(sha256 differs from {sbio.run_file(run_dir, 'summary')}); give "
                             f"the run's own {label} file")


class PredictionsError(ValueError):
    """A predictions h5ad cannot be scored against the dataset."""


def predict(data_path: str, split_path: str, model_path: str, out_path: str,
            n_particles: int = 2500, chunk: int = 128, device: str = "auto",
            family: str | None = None) -> pd.DataFrame:
    """Predicted mean log2(CP10k+1) for every perturbation of the dataset and the control.
    ``family``: the config's family, needed for a plug-in (inference.load_model)."""
    from samsbench import inference
    from samsbench.stages.train import load_data, pick_device

    model, record = inference.load_model(model_path, pick_device(device), family or None)
    data = load_data(data_path, split_path, record["encoding"], device)
    if data.columns != record["columns"] or data.genes != record["genes"]:
        raise ValueError(f"{model_path} was trained on other perturbations or genes than {data_path}")
    labels = [data.control] + sorted(set(data.labels) - {data.control})
    paper = None
    if data.value_kind == "counts":
        # X: each sampled cell's library size drawn from its perturbation's own cells, the
        # depth the truth was measured at; the paper's 10,000 counts per cell as a layer
        totals = data.X.sum(dim=1).double().cpu().numpy()
        depths = [totals[data.labels == label] for label in labels]
        means, paper = inference.predicted_means_matched(model, data, labels, depths,
                                                         n_particles=n_particles, chunk=chunk)
    else:  # continuous data: the mean of the samples themselves (no log-normalisation)
        means = inference.predicted_means(model, data, labels, n_particles=n_particles,
                                          chunk=chunk, log_normalize=False)
    frame = pd.DataFrame(means, index=labels, columns=data.genes)
    # A model scored against only some cells (the replicate ceiling) names them.
    truth = model.scored_cells(data.cell_ids) if hasattr(model, "scored_cells") else None
    write_predictions(frame, out_path, data.control,
                      {"model_path": model_path, "ate_particles": n_particles,
                       "library_sizes": "X: drawn from each perturbation's own cells; layer "
                                        f"{PAPER_LAYER}: 10,000 per cell (the paper)"},
                      truth_cells=truth,
                      paper=None if paper is None else pd.DataFrame(paper, index=labels,
                                                                    columns=data.genes))
    return frame


def iwelbo(data_path: str, split_path: str, model_path: str, n_particles: int = 100,
           device: str = "auto", seed: int = 0, family: str | None = None) -> dict:
    """Held-out IWELBO of a trained run on its val and test cells ({} for a baseline)."""
    from samsbench import inference
    from samsbench.stages.train import load_data, pick_device

    model, record = inference.load_model(model_path, pick_device(device), family or None)
    if not model.has_likelihood:
        return {}
    data = load_data(data_path, split_path, record["encoding"], device)
    out = {}
    for split in ("val", "test"):
        if len(data.split_index(split)):
            out[f"{split}_iwelbo"] = inference.iwelbo(model, data, split, n_particles, seed)
    return out


def score(run: dict, data_path: str, split_path: str, predictions_path: str,
          model_path: str, out_path: str, iwelbo_particles: int = 100,
          device: str = "auto", perturbations_path: str | None = None) -> pd.DataFrame:
    """All metrics of one run as tidy rows (experiment, ..., metric, subset, value). On
    continuous or control-free data the ATE metrics are skipped (logged) and IWELBO stays.
    ``perturbations_path``: where the test perturbations' rows go (for the bootstrap)."""
    skip = effect_metrics_skip_reason(data_path)
    if skip:
        log.info("ATE metrics of %s skipped: %s", predictions_path, skip)
    rows, per = [], pd.DataFrame(columns=["perturbation", *ceiling.SUM_COLUMNS])
    if not skip:
        table, per = score_predictions(predictions_path, data_path, split_path,
                                       per_perturbation=True)
        rows.append(table)
    if perturbations_path is not None:
        ident = {k: run.get(k, "") for k in RUN_KEYS}
        sbio.write_tsv(per.assign(**ident, subset="test")[
            [*RUN_KEYS, "subset", *per.columns]], perturbations_path)
    for metric, value in iwelbo(data_path, split_path, model_path, iwelbo_particles,
                                device, family=run.get("family") or None).items():
        rows.append(pd.DataFrame([{"metric": metric, "subset": metric.split("_")[0],
                                   "value": value}]))
    table = (pd.concat(rows, ignore_index=True) if rows
             else pd.DataFrame(columns=["metric", "subset", "value"]))
    return _tidy(run, table, out_path)


def effect_metrics_skip_reason(data_path: str) -> str | None:
    """Why the ATE metrics cannot be computed on a dataset, or None. They are defined on
    log-normalised counts against the control mean (the reference's eval.py)."""
    meta = ad.read_h5ad(data_path, backed="r")  # obs and uns only; X stays on disk
    try:
        if contract.value_kind(meta) == "continuous":
            return ('the dataset is continuous (uns["value_kind"]); the ATE metrics are defined '
                    "on log-normalised counts")
        if not contract.has_controls(meta):
            return "the dataset has no control cells; the ATE is each perturbation minus them"
    finally:
        meta.file.close()
    return None


def score_external(run: dict, data_path: str, split_path: str, predictions_path: str,
                   out_path: str | None) -> pd.DataFrame:
    """Score a predictions h5ad made outside the workflow, exactly as the workflow's own.
    ``out_path`` None: only return the table."""
    return _tidy(run, score_predictions(predictions_path, data_path, split_path), out_path)


def _tidy(run: dict, table: pd.DataFrame, out_path: str | None) -> pd.DataFrame:
    table = table.assign(value=table["value"].astype(float))
    ident = {k: run.get(k, "") for k in RUN_KEYS}
    table = pd.concat([pd.DataFrame([ident] * len(table)), table], axis=1)
    if out_path is not None:
        sbio.write_tsv(table, out_path)
    return table


def resolve_identity(run_dir: str, given: dict) -> dict:
    """A run's identity columns: each value given (the command line's), else the run's own
    summary.json's; the family only as ``trusted_family`` allows (a plug-in named by
    summary.json alone is refused)."""
    recorded = run_identity(run_dir)
    run = {k: v if v not in ("", None) else recorded.get(k, "") for k, v in given.items()}
    if "family" in given:
        run["family"] = trusted_family(run_dir, given["family"], recorded.get("family")) or ""
    return run


def aggregate(paths: list[str], out_path: str, perturbation_paths: list[str] | None = None,
              differences_path: str | None = None) -> pd.DataFrame:
    """An experiment's metrics: every run's rows, with the normalised score beside the raw
    value (metrics.normalised_scores; issue 13). ``perturbation_paths``: the runs' test
    perturbation rows; their paired bootstrap (ceiling.paired_bootstrap) goes to
    ``differences_path`` and keeps a normalised score only where the ceiling-to-baseline gap
    is beyond its noise (issue 22)."""
    frames = [pd.read_csv(p, sep="\t") for p in paths]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    from samsbench import models as registry

    differences = None
    if perturbation_paths is not None:
        per = [pd.read_csv(p, sep="\t") for p in perturbation_paths]
        per = pd.concat([f for f in per if len(f)], ignore_index=True) if any(
            len(f) for f in per) else pd.DataFrame()
        differences = ceiling.paired_bootstrap(per, registry.roles(_families(per)))
        if differences_path is not None:
            sbio.write_tsv(differences, differences_path)
    if len(table):
        table = table.sort_values(["model", "split", "seed", "metric", "subset"], kind="stable")
        table = metrics.normalised_scores(table, registry.roles(_families(table)), differences)
    sbio.write_tsv(table, out_path)
    return table


def _families(table: pd.DataFrame) -> set[str]:
    """The families a table's rows name (none without a family column)."""
    if "family" not in table:
        return set()
    return set(table["family"].dropna().astype(str)) - {""}


def score_table(metrics_path: str, out_path: str, subset: str = "test") -> pd.DataFrame:
    """The report's table: raw and normalised scores per model (metrics.score_table) of an
    aggregated metrics TSV."""
    table = metrics.score_table(pd.read_csv(metrics_path, sep="\t"), subset=subset)
    sbio.write_tsv(table, out_path)
    return table


def mask_recovery(data_path: str, latents_paths: list[str], runs: list[dict],
                  out_path: str | None, threshold: float = 0.5) -> pd.DataFrame:
    """Recovery of the dataset's planted mask by every masked run (precision / recall / F1 /
    AUROC under both matching conventions; enrichment.recovery.planted_mask_recovery), one
    row per run and matching; runs without a mask are skipped (logged)."""
    from samsbench.enrichment import recovery

    if len(latents_paths) != len(runs):
        raise ValueError(f"{len(latents_paths)} latents files for {len(runs)} runs")
    meta = ad.read_h5ad(data_path, backed="r")  # uns only; X stays on disk
    try:
        labels, true_mask = recovery.planted_mask(meta.uns)
    except ValueError as exc:
        raise ValueError(f"{data_path}: {exc}") from None
    finally:
        meta.file.close()
    columns = [*RUN_KEYS, *recovery.MASK_RECOVERY_COLUMNS]
    frames = []
    for path, run in zip(latents_paths, runs):
        try:
            rows = recovery.planted_mask_recovery(labels, true_mask, ad.read_h5ad(path),
                                                  threshold)
        except ValueError as exc:
            raise ValueError(f"{path} (run {run.get('model')}): {exc}") from None
        if not len(rows):
            log.info("run %s/%s/seed%s has no mask; skipped", run.get("model"),
                     run.get("split"), run.get("seed"))
            continue
        frames.append(rows.assign(**{k: run.get(k, "") for k in RUN_KEYS})[columns])
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    if out_path is not None:
        sbio.write_tsv(table, out_path)
    return table


# ------------------------------------------------------------------------- predictions files


def write_predictions(
    means: pd.DataFrame, path, control_label: str, metadata: dict | None = None,
    truth_cells: list[str] | None = None, paper: pd.DataFrame | None = None,
) -> None:
    """Write predicted mean log2(CP10k+1) per perturbation (control row included) as h5ad.

    Rows are perturbations (``obs["perturbation"]``), columns genes (var names); the control
    label goes to ``uns["control_label"]`` and ``metadata`` to ``uns["metadata"]``;
    ``truth_cells`` (cell ids to score against, see ``truth_cells``) to ``uns["truth_cells"]``;
    ``paper`` (the paper's 10,000-count prediction) to the layer ``PAPER_LAYER``.
    """
    values = np.asarray(means.to_numpy(), dtype=np.float64)
    where = f"predictions for {os.fspath(path)}"
    labels = means.index.astype(str)
    genes = means.columns.astype(str)
    if control_label not in set(labels):
        raise PredictionsError(f"{where}: no row for the control {control_label!r}")
    if not labels.is_unique:
        duplicated = _first(labels[labels.duplicated()])
        raise PredictionsError(f"{where}: duplicated perturbations {duplicated}")
    if not genes.is_unique:
        raise PredictionsError(f"{where}: duplicated genes {_first(genes[genes.duplicated()])}")
    _check_finite(values, labels, genes, where)
    adata = ad.AnnData(
        X=values,
        obs=pd.DataFrame({contract.PERTURBATION_KEY: np.asarray(labels)}, index=np.asarray(labels)),
        var=pd.DataFrame(index=np.asarray(genes)),
    )
    adata.uns["control_label"] = str(control_label)
    adata.uns["metadata"] = _h5ad_safe(metadata or {})
    if paper is not None:  # the paper's prediction, same rows and genes
        layer = np.asarray(paper.loc[labels, genes].to_numpy(), dtype=np.float64)
        _check_finite(layer, labels, genes, where)
        adata.layers[PAPER_LAYER] = layer
    if truth_cells is not None:
        adata.uns[TRUTH_CELLS_KEY] = np.asarray(truth_cells, dtype=str)
    sbio.write_h5ad(adata, path)


def _h5ad_safe(value):
    """h5ad cannot store None or arbitrary objects in uns; keep plain values, stringify the rest."""
    if isinstance(value, dict):
        return {str(k): _h5ad_safe(v) for k, v in value.items()}
    if value is None:
        return ""
    if isinstance(value, (bool, int, float, str, np.integer, np.floating, np.bool_)):
        return value
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (bool, int, float, str)) for v in value
    ):
        return list(value) if value else ""
    return str(value)


def read_predictions(path, data_adata: ad.AnnData, layer: str | None = None) -> pd.DataFrame:
    """Read a predictions h5ad and return its ATE (non-control rows minus the control row);
    ``layer``: that layer instead of X when the file has it.

    Checks, each raising PredictionsError that names the file: readable h5ad, a
    ``obs["perturbation"]`` column, unique labels, the data's control label present, no label
    unknown to the data, the same gene set as the data (columns returned in the data's order),
    finite values.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise PredictionsError(f"{path}: no such predictions file")
    try:
        pred = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many exception types for a broken file
        raise PredictionsError(f"{path}: not a readable h5ad file ({exc})") from exc

    key = contract.PERTURBATION_KEY
    if key not in pred.obs.columns:
        raise PredictionsError(
            f'{path}: obs has no "{key}" column holding the perturbation label of each row '
            f"(found columns: {list(pred.obs.columns)[:10]})"
        )
    labels = pd.Index(pred.obs[key].astype(str).to_numpy())
    if not labels.is_unique:
        raise PredictionsError(
            f"{path}: each perturbation needs exactly one row; duplicated: "
            f"{_first(labels[labels.duplicated()].unique())}"
        )

    control = contract.control_label(data_adata)
    file_control = pred.uns.get("control_label")
    if file_control is not None and str(file_control) != control:
        raise PredictionsError(
            f'{path}: uns["control_label"] is {str(file_control)!r} but the data\'s control is '
            f"{control!r}"
        )
    if control not in labels:
        raise PredictionsError(
            f"{path}: missing the control row {control!r}; the predicted ATE is each "
            "perturbation's row minus the control row"
        )

    data_labels = set(data_adata.obs[key].astype(str))
    unknown = [lab for lab in labels if lab not in data_labels]
    if unknown:
        raise PredictionsError(
            f"{path}: {len(unknown)} perturbations are not in the data: {_first(unknown)}"
        )

    data_genes = pd.Index(data_adata.var_names.astype(str))
    genes = pd.Index(pred.var_names.astype(str))
    if not genes.is_unique:
        raise PredictionsError(f"{path}: duplicated genes {_first(genes[genes.duplicated()])}")
    missing = data_genes.difference(genes, sort=False)
    extra = genes.difference(data_genes, sort=False)
    if len(missing) or len(extra):
        parts = []
        if len(missing):
            parts.append(f"{len(missing)} genes of the data are missing: {_first(missing)}")
        if len(extra):
            parts.append(f"{len(extra)} genes are not in the data: {_first(extra)}")
        raise PredictionsError(f"{path}: gene set does not match the data; " + "; ".join(parts))

    X = pred.layers[layer] if layer is not None and layer in pred.layers else pred.X
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    values = np.asarray(X, dtype=np.float64)
    _check_finite(values, labels, genes, path)
    means = pd.DataFrame(values, index=labels, columns=genes).reindex(columns=data_genes)
    means.index.name, means.columns.name = "perturbation", "gene"
    return means.drop(index=control) - means.loc[control]


def truth_cells(predictions_path, data_adata: ad.AnnData) -> np.ndarray | None:
    """Boolean per data cell from the predictions' ``uns["truth_cells"]`` (cell ids the
    predictions must be scored against), or None when the file has no such record."""
    import h5py

    path = os.fspath(predictions_path)
    with h5py.File(path, "r") as fh:
        if "uns" not in fh or TRUTH_CELLS_KEY not in fh["uns"]:
            return None
        ids = fh["uns"][TRUTH_CELLS_KEY][()]
    ids = pd.Index([i.decode() if isinstance(i, bytes) else str(i) for i in np.ravel(ids)])
    keep = pd.Index(data_adata.obs_names.astype(str)).isin(ids)
    if int(keep.sum()) != len(ids.unique()):
        unknown = ids.difference(data_adata.obs_names.astype(str))
        raise PredictionsError(
            f'{path}: uns["{TRUTH_CELLS_KEY}"] names {len(unknown)} cells that are not in the '
            f"data: {_first(unknown)}"
        )
    return np.asarray(keep)


def score_predictions(predictions_path, data_path, split_path,
                      per_perturbation: bool = False):
    """Score a predictions h5ad against a prepared dataset and its split TSV: the metrics of
    ``metrics.METRICS`` and ``metrics.REFERENCE_METRICS`` (against the mean of the subset's
    perturbed cells) on all/train/val/test, GEARS' combo_seen{k} subsets and, for a simulation with
    combination classes, the test perturbations of each class (metrics.class_subsets), each subset
    against its own held-out cells (``metrics.truth_by_split``: a perturbation's test cells
    for the test subsets, all controls), and the paper's ``paper_*`` rows (its four metrics
    against all cells, from the ``paper_1e4`` layer when the file has one).

    A predictions file that names its truth cells (the replicate ceiling) is scored as two
    halves of the data instead: the ceiling and the ``split_half_*`` rows
    (``ceiling.ceiling_metrics``). ``per_perturbation``: also return the test perturbations'
    rows (``ceiling.perturbation_rows``) for the paired bootstrap, as (table, rows)."""
    data = contract.read(data_path)
    pred_ate = read_predictions(predictions_path, data)  # checks the file first
    keep = truth_cells(predictions_path, data)
    split = read_split(split_path, data.obs_names)
    labels = data.obs[contract.PERTURBATION_KEY].to_numpy()
    control = contract.control_label(data)
    if not pred_ate.index.isin(labels[labels != control].astype(str)).any():
        raise PredictionsError(
            f"{os.fspath(predictions_path)}: no non-control perturbation in common with the data"
        )
    subsets = {**metrics.subsets_from_split(labels, split, control),
               **metrics.combo_seen_subsets(labels, split, control)}
    if CLASS_KEY in data.obs:  # a simulation's combination classes: one subset each
        subsets.update(metrics.class_subsets(labels, split, data.obs[CLASS_KEY], control))
    if keep is not None:  # the split-half ceiling: half A against half B
        halves = (metrics.truth_by_split(data[~keep], split[~keep]),
                  metrics.truth_by_split(data[keep], split[keep]))
        table = ceiling.ceiling_metrics(*halves, subsets)
        first, second = (h.get("test") for h in halves)
    else:
        truths = metrics.truth_by_split(data, split)
        paper_ate = read_predictions(predictions_path, data, layer=PAPER_LAYER)
        table = pd.concat([metrics.heldout_metrics(pred_ate, truths, subsets),
                           metrics.paper_metrics(paper_ate, truths["all"], subsets)],
                          ignore_index=True)
        first, second = (pred_ate, None), truths.get("test")
    if not per_perturbation:
        return table
    return table, _test_rows(first, second, subsets.get("test", []), keep is not None)


def _test_rows(first, second, members, split_half: bool) -> pd.DataFrame:
    """Per test perturbation: ``ceiling.perturbation_rows`` of the prediction (or half A)
    against the test truth (or half B)."""
    columns = ["perturbation", *ceiling.SUM_COLUMNS, *ceiling.ROW_METRICS]
    if first is None or second is None:
        return pd.DataFrame(columns=columns)
    (pred, cells_a), (true, cells_b) = first, second
    labels = [lab for lab in true.index if lab in set(members) and lab in pred.index]
    if not labels:
        return pd.DataFrame(columns=columns)
    ref_b = metrics.perturbed_reference(true, cells_b)
    ref = (metrics.perturbed_reference(pred, cells_a), ref_b) if split_half else ref_b
    rows = ceiling.perturbation_rows(pred.loc[labels, true.columns].to_numpy(dtype=np.float64),
                                     true.loc[labels].to_numpy(dtype=np.float64), ref, split_half)
    return rows.assign(perturbation=labels)[columns]


def _check_finite(values: np.ndarray, labels, genes, where: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise PredictionsError(
            f"{where}: {int(bad.sum())} NaN or infinite values, first at perturbation "
            f"{labels[row]!r}, gene {genes[col]!r}"
        )


def _first(items, k: int = 5) -> str:
    items = list(items)
    shown = ", ".join(repr(str(x)) for x in items[:k])
    return f"[{shown}{', ...' if len(items) > k else ''}]"
