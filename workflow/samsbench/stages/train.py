"""The train step: train one model on one split with one seed, and write its latents."""

from __future__ import annotations

import dataclasses
import os
import logging
import os

import anndata as ad
import numpy as np
import pandas as pd
import torch

from samsbench import inference
from samsbench import io as sbio
from samsbench import models as registry
from samsbench import provenance
from samsbench.data import contract, splits
from samsbench.data.tensors import PerturbationData

log = logging.getLogger(__name__)


def set_threads(n: int) -> None:
    """CPU threads torch may use in this process (the rule's ``threads``, or ``--threads``)."""
    torch.set_num_threads(int(n))


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda was asked for but no CUDA device is visible")
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_run(config: dict, experiment: str | None, model: str, overrides=(),
                split: str = "", data_path: str = "", max_steps: int | None = None,
                split_path: str = ""):
    """(hyperparameters, training, identity) of one run as `samsbench train` starts it: the
    experiment's settings (or the config's model_defaults), then each ``key=value`` override
    (config.resolve_training_run); the identity recorded in summary.json (the dataset and
    split named by their files' stems unless given)."""
    from samsbench import config as sbconfig

    hp, training = sbconfig.resolve_training_run(config, experiment, model, overrides)
    if max_steps is not None:
        training["max_steps"] = max_steps
    dataset = config["experiments"][experiment]["dataset"] if experiment else ""
    identity = {"experiment": experiment or "", "model": model, "family": hp["family"],
                "split": split or _stem(split_path),
                "dataset": dataset or _stem(data_path)}
    return hp, training, identity


def _stem(path: str) -> str:
    return os.path.basename(path).split(".")[0]


def load_data(data_path: str, split_path: str, encoding: str = "additive",
              device: str = "cpu") -> PerturbationData:
    adata = contract.read(data_path)
    labels = splits.read_split(split_path, adata.obs_names)
    return PerturbationData(adata, labels, encoding=encoding, device=pick_device(device))


def train(data_path: str, split_path: str, hp: dict, training: dict, run_dir: str,
          seed: int, device: str = "auto", progress: bool = True,
          identity: dict | None = None) -> dict:
    """Train one model on one split with one seed; writes the run directory. ``identity``
    (experiment, model, split, ...) is recorded in summary.json. A second train into the same
    ``run_dir`` is refused while this one runs; temporary files of a killed one are removed."""
    with sbio.folder_lock(run_dir, "samsbench train"):
        stale = sbio.remove_stale(run_dir)
        if stale:
            log.info("removed %d temporary file(s) left by a killed process: %s", len(stale),
                     ", ".join(os.path.basename(p) for p in stale))
        return _train(data_path, split_path, hp, training, run_dir, seed, device, progress,
                      identity)


def _train(data_path, split_path, hp, training, run_dir, seed, device, progress, identity):
    hp = dict(hp)
    family = hp.pop("family")
    hp = registry.hyperparameters(family, hp)  # the family's typed hyperparameters
    data = load_data(data_path, split_path, hp.encoding, device)
    contract.require_model_fits(data.value_kind, family, hp)
    torch.manual_seed(seed)  # model initialisation depends on the seed only
    model = registry.build(family, len(data.genes), data.columns, hp)
    # the record of where the numbers came from: code, software, device, settings, input
    # bytes; summary.json carries it (written once, by the engine)
    record = provenance.record(
        config={"family": family, "hyperparameters": dataclasses.asdict(hp),
                "training": dict(training)},
        files={"dataset": data_path, "split": split_path}, seeds=[seed], device_name=device)
    identity = {**(identity or {}), "seed": seed, "provenance": record}
    summary = inference.train(model, family, hp, data, training, run_dir, seed, progress, identity)
    write_perturbation_latents(model, data, sbio.run_file(run_dir, "latents"))
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
    sbio.write_h5ad(adata, path)
