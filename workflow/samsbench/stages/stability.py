"""The mask-stability step (beyond the reference; issue 17): reads the runs' q(mask), the
dataset and its splits, and the merged enrichment table; writes the pair table, the seed
support of enrichment terms and the figure. The measures are ``enrichment.stability``."""

from __future__ import annotations

import logging
import os

import anndata as ad
import pandas as pd

from samsbench import io as sbio
from samsbench.enrichment import stability as ms

log = logging.getLogger(__name__)


def masked_groups(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Runs grouped by (model, split), only groups with at least two seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["model"], run["split"]), []).append(run)
    return {k: v for k, v in groups.items() if len({r["seed"] for r in v}) >= 2}


def stability_runs(runs: list[dict]) -> list[dict]:
    """The runs the mask_stability rule reads: those of (model, split) with two or more seeds."""
    return [run for group in masked_groups(runs).values() for run in group]


def trained_perturbations(data_path: str, split_paths: dict[str, str]) -> dict[str, set[str]]:
    """Per split: the perturbation columns with training cells (labels and their components).

    A held-out perturbation's q(mask) never moves from its initial value in any seed; left in,
    those identical rows would count as agreement."""
    from samsbench.data import contract, splits

    data = contract.read(data_path)
    labels = data.obs[contract.PERTURBATION_KEY].astype(str).to_numpy()
    out = {}
    for split, path in split_paths.items():
        train = set(labels[splits.read_split(path, data.obs_names) == "train"])
        out[split] = train | {c for lab in train for c in contract.components(lab)}
    return out


def read_masks(runs: list[dict], latent_paths: list[str],
               trained: dict[str, set[str]] | None = None) -> dict[tuple, pd.DataFrame]:
    """{(model, split, seed): q(mask) perturbations x dims} of the runs with a learned mask;
    ``trained``: per split, the perturbations kept (default: every row)."""
    if len(runs) != len(latent_paths):
        raise ValueError(f"{len(runs)} runs but {len(latent_paths)} latents files")
    masks, skipped = {}, set()
    for run, path in zip(runs, latent_paths):
        latents = ad.read_h5ad(path)
        layer = latents.layers["mask_prob"] if "mask_prob" in latents.layers else None
        if not ms.is_masked(layer):  # no mask, or the mask-off ablation's fixed ones
            skipped.add(run["model"])
            continue
        frame = pd.DataFrame(layer, index=latents.obs_names.astype(str))
        if trained is not None:
            frame = frame[frame.index.isin(trained[run["split"]])]
        masks[(run["model"], run["split"], int(run["seed"]))] = frame
    if skipped:
        log.info("no learned mask (left out): %s", sorted(skipped))
    return masks


def mask_stability(runs: list[dict], latent_paths: list[str], data_path: str | None,
                   split_paths: list[str], enrichment_path: str | None,
                   out_pairs: str, out_support: str, out_figure: str | None = None,
                   threshold: float = 0.5, alpha: float = 0.05,
                   min_seeds: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The whole step. ``split_paths`` are ``.../splits/{split}.tsv`` files; with
    ``data_path`` only perturbations with training cells in that split are compared.
    ``enrichment_path`` (None or an empty file: no enrichment) gives the seed support."""
    trained = None
    if data_path is not None:
        by_name = {os.path.basename(p).removesuffix(".tsv"): p for p in split_paths}
        trained = trained_perturbations(data_path, by_name)
    masks = read_masks(runs, latent_paths, trained)
    pairs = ms.pair_table(masks, threshold)
    seeds: dict[tuple[str, str], list[int]] = {}
    for model, split, seed in masks:
        seeds.setdefault((model, split), []).append(seed)
    support = pd.DataFrame(columns=ms.SUPPORT_COLUMNS)
    if enrichment_path and os.path.getsize(enrichment_path) > 0:
        enrichment = pd.read_csv(enrichment_path, sep="\t")
        keep = [(m, s) in seeds for m, s in zip(enrichment["model"], enrichment["split"])]
        support = ms.seed_support(enrichment[keep], seeds, alpha, min_seeds)
    sbio.write_tsv(pairs, out_pairs)
    sbio.write_tsv(support, out_support)
    if out_figure is not None:
        from samsbench.plots.enrichment import mask_stability_plot

        sbio.write_png(mask_stability_plot(pairs), out_figure)
    log.info("%d pairs of seeds compared; %d enrichment terms with seed support",
             len(pairs), len(support))
    return pairs, support
