"""What each workflow step does, callable from Snakemake scripts and from the CLI alike."""

from __future__ import annotations

import json
import logging
import os

import anndata as ad
import numpy as np
import pandas as pd
import torch

from samsbench import inference
from samsbench import models as registry
from samsbench.data import contract, splits
from samsbench.data.tensors import PerturbationData

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda was asked for but no CUDA device is visible")
        return torch.device("cuda")
    return torch.device("cpu")


def make_split(data_path: str, split_cfg: dict, out_path: str) -> None:
    adata = contract.read(data_path)
    # Norman: the reference shuffles guide identities, not gene labels (see splits.ood_split).
    ids = adata.obs["guide_identity"].astype(str).to_numpy() if "guide_identity" in adata.obs else None
    labels = splits.make_split(
        adata.obs[contract.PERTURBATION_KEY].to_numpy(), split_cfg["kind"],
        seed=int(split_cfg.get("seed", 0)), fraction=float(split_cfg.get("fraction", 1.0)),
        test_fraction=float(split_cfg.get("test_fraction", 0.25)), combination_ids=ids,
        control=contract.control_label(adata),
    )
    splits.write_split(adata.obs_names, labels, out_path)
    counts = pd.Series(labels).value_counts().to_dict()
    log.info("split %s of %s: %s", split_cfg, data_path, counts)


def load_data(data_path: str, split_path: str, encoding: str = "additive",
              device: str = "cpu") -> PerturbationData:
    adata = contract.read(data_path)
    labels = splits.read_split(split_path, adata.obs_names)
    return PerturbationData(adata, labels, encoding=encoding, device=pick_device(device))


def train_run(data_path: str, split_path: str, hp: dict, training: dict, run_dir: str,
              seed: int, device: str = "auto", progress: bool = True,
              identity: dict | None = None) -> dict:
    """Train one model on one split with one seed; writes the run directory. ``identity``
    (experiment, model, split, ...) is recorded in summary.json."""
    hp = dict(hp)
    family = hp.pop("family")
    data = load_data(data_path, split_path, hp.get("encoding", "additive"), device)
    torch.manual_seed(seed)  # model initialisation depends on the seed only
    model = registry.build(family, len(data.genes), data.columns, hp)
    identity = {**(identity or {}), "seed": seed}
    summary = inference.train(model, family, hp, data, training, run_dir, seed, progress, identity)
    write_perturbation_latents(model, data, os.path.join(run_dir, "perturbation_latents.h5ad"))
    return summary


def write_perturbation_latents(model, data: PerturbationData, path: str) -> None:
    """Rows = the model's perturbation columns; layers mask_prob / embedding_mean if any."""
    layers = model.perturbation_latents() if hasattr(model, "perturbation_latents") else {}
    n_latent = next(iter(layers.values())).shape[1] if layers else 0
    obs = pd.DataFrame(index=pd.Index(data.columns, name="perturbation"))
    obs["target_genes"] = data.target_genes
    adata = ad.AnnData(X=np.zeros((len(data.columns), n_latent), dtype=np.float32), obs=obs,
                       var=pd.DataFrame(index=[f"z{k}" for k in range(n_latent)]))
    for name, value in layers.items():
        adata.layers[name] = np.asarray(value, dtype=np.float32)
    contract.write_h5ad_atomic(adata, path)


def predict_run(data_path: str, split_path: str, model_path: str, out_path: str,
                n_particles: int = 2500, chunk: int = 128, device: str = "auto") -> pd.DataFrame:
    """Predicted mean log2(CP10k+1) for every perturbation of the dataset and the control."""
    from samsbench import evaluate

    model, record = inference.load_model(model_path, pick_device(device))
    data = load_data(data_path, split_path, record["encoding"], device)
    if data.columns != record["columns"] or data.genes != record["genes"]:
        raise ValueError(f"{model_path} was trained on other perturbations or genes than {data_path}")
    labels = [data.control] + sorted(set(data.labels) - {data.control})
    means = inference.predicted_means(model, data, labels, n_particles=n_particles, chunk=chunk)
    frame = pd.DataFrame(means, index=labels, columns=data.genes)
    evaluate.write_predictions(frame, out_path, data.control,
                               {"model_path": model_path, "ate_particles": n_particles})
    return frame


def iwelbo_run(data_path: str, split_path: str, model_path: str, n_particles: int = 100,
               device: str = "auto", seed: int = 0) -> dict:
    model, record = inference.load_model(model_path, pick_device(device))
    if isinstance(model, registry.MeanEffectModel):
        return {}
    data = load_data(data_path, split_path, record["encoding"], device)
    out = {}
    for split in ("val", "test"):
        if len(data.split_index(split)):
            out[f"{split}_iwelbo"] = inference.iwelbo(model, data, split, n_particles, seed)
    return out


def evaluate_run(run: dict, data_path: str, split_path: str, predictions_path: str,
                 model_path: str, out_path: str, iwelbo_particles: int = 100,
                 device: str = "auto") -> pd.DataFrame:
    """All metrics of one run as tidy rows (experiment, ..., metric, subset, value)."""
    from samsbench import evaluate

    rows = [evaluate.score(predictions_path, data_path, split_path)]
    for metric, value in iwelbo_run(data_path, split_path, model_path, iwelbo_particles,
                                    device).items():
        rows.append(pd.DataFrame([{"metric": metric, "subset": metric.split("_")[0],
                                   "value": value}]))
    return _tidy(run, pd.concat(rows, ignore_index=True), out_path)


def score_external(run: dict, data_path: str, split_path: str, predictions_path: str,
                   out_path: str) -> pd.DataFrame:
    """Score a predictions h5ad made outside the workflow, exactly as the workflow's own."""
    from samsbench import evaluate

    return _tidy(run, evaluate.score(predictions_path, data_path, split_path), out_path)


def _tidy(run: dict, table: pd.DataFrame, out_path: str) -> pd.DataFrame:
    table = table.assign(value=table["value"].astype(float))
    ident = {k: run[k] for k in ("experiment", "dataset", "model", "family", "split", "seed")}
    table = pd.concat([pd.DataFrame([ident] * len(table)), table], axis=1)
    write_tsv(table, out_path)
    return table


def write_tsv(frame: pd.DataFrame, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    frame.to_csv(tmp, sep="\t", index=False, float_format="%.10g")
    os.replace(tmp, path)


def aggregate(paths: list[str], out_path: str) -> pd.DataFrame:
    frames = [pd.read_csv(p, sep="\t") for p in paths]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(table):
        table = table.sort_values(["model", "split", "seed", "metric", "subset"], kind="stable")
    write_tsv(table, out_path)
    return table

